"""Platform admin API: ``/api/v1/admin/tenants``."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Request, status

from enginex.admin import service
from enginex.admin.schemas import TenantCreate, TenantCreated, TenantOut, TenantStatusUpdate
from enginex.tenancy.guards import DB, PlatformAdmin, make_router
from enginex.tenancy.platform import tenant_member_counts
from enginex.tenancy.principal import UserPrincipal

router = make_router(prefix="/api/v1/admin", tags=["platform admin"])
Admin = Annotated[UserPrincipal, PlatformAdmin()]


def _out(summary: service.TenantSummary) -> TenantOut:
    org = summary.org
    return TenantOut(id=org.id, slug=org.slug, name=org.name, status=org.status,
                     region=org.region, created_at=org.created_at,
                     member_count=summary.member_count)


@router.get("/tenants", response_model=list[TenantOut])
async def list_tenants(db: DB, _: Admin) -> list[TenantOut]:
    """Every tenant with its member count."""
    return [_out(s) for s in await service.list_tenants(db)]


@router.post("/tenants", response_model=TenantCreated, status_code=status.HTTP_201_CREATED)
async def create_tenant(body: TenantCreate, request: Request, db: DB,
                        admin: Admin) -> TenantCreated:
    """Create a tenant. An existing user becomes its admin; otherwise an invitation is made."""
    created = await service.create_tenant(db, slug=body.slug, name=body.name,
                                          admin_email=body.admin_email, region=body.region,
                                          actor_id=admin.user_id)
    base = request.app.state.settings.base_url.rstrip("/")
    summary = service.TenantSummary(created.org, 1 if created.admin_user_id else 0)
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
    counts = await tenant_member_counts(db)
    return _out(service.TenantSummary(org, counts.get(org.id, 0)))
