"""Access rules of dashboard pages.

* ``WebTenant(Scope.X)`` -- a page under ``/o/{org}/...``: anonymous visitors are redirected to
  sign-in and back; another organization (or a missing one) gets the not-found page, the same
  for both; a member without the scope gets the forbidden page. Only the session cookie counts
  (an Authorization header is ignored on pages). Unsafe methods need the CSRF token, from the
  form field ``csrf_token`` or the X-CSRF-Token header (htmx).
* ``WebPlatformAdmin()`` -- the platform admin pages under ``/admin/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Request

from enginex.auth import service as auth_service
from enginex.kit.errors import Forbidden, Unauthenticated
from enginex.tenancy.context import TenantContext
from enginex.tenancy.guards import DB, AccessRule, enter_tenant
from enginex.tenancy.platform import list_user_orgs
from enginex.tenancy.principal import UserPrincipal
from enginex.tenancy.scopes import Scope
from enginex.web.errors import LoginRequired


@dataclass(frozen=True)
class WebContext:
    principal: UserPrincipal
    ctx: TenantContext


def here(request: Request) -> str:
    query = request.url.query
    return f"{request.url.path}?{query}" if query else request.url.path


async def _read_form_csrf(request: Request) -> None:
    if request.method not in auth_service.SAFE_METHODS and \
            "x-csrf-token" not in request.headers:
        form = await request.form()
        request.state.form_csrf = str(form.get("csrf_token") or "")


async def web_principal(request: Request, db: DB) -> UserPrincipal:
    """The signed-in browser user (cookie only); LoginRequired redirects anonymous visitors."""
    await _read_form_csrf(request)
    try:
        principal = await auth_service.authenticate(request, db, allow_api_key=False)
    except Unauthenticated as exc:
        raise LoginRequired(here(request)) from exc
    if not isinstance(principal, UserPrincipal):
        raise LoginRequired(here(request))
    request.state.web_orgs = await list_user_orgs(db, principal.user_id)
    return principal


class _WebTenant(AccessRule):
    kind = "web_tenant"

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def __call__(self, request: Request, db: DB,
                       org: Annotated[str, Path(description="Organization slug")]
                       ) -> WebContext:
        await _read_form_csrf(request)
        try:
            principal, access = await auth_service.authenticate_for_org(
                request, db, org, allow_api_key=False)
        except Unauthenticated as exc:
            raise LoginRequired(here(request)) from exc
        assert isinstance(principal, UserPrincipal)
        request.state.web_orgs = await list_user_orgs(db, principal.user_id)
        ctx = await enter_tenant(request, db, principal, access, self.scope)
        return WebContext(principal=principal, ctx=ctx)


class _WebPlatformAdmin(AccessRule):
    kind = "web_platform_admin"

    async def __call__(self, request: Request, db: DB) -> UserPrincipal:
        principal = await web_principal(request, db)
        if not principal.is_platform_admin:
            raise Forbidden("This page is for platform admins.", code="platform_admin_required")
        return principal


def WebTenant(scope: Scope) -> Any:
    return Depends(_WebTenant(scope))


def WebPlatformAdmin() -> Any:
    return Depends(_WebPlatformAdmin())
