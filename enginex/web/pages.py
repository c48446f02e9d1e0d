"""Dashboard pages of the foundation: sign-in, the signed-in landing page, sign-out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode, urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.auth import service as auth_service
from enginex.auth.api import clear_session_cookie, client_address, set_session_cookie
from enginex.config import Settings
from enginex.kit.errors import AppError, Unauthenticated
from enginex.kit.origin import comes_from_this_site
from enginex.tenancy.guards import DB, AccessRule, Public, make_router
from enginex.tenancy.platform import list_user_orgs
from enginex.tenancy.principal import Principal, UserPrincipal
from enginex.web.errors import LoginRequired

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
router = make_router(tags=["dashboard"])
LOGIN_NOT_FROM_THIS_SITE = (
    "Sign-in was refused: the form was not sent from this site's sign-in page (the browser's "
    "Origin or Referer header must name this site). Open the sign-in page of this site and "
    "try again; if you did, the server's ENGINEX_BASE_URL may not match the address you use.")
SSO_NOT_SET_UP = ("Single sign-on is not set up for this email's domain. Enter your password "
                  "to sign in.")


class _WebUser(AccessRule):
    """A signed-in browser user; anonymous visitors are redirected to sign-in and back."""

    kind = "web"

    async def __call__(self, request: Request, db: DB) -> UserPrincipal:
        if request.method not in auth_service.SAFE_METHODS:
            form = await request.form()
            request.state.form_csrf = str(form.get("csrf_token") or "")
        try:
            principal = await auth_service.authenticate(request, db)
        except Unauthenticated as exc:
            raise LoginRequired(_here(request)) from exc
        if not isinstance(principal, UserPrincipal):
            raise LoginRequired(_here(request))
        return principal


def _here(request: Request) -> str:
    query = request.url.query
    return f"{request.url.path}?{query}" if query else request.url.path


def WebUser() -> object:
    from fastapi import Depends

    return Depends(_WebUser())


def safe_next(target: str | None) -> str:
    """Only same-site absolute paths; anything else goes to the landing page. The sign-in
    page itself is no target either: a signed-in visitor sent there would loop."""
    if not target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") \
            or "\\" in target or parts.path.rstrip("/") == "/login":
        return "/"
    return target


async def _signed_in_user(request: Request, db: AsyncSession) -> UserPrincipal | None:
    """The browser's user if its session cookie is still valid, else None (never raises)."""
    settings: Settings = request.app.state.settings
    if not request.cookies.get(settings.session_cookie_name):
        return None
    try:
        principal = await auth_service.authenticate(request, db)
    except AppError:
        return None
    return principal if isinstance(principal, UserPrincipal) else None


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, db: DB, _: Annotated[None, Public()],
                     next: str = "/") -> Response:
    """The sign-in form; a visitor who is already signed in goes straight on to ``next``."""
    target = safe_next(next)
    if await _signed_in_user(request, db) is not None:
        return RedirectResponse(target, status_code=303)
    return templates.TemplateResponse(request, "login.html",
                                      {"next": target, "error": None, "email": ""})


@router.post("/login", response_class=HTMLResponse)
async def login_submit(request: Request, db: DB, _: Annotated[None, Public()]) -> Response:
    """Sign in. With an email and no password, an email of a verified SSO domain is sent to
    its organization's identity provider (``/sso/{org}/start``); otherwise the password."""
    settings: Settings = request.app.state.settings
    form = await request.form()
    email = str(form.get("email") or "")[:254]
    password = str(form.get("password") or "")[:128]
    target = safe_next(str(form.get("next") or "/"))
    if not comes_from_this_site(request, settings.base_url):
        # Login CSRF: another site must not sign this browser into an account of its choosing.
        return _login_error(request, target, email, LOGIN_NOT_FROM_THIS_SITE, 403)
    if email and not password:
        # Single sign-on: an email of a domain verified by an organization with an enabled
        # connection goes to that organization's identity provider; any other email gets the
        # password form again.
        from enginex.sso.signin import route_email

        slug = await route_email(request, email)
        if slug is not None:
            query = urlencode({"next": target, "login_hint": email})
            return RedirectResponse(f"/sso/{slug}/start?{query}", status_code=303)
        if "sso" in form:
            return _login_error(request, target, email, SSO_NOT_SET_UP, 422)
    if not email or not password:
        return _login_error(request, target, email, "Enter your email and password.", 422)
    try:
        result = await auth_service.login(db, settings, email=email, password=password,
                                          client_address=client_address(request),
                                          user_agent=request.headers.get("user-agent", ""))
    except AppError as exc:
        if isinstance(exc, auth_service.LoginFailed):
            await auth_service.audit_login(request, db, exc.user_id, succeeded=False)
        return _login_error(request, target, email, exc.message, exc.status_code,
                            retry_after=exc.headers.get("Retry-After"))
    await auth_service.audit_login(request, db, result.user.id, succeeded=True)
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, settings, result)
    return response


def _login_error(request: Request, target: str, email: str, message: str,
                 status: int, *, retry_after: str | None = None) -> Response:
    """The form again, with the message, the email kept and the password cleared."""
    headers = {"Retry-After": retry_after} if retry_after else None
    return templates.TemplateResponse(request, "login.html",
                                      {"next": target, "error": message, "email": email},
                                      status_code=status, headers=headers)


async def _home_context(db: AsyncSession, principal: Principal) -> dict[str, object]:
    assert isinstance(principal, UserPrincipal)
    return {"principal": principal, "orgs": await list_user_orgs(db, principal.user_id)}


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, db: DB,
               principal: Annotated[UserPrincipal, WebUser()]) -> Response:
    """Where a signed-in user lands: the organization itself when there is nothing to choose
    (one active membership, not a platform admin), the platform pages for a platform admin
    without memberships, else the list of organizations. ``?choose=1`` always shows the list."""
    context = await _home_context(db, principal)
    if "choose" not in request.query_params:
        orgs = context["orgs"]
        assert isinstance(orgs, list)
        if principal.is_platform_admin and not orgs:
            return RedirectResponse("/admin/tenants", status_code=303)
        if not principal.is_platform_admin and len(orgs) == 1 and orgs[0].status == "active":
            return RedirectResponse(f"/o/{orgs[0].slug}", status_code=303)
    return templates.TemplateResponse(request, "home.html", context)


@router.post("/logout")
async def logout(request: Request, db: DB,
                 principal: Annotated[UserPrincipal, WebUser()]) -> Response:
    await auth_service.logout(db, principal)
    response = RedirectResponse("/login", status_code=303)
    clear_session_cookie(response, request.app.state.settings)
    return response
