"""SSO settings of one organization: connections, email domains, role-mapping rules and
enforcement. Every mutation is audited in the caller's transaction (``SsoAuditAction``);
another organization's ids raise NotFound exactly like missing ones.

Secrets: an OIDC client secret is sealed in the credential vault as the org credential
``sso-<connection name>`` (kind ``custom``, field ``client_secret``) or taken from an existing
credential the admin names; ``sso_connections.settings`` holds only the credential's NAME.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.audit.service import record
from enginex.credentials.models import Credential
from enginex.credentials.repository import CredentialRepository
from enginex.credentials.service import create_credential, update_credential
from enginex.credentials.vault import Keyring
from enginex.kit.errors import Conflict, NotFound, ValidationFailed
from enginex.kit.ids import new_token
from enginex.kit.time import utcnow
from enginex.orgs.repository import get_org
from enginex.sso import repository as repo
from enginex.sso import saml_signin
from enginex.sso.models import (
    ConnectionKind,
    EmailDomain,
    RoleMappingRule,
    SsoAuditAction,
    SsoConnection,
)
from enginex.sso.oidc import (
    SUPPORTED_ALGORITHMS,
    OidcCache,
    OidcConfig,
    OidcError,
    discovery_url,
)
from enginex.sso.role_mapping import normalise_group
from enginex.tenancy.context import TenantContext
from enginex.tenancy.principal import ApiKeyPrincipal, Principal, UserPrincipal
from enginex.tenancy.scopes import Role

SECRET_FIELD = "client_secret"  # noqa: S105 - a field name
TXT_RECORD_PREFIX = "_enginex-verification"
TXT_VALUE_PREFIX = "enginex-verification="
_DOMAIN = re.compile(r"^(?=.{3,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
                     r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", details={"field": field})


# --- connections -------------------------------------------------------------------------------


def secret_credential_name(connection_name: str) -> str:
    return f"sso-{connection_name}"[:64]


def check_oidc_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Normalised OIDC settings (issuer, client_id, scopes, algorithms); ValidationFailed
    naming the field otherwise."""
    issuer = str(settings.get("issuer") or "").strip()
    parts = urlsplit(issuer)
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.query \
            or parts.fragment or parts.username or parts.password:
        raise _invalid("oidc.issuer", "an https:// URL without query, fragment or "
                                      "credentials, e.g. https://acme.okta.com.")
    scopes = list(dict.fromkeys(settings.get("scopes") or ["openid", "email", "profile"]))
    if "openid" not in scopes:
        raise _invalid("oidc.scopes", "must include 'openid'.")
    algorithms = list(dict.fromkeys(settings.get("algorithms") or ["RS256"]))
    refused = [a for a in algorithms if a not in SUPPORTED_ALGORITHMS]
    if refused:
        raise _invalid("oidc.algorithms", f"{', '.join(refused)} not accepted; choose from "
                                          f"{', '.join(SUPPORTED_ALGORITHMS)}.")
    client_id = str(settings.get("client_id") or "").strip()
    if not client_id:
        raise _invalid("oidc.client_id", "required.")
    return {"issuer": issuer, "client_id": client_id, "scopes": scopes,
            "algorithms": algorithms}


@dataclass(frozen=True)
class ConnectionInput:
    """What an admin may set on a connection; None (on update) keeps the current value."""

    name: str | None = None
    oidc: dict[str, Any] | None = None
    saml: dict[str, Any] | None = None
    client_secret: str | None = None
    client_secret_credential: str | None = None
    enabled: bool | None = None
    default_role: Role | None = None
    groups_claim: str | None = None


def _actor_details(actor: Principal | None) -> dict[str, Any]:
    return {"actor_kind": actor.kind if actor else None,
            "actor_id": actor.actor_id if actor else None}


async def _store_secret(db: AsyncSession, ctx: TenantContext, connection_name: str,
                        secret: str, *, keyring: Keyring, actor: Principal | None) -> str:
    """Create or replace the vault credential holding a connection's client secret."""
    name = secret_credential_name(connection_name)
    existing = await CredentialRepository(db, ctx).get_by_name(name)
    if existing is None:
        await create_credential(db, ctx, name=name, kind="custom",
                                values={SECRET_FIELD: secret}, provider="sso",
                                description=f"OIDC client secret of SSO connection "
                                            f"'{connection_name}'",
                                keyring=keyring, actor=actor)
    else:
        await update_credential(db, ctx, existing.id, keyring=keyring, actor=actor,
                                values={SECRET_FIELD: secret})
    return name


