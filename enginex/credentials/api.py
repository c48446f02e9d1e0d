"""Credentials of one organization (``/api/v1/orgs/{org}/credentials``), and the platform
admin's tenant deletion with crypto-shredding (``DELETE /api/v1/admin/tenants/{tenant_id}``).

Org admins (credentials:write) create, read metadata, update and delete; builders and
operators (credentials:read) list names and field names only, to reference them in agents.
No route returns a value. Another organization's slug or credential id answers 404 like a
missing one.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

from fastapi import Query, Request, Response, status

from enginex.credentials import service
from enginex.credentials.models import Credential
from enginex.credentials.rotation import delete_tenant, purge_deleted_content
from enginex.credentials.schemas import (
    CredentialCreate,
    CredentialOut,
    CredentialSummary,
    CredentialUpdate,
)
from enginex.credentials.vault import Keyring
from enginex.kit.crypto import load_master_key
from enginex.kit.errors import NotFound, ValidationFailed
from enginex.orgs.repository import get_org
from enginex.tenancy.context import TenantContext
from enginex.tenancy.guards import DB, PlatformAdmin, Require, make_router
from enginex.tenancy.principal import UserPrincipal
from enginex.tenancy.scopes import Scope

router = make_router(prefix="/api/v1", tags=["credentials"])
log = logging.getLogger("enginex.credentials")

Admin = Annotated[UserPrincipal, PlatformAdmin()]
Reader = Annotated[TenantContext, Require(Scope.CREDENTIALS_READ)]
Manager = Annotated[TenantContext, Require(Scope.CREDENTIALS_WRITE)]


def keyring(request: Request) -> Keyring:
    """The process's keyring for the master key ``create_app`` loaded (built once, kept on
    ``app.state``; shared with the engine and the LLM settings of this process)."""
    ring = getattr(request.app.state, "vault_keyring", None)
    if ring is None:
        master = getattr(request.app.state, "master_key", None)
        ring = Keyring.for_master(master or load_master_key(request.app.state.settings))
        request.app.state.vault_keyring = ring
    return ring


def _allow_private(request: Request) -> bool:
    return bool(getattr(request.app.state.settings, "allow_private_network", False))


def _out(credential: Credential) -> CredentialOut:
    config = credential.config or {}
    return CredentialOut(
        id=credential.id, name=credential.name, type=credential.kind,
        description=credential.description, provider=credential.provider,
        fields=list(credential.fields), hint=credential.hint,
        allowed_hosts=list(credential.allowed_hosts or []),
        token_url=config.get("token_url"), client_id=config.get("client_id"),
        scope=config.get("scope"), expires_at=credential.expires_at,
        refreshed_at=credential.refreshed_at, value_version=credential.value_version,
        created_by_kind=credential.created_by_kind, created_by=credential.created_by,
        created_at=credential.created_at, updated_at=credential.updated_at,
        last_used_at=credential.last_used_at)


@router.get("/orgs/{org}/credentials", response_model=list[CredentialSummary])
async def list_credentials(db: DB, ctx: Reader) -> list[CredentialSummary]:
    """Names, types and field names of the organization's credentials (never values)."""
    return [CredentialSummary(id=c.id, name=c.name, type=c.kind, fields=list(c.fields),
                              allowed_hosts=list(c.allowed_hosts or []))
            for c in await service.list_credentials(db, ctx)]


@router.post("/orgs/{org}/credentials", response_model=CredentialOut,
             status_code=status.HTTP_201_CREATED)
async def create_credential(body: CredentialCreate, request: Request, db: DB,
                            ctx: Manager) -> CredentialOut:
    """Store a credential. 409 if the name is taken; 422 if the values do not fit the type,
    the token URL is refused by the egress guard or an allowed host is not a valid pattern.
    Audited; the values are never returned. Without ``allowed_hosts`` runs may send it to any
    host: set them."""
    credential = await service.create_credential(
        db, ctx, name=body.name, kind=body.type, values=dict(body.values),
        description=body.description, provider=body.provider,
        settings={"token_url": body.token_url, "client_id": body.client_id,
                  "scope": body.scope},
        expires_at=body.expires_at, keyring=keyring(request), actor=ctx.principal,
        allowed_hosts=body.allowed_hosts, allow_private_network=_allow_private(request))
    return _out(credential)


