"""Access rules every route declares, and the router that refuses routes without one.

A route declares exactly one of:

* ``Require(Scope.X)`` -- a tenant route under ``/api/v1/orgs/{org}/...``; yields TenantContext.
* ``Authenticated()`` -- any signed-in principal, no tenant (``/api/v1/me``, logout).
* ``PlatformAdmin()`` -- the platform admin API; grants no access to tenant content.
* ``Public()`` -- explicitly public (login, health, invitation acceptance).
* ``ScimClient()`` -- a SCIM 2.0 route under ``/scim/v2/{org}/...``: only that organization's
  SCIM bearer token (never a cookie or an API key); yields a TenantContext whose only scope is
  ``scim:write``. No token or a bad one -> 401; a token of another organization or an unknown
  org -> 404; suspended org -> 403. The SCIM routes answer these in SCIM's error format.
* ``WebUser()`` (web/pages.py) -- a dashboard page; anonymous visitors go to sign-in.

Order of checks in ``Require``: no credentials -> 401; unknown org, org of which the caller is
not a member, or an API key of another org -> 404 (one body for all); suspended org -> 403;
an org that requires SSO and a browser session its SSO did not open (unless platform admin or
the org's break-glass admin) -> 403 ``sso_required``; member without the scope -> 403. The org
comes only from the path.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.routing import BaseRoute

from enginex.auth.service import (
    OrgAccess,
    authenticate,
    authenticate_for_org,
    authenticate_scim_token,
)
from enginex.db import set_tenant
from enginex.kit.errors import Forbidden, NotFound
from enginex.kit.logs import bind_log_fields
from enginex.tenancy.context import TenantContext
from enginex.tenancy.principal import Principal, UserPrincipal
from enginex.tenancy.scopes import ROLE_SCOPES, Role, Scope


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    """One database transaction per request, committed when the handler returns normally."""
    async with request.app.state.db.sessions() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


DB = Annotated[AsyncSession, Depends(get_db, scope="function")]


class AccessRule:
    """Base of every access declaration; the route walker looks for instances of it."""

    kind: str = "abstract"
    scope: Scope | None = None


async def limit_rate(request: Request, db: AsyncSession | None, principal: Principal | None,
                     org_id: uuid.UUID | None) -> None:
    """Per-tenant API rate limits (issue 18): the hook the app installs as
    ``app.state.rate_limit`` (``usage.api.ApiRateLimits``; the kernel imports no feature).
    Raises TooManyRequests (429) over the limit. No hook: no limit."""
    hook = getattr(request.app.state, "rate_limit", None)
    if hook is not None:
        await hook(request, db, principal, org_id)


class _Public(AccessRule):
    kind = "public"

    async def __call__(self, request: Request) -> None:
        await limit_rate(request, None, None, None)  # per address


class _Authenticated(AccessRule):
    kind = "authenticated"

    async def __call__(self, request: Request, db: DB) -> Principal:
        principal = await authenticate(request, db)
        await limit_rate(request, db, principal, None)
        return principal


class _PlatformAdmin(AccessRule):
    kind = "platform_admin"

    async def __call__(self, request: Request, db: DB) -> UserPrincipal:
        principal = await authenticate(request, db)
        if not isinstance(principal, UserPrincipal) or not principal.is_platform_admin:
            raise Forbidden("This needs a platform admin account. API keys and organization "
                            "roles do not grant platform administration.",
                            code="platform_admin_required")
        await limit_rate(request, db, principal, None)
        return principal


class _TenantScope(AccessRule):
    kind = "tenant"

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def __call__(self, request: Request, db: DB,
                       org: Annotated[str, Path(description="Organization slug")]
                       ) -> TenantContext:
        principal, access = await authenticate_for_org(request, db, org)
        ctx = await enter_tenant(request, db, principal, access, self.scope)
        await limit_rate(request, db, principal, ctx.org_id)  # per (organization, principal)
        return ctx


class _ScimClient(AccessRule):
    kind = "scim"
    scope = Scope.SCIM_WRITE

    async def __call__(self, request: Request, db: DB,
                       org: Annotated[str, Path(description="Organization slug")]
                       ) -> TenantContext:
        principal, access = await authenticate_scim_token(request, db, org)
        if access is None:
            raise NotFound()
        if access.status != "active":
            raise Forbidden("This organization is suspended. Contact the platform operator.",
                            code="org_suspended")
        # The role only fills the context; the scopes are what the SCIM client may do.
        ctx = TenantContext(org_id=access.org_id, org_slug=access.slug, principal=principal,
                            role=Role.ADMIN, scopes=frozenset({Scope.SCIM_WRITE}))
        bind_log_fields(tenant_id=ctx.org_id)
        request.state.tenant = ctx
        return ctx


def decide_tenant_access(principal: Principal, access: OrgAccess | None,
                         scope: Scope) -> TenantContext:
    """The guard's decisions (see the module docstring for their order) on what
    ``authenticate_for_org`` found, without side effects. Unknown org, non-member and another
    org's key all raise the same NotFound; suspended org and missing scope raise Forbidden."""
    if access is None or access.role is None:
        raise NotFound()
    if access.status != "active":
        raise Forbidden("This organization is suspended. Contact the platform operator.",
                        code="org_suspended")
    if access.sso_required:
        raise Forbidden(f"This organization requires single sign-on: sign in through your "
                        f"identity provider at /sso/{access.slug}/start.", code="sso_required",
                        details={"sso_start": f"/sso/{access.slug}/start"})
    ctx = TenantContext(org_id=access.org_id, org_slug=access.slug, principal=principal,
                        role=access.role, scopes=ROLE_SCOPES[access.role])
    ctx.require(scope)
    return ctx


