"""SAML connections in the SSO framework: their settings, the SP-initiated start and the ACS.

Settings of a connection of kind ``saml`` (``sso_connections.settings``, no secret in them):

* ``idp_entity_id``: the IdP's entity id (the assertions' ``Issuer``);
* ``sso_url``: the IdP's single sign-on URL (HTTP-Redirect binding);
* ``certificates``: the IdP's signing certificates, PEM (1 to 4: several during a rollover);
* ``metadata_url`` (optional): where the three above were read from; fetched again when the
  connection is saved or tested;
* ``email_attribute`` / ``name_attribute`` (optional): attribute names carrying the email and
  display name, when the IdP uses names EngineX does not know (see ``EMAIL_ATTRIBUTES``).

The group attribute is the connection's ``groups_claim`` (default ``groups``).

Flow: ``begin_saml`` stores the AuthnRequest id (``saml_requests``) and sends the browser to
the IdP with ``RelayState`` = that id. The IdP posts the response to
``/sso/{org}/saml/acs`` (a cross-site POST: no cookie of ours comes with it, so the flow
state lives in the database, not in a cookie). ``complete_saml`` finds the request by
``RelayState`` in the ACS's organization only, validates the response against that request's
connection (signed ``InResponseTo`` must be the same id), consumes the request, records the
assertion id in the replay cache, then signs the person in through the shared provisioning
(identity by connection, issuer and NameID; JIT for verified domains; role from groups).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.config import Settings
from enginex.db import set_tenant
from enginex.kit.errors import NotFound, ValidationFailed
from enginex.kit.time import utcnow
from enginex.orgs.repository import get_org_by_slug
from enginex.sso import saml, saml_state
from enginex.sso.models import ConnectionKind, SsoConnection
from enginex.tenancy.context import TenantContext, system_context
from enginex.tools.egress import guarded_transport

MAX_CERTIFICATES = 4
NAMEID_TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
NAMEID_EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
# Attribute names IdPs use for the email address and the display name (Okta, Entra ID,
# Google Workspace, Keycloak, ADFS; the LDAP 'mail' and PKCS #9 emailAddress OIDs that
# URI-format IdPs such as Shibboleth and pysaml2 send), tried in this order.
EMAIL_ATTRIBUTES = ("email", "mail", "emailAddress", "Email",
                    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
                    "urn:oid:0.9.2342.19200300.100.1.3", "urn:oid:1.2.840.113549.1.9.1.1")
NAME_ATTRIBUTES = ("displayName", "name", "cn",
                   "http://schemas.microsoft.com/identity/claims/displayname",
                   "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
                   "urn:oid:2.16.840.1.113730.3.1.241", "urn:oid:2.5.4.3")
NO_SAML_FLOW = ("This sign-in response does not answer a sign-in that EngineX started for this "
                "organization (it expired after 10 minutes, was already used, or was started "
                "elsewhere). Start the sign-in again from EngineX.")


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", details={"field": field})


# --- addresses ------------------------------------------------------------------------------


def metadata_url(settings: Settings, slug: str) -> str:
    """The SP metadata address, also the SP entity id (what the IdP admin pastes)."""
    return f"{settings.base_url.rstrip('/')}/sso/{slug}/saml/metadata"


def acs_url(settings: Settings, slug: str) -> str:
    return f"{settings.base_url.rstrip('/')}/sso/{slug}/saml/acs"


def service_provider(settings: Settings, slug: str) -> saml.ServiceProvider:
    """EngineX as the SP of organization ``slug``: one entity id and ACS per organization, so
    an assertion issued for one organization can never be accepted by another."""
    return saml.ServiceProvider(entity_id=metadata_url(settings, slug),
                                acs_url=acs_url(settings, slug))


def policy(settings: Settings) -> saml.ValidationPolicy:
    return saml.ValidationPolicy(clock_skew=timedelta(seconds=settings.saml_clock_skew_seconds),
                                 max_response_bytes=settings.saml_max_response_bytes)


# --- connection settings --------------------------------------------------------------------


def _url(value: object, field: str) -> str:
    text = str(value or "").strip()
    if not text.startswith(("https://", "http://")) or len(text) > 1000 or " " in text:
        raise _invalid(field, "an http(s) URL of at most 1000 characters.")
    return text


def check_saml_settings(raw: dict[str, Any]) -> dict[str, Any]:
    """The stored settings of a SAML connection from what an admin sent: either
    ``metadata_xml`` (uploaded metadata; not stored) or ``idp_entity_id`` + ``sso_url`` +
    ``certificates``. Raises ValidationFailed naming the field."""
    settings: dict[str, Any] = {}
    if raw.get("metadata_xml"):
        try:
            idp = saml.parse_idp_metadata(str(raw["metadata_xml"]).encode(),
                                          entity_id=raw.get("idp_entity_id") or None)
        except saml.SamlRejected as exc:
            raise _invalid("metadata_xml", exc.message) from None
        settings.update(idp_entity_id=idp.entity_id, sso_url=idp.sso_url,
                        certificates=[saml.certificate_pem(c) for c in idp.certificates])
    else:
        entity_id = str(raw.get("idp_entity_id") or "").strip()
        if not entity_id or len(entity_id) > 1000:
            raise _invalid("idp_entity_id", "the IdP's entity id (1 to 1000 characters), as in "
                           "its metadata.")
        certificates = raw.get("certificates")
        if isinstance(certificates, str):
            certificates = [certificates]
        if not isinstance(certificates, list) or not 1 <= len(certificates) <= MAX_CERTIFICATES:
            raise _invalid("certificates", f"1 to {MAX_CERTIFICATES} IdP signing certificates "
                           "(PEM).")
        pems = []
        for text in certificates:
            try:
                pems.append(saml.certificate_pem(saml.load_certificate(str(text))))
            except saml.SamlRejected as exc:
                raise _invalid("certificates", exc.message) from None
        settings.update(idp_entity_id=entity_id, sso_url=_url(raw.get("sso_url"), "sso_url"),
                        certificates=pems)
    if raw.get("metadata_url"):
        settings["metadata_url"] = _url(raw["metadata_url"], "metadata_url")
    for name in ("email_attribute", "name_attribute"):
        value = str(raw.get(name) or "").strip()
        if len(value) > 200:
            raise _invalid(name, "at most 200 characters.")
        if value:
            settings[name] = value
    return settings


async def resolve_saml_settings(raw: dict[str, Any], *, allow_private: bool) -> dict[str, Any]:
    """``check_saml_settings``, after fetching ``metadata_url`` (through the egress guard,
    size- and time-limited) when it is given without uploaded metadata."""
    if raw.get("metadata_url") and not raw.get("metadata_xml"):
        url = _url(raw["metadata_url"], "metadata_url")
        try:
            data = await saml.fetch_idp_metadata(
                url, transport=guarded_transport(allow_private=allow_private))
        except saml.SamlRejected as exc:
            raise _invalid("metadata_url", exc.message) from None
        raw = {**raw, "metadata_xml": data.decode("utf-8", errors="replace")}
    return check_saml_settings(raw)


def identity_provider(connection: SsoConnection) -> saml.IdentityProvider:
    settings = connection.settings
    return saml.IdentityProvider(
        entity_id=str(settings["idp_entity_id"]), sso_url=str(settings["sso_url"]),
        certificates=tuple(saml.load_certificate(c) for c in settings["certificates"]))


async def inspect_connection(connection: SsoConnection, *, allow_private: bool
                             ) -> tuple[list[str], dict[str, Any], list[dict[str, Any]]]:
    """The test button of a SAML connection: its IdP values, its certificates (subject,
    expiry, SHA-256 fingerprint) and the problems found: certificates expired or expiring
    within 30 days, and, with a metadata URL, a fetch failure or metadata that now differs
    from the saved settings (save the connection again to take the IdP's new values)."""
    settings = connection.settings
    problems: list[str] = []
    found: dict[str, Any] = {"idp_entity_id": settings.get("idp_entity_id"),
                             "sso_url": settings.get("sso_url"),
                             "metadata_url": settings.get("metadata_url")}
    keys: list[dict[str, Any]] = []
    now = utcnow()
    idp = identity_provider(connection)
    for certificate in idp.certificates:
        expires = certificate.not_valid_after_utc
        keys.append({"subject": certificate.subject.rfc4514_string(),
                     "not_valid_after": expires.isoformat(),
                     "sha256": certificate.fingerprint(hashes.SHA256()).hex(":")})
        if expires <= now:
            problems.append(f"The certificate {certificate.subject.rfc4514_string()} expired "
                            f"on {expires:%Y-%m-%d}.")
        elif expires <= now + timedelta(days=30):
            problems.append(f"The certificate {certificate.subject.rfc4514_string()} expires "
                            f"on {expires:%Y-%m-%d}; add the IdP's next certificate.")
    if settings.get("metadata_url"):
        try:
            fresh = await resolve_saml_settings({"metadata_url": settings["metadata_url"]},
                                                allow_private=allow_private)
        except ValidationFailed as exc:
            problems.append(exc.message)
        else:
            for name in ("idp_entity_id", "sso_url", "certificates"):
                if fresh.get(name) != settings.get(name):
                    problems.append(f"The IdP metadata now has another {name}; save the "
                                    "connection again to use it.")
    return problems, found, keys


# --- the flow -------------------------------------------------------------------------------


async def begin_saml(db: AsyncSession, settings: Settings, ctx: TenantContext,
                     connection: SsoConnection, *, next_path: str) -> str:
    """Start an SP-initiated sign-in at ``connection`` (kind saml): remember the request id
    and return the IdP URL to redirect the browser to."""
    request_id = saml.new_request_id()
    request = saml.build_authn_request(service_provider(settings, ctx.org_slug),
                                       identity_provider(connection), now=utcnow(),
                                       request_id=request_id, relay_state=request_id)
    await saml_state.remember_request(db, ctx, request_id=request.request_id,
                                      connection_id=connection.id, next_path=next_path,
                                      expires_at=request.expires_at)
    return request.redirect_url


@dataclass(frozen=True)
class SamlResult:
    """A validated response, bound to the organization and connection it belongs to."""

    ctx: TenantContext
    connection: SsoConnection
    assertion: saml.SamlAssertion
    next_path: str


async def accept_response(db: AsyncSession, settings: Settings, slug: str, *,
                          saml_response: str, relay_state: str) -> SamlResult:
    """Validate a response posted to organization ``slug``'s ACS and consume its request.

    The request is looked up by ``relay_state`` in THIS organization only; the response must
    be signed by that request's connection's IdP, for this organization's SP (audience,
    recipient, destination) and answer that very request. Raises NotFound (unknown or
    inactive organization), SamlRejected (400, nothing written)."""
    org = await get_org_by_slug(db, slug)
    if org is None or org.status != "active":
        raise NotFound()
    await set_tenant(db, org.id)
    ctx = system_context(org.id, org.slug)
    now = utcnow()
    pending = await saml_state.pending_request(db, ctx, relay_state.strip(), now)
    if pending is None:
        raise saml.SamlRejected(NO_SAML_FLOW, details={"reason": "in_response_to"})
    connection = await db.get(SsoConnection, (ctx.org_id, pending.connection_id))
    if connection is None or not connection.enabled or connection.kind != ConnectionKind.SAML:
        raise saml.SamlRejected("The SAML connection of this sign-in was turned off or "
                                "removed. Ask an organization admin.",
                                details={"reason": "connection"})
    assertion = saml.validate_response(
        saml_response, sp=service_provider(settings, ctx.org_slug),
        idp=identity_provider(connection), pending_request_ids={pending.request_id}, now=now,
        policy=policy(settings))
    if assertion.name_id_format == NAMEID_TRANSIENT:
        raise saml.SamlRejected("The IdP sent a transient NameID, which changes at every "
                                "sign-in; configure it to send a persistent NameID (or the "
                                "email address).", details={"reason": "transient_name_id"})
    if not await saml_state.consume_request(db, ctx, pending):
        raise saml.SamlRejected(NO_SAML_FLOW, details={"reason": "in_response_to"})
    if not await saml_state.record_assertion(db, ctx, connection_id=connection.id,
                                             assertion_id=assertion.assertion_id,
                                             expires_at=assertion.replay_expires_at):
        raise saml.SamlRejected("This assertion was already used to sign in (a replayed "
                                "response). Start the sign-in again.",
                                details={"reason": "replay"})
    await saml_state.purge_expired(db, ctx, now)
    return SamlResult(ctx=ctx, connection=connection, assertion=assertion,
                      next_path=pending.next_path)


def first_attribute(assertion: saml.SamlAssertion, configured: object,
                    candidates: tuple[str, ...]) -> str | None:
    names = (str(configured),) if configured else candidates
    for name in names:
        values = assertion.attribute(name)
        if values:
            return values[0]
    return None


def email_of(assertion: saml.SamlAssertion, connection: SsoConnection) -> str | None:
    """The email the IdP asserts: the configured attribute, the usual ones, or an
    emailAddress-format NameID."""
    found = first_attribute(assertion, connection.settings.get("email_attribute"),
                            EMAIL_ATTRIBUTES)
    if found is None and assertion.name_id_format == NAMEID_EMAIL:
        found = assertion.name_id
    return found


def display_name_of(assertion: saml.SamlAssertion, connection: SsoConnection) -> str:
    return first_attribute(assertion, connection.settings.get("name_attribute"),
                           NAME_ATTRIBUTES) or ""

