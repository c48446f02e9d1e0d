"""SSO in the browser: the org admin's page (``/o/{org}/settings/sso``) and the two public
sign-in addresses an IdP admin pastes (``/sso/{org}/start``, ``/sso/{org}/oidc/callback``).

The page shows connections (with a test button and the values to paste into the IdP), email
domains with their verification status and TXT record, role-mapping rules and enforcement.
Secrets typed into a form never come back in a page.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.audit.service import record_login
from enginex.auth.api import set_session_cookie
from enginex.credentials.api import keyring
from enginex.kit.errors import AppError, ValidationFailed
from enginex.orgs.repository import MembershipRepository
from enginex.sso import saml_signin, service
from enginex.sso.models import ConnectionKind
from enginex.sso.signin import (
    FLOW_COOKIE,
    FLOW_COOKIE_PATH,
    FLOW_SECONDS,
    begin,
    complete_oidc,
    connection_of_flow,
    record_failed_sign_in,
    redirect_uri,
    start_url,
)
from enginex.tenancy.guards import DB, Public, make_router
from enginex.tenancy.scopes import Role, Scope
from enginex.web.errors import rollback_for_page
from enginex.web.pages import safe_next
from enginex.web.templating import render, templates
from enginex.web.tenant import WebContext, WebTenant

router = make_router(tags=["dashboard"])
log = logging.getLogger("enginex.sso")

NOTICES = {"connection_created": "Connection created.", "connection_saved": "Connection saved.",
           "connection_deleted": "Connection deleted.", "domain_claimed": "Domain claimed: "
           "publish the TXT record, then verify.", "domain_verified": "Domain verified.",
           "domain_deleted": "Domain removed.", "rule_created": "Rule added.",
           "rule_deleted": "Rule deleted.", "enforcement_saved": "Enforcement saved."}
ROLES = [str(r) for r in Role]


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _back(web: WebContext, notice: str) -> RedirectResponse:
    return RedirectResponse(f"/o/{web.ctx.org_slug}/settings/sso?notice={notice}",
                            status_code=303)


async def _page(request: Request, db: AsyncSession, web: WebContext, *,
                status_code: int = 200, error: str | None = None,
                draft: dict[str, str] | None = None,
                report: service.TestReport | None = None,
                tested: uuid.UUID | None = None) -> HTMLResponse:
    ctx = web.ctx
    settings = request.app.state.settings
    members = await MembershipRepository(db, ctx).list_member_rows()
    notice = NOTICES.get(request.query_params.get("notice", "")) if status_code == 200 else None
    return render(request, "sso/settings.html", principal=web.principal, ctx=ctx,
                  status_code=status_code, error=error, notice=notice,
                  connections=await service.list_connections(db, ctx),
                  domains=await service.list_domains(db, ctx),
                  rules=await service.list_rules(db, ctx),
                  enforcement=await service.get_enforcement(db, ctx),
                  admins=[(m[0], m[1]) for m in members if m[3] == str(Role.ADMIN)],
                  redirect_uri=redirect_uri(settings, ctx.org_slug),
                  saml_acs_url=saml_signin.acs_url(settings, ctx.org_slug),
                  saml_metadata_url=saml_signin.metadata_url(settings, ctx.org_slug),
                  start_url=start_url(settings, ctx.org_slug),
                  txt_name=service.txt_record_name, txt_value=service.txt_record_value,
                  can_write=ctx.has(Scope.SSO_WRITE), roles=ROLES, draft=draft or {},
                  report=report, tested=tested)


async def _failed(request: Request, db: AsyncSession, web: WebContext, exc: AppError,
                  draft: dict[str, str] | None = None) -> HTMLResponse:
    await rollback_for_page(db, exc)
    return await _page(request, db, web, status_code=exc.status_code, error=exc.message,
                       draft=draft)


@router.get("/o/{org}/settings/sso", response_class=HTMLResponse)
async def sso_page(request: Request, db: DB,
                   web: Annotated[WebContext, WebTenant(Scope.SSO_READ)]) -> HTMLResponse:
    """Single sign-on settings of the organization."""
    return await _page(request, db, web)


def _connection_input(form: dict[str, str], *, creating: bool) -> service.ConnectionInput:
    role = form.get("default_role") or None
    if role is not None and role not in ROLES:
        raise ValidationFailed("default_role: choose admin, builder, operator or viewer.")
    scopes = form.get("scopes", "").split() or None
    return service.ConnectionInput(
        name=form.get("name", "").strip()[:64] or None if creating else None,
        oidc={"issuer": form.get("issuer", "")[:500], "client_id": form.get("client_id", "")[:500],
              **({"scopes": scopes} if scopes else {})},
        client_secret=form.get("client_secret") or None,
        enabled=form.get("enabled") == "on",
        default_role=Role(role) if role else None,
        groups_claim=form.get("groups_claim", "").strip()[:200] or None)


SAML_FIELDS = ("metadata_url", "metadata_xml", "idp_entity_id", "sso_url", "email_attribute",
               "name_attribute")


def _saml_input(form: dict[str, str], *, creating: bool) -> service.ConnectionInput:
    """A SAML connection from its form (``kind=saml``): the IdP metadata URL, the pasted
    metadata, or entity id + SSO URL + certificate. On update, settings left empty are kept."""
    role = form.get("default_role") or None
    if role is not None and role not in ROLES:
        raise ValidationFailed("default_role: choose admin, builder, operator or viewer.")
    saml = {k: form[k].strip() for k in SAML_FIELDS if form.get(k, "").strip()}
    if form.get("certificate", "").strip():
        saml["certificates"] = [form["certificate"].strip()]
    return service.ConnectionInput(
        name=form.get("name", "").strip()[:64] or None if creating else None,
        saml=saml if creating or saml else None,
        enabled=form.get("enabled") == "on",
        default_role=Role(role) if role else None,
        groups_claim=form.get("groups_claim", "").strip()[:200] or None)


@router.post("/o/{org}/settings/sso/connections", response_class=HTMLResponse)
async def create_connection(request: Request, db: DB,
                            web: Annotated[WebContext, WebTenant(Scope.SSO_WRITE)]) -> Response:
    """Create an OIDC connection (or a SAML one, ``kind=saml``) from the form; errors
    re-render without the secret."""
    form = await _form(request)
    draft = {k: form.get(k, "")[:500] for k in ("name", "issuer", "client_id", "scopes",
                                                "groups_claim", "default_role", "kind",
                                                "metadata_url", "idp_entity_id", "sso_url")}
    saml = form.get("kind") == "saml"
    try:
        data = _saml_input(form, creating=True) if saml \
            else _connection_input(form, creating=True)
        if not data.name:
            raise ValidationFailed("name: required (lowercase letters, digits, '-' or '_').")
        await service.create_connection(
            db, web.ctx, data, kind=ConnectionKind.SAML if saml else ConnectionKind.OIDC,
            keyring=keyring(request), actor=web.principal,
            allow_private=request.app.state.settings.allow_private_network)
    except AppError as exc:
        return await _failed(request, db, web, exc, draft)
    return _back(web, "connection_created")


@router.post("/o/{org}/settings/sso/connections/{connection_id}", response_class=HTMLResponse)
async def update_connection(request: Request, connection_id: uuid.UUID, db: DB,
                            web: Annotated[WebContext, WebTenant(Scope.SSO_WRITE)]) -> Response:
    """Save a connection's settings (a new secret only when one is typed)."""
    form = await _form(request)
    try:
        data = _saml_input(form, creating=False) if form.get("kind") == "saml" \
            else _connection_input(form, creating=False)
        await service.update_connection(
            db, web.ctx, connection_id, data, keyring=keyring(request), actor=web.principal,
            allow_private=request.app.state.settings.allow_private_network)
    except AppError as exc:
        return await _failed(request, db, web, exc)
    return _back(web, "connection_saved")