async def _check_secret_credential(db: AsyncSession, ctx: TenantContext,
                                   name: str) -> Credential:
    credential = await CredentialRepository(db, ctx).get_by_name(name)
    if credential is None:
        raise _invalid("client_secret_credential", f"this organization has no credential "
                                                   f"named '{name}'.")
    if SECRET_FIELD not in (credential.fields or []):
        raise _invalid("client_secret_credential", f"the credential '{name}' has no field "
                                                   f"'{SECRET_FIELD}'.")
    return credential


async def create_connection(db: AsyncSession, ctx: TenantContext, data: ConnectionInput, *,
                            kind: ConnectionKind, keyring: Keyring,
                            actor: Principal | None,
                            allow_private: bool = False) -> SsoConnection:
    """Create a connection. OIDC needs settings and a client secret (value or credential
    name); SAML needs the IdP's metadata or entity id, SSO URL and certificates
    (saml_signin.check_saml_settings; a metadata URL is fetched through the egress guard).
    Conflict for a taken name. Audited as ``sso.connection_created`` (name, kind, issuer,
    client id; never the secret)."""
    assert data.name is not None
    connections = repo.ConnectionRepository(db, ctx)
    if await connections.get_by_name(data.name) is not None:
        raise Conflict(f"An SSO connection named '{data.name}' already exists; choose another "
                       "name.", details={"field": "name"})
    if (data.saml if kind == ConnectionKind.OIDC else data.oidc) is not None:
        wrong = "saml" if kind == ConnectionKind.OIDC else "oidc"
        raise _invalid(wrong, f"a connection of kind '{kind}' takes '{kind}' settings, "
                              f"not '{wrong}'.")
    if kind == ConnectionKind.SAML:
        if data.saml is None:
            raise _invalid("saml", "a SAML connection needs its 'saml' settings.")
        settings = await saml_signin.resolve_saml_settings(data.saml,
                                                           allow_private=allow_private)
    else:
        settings = check_oidc_settings(data.oidc or {})
    if kind == ConnectionKind.SAML:
        pass  # no secret: the IdP signs, EngineX only verifies
    elif data.client_secret is not None:
        settings["client_secret_credential"] = await _store_secret(
            db, ctx, data.name, data.client_secret, keyring=keyring, actor=actor)
    elif data.client_secret_credential is not None:
        await _check_secret_credential(db, ctx, data.client_secret_credential)
        settings["client_secret_credential"] = data.client_secret_credential
    else:
        raise _invalid("client_secret", "give the client secret (or the name of the org "
                                        "credential holding it in 'client_secret_credential').")
    now = utcnow()
    connection = connections.add(SsoConnection(
        kind=str(kind), name=data.name, enabled=bool(data.enabled), settings=settings,
        default_role=str(data.default_role or Role.VIEWER),
        groups_claim=data.groups_claim or "groups", created_at=now, updated_at=now))
    try:
        await db.flush()
    except IntegrityError as exc:
        raise Conflict(f"An SSO connection named '{data.name}' already exists.",
                       details={"field": "name"}) from exc
    await record(db, ctx, SsoAuditAction.CONNECTION_CREATED, target_kind="sso_connection",
                 target_id=connection.id,
                 details={"name": connection.name, "kind": connection.kind,
                          "issuer": settings.get("issuer") or settings.get("idp_entity_id"),
                          "client_id": settings.get("client_id"),
                          "enabled": connection.enabled,
                          "default_role": connection.default_role},
                 **_actor_details(actor))
    return connection


