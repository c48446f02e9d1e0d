"""The invitation acceptance page (public): ``/invitations/accept``.

The token travels in the URL fragment (``/invitations/accept#inv_...``), which browsers never
send to the server, so it stays out of access logs and Referer headers. ``invitations.js``
copies it into the form's hidden ``token`` field (and into sessionStorage, so that it survives
a detour through sign-in), then removes it from the address bar.

Outcomes of the form, mirroring ``POST /api/v1/invitations/accept`` (same service functions):

* signed out, the form asks everyone for a display name and a password, and every refusal
  that does not create an account (missing or weak password, passwords that differ) reads
  the same whether or not the invited address already has an account: the page never tells
  the holder of a link which it is (see ``orgs.service.accept_invitation``). A new address
  gets its account, is signed in and lands on ``/o/{org}``; an existing account is never
  joined by a signed-out form: the page says "sign in first" and links to sign-in and back;
* signed in (the form then carries the CSRF token), the user accepts as themselves when the
  invitation names their address; any other invitation gets one "not for you" answer;
* an invalid, expired, revoked or used link gets the API's one 404 message; a suspended
  organization gets its 403 message.

Signed out, the form is refused when its Origin header names another site, so a third-party
page cannot sign a visitor into an account of its choosing.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.auth import service as auth_service
from enginex.auth.api import set_session_cookie
from enginex.config import Settings
from enginex.kit.errors import AppError, Forbidden, NotFound, Unauthenticated, ValidationFailed
from enginex.kit.origin import origin_names_another_site
from enginex.orgs import service as org_service
from enginex.tenancy.guards import DB, Public, make_router
from enginex.tenancy.platform import list_user_orgs
from enginex.tenancy.principal import UserPrincipal
from enginex.web.templating import render

router = make_router(tags=["dashboard"])
TEMPLATE = "invitations/accept.html"
SIGN_IN_FIRST = ("This invitation is for an existing EngineX account. Sign in as that account "
                 "first, then accept the invitation.")


async def _signed_in(request: Request, db: AsyncSession) -> UserPrincipal | None:
    """The browser's user when its session cookie is valid (and, on a POST, the form carried
    its CSRF token); None otherwise. Raises Forbidden (csrf_failed) for a POST by a signed-in
    browser without the token."""
    settings: Settings = request.app.state.settings
    if not request.cookies.get(settings.session_cookie_name):
        return None
    try:
        principal = await auth_service.authenticate(request, db, allow_api_key=False)
    except Unauthenticated:
        return None
    if not isinstance(principal, UserPrincipal):
        return None
    request.state.web_orgs = await list_user_orgs(db, principal.user_id)
    return principal


def _page(request: Request, principal: UserPrincipal | None, *, status_code: int = 200,
          **data: Any) -> HTMLResponse:
    values: dict[str, Any] = {"state": "form", "message": None, "errors": {}, "token": "",
                              "display_name": "", **data}
    return render(request, TEMPLATE, principal=principal, status_code=status_code, **values)


@router.get("/invitations/accept", response_class=HTMLResponse)
async def accept_page(request: Request, db: DB,
                      _: Annotated[None, Public()]) -> HTMLResponse:
    """The acceptance form: new accounts set a name and password; a signed-in user accepts
    as themselves."""
    return _page(request, await _signed_in(request, db))


@router.post("/invitations/accept", response_class=HTMLResponse)
async def accept_submit(request: Request, db: DB, _: Annotated[None, Public()]) -> Response:
    form = await request.form()
    token = str(form.get("token") or "").strip()[:200]
    display_name = str(form.get("display_name") or "").strip()[:200]
    password = str(form.get("password") or "")[:128]
    confirm = str(form.get("password_confirm") or "")[:128]
    request.state.form_csrf = str(form.get("csrf_token") or "")
    keep = {"token": token, "display_name": display_name}
    try:
        principal = await _signed_in(request, db)
    except Forbidden:
        return _page(request, None, status_code=403, state="stale", **keep,
                     message="You signed in or out since this page was opened. Open the "
                             "invitation link again.")
    if principal is None and origin_names_another_site(request,
                                                       request.app.state.settings.base_url):
        return _page(request, None, status_code=403, state="stale", **keep,
                     message="Accepting an invitation from another site was refused.")
    if not token.startswith(org_service.INVITATION_PREFIX):
        return _page(request, principal, status_code=400, state="missing", **keep,
                     message="This page needs the whole invitation link. Open the link from "
                             "your invitation again, including the part after '#'.")
    if principal is None and password != confirm:
        return _page(request, None, status_code=422, **keep,
                     errors={"password_confirm": "The two passwords differ; type the same "
                                                 "password twice."})
    try:
        # Signed in, the user accepts as themselves: their form has no password fields.
        user, org, created = await org_service.accept_invitation(
            db, token=token, password=(password or None) if principal is None else None,
            display_name=display_name,
            signed_in_user_id=principal.user_id if principal else None)
        if user.disabled:
            raise Forbidden("This account is disabled.", code="account_disabled")
    except AppError as exc:
        await db.rollback()
        return _refused(request, principal, exc, keep)
    response = RedirectResponse(f"/o/{org.slug}", status_code=303)
    if created:
        settings: Settings = request.app.state.settings
        result = await auth_service.open_session(db, settings, user,
                                                 user_agent=request.headers.get("user-agent", ""))
        set_session_cookie(response, settings, result)
    return response


def _refused(request: Request, principal: UserPrincipal | None, exc: AppError,
             keep: dict[str, str]) -> HTMLResponse:
    """The page again, explaining why the invitation was not accepted."""
    status = exc.status_code
    if isinstance(exc, NotFound):
        return _page(request, principal, status_code=status, state="invalid",
                     message=exc.message)
    if isinstance(exc, Unauthenticated):
        if principal is not None:  # signed in, but the invitation names another address
            return _page(request, principal, status_code=status, state="wrong_account", **keep,
                         message=f"This invitation is for another email address, not for "
                                 f"{principal.email}. Sign out, then open the invitation link "
                                 "again: sign in as the invited account, or create it.")
        return _page(request, None, status_code=status, state="sign_in", **keep,
                     message=SIGN_IN_FIRST)
    if isinstance(exc, ValidationFailed):
        field = str(exc.details.get("field") or "form")
        return _page(request, principal, status_code=status, **keep,
                     errors={field: exc.message.removeprefix(f"{field}: ")})
    return _page(request, principal, status_code=status, state="closed", message=exc.message)
