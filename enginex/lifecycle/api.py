"""Exports of one organization (``/api/v1/orgs/{org}/exports``): org admins only
(``data:export``). Another organization's slug, export id or link answers 404 like a
missing one. See docs/DATA_LIFECYCLE.md.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Request, status
from fastapi.responses import FileResponse

from enginex.kit.errors import Forbidden, ValidationFailed
from enginex.lifecycle import service
from enginex.lifecycle.models import TenantExport
from enginex.lifecycle.schemas import ExportCreate, ExportLinkOut, ExportOut
from enginex.tenancy.context import TenantContext
from enginex.tenancy.guards import DB, Require, make_router
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