@router.post("/o/{org}/settings/sso/connections/{connection_id}/test",
             response_class=HTMLResponse)
async def test_connection(request: Request, connection_id: uuid.UUID, db: DB,
                          web: Annotated[WebContext, WebTenant(Scope.SSO_WRITE)]) -> Response:
    """Fetch the IdP's discovery document and keys now; the page shows what was found."""
    report = await service.test_connection(
        db, web.ctx, connection_id, cache=request.app.state.oidc_cache,
        allow_private=request.app.state.settings.allow_private_network, actor=web.principal)
    return await _page(request, db, web, report=report, tested=connection_id)


@router.post("/o/{org}/settings/sso/connections/{connection_id}/delete",
             response_class=HTMLResponse)
async def delete_connection(connection_id: uuid.UUID, db: DB,
                            web: Annotated[WebContext, WebTenant(Scope.SSO_WRITE)]) -> Response:
    await service.delete_connection(db, web.ctx, connection_id, actor=web.principal)
    return _back(web, "connection_deleted")


@router.post("/o/{org}/settings/sso/domains", response_class=HTMLResponse)
async def claim_domain(request: Request, db: DB,
                       web: Annotated[WebContext, WebTenant(Scope.SSO_WRITE)]) -> Response:
    form = await _form(request)
    try:
        await service.claim_domain(db, web.ctx, form.get("domain", "")[:253],
                                   actor=web.principal)
    except AppError as exc:
        return await _failed(request, db, web, exc, {"domain": form.get("domain", "")[:253]})
    return _back(web, "domain_claimed")