async def enter_tenant(request: Request, db: AsyncSession, principal: Principal,
                       access: OrgAccess | None, scope: Scope) -> TenantContext:
    """``decide_tenant_access``, then bind ``db`` to the organization and set the context
    variable."""
    if access is not None and access.role is not None:
        await set_tenant(db, access.org_id)
    ctx = decide_tenant_access(principal, access, scope)
    bind_log_fields(tenant_id=ctx.org_id)
    request.state.tenant = ctx
    return ctx


def tenant_rule_of(request: Request) -> AccessRule:
    """The tenant access rule (API ``Require`` or dashboard ``WebTenant``) of the route that
    is serving ``request``. RuntimeError when the route has none: a caller that needs it
    (a long-lived stream re-checking access) must never run on a route without one."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    rules = access_rules(dependant) if dependant is not None else []
    for rule in rules:
        if rule.kind in {"tenant", "web_tenant"} and rule.scope is not None:
            return rule
    raise RuntimeError(f"{request.url.path} has no tenant access rule to re-check")


async def recheck_tenant_access(request: Request, db: AsyncSession,
                                ctx: TenantContext) -> TenantContext:
    """Run the guard of ``request``'s route again, now, with the request's own credentials
    (cookie or API key): the same authentication and membership/role resolution as a new
    request. For responses that outlive their request (event streams).

    Raises what the guard raises (Unauthenticated for a signed-out or expired session, a
    revoked or expired key or a changed password; NotFound for a removed member or an
    organization that is no longer the one ``ctx`` names; Forbidden for a suspended
    organization or a role without the route's scope). Only reads (no touch of the key or
    session, an ended session is not deleted), so ``db`` may be a read-only session and a
    re-check never counts as activity.
    """
    rule = tenant_rule_of(request)
    assert rule.scope is not None
    principal, access = await authenticate_for_org(
        request, db, ctx.org_slug, allow_api_key=rule.kind == "tenant", writes=False)
    if access is not None and access.org_id != ctx.org_id:
        raise NotFound()
    return decide_tenant_access(principal, access, rule.scope)


def Require(scope: Scope) -> Any:
    return Depends(_TenantScope(scope))


def Authenticated() -> Any:
    return Depends(_Authenticated())


def PlatformAdmin() -> Any:
    return Depends(_PlatformAdmin())


def Public() -> Any:
    return Depends(_Public())


def ScimClient() -> Any:
    return Depends(_ScimClient())


def access_rules(dependant: Dependant) -> list[AccessRule]:
    """Every AccessRule among a route's dependencies (recursively)."""
    found: list[AccessRule] = []
    for sub in dependant.dependencies:
        if isinstance(sub.call, AccessRule):
            found.append(sub.call)
        found.extend(access_rules(sub))
    return found


class GuardedRoute(APIRoute):
    """An APIRoute that cannot be registered without exactly one access declaration."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        rules = {id(r): r for r in access_rules(self.dependant)}
        kinds = {r.kind for r in rules.values()}
        if len(kinds) != 1:
            raise RuntimeError(
                f"route {sorted(self.methods)} {path} must declare exactly one access rule "
                f"(Require/Authenticated/PlatformAdmin/Public), found {sorted(kinds) or 'none'}"
            )
        if kinds & {"tenant", "web_tenant", "scim"} and "{org}" not in path:
            raise RuntimeError(f"tenant route {path} must live under /api/v1/orgs/{{org}}/")


def make_router(*, prefix: str = "", tags: Iterable[str] = ()) -> APIRouter:
    return APIRouter(prefix=prefix, tags=list(tags), route_class=GuardedRoute)


@dataclass(frozen=True)
class RegisteredRoute:
    path: str
    methods: frozenset[str]
    route: BaseRoute


def registered_routes(app: FastAPI) -> list[RegisteredRoute]:
    """Every route the app serves, with its full path (walks included routers)."""
    found = []
    for context in iter_route_contexts(app.routes):
        path = context.path or getattr(context.original_route, "path", "")
        found.append(RegisteredRoute(path=path, methods=frozenset(context.methods or ()),
                                     route=context.original_route))
    return found
