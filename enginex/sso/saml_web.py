"""The two public SAML addresses an IdP administrator pastes:

* ``GET /sso/{org}/saml/metadata``: the SP metadata of the organization (entity id = this
  URL, ACS URL);
* ``POST /sso/{org}/saml/acs``: the assertion consumer service (HTTP-POST binding).

The SP-initiated start is the framework's ``GET /sso/{org}/start`` (it calls
``saml_signin.begin_saml`` for a connection of kind ``saml``).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from enginex.audit.service import record, record_login
from enginex.auth.api import set_session_cookie
from enginex.auth.service import open_session
from enginex.kit.errors import AppError, NotFound
from enginex.orgs.repository import get_org_by_slug
from enginex.sso import saml
from enginex.sso.models import SsoAuditAction
from enginex.sso.provisioning import (
    Assertion,
    groups_from,
    saml_groups_overage,
    sign_in_user,
)
from enginex.sso.saml_signin import (
    accept_response,
    display_name_of,
    email_of,
    service_provider,
)
from enginex.sso.signin import record_failed_sign_in
from enginex.tenancy.guards import DB, Public, make_router
from enginex.web.pages import safe_next
from enginex.web.templating import templates

router = make_router(tags=["sso"])
log = logging.getLogger("enginex.sso")
# Form fields larger than this are refused before any parsing (the response limit applies to
# the decoded XML; base64 adds a third).
MAX_FORM_FIELD = 4 * 1_048_576 // 3


def _error(request: Request, exc: AppError) -> HTMLResponse:
    return templates.TemplateResponse(request, "sso/error.html",
                                      {"message": exc.message, "code": exc.code},
                                      status_code=exc.status_code)


@router.get("/sso/{org}/saml/metadata", response_class=Response)
async def saml_metadata(request: Request, org: str, db: DB,
                        _: Annotated[None, Public()]) -> Response:
    """SP metadata of organization ``org`` (XML). Public on purpose: IdPs fetch it without
    credentials, and it holds only the two addresses shown on the org's SSO page. An unknown
    or inactive organization is 404."""
    found = await get_org_by_slug(db, org)
    if found is None or found.status != "active":
        raise NotFound()
    sp = service_provider(request.app.state.settings, found.slug)
    return Response(saml.sp_metadata_xml(sp), media_type="application/samlmetadata+xml")


@router.post("/sso/{org}/saml/acs", response_class=HTMLResponse)
async def saml_acs(request: Request, org: str, db: DB,
                   _: Annotated[None, Public()]) -> Response:
    """Assertion consumer service of organization ``org``. Public on purpose: the IdP's page
    posts the browser's form here before there is an EngineX session (a cross-site POST, so
    no cookie and no CSRF token can come with it). Only a response signed by the IdP of the
    connection whose request it answers (RelayState and InResponseTo, this organization only),
    meant for this organization's SP and not seen before signs anyone in; anything else is a
    4xx page saying why, and nothing is written."""
    settings = request.app.state.settings
    form = await request.form()
    saml_response = form.get("SAMLResponse")
    relay_state = form.get("RelayState")
    try:
        if not isinstance(saml_response, str) or not isinstance(relay_state, str) \
                or len(saml_response) > MAX_FORM_FIELD or len(relay_state) > 200:
            raise saml.SamlRejected("Post a SAMLResponse and its RelayState here (HTTP-POST "
                                    "binding).", details={"reason": "malformed"})
        accepted = await accept_response(db, settings, org.lower(),
                                         saml_response=saml_response, relay_state=relay_state)
        found = accepted.assertion
        connection = accepted.connection
        signed_in = await sign_in_user(db, accepted.ctx, connection, Assertion(
            issuer=found.issuer, subject=found.name_id, email=email_of(found, connection),
            email_verified=None, display_name=display_name_of(found, connection),
            groups=groups_from(list(found.attribute(connection.groups_claim))),
            groups_overage=saml_groups_overage(found, connection.groups_claim)))
        result = await open_session(db, settings, signed_in.user,
                                    user_agent=request.headers.get("user-agent", ""))
        result.session.sso_org_id = accepted.ctx.org_id
        await db.flush()
        await record(db, accepted.ctx, SsoAuditAction.LOGIN_SUCCEEDED, target_kind="user",
                     target_id=signed_in.user.id,
                     details={"connection_id": str(connection.id), "protocol": "saml",
                              "role": str(signed_in.role),
                              "provisioned": signed_in.provisioned},
                     actor_kind="user", actor_id=signed_in.user.id)
    except AppError as exc:
        await db.rollback()
        log.info("saml sign-in refused at %s: %s %s", org[:40], exc.code,
                 exc.details.get("reason", ""))
        try:
            await record_failed_sign_in(request.app.state.db.sessions, org.lower(), exc,
                                        protocol="saml")
        except Exception:
            log.exception("could not audit a refused SAML sign-in")
        return _error(request, exc)
    await db.commit()
    try:
        await record_login(request.app.state.db.sessions, signed_in.user.id, succeeded=True,
                           method="sso")
    except Exception:
        log.exception("could not audit a SAML sign-in")
    next_path = safe_next(accepted.next_path)
    target = next_path if next_path != "/" else f"/o/{accepted.ctx.org_slug}"
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, settings, result)
    return response