@router.post("/o/{org}/settings/sso/domains/{domain_id}/verify", response_class=HTMLResponse)
async def verify_domain(request: Request, domain_id: uuid.UUID, db: DB,
                        web: Annotated[WebContext, WebTenant(Scope.SSO_WRITE)]) -> Response:
    """Look up the domain's TXT record now."""
    try:
        await service.verify_domain_by_dns(db, web.ctx, domain_id,
                                           resolver=request.app.state.dns_resolver,
                                           actor=web.principal)
    except AppError as exc:
        return await _failed(request, db, web, exc)
    return _back(web, "domain_verified")


@router.post("/o/{org}/settings/sso/domains/{domain_id}/delete", response_class=HTMLResponse)
async def delete_domain(domain_id: uuid.UUID, db: DB,
                        web: Annotated[WebContext, WebTenant(Scope.SSO_WRITE)]) -> Response:
    await service.delete_domain(db, web.ctx, domain_id, actor=web.principal)
    return _back(web, "domain_deleted")


@router.post("/o/{org}/settings/sso/rules", response_class=HTMLResponse)
async def create_rule(request: Request, db: DB,
                      web: Annotated[WebContext, WebTenant(Scope.SSO_WRITE)]) -> Response:
    form = await _form(request)
    draft = {k: form.get(k, "")[:256] for k in ("group", "role", "priority")}
    try:
        role = form.get("role", "")
        if role not in ROLES:
            raise ValidationFailed("role: choose admin, builder, operator or viewer.")
        priority_text = form.get("priority", "").strip() or "100"
        if not priority_text.isascii() or not priority_text.isdigit() \
                or int(priority_text) > 10_000:
            raise ValidationFailed("priority: a whole number from 0 to 10000 (lower wins).")
        group = form.get("group", "").strip()[:256]
        if not group:
            raise ValidationFailed("group: required (the group name as the IdP sends it).")
        await service.create_rule(db, web.ctx, group=group, role=Role(role),
                                  priority=int(priority_text), actor=web.principal)
    except AppError as exc:
        return await _failed(request, db, web, exc, draft)
    return _back(web, "rule_created")


@router.post("/o/{org}/settings/sso/rules/{rule_id}/delete", response_class=HTMLResponse)
async def delete_rule(rule_id: uuid.UUID, db: DB,
                      web: Annotated[WebContext, WebTenant(Scope.SSO_WRITE)]) -> Response:
    await service.delete_rule(db, web.ctx, rule_id, actor=web.principal)
    return _back(web, "rule_deleted")


