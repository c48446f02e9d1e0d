"""Platform admin API: ``/api/v1/admin/tenants``, ``/workers``, ``/users`` and ``/outbox``."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Query, Request, status

from enginex.admin import service
from enginex.admin.schemas import (
    OutboxMessageOut,
    SessionCounts,
    TenantCreate,
    TenantCreated,
    TenantOut,
    TenantStatusUpdate,
    UserOut,
    WorkerOut,
)
from enginex.audit.service import record_in_user_orgs
from enginex.mail.models import MailStatus
from enginex.mail.service import list_outbox
from enginex.tenancy.guards import DB, PlatformAdmin, make_router
from enginex.tenancy.principal import UserPrincipal

router = make_router(prefix="/api/v1/admin", tags=["platform admin"])
Admin = Annotated[UserPrincipal, PlatformAdmin()]


def _out(summary: service.TenantSummary) -> TenantOut:
    org, activity = summary.org, summary.activity
    return TenantOut(id=org.id, slug=org.slug, name=org.name, status=org.status,
                     region=org.region, created_at=org.created_at,
                     member_count=summary.member_count, agent_count=activity.agents,
                     session_counts=SessionCounts.model_validate(
                         {k: v for k, v in activity.sessions.items()
                          if k in SessionCounts.model_fields}),
                     queue_depth=activity.queue_depth,
                     pending_approvals=activity.pending_approvals)


@router.get("/tenants", response_model=list[TenantOut])
async def list_tenants(db: DB, _: Admin) -> list[TenantOut]:
    """Every tenant with its counts: members, agents, sessions by status, queue depth and
    pending approvals. Metadata and counts only, never tenant content."""
    return [_out(s) for s in await service.list_tenants(db)]


@router.post("/tenants", response_model=TenantCreated, status_code=status.HTTP_201_CREATED)
async def create_tenant(body: TenantCreate, request: Request, db: DB,
                        admin: Admin) -> TenantCreated:
    """Create a tenant. An existing user becomes its admin; otherwise an invitation is made."""
    base = request.app.state.settings.base_url.rstrip("/")
    created = await service.create_tenant(db, slug=body.slug, name=body.name,
                                          admin_email=body.admin_email, region=body.region,
                                          actor_id=admin.user_id, base_url=base)
    summary = await service.summarize_tenant(db, created.org)
    return TenantCreated(
        **_out(summary).model_dump(), admin_user_id=created.admin_user_id,
        invitation_token=created.invitation_token,
        invitation_url=(f"{base}/invitations/accept#{created.invitation_token}"
                        if created.invitation_token else None))


@router.patch("/tenants/{tenant_id}", response_model=TenantOut)
async def update_tenant_status(tenant_id: uuid.UUID, body: TenantStatusUpdate, db: DB,
                               admin: Admin) -> TenantOut:
    """Suspend or reactivate a tenant. Suspended tenants' members get 403 on every route."""
    org = await service.set_tenant_status(db, tenant_id, body.status, actor_id=admin.user_id)
    return _out(await service.summarize_tenant(db, org))


@router.get("/workers", response_model=list[WorkerOut])
async def list_workers(db: DB, _: Admin) -> list[WorkerOut]:
    """Worker processes that reported recently, most recent first, with their health."""
    return [WorkerOut(name=w.name, started_at=w.started_at, last_seen_at=w.last_seen_at,
                      alive=w.alive, slots=w.slots, steps_committed=w.steps_committed)
            for w in await service.list_workers(db)]


@router.get("/users", response_model=list[UserOut])
async def list_users(db: DB, _: Admin,
                     q: Annotated[str, Query(max_length=254,
                                             description="Part of the email address.")] = "",
                     after: Annotated[str | None, Query(max_length=254, description=(
                         "The last email of the previous page."))] = None) -> list[UserOut]:
    """Accounts in email order, 50 a page (continue with ``after``)."""
    page = await service.list_users_page(db, search=q, after=after)
    return [UserOut.model_validate(u) for u in page.items]


@router.get("/users/{user_id}", response_model=UserOut)
async def get_user(user_id: uuid.UUID, db: DB, _: Admin) -> UserOut:
    """One account. 404 for an unknown id."""
    return UserOut.model_validate(await service.access_user(db, user_id))


async def _set_disabled(request: Request, db: DB, admin: UserPrincipal, user_id: uuid.UUID,
                        disabled: bool) -> UserOut:
    user, changed = await service.set_user_disabled(db, user_id, disabled,
                                                    actor_id=admin.user_id)
    out = UserOut.model_validate(user)
    await db.commit()
    if changed:
        await record_in_user_orgs(request.app.state.db.sessions, user_id,
                                  "user.disabled" if disabled else "user.enabled",
                                  actor_kind="platform_admin", actor_id=admin.user_id)
    return out


@router.post("/users/{user_id}/disable", response_model=UserOut, responses={409: {}})
async def disable_user(user_id: uuid.UUID, request: Request, db: DB, admin: Admin) -> UserOut:
    """Disable an account everywhere: its browser sessions end now, the API keys it created
    stop working, its open event streams close within ENGINEX_STREAM_RECHECK_SECONDS.
    Idempotent. Audited (``user.disabled``) in each of the user's organizations. 409 for
    your own account."""
    return await _set_disabled(request, db, admin, user_id, True)


@router.post("/users/{user_id}/enable", response_model=UserOut)
async def enable_user(user_id: uuid.UUID, request: Request, db: DB, admin: Admin) -> UserOut:
    """Re-enable a disabled account: it may sign in again, and its unexpired, unrevoked API
    keys work again. Idempotent. Audited (``user.enabled``)."""
    return await _set_disabled(request, db, admin, user_id, False)


@router.get("/outbox", response_model=list[OutboxMessageOut])
async def list_outbox_messages(db: DB, _: Admin,
                               status: Annotated[MailStatus | None, Query()] = None
                               ) -> list[OutboxMessageOut]:
    """The newest 200 emails of the outbox (``status`` filters). Without ENGINEX_SMTP_URL
    they stay ``queued`` here: pass password-reset and invitation links on by hand."""
    return [OutboxMessageOut.model_validate(m) for m in await list_outbox(db, status=status)]
