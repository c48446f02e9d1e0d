"""Password-reset pages (public): ``/password-reset`` and ``/password-reset/confirm``.

They call the same functions as ``POST /api/v1/auth/password-reset[/confirm]`` (auth/reset.py)
and answer alike: the request page says the same thing for every address. The link's token
travels in the URL fragment (``/password-reset/confirm#pwr_...``), which browsers never send
to a server; ``password-reset.js`` copies it into the form. Both forms are refused when their
Origin names another site.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from starlette.background import BackgroundTask

from enginex.auth import reset
from enginex.auth.api import client_address, confirm_and_audit
from enginex.config import Settings
from enginex.kit.errors import AppError, NotFound, ValidationFailed
from enginex.kit.origin import comes_from_this_site
from enginex.kit.schemas import Email, RequestBody
from enginex.tenancy.guards import DB, Public, make_router
from enginex.web.templating import render

router = make_router(tags=["dashboard"])
REQUEST_PAGE = "auth/reset_request.html"
CONFIRM_PAGE = "auth/reset_confirm.html"
NOT_FROM_THIS_SITE = ("This form was not sent from this site's page. Open the page on this "
                      "site and try again.")


class _EmailForm(RequestBody):
    email: Email


def _request_page(request: Request, *, status_code: int = 200,
                  **data: Any) -> HTMLResponse:
    values: dict[str, Any] = {"sent": None, "error": None, "email": "", **data}
    return render(request, REQUEST_PAGE, status_code=status_code, **values)


@router.get("/password-reset", response_class=HTMLResponse)
async def request_page(request: Request, _: Annotated[None, Public()]) -> HTMLResponse:
    """The form that asks for a reset link. Public: its users are signed out."""
    return _request_page(request)


@router.post("/password-reset", response_class=HTMLResponse)
async def request_submit(request: Request, db: DB,
                         _: Annotated[None, Public()]) -> HTMLResponse:
    """Send a reset link (when an account uses the address); the same page for every
    address."""
    settings: Settings = request.app.state.settings
    email = str((await request.form()).get("email") or "").strip()[:254]
    if not comes_from_this_site(request, settings.base_url):
        return _request_page(request, status_code=403, email=email, error=NOT_FROM_THIS_SITE)
    try:
        body = _EmailForm.model_validate({"email": email})
    except ValueError:
        return _request_page(request, status_code=422, email=email,
                             error="Type the whole email address, like name@example.com.")
    try:
        await reset.admit_request(db, settings, email=body.email,
                                  client_address=client_address(request))
    except AppError as exc:
        return _request_page(request, status_code=exc.status_code, email=email,
                             error=exc.message)
    response = _request_page(request, status_code=202, sent=reset.RESET_REQUESTED)
    response.background = BackgroundTask(reset.issue_reset_quietly, request.app.state.db.sessions,
                                         settings, email=body.email)
    return response


def _confirm_page(request: Request, *, status_code: int = 200, **data: Any) -> HTMLResponse:
    values: dict[str, Any] = {"done": False, "invalid": None, "errors": {}, "token": "",
                              **data}
    return render(request, CONFIRM_PAGE, status_code=status_code, **values)


@router.get("/password-reset/confirm", response_class=HTMLResponse)
async def confirm_page(request: Request, _: Annotated[None, Public()]) -> HTMLResponse:
    """The form that sets the new password; the token comes from the link's fragment."""
    return _confirm_page(request)


@router.post("/password-reset/confirm", response_class=HTMLResponse)
async def confirm_submit(request: Request, db: DB,
                         _: Annotated[None, Public()]) -> HTMLResponse:
    """Set the new password: every session of the account ends; the user signs in again."""
    form = await request.form()
    token = str(form.get("token") or "").strip()[:200]
    password = str(form.get("new_password") or "")[:128]
    confirm = str(form.get("password_confirm") or "")[:128]
    if not comes_from_this_site(request, request.app.state.settings.base_url):
        return _confirm_page(request, status_code=403, token=token,
                             errors={"form": NOT_FROM_THIS_SITE})
    if password != confirm:
        return _confirm_page(request, status_code=422, token=token, errors={
            "password_confirm": "The two passwords differ; type the same password twice."})
    try:
        await confirm_and_audit(request, db, token=token, new_password=password)
    except NotFound as exc:
        await db.rollback()
        return _confirm_page(request, status_code=exc.status_code, invalid=exc.message)
    except ValidationFailed as exc:
        await db.rollback()
        field = str(exc.details.get("field") or "form")
        return _confirm_page(request, status_code=exc.status_code, token=token,
                             errors={field: exc.message.removeprefix(f"{field}: ")})
    except AppError as exc:
        await db.rollback()
        return _confirm_page(request, status_code=exc.status_code, invalid=exc.message)
    return _confirm_page(request, done=True)
