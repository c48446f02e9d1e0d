"""Exports of one organization (``/api/v1/orgs/{org}/exports``): org admins only
(``data:export``). Another organization's slug, export id or link answers 404 like a
missing one. See docs/DATA_LIFECYCLE.md.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import Request, status
from fastapi.responses import FileResponse

from enginex.admin.service import access_tenant
from enginex.kit.errors import Forbidden, ValidationFailed
from enginex.lifecycle import deletion, retention, service
from enginex.lifecycle.models import OrgDeletion, RetentionPolicy, TenantExport
from enginex.lifecycle.schemas import (
    AdminDeletionRequest,
    DeletionOut,
    DeletionRequest,
    ExportCreate,
    ExportLinkOut,
    ExportOut,
    OrgRecordsOut,
    ProcessingRecordOut,
    RetentionIn,
    RetentionOut,
)
from enginex.tenancy.context import TenantContext
from enginex.tenancy.guards import DB, PlatformAdmin, Require, make_router
from enginex.tenancy.principal import UserPrincipal
from enginex.tenancy.scopes import Scope

router = make_router(prefix="/api/v1", tags=["exports"])

Exporter = Annotated[TenantContext, Require(Scope.DATA_EXPORT)]


def export_out(export: TenantExport) -> ExportOut:
    return ExportOut(id=export.id, status=export.status, requested_by=export.requested_by,
                     requested_at=export.requested_at, started_at=export.started_at,
                     finished_at=export.finished_at, attempts=export.attempts,
                     done=export.done, total=export.total, current_kind=export.current_kind,
                     size_bytes=export.size_bytes, sha256=export.sha256,
                     expires_at=export.expires_at, error=export.error,
                     downloads=export.downloads,
                     with_secrets=bool(export.secrets_recipient))


def download_path(org: str, token: str) -> str:
    return f"/api/v1/orgs/{org}/exports/download/{token}"


@router.post("/orgs/{org}/exports", response_model=ExportOut,
             status_code=status.HTTP_202_ACCEPTED)
async def request_export(db: DB, ctx: Exporter,
                         body: ExportCreate | None = None) -> ExportOut:
    """Ask for a full export of the organization; a worker builds it (poll ``GET
    .../exports/{export_id}`` for progress). 409 while another export is being prepared.
    Audited as ``export.requested``.

    Credentials travel as metadata only, unless ``secrets_recipient`` names an import key:
    then their values are sealed to it (never in plaintext) and the person asking must give
    their current ``password`` (API keys cannot ask for secrets)."""
    recipient = None
    if body is not None and body.secrets_recipient:
        recipient = await check_secrets_request(db, ctx, body.secrets_recipient, body.password)
    return export_out(await service.request_export(db, ctx, secrets_recipient=recipient))


async def check_secrets_request(db: DB, ctx: TenantContext, recipient: str,
                                password: str | None) -> str:
    """Re-authenticate the person asking for secrets and check the import key; returns the
    key as stored. Forbidden for an API key; ValidationFailed for a wrong password or key."""
    from enginex.auth import repository as auth_repo
    from enginex.auth.passwords import verify_password_off_loop
    from enginex.lifecycle.sealed import SealError, parse_recipient
    from enginex.tenancy.principal import UserPrincipal

    if not isinstance(ctx.principal, UserPrincipal):
        raise Forbidden("An export with secrets needs a person who re-enters their password; "
                        "an API key cannot ask for one.", code="reauthentication_required")
    user = await auth_repo.get_user(db, ctx.principal.user_id)
    if user is None or user.password_hash is None or not password or \
            not await verify_password_off_loop(user.password_hash, password):
        raise ValidationFailed("password: enter your current password to export the "
                               "credentials' values (accounts without a password cannot).",
                               details={"field": "password"})
    try:
        parse_recipient(recipient)
    except SealError as exc:
        raise ValidationFailed(f"secrets_recipient: {exc}.",
                               details={"field": "secrets_recipient"}) from None
    return recipient.strip()


@router.get("/orgs/{org}/exports", response_model=list[ExportOut])
async def list_exports(db: DB, ctx: Exporter) -> list[ExportOut]:
    """The organization's latest exports, newest first."""
    return [export_out(e) for e in await service.list_exports(db, ctx)]


