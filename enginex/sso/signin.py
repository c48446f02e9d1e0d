"""The browser side of SSO sign-in: email routing, the SP-initiated start, and the OIDC
callback.

Flow state: ``begin_oidc`` puts the state, nonce, PKCE verifier, organization, connection and
``next`` into a short-lived cookie (``enginex_sso_flow``, path ``/sso/``, HttpOnly,
SameSite=Lax, 10 minutes) sealed with AES-256-GCM under a key derived from the master key. The
callback accepts a response only when its ``state`` matches that cookie, and only on the
organization the flow began for: a code or id_token from another browser, another
organization or another connection is refused. One sign-in consumes the cookie.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from enginex.auth.service import LoginResult, open_session
from enginex.config import Settings
from enginex.credentials.repository import CredentialRepository
from enginex.credentials.service import CredentialUnusable, open_for_admin_use
from enginex.credentials.vault import Keyring
from enginex.db import set_tenant
from enginex.kit.crypto import derive_key
from enginex.kit.errors import AppError, NotFound
from enginex.kit.ids import new_token
from enginex.kit.time import utcnow
from enginex.orgs.repository import get_org, get_org_by_slug
from enginex.sso import repository as repo
from enginex.sso.models import ConnectionKind, SsoAuditAction, SsoConnection
from enginex.sso.oidc import (
    OidcCache,
    OidcConfig,
    OidcError,
    authorization_url,
    exchange_code,
    validate_id_token,
)
from enginex.sso.provisioning import (
    Assertion,
    SignedIn,
    groups_from,
    oidc_groups_overage,
    sign_in_user,
)
from enginex.sso.saml_signin import begin_saml
from enginex.sso.service import SECRET_FIELD, normalise_domain
from enginex.tenancy.context import TenantContext, system_context

FLOW_COOKIE = "enginex_sso_flow"
FLOW_COOKIE_PATH = "/sso/"
FLOW_SECONDS = 600
NO_SSO_MESSAGE = ("This organization has no single sign-on set up (or it is turned off). "
                  "Sign in with your password, or ask an organization admin.")


def redirect_uri(settings: Settings, slug: str) -> str:
    return f"{settings.base_url.rstrip('/')}/sso/{slug}/oidc/callback"


def start_url(settings: Settings, slug: str) -> str:
    return f"{settings.base_url.rstrip('/')}/sso/{slug}/start"


@dataclass(frozen=True)
class Flow:
    org_id: str
    connection_id: str
    state: str
    nonce: str
    code_verifier: str
    next: str
    expires: int


class FlowSealer:
    """Seals and opens the flow cookie (AES-256-GCM, key derived from the master key)."""

    AAD = b"enginex-sso-flow-v1"

    def __init__(self, master_key: bytes) -> None:
        self._aead = AESGCM(derive_key(master_key, "sso-flow"))

    def seal(self, flow: Flow) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, json.dumps(asdict(flow)).encode(), self.AAD)
        return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def open(self, token: str | None) -> Flow | None:
        """The flow, or None for a missing, tampered, foreign or expired cookie."""
        if not token or len(token) > 4096:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            data = json.loads(self._aead.decrypt(raw[:12], raw[12:], self.AAD))
            flow = Flow(**data)
        except (ValueError, TypeError, InvalidTag):
            return None
        return flow if flow.expires > time.time() else None


FAILED_SIGN_INS_PER_MINUTE = 20  # per organization; more are logged, not audited
_REASON = re.compile(r"^[a-z_]{1,40}$")


async def record_failed_sign_in(sessions: async_sessionmaker[AsyncSession], slug: str,
                                error: AppError, *, protocol: str,
                                flow_connection: tuple[str, str] | None = None) -> bool:
    """Audit a refused SSO sign-in (``sso.login_failed``) in the organization whose callback
    or ACS received it, in a transaction of its own (the sign-in's was rolled back).

    The entry holds what failed, never who: the protocol, the error code, SAML's reason code
    and the connection id when this browser's flow (``flow_connection``: organization id,
    connection id) began at this organization -- no email, subject, IP address or token
    (the callbacks are public, so the caller is unknown; actor ``anonymous``). An unknown or
    inactive organization writes nothing. At most FAILED_SIGN_INS_PER_MINUTE entries per
    organization a minute, so a public endpoint cannot flood an audit log. Returns whether an
    entry was written."""
    from enginex.audit.repository import AuditRepository
    from enginex.audit.service import record

    async with sessions() as db, db.begin():
        org = await get_org_by_slug(db, slug)
        if org is None or org.status != "active":
            return False
        await set_tenant(db, org.id)
        ctx = system_context(org.id, org.slug)
        since = utcnow() - timedelta(minutes=1)
        recent = await AuditRepository(db, ctx).count_since(
            action=SsoAuditAction.LOGIN_FAILED, since=since, limit=FAILED_SIGN_INS_PER_MINUTE)
        if recent >= FAILED_SIGN_INS_PER_MINUTE:
            return False
        details: dict[str, Any] = {"protocol": protocol, "error": error.code,
                                   "status": error.status_code}
        reason = error.details.get("reason")
        if isinstance(reason, str) and _REASON.match(reason):
            details["reason"] = reason
        if flow_connection is not None and flow_connection[0] == str(org.id):
            details["connection_id"] = flow_connection[1]
        await record(db, ctx, SsoAuditAction.LOGIN_FAILED, target_kind="org", target_id=org.id,
                     details=details, actor_kind="anonymous")
    return True


def connection_of_flow(request: Request) -> tuple[str, str] | None:
    """(organization id, connection id) of this browser's unexpired OIDC flow, for the audit
    entry of a refused sign-in; None without one."""
    flow = request.app.state.sso_flow_sealer.open(request.cookies.get(FLOW_COOKIE))
    return (flow.org_id, flow.connection_id) if flow is not None else None


def _org_flow_error(message: str, code: str) -> OidcError:
    return OidcError(message, code=code)


async def route_email(request: Request, email: str) -> str | None:
    """The slug of the organization whose SSO signs in ``email``: its domain is verified by
    an active organization with an enabled connection. None otherwise (use the password).
    Reads in a transaction of its own (it binds a tenant)."""
    if "@" not in email:
        return None
    try:
        domain = normalise_domain(email.rsplit("@", 1)[1])
    except AppError:
        return None
    async with request.app.state.db.sessions() as db:
        org_id = await repo.verified_domain_org(db, domain)
        if org_id is None:
            return None
        org = await get_org(db, org_id)
        if org is None or org.status != "active":
            return None
        slug = org.slug
        await set_tenant(db, org.id)
        found = await repo.ConnectionRepository(db, system_context(org.id, slug)).first_enabled()
        await db.rollback()
        return slug if found is not None else None


async def _org_connection(db: AsyncSession, slug: str,
                          connection_id: uuid.UUID | None = None
                          ) -> tuple[TenantContext, SsoConnection]:
    org = await get_org_by_slug(db, slug)
    if org is None or org.status != "active":
        raise NotFound.with_message(NO_SSO_MESSAGE)
    await set_tenant(db, org.id)
    ctx = system_context(org.id, org.slug)
    connections = repo.ConnectionRepository(db, ctx)
    connection = (await connections.get(connection_id) if connection_id
                  else await connections.first_enabled())
    if connection is None or not connection.enabled:
        raise NotFound.with_message(NO_SSO_MESSAGE)
    return ctx, connection


async def begin(db: AsyncSession, request: Request, slug: str, *, next_path: str,
                login_hint: str | None) -> tuple[str, str]:
    """Start an SP-initiated sign-in at ``slug``'s enabled connection: returns the IdP URL to
    redirect to and the sealed flow cookie (empty for SAML, whose flow state is the stored
    request id: see saml_signin.py). NotFound (with a message) when the organization has no
    enabled connection; OidcError when the IdP's discovery fails."""
    ctx, connection = await _org_connection(db, slug)
    if connection.kind == ConnectionKind.SAML:
        return await begin_saml(db, request.app.state.settings, ctx, connection,
                                next_path=next_path), ""
    if connection.kind != ConnectionKind.OIDC:
        raise NotFound.with_message(NO_SSO_MESSAGE)
    settings: Settings = request.app.state.settings
    cache: OidcCache = request.app.state.oidc_cache
    config = OidcConfig.from_settings(connection.settings)
    metadata = await cache.metadata(config.issuer, allow_private=settings.allow_private_network)
    flow = Flow(org_id=str(ctx.org_id), connection_id=str(connection.id), state=new_token(),
                nonce=new_token(), code_verifier=new_token(), next=next_path,
                expires=int(time.time()) + FLOW_SECONDS)
    url = authorization_url(metadata, config, redirect_uri=redirect_uri(settings, slug),
                            state=flow.state, nonce=flow.nonce,
                            code_verifier=flow.code_verifier, login_hint=login_hint)
    sealer: FlowSealer = request.app.state.sso_flow_sealer
    return url, sealer.seal(flow)


