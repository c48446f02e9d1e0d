"""The SSO API of one organization (``/api/v1/orgs/{org}/sso/...``, org admins: ``sso:read``
to read, ``sso:write`` to change) and the platform admin's domain verification
(``/api/v1/admin/tenants/{tenant_id}/domains``).

Another organization's slug or ids answer 404 like missing ones. No route returns a client
secret; connections name the vault credential that holds it.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Request, Response, status

from enginex.credentials.api import keyring
from enginex.db import set_tenant
from enginex.kit.errors import NotFound
from enginex.orgs.repository import get_org
from enginex.sso import saml_signin, service
from enginex.sso.models import ConnectionKind, EmailDomain, RoleMappingRule, SsoConnection
from enginex.sso.schemas import (
    ConnectionCreate,
    ConnectionOut,
    ConnectionTestOut,
    ConnectionUpdate,
    DomainCreate,
    DomainOut,
    EnforcementIn,
    EnforcementOut,
    RuleCreate,
    RuleOut,
)
from enginex.sso.signin import redirect_uri, start_url
from enginex.tenancy.context import TenantContext
from enginex.tenancy.guards import DB, PlatformAdmin, Require, make_router
from enginex.tenancy.principal import UserPrincipal
from enginex.tenancy.scopes import ROLE_SCOPES, Role, Scope

router = make_router(prefix="/api/v1", tags=["sso"])

Reader = Annotated[TenantContext, Require(Scope.SSO_READ)]
Writer = Annotated[TenantContext, Require(Scope.SSO_WRITE)]
Admin = Annotated[UserPrincipal, PlatformAdmin()]


def connection_out(request: Request, connection: SsoConnection, slug: str) -> ConnectionOut:
    settings = request.app.state.settings
    return ConnectionOut(id=connection.id, name=connection.name, kind=connection.kind,
                         enabled=connection.enabled, default_role=connection.default_role,
                         groups_claim=connection.groups_claim,
                         settings=dict(connection.settings),
                         redirect_uri=redirect_uri(settings, slug),
                         **({"saml_acs_url": saml_signin.acs_url(settings, slug),
                             "saml_entity_id": saml_signin.metadata_url(settings, slug)}
                            if connection.kind == ConnectionKind.SAML else {}),
                         start_url=start_url(settings, slug),
                         created_at=connection.created_at, updated_at=connection.updated_at)


def domain_out(domain: EmailDomain) -> DomainOut:
    return DomainOut(id=domain.id, domain=domain.domain, verified=domain.verified_at is not None,
                     verified_at=domain.verified_at,
                     txt_record_name=service.txt_record_name(domain),
                     txt_record_value=service.txt_record_value(domain),
                     created_at=domain.created_at)


def _input(body: ConnectionCreate | ConnectionUpdate) -> service.ConnectionInput:
    return service.ConnectionInput(
        name=body.name, oidc=body.oidc.model_dump(exclude_none=True) if body.oidc else None,
        saml=body.saml.model_dump(exclude_none=True) if body.saml else None,
        client_secret=body.client_secret, client_secret_credential=body.client_secret_credential,
        enabled=body.enabled, default_role=Role(body.default_role) if body.default_role else None,
        groups_claim=body.groups_claim)


def _allow_private(request: Request) -> bool:
    return bool(request.app.state.settings.allow_private_network)


@router.get("/orgs/{org}/sso/connections", response_model=list[ConnectionOut])
async def list_connections(request: Request, db: DB, ctx: Reader) -> list[ConnectionOut]:
    """The organization's SSO connections, with the values to paste into the IdP."""
    return [connection_out(request, c, ctx.org_slug)
            for c in await service.list_connections(db, ctx)]


@router.post("/orgs/{org}/sso/connections", response_model=ConnectionOut,
             status_code=status.HTTP_201_CREATED)
async def create_connection(body: ConnectionCreate, request: Request, db: DB,
                            ctx: Writer) -> ConnectionOut:
    """Create an OIDC connection; the client secret goes into the credential vault."""
    connection = await service.create_connection(db, ctx, _input(body),
                                                 kind=ConnectionKind(body.kind),
                                                 keyring=keyring(request), actor=ctx.principal,
                                                 allow_private=_allow_private(request))
    return connection_out(request, connection, ctx.org_slug)


@router.get("/orgs/{org}/sso/connections/{connection_id}", response_model=ConnectionOut)
async def get_connection(connection_id: uuid.UUID, request: Request, db: DB,
                         ctx: Reader) -> ConnectionOut:
    return connection_out(request, await service.access_connection(db, ctx, connection_id),
                          ctx.org_slug)


@router.patch("/orgs/{org}/sso/connections/{connection_id}", response_model=ConnectionOut)
async def update_connection(connection_id: uuid.UUID, body: ConnectionUpdate, request: Request,
                            db: DB, ctx: Writer) -> ConnectionOut:
    """Change settings, replace the secret, enable or disable. Fields left out are kept."""
    connection = await service.update_connection(db, ctx, connection_id, _input(body),
                                                 keyring=keyring(request), actor=ctx.principal,
                                                 allow_private=_allow_private(request))
    return connection_out(request, connection, ctx.org_slug)


@router.delete("/orgs/{org}/sso/connections/{connection_id}",
               status_code=status.HTTP_204_NO_CONTENT)
async def delete_connection(connection_id: uuid.UUID, db: DB, ctx: Writer) -> Response:
    await service.delete_connection(db, ctx, connection_id, actor=ctx.principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/orgs/{org}/sso/connections/{connection_id}/test",
             response_model=ConnectionTestOut)