@router.get("/orgs/{org}/exports/{export_id}", response_model=ExportOut)
async def get_export(export_id: uuid.UUID, db: DB, ctx: Exporter) -> ExportOut:
    """One export with its progress."""
    return export_out(await service.access_export(db, ctx, export_id))


@router.post("/orgs/{org}/exports/{export_id}/link", response_model=ExportLinkOut,
             status_code=status.HTTP_201_CREATED)
async def create_link(export_id: uuid.UUID, request: Request, db: DB,
                      ctx: Exporter) -> ExportLinkOut:
    """A single-use download link for a finished export, valid for
    ``ENGINEX_EXPORT_LINK_MINUTES``; a new link replaces the previous one. 409 when the
    export is not finished or has expired. Audited as ``export.link_created``."""
    token, export = await service.create_link(
        db, ctx, export_id, minutes=request.app.state.settings.export_link_minutes)
    assert export.link_expires_at is not None
    return ExportLinkOut(url=download_path(ctx.org_slug, token),
                         expires_at=export.link_expires_at)


@router.get("/orgs/{org}/exports/download/{token}", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {}}}})
async def download_export(token: str, request: Request, db: DB,
                          ctx: Exporter) -> FileResponse:
    """The archive, once per link: a used, expired or unknown link, and another
    organization's link, answer 404. Audited as ``export.downloaded``."""
    export, path = await service.take_download(db, ctx, request.app.state.storage, token)
    await db.commit()  # the link is used up before the first byte leaves
    stamp = export.requested_at.strftime("%Y%m%d-%H%M%S")
    return FileResponse(path, media_type="application/zip",
                        filename=f"enginex-export-{ctx.org_slug}-{stamp}.zip",
                        headers={"Cache-Control": "no-store"})


# --- deletion with a grace period, retention, records of processing -----------------------

OrgAdmin = Annotated[TenantContext, Require(Scope.ORG_WRITE)]
OrgMember = Annotated[TenantContext, Require(Scope.ORG_READ)]
RecordsReader = Annotated[TenantContext, Require(Scope.DATA_EXPORT)]
PlatformAdminUser = Annotated[UserPrincipal, PlatformAdmin()]


def deletion_out(deletion: OrgDeletion) -> DeletionOut:
    return DeletionOut.model_validate(deletion)


def _grace(request: Request) -> timedelta:
    return timedelta(days=request.app.state.settings.deletion_grace_days)


@router.post("/orgs/{org}/deletion", response_model=DeletionOut,
             status_code=status.HTTP_202_ACCEPTED, responses={409: {}, 422: {}})
async def delete_organization(body: DeletionRequest, request: Request, db: DB,
                              ctx: OrgAdmin) -> DeletionOut:
    """Delete this organization: it is suspended at once (every member, you included, loses
    access) and deleted for good after ENGINEX_DELETION_GRACE_DAYS; until then a platform
    admin can restore it. Needs your password (``password``) and the slug (``confirm``); an
    API key cannot do it (403). Audited (``org.deletion_scheduled``)."""
    if body.confirm != ctx.org_slug:
        raise ValidationFailed("confirm: type the organization's slug to confirm its "
                               "deletion.", details={"field": "confirm"})
    await deletion.reauthenticate(db, ctx.principal, body.password)
    org = await access_tenant(db, ctx.org_id)
    scheduled = await deletion.schedule_deletion(
        db, org, requester=deletion.Requester("org_admin", ctx.actor_id), grace=_grace(request))
    return deletion_out(scheduled)


@router.get("/orgs/{org}/retention", response_model=RetentionOut)
async def get_retention(request: Request, db: DB, ctx: OrgMember) -> RetentionOut:
    """How long the organization keeps finished sessions and audit entries (null: until
    deleted by hand), the platform's minimum audit retention and the export retention."""
    return _retention_out(request, await retention.get_policy(db, ctx.org_id))


@router.put("/orgs/{org}/retention", response_model=RetentionOut, responses={422: {}})
async def put_retention(body: RetentionIn, request: Request, db: DB,
                        ctx: OrgAdmin) -> RetentionOut:
    """Set the retention: ``session_days`` (a finished session with its events, checkpoints,
    approvals and reports is deleted that many days after it finished) and ``audit_days``
    (at least the platform minimum); null keeps until deleted by hand. A worker applies it
    within ENGINEX_RETENTION_SWEEP_SECONDS. Audited (``retention.updated``)."""
    settings = request.app.state.settings
    policy = await retention.set_policy(db, ctx, session_days=body.session_days,
                                        audit_days=body.audit_days,
                                        audit_min_days=settings.audit_retention_min_days)
    return _retention_out(request, policy)