@router.post("/o/{org}/settings/sso/enforcement", response_class=HTMLResponse)
async def set_enforcement(request: Request, db: DB,
                          web: Annotated[WebContext, WebTenant(Scope.SSO_WRITE)]) -> Response:
    """Require SSO or not, and the break-glass admin."""
    form = await _form(request)
    try:
        raw = form.get("break_glass_user_id", "").strip()
        try:
            break_glass = uuid.UUID(raw) if raw else None
        except ValueError:
            raise ValidationFailed("break_glass_user_id: choose an admin from the list.") from None
        await service.set_enforcement(db, web.ctx, require_sso=form.get("require_sso") == "on",
                                      break_glass_user_id=break_glass, actor=web.principal)
    except AppError as exc:
        return await _failed(request, db, web, exc)
    return _back(web, "enforcement_saved")


# --- public sign-in addresses ------------------------------------------------------------------


def _sso_error(request: Request, exc: AppError) -> HTMLResponse:
    response = templates.TemplateResponse(
        request, "sso/error.html", {"message": exc.message, "code": exc.code},
        status_code=exc.status_code)
    response.delete_cookie(FLOW_COOKIE, path=FLOW_COOKIE_PATH)
    return response


@router.get("/sso/{org}/start", response_class=HTMLResponse)
async def sso_start(request: Request, org: str, db: DB, _: Annotated[None, Public()],
                    next: str = "/", login_hint: str | None = None) -> Response:
    """SP-initiated sign-in: redirects to the organization's enabled connection.

    Public on purpose: whoever signs in is anonymous until the IdP answers. It reveals only
    whether the organization has SSO turned on (the same page for unknown organizations)."""
    try:
        url, flow = await begin(db, request, org.lower(), next_path=safe_next(next),
                                login_hint=(login_hint or "")[:254] or None)
    except AppError as exc:
        return _sso_error(request, exc)
    response = RedirectResponse(url, status_code=303)
    if flow:  # OIDC only; a SAML flow lives in saml_requests (the IdP's POST is cross-site)
        response.set_cookie(FLOW_COOKIE, flow, max_age=FLOW_SECONDS, path=FLOW_COOKIE_PATH,
                            httponly=True, samesite="lax",
                            secure=request.app.state.settings.secure_cookies)
    return response


@router.get("/sso/{org}/oidc/callback", response_class=HTMLResponse)
async def oidc_callback(request: Request, org: str, db: DB,
                        _: Annotated[None, Public()]) -> Response:
    """The OIDC redirect URI. Public on purpose: the IdP sends the browser here before it has
    an EngineX session. Only a response matching this browser's flow cookie (state), for this
    organization's connection, with a valid id_token (issuer, audience, expiry, nonce,
    algorithm, signature) signs anyone in; anything else is a 4xx page saying why."""
    params = {k: v[:2000] for k, v in request.query_params.items()
              if k in {"code", "state", "iss", "error", "error_description"}}
    try:
        done = await complete_oidc(db, request, org.lower(), params=params,
                                   flow_cookie=request.cookies.get(FLOW_COOKIE),
                                   keyring=keyring(request))
    except AppError as exc:
        await db.rollback()
        log.info("sso sign-in refused at %s: %s", org[:40], exc.code)
        try:
            await record_failed_sign_in(request.app.state.db.sessions, org.lower(), exc,
                                        protocol="oidc",
                                        flow_connection=connection_of_flow(request))
        except Exception:
            log.exception("could not audit a refused SSO sign-in")
        return _sso_error(request, exc)
    await db.commit()
    try:
        await record_login(request.app.state.db.sessions, done.result.user.id, succeeded=True,
                           method="sso")
    except Exception:
        log.exception("could not audit an SSO sign-in")
    target = done.next if done.next != "/" else f"/o/{done.org_slug}"
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, request.app.state.settings, done.result)
    response.delete_cookie(FLOW_COOKIE, path=FLOW_COOKIE_PATH)
    return response