@router.get("/orgs/{org}/credentials/{credential_id}", response_model=CredentialOut)
async def get_credential(credential_id: uuid.UUID, db: DB, ctx: Manager) -> CredentialOut:
    """Metadata of one credential (admins): type, fields, hint, expiry, last use."""
    return _out(await service.access_credential(db, ctx, credential_id))


@router.patch("/orgs/{org}/credentials/{credential_id}", response_model=CredentialOut)
async def update_credential(credential_id: uuid.UUID, body: CredentialUpdate,
                            request: Request, db: DB, ctx: Manager) -> CredentialOut:
    """Change metadata and/or replace the values (``values`` is the complete new set).
    Omitted fields are kept; ``null`` clears token_url, client_id, scope and expires_at;
    ``allowed_hosts`` replaces the list (``[]``: any host). Audited."""
    given = body.model_fields_set
    changes: dict[str, object] = {}
    for field in ("name", "description", "provider"):
        if field in given:
            value = getattr(body, field)
            if value is None:
                raise ValidationFailed(f"{field}: cannot be null; omit it to keep it.",
                                       details={"field": field})
            changes[field] = value
    if "values" in given:
        if body.values is None:
            raise ValidationFailed("values: cannot be null; omit it to keep the stored values.",
                                   details={"field": "values"})
        changes["values"] = dict(body.values)
    settings = {k: getattr(body, k) for k in ("token_url", "client_id", "scope") if k in given}
    if settings:
        changes["settings"] = settings
    if "expires_at" in given:
        changes["expires_at"] = body.expires_at
    if "allowed_hosts" in given:
        if body.allowed_hosts is None:
            raise ValidationFailed("allowed_hosts: cannot be null; send [] to allow any host, "
                                   "or omit it to keep the list.",
                                   details={"field": "allowed_hosts"})
        changes["allowed_hosts"] = list(body.allowed_hosts)
    credential = await service.update_credential(
        db, ctx, credential_id, keyring=keyring(request), actor=ctx.principal,
        allow_private_network=_allow_private(request), **changes)  # type: ignore[arg-type]
    return _out(credential)


@router.delete("/orgs/{org}/credentials/{credential_id}",
               status_code=status.HTTP_204_NO_CONTENT)
async def delete_credential(credential_id: uuid.UUID, db: DB, ctx: Manager) -> Response:
    """Delete a credential; runs that reference it fail from then on. Audited."""
    await service.delete_credential(db, ctx, credential_id, actor=ctx.principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/admin/tenants/{tenant_id}", status_code=status.HTTP_204_NO_CONTENT,
               tags=["platform admin"])
async def delete_tenant_route(
        tenant_id: uuid.UUID, request: Request, db: DB, admin: Admin,
        confirm: Annotated[str, Query(max_length=40, description="The tenant's slug, to "
                                                                "confirm")] = "") -> Response:
    """Delete a tenant for good: every row it owns, its stored files, and its data keys
    (crypto-shredding: its ciphertexts can never be decrypted again, even from a copy of the
    database). ``confirm`` must be the tenant's slug. 404 for an unknown id."""
    org = await get_org(db, tenant_id)
    if org is None:
        raise NotFound()
    if confirm != org.slug:
        raise ValidationFailed("confirm: pass the tenant's slug as ?confirm=<slug> to delete it "
                               "and all its data for good.", details={"field": "confirm"})
    slug = org.slug
    destroyed = await delete_tenant(db, org, storage=getattr(request.app.state, "storage", None))
    await db.commit()
    await purge_deleted_content(request.app.state.db.engine)
    log.warning("tenant %s (%s) deleted by platform admin %s; %d data key(s) destroyed",
                slug, tenant_id, admin.user_id, destroyed)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