def _retention_out(request: Request, policy: RetentionPolicy | None) -> RetentionOut:
    settings = request.app.state.settings
    return RetentionOut(session_days=policy.session_days if policy else None,
                        audit_days=policy.audit_days if policy else None,
                        audit_min_days=settings.audit_retention_min_days,
                        export_days=settings.export_retention_days,
                        updated_at=policy.updated_at if policy else None,
                        last_applied_at=policy.last_applied_at if policy else None)


def records_for(request: Request, policy: RetentionPolicy | None
                ) -> list[retention.ProcessingRecord]:
    settings = request.app.state.settings
    return retention.records_of_processing(
        policy, export_days=settings.export_retention_days,
        audit_min_days=settings.audit_retention_min_days,
        grace_days=settings.deletion_grace_days)


@router.get("/orgs/{org}/records", response_model=OrgRecordsOut)
async def get_records(request: Request, db: DB, ctx: RecordsReader) -> OrgRecordsOut:
    """The organization's records of processing: what the deployment stores for it, why and
    for how long (generated from its retention settings)."""
    org = await access_tenant(db, ctx.org_id)
    policy = await retention.get_policy(db, ctx.org_id)
    return OrgRecordsOut(org_id=org.id, slug=org.slug, status=org.status, records=[
        ProcessingRecordOut.model_validate(r) for r in records_for(request, policy)])


@router.post("/admin/tenants/{tenant_id}/deletion", response_model=DeletionOut,
             status_code=status.HTTP_202_ACCEPTED, tags=["platform admin"],
             responses={409: {}, 422: {}})
async def admin_delete_tenant(tenant_id: uuid.UUID, body: AdminDeletionRequest,
                              request: Request, db: DB,
                              admin: PlatformAdminUser) -> DeletionOut:
    """Delete a tenant with the grace period: suspended now, deleted for good after
    ENGINEX_DELETION_GRACE_DAYS (restore it before with ``.../restore``). ``confirm`` must be
    its slug. 404 for an unknown id; 409 when a deletion is already scheduled."""
    org = await access_tenant(db, tenant_id)
    if body.confirm != org.slug:
        raise ValidationFailed("confirm: pass the tenant's slug to confirm its deletion.",
                               details={"field": "confirm"})
    scheduled = await deletion.schedule_deletion(
        db, org, requester=deletion.Requester("platform_admin", admin.user_id),
        grace=_grace(request))
    return deletion_out(scheduled)


@router.post("/admin/tenants/{tenant_id}/restore", response_model=DeletionOut,
             tags=["platform admin"], responses={409: {}})
async def admin_restore_tenant(tenant_id: uuid.UUID, db: DB,
                               admin: PlatformAdminUser) -> DeletionOut:
    """Cancel a tenant's scheduled deletion within the grace period: it gets back the status
    it had (active or suspended). 404 for an unknown id; 409 when no deletion is scheduled or
    the hard delete has started."""
    _, restored = await deletion.restore_deletion(db, tenant_id, actor_id=admin.user_id)
    return deletion_out(restored)


@router.get("/admin/deletions", response_model=list[DeletionOut], tags=["platform admin"])
async def admin_list_deletions(db: DB, _: PlatformAdminUser) -> list[DeletionOut]:
    """Deletions, newest first: scheduled, restored, running, and the tombstones of deleted
    tenants (org id, slug hash, times, who asked)."""
    return [deletion_out(d) for d in await deletion.list_deletions(db)]


@router.get("/admin/records", response_model=list[OrgRecordsOut], tags=["platform admin"])
async def admin_records(request: Request, db: DB, _: PlatformAdminUser) -> list[OrgRecordsOut]:
    """Records of processing of every tenant: what the deployment stores per organization and
    for how long, from each one's retention settings. Metadata only."""
    return [OrgRecordsOut(org_id=org.id, slug=org.slug, status=org.status, records=[
        ProcessingRecordOut.model_validate(r) for r in records_for(request, policy)])
        for org, policy in await retention.list_policies(db)]