async def update_connection(db: AsyncSession, ctx: TenantContext, connection_id: uuid.UUID,
                            data: ConnectionInput, *, keyring: Keyring,
                            actor: Principal | None,
                            allow_private: bool = False) -> SsoConnection:
    """Change a connection; fields left None are kept. Audited as
    ``sso.connection_updated`` with the names of the changed fields."""
    connections = repo.ConnectionRepository(db, ctx)
    connection = await connections.access(connection_id)
    changed: list[str] = []
    if data.name is not None and data.name != connection.name:
        if await connections.get_by_name(data.name) is not None:
            raise Conflict(f"An SSO connection named '{data.name}' already exists.",
                           details={"field": "name"})
        connection.name = data.name
        changed.append("name")
    settings = dict(connection.settings)
    if data.oidc is not None:
        if connection.kind != ConnectionKind.OIDC:
            raise _invalid("oidc", "this is not an OIDC connection.")
        settings.update(check_oidc_settings(data.oidc))
        changed.append("settings")
    if data.saml is not None:
        if connection.kind != ConnectionKind.SAML:
            raise _invalid("saml", "this is not a SAML connection.")
        settings = await saml_signin.resolve_saml_settings(data.saml,
                                                           allow_private=allow_private)
        changed.append("settings")
    if data.client_secret is not None:
        settings["client_secret_credential"] = await _store_secret(
            db, ctx, connection.name, data.client_secret, keyring=keyring, actor=actor)
        changed.append("client_secret")
    elif data.client_secret_credential is not None:
        await _check_secret_credential(db, ctx, data.client_secret_credential)
        settings["client_secret_credential"] = data.client_secret_credential
        changed.append("client_secret_credential")
    connection.settings = settings
    for field, value in (("enabled", data.enabled), ("groups_claim", data.groups_claim),
                         ("default_role", str(data.default_role) if data.default_role
                          else None)):
        if value is not None and value != getattr(connection, field):
            setattr(connection, field, value)
            changed.append(field)
    connection.updated_at = utcnow()
    try:
        await db.flush()
    except IntegrityError as exc:
        raise Conflict("An SSO connection with that name already exists.",
                       details={"field": "name"}) from exc
    await record(db, ctx, SsoAuditAction.CONNECTION_UPDATED, target_kind="sso_connection",
                 target_id=connection.id,
                 details={"name": connection.name, "changed": changed,
                          "enabled": connection.enabled},
                 **_actor_details(actor))
    return connection


async def delete_connection(db: AsyncSession, ctx: TenantContext, connection_id: uuid.UUID, *,
                            actor: Principal | None) -> None:
    """Delete a connection and the identities linked through it (their users keep their
    accounts and memberships). The vault credential stays (delete it on the credentials page).
    Audited as ``sso.connection_deleted``."""
    connections = repo.ConnectionRepository(db, ctx)
    connection = await connections.access(connection_id)
    await db.delete(connection)
    await db.flush()
    await record(db, ctx, SsoAuditAction.CONNECTION_DELETED, target_kind="sso_connection",
                 target_id=connection_id, details={"name": connection.name},
                 **_actor_details(actor))


async def list_connections(db: AsyncSession, ctx: TenantContext) -> list[SsoConnection]:
    return await repo.ConnectionRepository(db, ctx).list()


async def access_connection(db: AsyncSession, ctx: TenantContext,
                            connection_id: uuid.UUID) -> SsoConnection:
    return await repo.ConnectionRepository(db, ctx).access(connection_id)


@dataclass(frozen=True)
class TestReport:
    ok: bool
    problems: list[str]
    discovery: dict[str, Any]
    keys: list[dict[str, Any]]


async def test_connection(db: AsyncSession, ctx: TenantContext, connection_id: uuid.UUID, *,
                          cache: OidcCache, allow_private: bool,
                          actor: Principal | None) -> TestReport:
    """Fetch the IdP's discovery document and JWKS now (bypassing the cache, then refreshing
    it) and report what was found and what is wrong. Never sends the client secret. Audited
    as ``sso.connection_tested`` with the outcome."""
    connection = await access_connection(db, ctx, connection_id)
    if connection.kind == ConnectionKind.SAML:
        inspected = await saml_signin.inspect_connection(connection,
                                                         allow_private=allow_private)
        return await _tested(db, ctx, connection, *inspected, actor=actor)
    config = OidcConfig.from_settings(connection.settings)
    problems: list[str] = []
    discovery: dict[str, Any] = {"url": discovery_url(config.issuer)}
    keys: list[dict[str, Any]] = []
    try:
        metadata = await cache.metadata(config.issuer, allow_private=allow_private,
                                        refresh=True)
        discovery.update({name: metadata.get(name) for name in (
            "issuer", "authorization_endpoint", "token_endpoint", "jwks_uri",
            "id_token_signing_alg_values_supported", "code_challenge_methods_supported",
            "scopes_supported", "claims_supported")})
        supported = metadata.get("id_token_signing_alg_values_supported") or []
        if supported and not set(config.algorithms) & set(supported):
            problems.append(f"The IdP signs id_tokens with {', '.join(supported)}; this "
                            f"connection accepts only {', '.join(config.algorithms)}.")
        methods = metadata.get("code_challenge_methods_supported")
        if methods is not None and "S256" not in methods:
            problems.append("The IdP does not list PKCE S256 in "
                            "code_challenge_methods_supported.")
        keyset = await cache.keyset(metadata["jwks_uri"], kid=None, allow_private=allow_private,
                                    refresh=True)
        keys = [{"kid": k.kid, "kty": k.key_type, "alg": k.get("alg"), "use": k.get("use")}
                for k in keyset.keys]
        if not keys:
            problems.append("The IdP's JWKS holds no keys.")
    except OidcError as exc:
        problems.append(exc.message)
    return await _tested(db, ctx, connection, problems, discovery, keys, actor=actor)