async def test_connection(connection_id: uuid.UUID, request: Request, db: DB,
                          ctx: Writer) -> ConnectionTestOut:
    """Fetch the IdP's discovery document and JWKS now and report what was found (200 even
    when problems were found: ``ok`` and ``problems`` say)."""
    report = await service.test_connection(db, ctx, connection_id,
                                           cache=request.app.state.oidc_cache,
                                           allow_private=_allow_private(request),
                                           actor=ctx.principal)
    return ConnectionTestOut(ok=report.ok, problems=report.problems,
                             discovery=report.discovery, keys=report.keys)


@router.get("/orgs/{org}/sso/domains", response_model=list[DomainOut])
async def list_domains(db: DB, ctx: Reader) -> list[DomainOut]:
    """Claimed domains, verified or not, with the TXT record that verifies each."""
    return [domain_out(d) for d in await service.list_domains(db, ctx)]


@router.post("/orgs/{org}/sso/domains", response_model=DomainOut,
             status_code=status.HTTP_201_CREATED)
async def claim_domain(body: DomainCreate, db: DB, ctx: Writer) -> DomainOut:
    """Claim a domain; 409 when another organization has verified it."""
    return domain_out(await service.claim_domain(db, ctx, body.domain, actor=ctx.principal))


@router.post("/orgs/{org}/sso/domains/{domain_id}/verify", response_model=DomainOut)
async def verify_domain(domain_id: uuid.UUID, request: Request, db: DB,
                        ctx: Writer) -> DomainOut:
    """Check the domain's DNS TXT record now; 422 (with the record to publish) when absent."""
    claim = await service.verify_domain_by_dns(db, ctx, domain_id,
                                               resolver=request.app.state.dns_resolver,
                                               actor=ctx.principal)
    return domain_out(claim)


@router.delete("/orgs/{org}/sso/domains/{domain_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_domain(domain_id: uuid.UUID, db: DB, ctx: Writer) -> Response:
    await service.delete_domain(db, ctx, domain_id, actor=ctx.principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def rule_out(rule: RoleMappingRule) -> RuleOut:
    return RuleOut(id=rule.id, group=rule.group_name, role=rule.role, priority=rule.priority,
                   created_at=rule.created_at)


@router.get("/orgs/{org}/sso/role-rules", response_model=list[RuleOut])
async def list_rules(db: DB, ctx: Reader) -> list[RuleOut]:
    """Group -> role rules, in the order they are applied (lowest priority number first)."""
    return [rule_out(r) for r in await service.list_rules(db, ctx)]


@router.post("/orgs/{org}/sso/role-rules", response_model=RuleOut,
             status_code=status.HTTP_201_CREATED)
async def create_rule(body: RuleCreate, db: DB, ctx: Writer) -> RuleOut:
    rule = await service.create_rule(db, ctx, group=body.group, role=Role(body.role),
                                     priority=body.priority, actor=ctx.principal)
    return rule_out(rule)


@router.delete("/orgs/{org}/sso/role-rules/{rule_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_rule(rule_id: uuid.UUID, db: DB, ctx: Writer) -> Response:
    await service.delete_rule(db, ctx, rule_id, actor=ctx.principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/orgs/{org}/sso/enforcement", response_model=EnforcementOut)
async def get_enforcement(db: DB, ctx: Reader) -> EnforcementOut:
    found = await service.get_enforcement(db, ctx)
    return EnforcementOut(require_sso=found.require_sso,
                          break_glass_user_id=found.break_glass_user_id)


@router.put("/orgs/{org}/sso/enforcement", response_model=EnforcementOut)
async def set_enforcement(body: EnforcementIn, db: DB, ctx: Writer) -> EnforcementOut:
    """Require SSO (members' password sessions end, password-minted keys are revoked) or stop
    requiring it; name the break-glass admin."""
    found = await service.set_enforcement(
        db, ctx, require_sso=body.require_sso, break_glass_user_id=body.break_glass_user_id,
        actor=ctx.principal)
    return EnforcementOut(require_sso=found.require_sso,
                          break_glass_user_id=found.break_glass_user_id)


# --- platform admin ----------------------------------------------------------------------------


async def _platform_ctx(db: DB, tenant_id: uuid.UUID, admin: UserPrincipal) -> TenantContext:
    org = await get_org(db, tenant_id)
    if org is None:
        raise NotFound()
    await set_tenant(db, org.id)
    return TenantContext(org_id=org.id, org_slug=org.slug, principal=admin, role=Role.ADMIN,
                         scopes=ROLE_SCOPES[Role.ADMIN])


@router.get("/admin/tenants/{tenant_id}/domains", response_model=list[DomainOut])
async def admin_list_domains(tenant_id: uuid.UUID, db: DB, admin: Admin) -> list[DomainOut]:
    """A tenant's domain claims (names and status only), for the platform admin to vouch for."""
    ctx = await _platform_ctx(db, tenant_id, admin)
    return [domain_out(d) for d in await service.list_domains(db, ctx)]


@router.post("/admin/tenants/{tenant_id}/domains/{domain_id}/verify", response_model=DomainOut)
async def admin_verify_domain(tenant_id: uuid.UUID, domain_id: uuid.UUID, db: DB,
                              admin: Admin) -> DomainOut:
    """Verify a claim without DNS (the platform admin vouches for it); 409 when another
    organization verified the domain. Audited in the organization's log."""
    ctx = await _platform_ctx(db, tenant_id, admin)
    return domain_out(await service.verify_domain_as_platform_admin(db, ctx, domain_id,
                                                                     admin=admin))
