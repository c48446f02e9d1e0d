"""Platform admin API: ``/api/v1/admin/tenants`` and ``/api/v1/admin/workers``."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Request, status

from enginex.admin import service
from enginex.admin.schemas import (
    SessionCounts,
    TenantCreate,
    TenantCreated,
    TenantOut,
    TenantStatusUpdate,
    WorkerOut,
)
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
    created = await service.create_tenant(db, slug=body.slug, name=body.name,
                                          admin_email=body.admin_email, region=body.region,
                                          actor_id=admin.user_id)
    base = request.app.state.settings.base_url.rstrip("/")
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