async def _tested(db: AsyncSession, ctx: TenantContext, connection: SsoConnection,
                  problems: list[str], discovery: dict[str, Any], keys: list[dict[str, Any]],
                  *, actor: Principal | None) -> TestReport:
    ok = not problems
    await record(db, ctx, SsoAuditAction.CONNECTION_TESTED, target_kind="sso_connection",
                 target_id=connection.id, details={"name": connection.name, "ok": ok},
                 **_actor_details(actor))
    return TestReport(ok=ok, problems=problems, discovery=discovery, keys=keys)


# --- email domains -----------------------------------------------------------------------------


class TxtResolver(Protocol):
    """Looks up DNS TXT records (injectable: tests pass a resolver of their own)."""

    async def txt(self, name: str) -> list[str]: ...


class DnsTxtResolver:
    """TXT lookups through dnspython's asynchronous resolver (the system's name servers)."""

    def __init__(self, lifetime: float = 5.0) -> None:
        self.lifetime = lifetime

    async def txt(self, name: str) -> list[str]:
        import dns.asyncresolver
        import dns.exception
        import dns.resolver

        try:
            answer = await dns.asyncresolver.resolve(name, "TXT", lifetime=self.lifetime)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            return []
        except dns.exception.Timeout:
            raise ValidationFailed(f"The DNS lookup of {name} timed out. Try again in a "
                                   "minute.", code="dns_timeout") from None
        return [b"".join(record.strings).decode("utf-8", "replace") for record in answer]


def normalise_domain(raw: str) -> str:
    """Lowercase, IDNA-encoded, without a trailing dot; ValidationFailed otherwise."""
    value = raw.strip().rstrip(".").lower()
    if "@" in value:
        value = value.rsplit("@", 1)[1]
    try:
        value = value.encode("idna").decode("ascii")
    except UnicodeError:
        raise _invalid("domain", "not a valid domain name.") from None
    if not _DOMAIN.match(value):
        raise _invalid("domain", "a domain name such as acme.com (no scheme, no path).")
    return value


def txt_record_name(domain: EmailDomain) -> str:
    return f"{TXT_RECORD_PREFIX}.{domain.domain}"


def txt_record_value(domain: EmailDomain) -> str:
    return f"{TXT_VALUE_PREFIX}{domain.verification_token}"


def _taken(domain: str) -> Conflict:
    return Conflict(f"The domain {domain} is already verified by another organization: one "
                    "domain belongs to at most one organization. If it is yours, ask the "
                    "platform operator.", code="domain_taken", details={"field": "domain"})


async def claim_domain(db: AsyncSession, ctx: TenantContext, raw: str, *,
                       actor: Principal | None) -> EmailDomain:
    """Claim a domain (pending until verified). Conflict when this organization already
    claimed it, or another organization has verified it. Audited as ``sso.domain_claimed``."""
    domain = normalise_domain(raw)
    domains = repo.DomainRepository(db, ctx)
    if await domains.get_by_domain(domain) is not None:
        raise Conflict(f"This organization has already claimed {domain}.",
                       details={"field": "domain"})
    owner = await repo.verified_domain_org(db, domain)
    if owner is not None and owner != ctx.org_id:
        raise _taken(domain)
    claim = domains.add(EmailDomain(domain=domain, verification_token=new_token()[:43],
                                    created_at=utcnow()))
    try:
        await db.flush()
    except IntegrityError as exc:
        raise Conflict(f"This organization has already claimed {domain}.",
                       details={"field": "domain"}) from exc
    await record(db, ctx, SsoAuditAction.DOMAIN_CLAIMED, target_kind="email_domain",
                 target_id=claim.id, details={"domain": domain}, **_actor_details(actor))
    return claim