@dataclass(frozen=True)
class Completed:
    result: LoginResult
    signed_in: SignedIn
    org_slug: str
    next: str


async def complete_oidc(db: AsyncSession, request: Request, slug: str, *,
                        params: dict[str, str], flow_cookie: str | None,
                        keyring: Keyring) -> Completed:
    """Finish an OIDC sign-in at ``slug``'s callback: check the flow (state, organization),
    trade the code (PKCE), validate the id_token, then link/provision the user, map the role
    and open a browser session marked as opened by this organization's SSO. Raises OidcError
    (400) or Forbidden (403) with a message for the person; writes nothing then."""
    settings: Settings = request.app.state.settings
    if params.get("error"):
        description = params.get("error_description") or "no description"
        raise _org_flow_error(f"The identity provider did not sign you in "
                              f"({params['error'][:100]}: {description[:300]}).",
                              "sso_idp_refused")
    flow = request.app.state.sso_flow_sealer.open(flow_cookie)
    if flow is None:
        raise _org_flow_error("This sign-in has no valid session in this browser (it expired "
                              "after 10 minutes, was already used, or began in another "
                              "browser). Start the sign-in again.", "sso_no_flow")
    state = params.get("state") or ""
    if not state or state != flow.state:
        raise _org_flow_error("The state parameter does not match this browser's sign-in (a "
                              "forged or stale response). Start the sign-in again.",
                              "sso_state_mismatch")
    org = await get_org_by_slug(db, slug)
    if org is None or str(org.id) != flow.org_id:
        raise _org_flow_error("This response belongs to a sign-in that began for another "
                              "organization. Start the sign-in again from your "
                              "organization's page.", "sso_wrong_org")
    ctx, connection = await _org_connection(db, slug, uuid.UUID(flow.connection_id))
    code = params.get("code") or ""
    if not code:
        raise _org_flow_error("The identity provider sent no authorization code.",
                              "sso_no_code")
    config = OidcConfig.from_settings(connection.settings)
    if params.get("iss") and params["iss"] != config.issuer:
        # RFC 9207: the response names the IdP that sent it (defends against IdP mix-up).
        raise _org_flow_error("The response comes from another identity provider than this "
                              "organization's connection. Start the sign-in again.",
                              "sso_issuer_mismatch")
    cache: OidcCache = request.app.state.oidc_cache
    allow_private = settings.allow_private_network
    metadata = await cache.metadata(config.issuer, allow_private=allow_private)
    secret = await _client_secret(db, ctx, connection, keyring, metadata["token_endpoint"])
    id_token = await exchange_code(metadata, config, client_secret=secret,
                                   redirect_uri=redirect_uri(settings, slug), code=code,
                                   code_verifier=flow.code_verifier,
                                   allow_private=allow_private)

    async def load_keys(kid: str | None) -> Any:
        return await cache.keyset(metadata["jwks_uri"], kid=kid, allow_private=allow_private)

    claims = await validate_id_token(id_token, config=config, nonce=flow.nonce,
                                     load_keys=load_keys)
    verified = claims.get("email_verified")
    assertion = Assertion(
        issuer=str(claims["iss"]), subject=str(claims["sub"]),
        email=claims.get("email") if isinstance(claims.get("email"), str) else None,
        email_verified=verified if isinstance(verified, bool) else None,
        display_name=str(claims.get("name") or ""),
        groups=groups_from(claims.get(connection.groups_claim)),
        groups_overage=oidc_groups_overage(claims, connection.groups_claim))
    signed_in = await sign_in_user(db, ctx, connection, assertion)
    result = await open_session(db, settings, signed_in.user,
                                user_agent=request.headers.get("user-agent", ""))
    result.session.sso_org_id = ctx.org_id
    await db.flush()
    from enginex.audit.service import record

    await record(db, ctx, SsoAuditAction.LOGIN_SUCCEEDED, target_kind="user",
                 target_id=signed_in.user.id,
                 details={"connection_id": str(connection.id), "role": str(signed_in.role),
                          "provisioned": signed_in.provisioned},
                 actor_kind="user", actor_id=signed_in.user.id)
    return Completed(result=result, signed_in=signed_in, org_slug=ctx.org_slug,
                     next=flow.next)


async def _client_secret(db: AsyncSession, ctx: TenantContext, connection: SsoConnection,
                         keyring: Keyring, token_endpoint: str) -> str:
    name = str(connection.settings.get("client_secret_credential") or "")
    credential = await CredentialRepository(db, ctx).get_by_name(name) if name else None
    if credential is None:
        raise _org_flow_error("The SSO connection's client secret is missing from the "
                              "credential vault. An organization admin must store it again.",
                              "sso_secret_missing")
    try:
        values = await open_for_admin_use(db, ctx, credential, keyring=keyring,
                                          url=token_endpoint,
                                          details={"purpose": "sso_token_exchange",
                                                   "connection_id": str(connection.id)})
    except CredentialUnusable as exc:
        raise _org_flow_error(str(exc), "sso_secret_unusable") from None
    secret = values.get(SECRET_FIELD)
    if not secret:
        raise _org_flow_error("The SSO connection's credential has no client_secret field.",
                              "sso_secret_missing")
    return secret