async def _mark_verified(db: AsyncSession, ctx: TenantContext, claim: EmailDomain, *,
                         by: uuid.UUID | None, method: str, actor: Principal | None) -> None:
    owner = await repo.verified_domain_org(db, claim.domain)
    if owner is not None and owner != ctx.org_id:
        raise _taken(claim.domain)
    claim.verified_at = utcnow()
    claim.verified_by = by
    try:
        async with db.begin_nested():
            await db.flush()
    except IntegrityError:
        raise _taken(claim.domain) from None
    await record(db, ctx, SsoAuditAction.DOMAIN_VERIFIED, target_kind="email_domain",
                 target_id=claim.id, details={"domain": claim.domain, "method": method},
                 **_actor_details(actor))


async def verify_domain_by_dns(db: AsyncSession, ctx: TenantContext, domain_id: uuid.UUID, *,
                               resolver: TxtResolver, actor: Principal | None) -> EmailDomain:
    """Look up the TXT record ``_enginex-verification.<domain>``; verified when one of its
    values is ``enginex-verification=<token>``. ValidationFailed (with the record to publish)
    when it is missing; Conflict when another organization verified the domain first.
    Audited as ``sso.domain_verified`` (method ``dns``)."""
    claim = await repo.DomainRepository(db, ctx).access(domain_id)
    if claim.verified_at is not None:
        return claim
    values = [v.strip().strip('"') for v in await resolver.txt(txt_record_name(claim))]
    if txt_record_value(claim) not in values:
        raise ValidationFailed(
            f"No TXT record '{txt_record_value(claim)}' was found at {txt_record_name(claim)}. "
            "Publish it at your DNS provider, wait for it to propagate, and verify again.",
            code="domain_not_verified",
            details={"txt_record_name": txt_record_name(claim),
                     "txt_record_value": txt_record_value(claim)})
    user_id = actor.user_id if isinstance(actor, UserPrincipal) else (
        actor.created_by if isinstance(actor, ApiKeyPrincipal) else None)
    await _mark_verified(db, ctx, claim, by=user_id, method="dns", actor=actor)
    return claim


async def verify_domain_as_platform_admin(db: AsyncSession, ctx: TenantContext,
                                          domain_id: uuid.UUID, *,
                                          admin: UserPrincipal) -> EmailDomain:
    """A platform admin vouches for a claim (no DNS). Conflict as above. Audited in the
    organization's log as ``sso.domain_verified`` (method ``platform_admin``)."""
    claim = await repo.DomainRepository(db, ctx).access(domain_id)
    if claim.verified_at is None:
        await _mark_verified(db, ctx, claim, by=admin.user_id, method="platform_admin",
                             actor=admin)
    return claim


async def list_domains(db: AsyncSession, ctx: TenantContext) -> list[EmailDomain]:
    return await repo.DomainRepository(db, ctx).list()


async def delete_domain(db: AsyncSession, ctx: TenantContext, domain_id: uuid.UUID, *,
                        actor: Principal | None) -> None:
    """Remove a claim (verified or not): its users no longer route to this organization's
    SSO and new SSO users of it are no longer provisioned. Audited."""
    domains = repo.DomainRepository(db, ctx)
    claim = await domains.access(domain_id)
    await domains.delete(claim)
    await record(db, ctx, SsoAuditAction.DOMAIN_DELETED, target_kind="email_domain",
                 target_id=domain_id, details={"domain": claim.domain},
                 **_actor_details(actor))


# --- role-mapping rules ------------------------------------------------------------------------


async def list_rules(db: AsyncSession, ctx: TenantContext) -> list[RoleMappingRule]:
    return await repo.RuleRepository(db, ctx).list()


async def create_rule(db: AsyncSession, ctx: TenantContext, *, group: str, role: Role,
                      priority: int, actor: Principal | None) -> RoleMappingRule:
    """Add "members of IdP group ``group`` get ``role``". Conflict when a rule for the same
    group (case-insensitively) exists. Audited as ``sso.role_rule_created``."""
    rules = repo.RuleRepository(db, ctx)
    group = group.strip()
    if any(normalise_group(r.group_name) == normalise_group(group) for r in await rules.list()):
        raise Conflict(f"A rule for the group '{group}' already exists; delete it first to "
                       "change its role.", details={"field": "group"})
    rule = rules.add(RoleMappingRule(group_name=group, role=str(role), priority=priority,
                                     created_at=utcnow()))
    try:
        await db.flush()
    except IntegrityError as exc:
        raise Conflict(f"A rule for the group '{group}' already exists.",
                       details={"field": "group"}) from exc
    await record(db, ctx, SsoAuditAction.RULE_CREATED, target_kind="role_mapping_rule",
                 target_id=rule.id,
                 details={"group": group, "role": str(role), "priority": priority},
                 **_actor_details(actor))
    return rule


async def delete_rule(db: AsyncSession, ctx: TenantContext, rule_id: uuid.UUID, *,
                      actor: Principal | None) -> None:
    rules = repo.RuleRepository(db, ctx)
    rule = await rules.access(rule_id)
    await rules.delete(rule)
    await record(db, ctx, SsoAuditAction.RULE_DELETED, target_kind="role_mapping_rule",
                 target_id=rule_id, details={"group": rule.group_name, "role": rule.role},
                 **_actor_details(actor))


# --- enforcement -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Enforcement:
    require_sso: bool
    break_glass_user_id: uuid.UUID | None


async def get_enforcement(db: AsyncSession, ctx: TenantContext) -> Enforcement:
    org = await get_org(db, ctx.org_id)
    if org is None:
        raise NotFound()
    return Enforcement(org.require_sso, org.sso_break_glass_user_id)


def _may_keep_access(principal: Principal | None, break_glass: uuid.UUID | None,
                     sso_session_org: uuid.UUID | None, org_id: uuid.UUID) -> bool:
    if principal is None:
        return True  # trusted platform code (CLI)
    if isinstance(principal, UserPrincipal):
        return (principal.is_platform_admin or principal.user_id == break_glass
                or sso_session_org == org_id)
    return principal.created_by is not None and principal.created_by == break_glass


async def set_enforcement(db: AsyncSession, ctx: TenantContext, *, require_sso: bool,
                          break_glass_user_id: uuid.UUID | None,
                          actor: Principal | None) -> Enforcement:
    """Require SSO (or stop requiring it) and name the break-glass admin.

    Turning it on needs an enabled connection, and must not lock out the admin doing it: they
    must be signed in through this organization's SSO (their session's ``sso_org_id``), be the
    break-glass admin, or be a platform admin (ValidationFailed otherwise). It then, in this
    transaction: ends the browser sessions of the members (except the break-glass admin and
    sessions this organization's SSO opened) and revokes the API keys created by anyone but
    the break-glass admin (keys minted after a password sign-in). Audited as
    ``sso.enforcement_changed`` with the counts.
    """
    from enginex.auth.repository import ApiKeyRepository

    org = await get_org(db, ctx.org_id)
    if org is None:
        raise NotFound()
    members = repo.MemberRepository(db, ctx)
    if break_glass_user_id is not None:
        membership = await members.get_for_update(break_glass_user_id)
        if membership is None or membership.role != str(Role.ADMIN):
            raise _invalid("break_glass_user_id", "must be an admin of this organization.")
    details: dict[str, Any] = {"require_sso": require_sso,
                               "break_glass_user_id": str(break_glass_user_id)
                               if break_glass_user_id else None}
    if require_sso and not org.require_sso:
        if await repo.ConnectionRepository(db, ctx).first_enabled() is None:
            raise _invalid("require_sso", "enable an SSO connection first (and sign in with "
                                          "it once to check it works).")
        sso_session_org = (await repo.session_sso_org(db, actor.session_id)
                           if isinstance(actor, UserPrincipal) else None)
        if not _may_keep_access(actor, break_glass_user_id, sso_session_org, ctx.org_id):
            raise _invalid("require_sso", "you would lock yourself out: sign in through this "
                                          "organization's SSO first, or name yourself the "
                                          "break-glass admin.")
        exempt = {break_glass_user_id} if break_glass_user_id else set()
        user_ids = [u for u in await members.member_ids() if u not in exempt]
        details["sessions_ended"] = await repo.end_sessions_without_sso(db, user_ids, ctx.org_id)
        now = utcnow()
        revoked = 0
        for key in await ApiKeyRepository(db, ctx).list():
            if key.revoked_at is None and key.created_by not in exempt:
                key.revoked_at = now
                revoked += 1
        details["api_keys_revoked"] = revoked
    org.require_sso = require_sso
    org.sso_break_glass_user_id = break_glass_user_id
    await db.flush()
    await record(db, ctx, SsoAuditAction.ENFORCEMENT_CHANGED, target_kind="organization",
                 target_id=ctx.org_id, details=details, **_actor_details(actor))
    return Enforcement(require_sso, break_glass_user_id)
