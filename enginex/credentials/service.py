"""Credentials of one organization: create, list, read metadata, replace values, delete.

Values are write-only: they are sealed with the organization's data key (``Keyring.seal``)
inside the caller's transaction, and no function here returns them except ``open_values``,
which only the run-time resolver (runtime.py) and key rotation call. Another organization's
credential id raises NotFound exactly like a missing one. Every mutation is audited in the
caller's transaction (``credential.created`` / ``.updated`` / ``.deleted``); the audit details
hold names, field names and allowed hosts, never values.

``allowed_hosts`` (hosts.py) bounds where runs may send a credential; the run-time side
(runtime.py, ``StepSecrets``) enforces it.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.audit.service import record
from enginex.credentials.crypto import Binding, VaultError
from enginex.credentials.hosts import (
    HostPatternError,
    credential_allows,
    normalize_patterns,
    refusal_message,
)
from enginex.credentials.models import Credential
from enginex.credentials.repository import CredentialRepository
from enginex.credentials.vault import Keyring
from enginex.kit.errors import Conflict, NotFound, ValidationFailed
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow
from enginex.tenancy.context import TenantContext
from enginex.tenancy.principal import Principal
from enginex.tools.egress import EgressRefused, check_addresses

PURPOSE = "credential"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
CUSTOM_FIELD_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
MAX_CUSTOM_FIELDS = 20
MAX_VALUE_CHARS = 8192
HINT_MIN_CHARS = 16  # shorter secrets get no hint: 4 characters would be too much of them


@dataclass(frozen=True)
class Kind:
    """A credential type: its secret fields, which of them runs may use, how a header is made.

    ``usable``: fields a tool node may reference as ``{{credentials.NAME.FIELD}}`` (None: all).
    """

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    usable: tuple[str, ...] | None = None
    hint_field: str | None = None


KINDS: dict[str, Kind] = {
    "api_key": Kind(("key",), usable=("key",), hint_field="key"),
    "bearer_token": Kind(("token",), usable=("token",), hint_field="token"),
    "basic_auth": Kind(("username", "password"), usable=("username", "password")),
    "oauth2": Kind(("access_token",), ("refresh_token", "client_secret"),
                   usable=("access_token",)),
    "custom": Kind((), usable=None),
}
OAUTH2_SETTINGS = ("token_url", "client_id", "scope")


class CredentialUnusable(VaultError):
    """A credential cannot be used right now; the message is safe to show and store."""


def binding(credential: Credential) -> Binding:
    return Binding(PURPOSE, credential.tenant_id, credential.id, credential.value_version)


def _invalid(message: str, field: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", details={"field": field})


class _Problems:
    """Collects the ValidationFailed of several independent checks, so that a form reports
    every invalid field at once instead of one per submission."""

    def __init__(self) -> None:
        self.found: list[ValidationFailed] = []

    @contextmanager
    def check(self) -> Iterator[None]:
        try:
            yield
        except ValidationFailed as exc:
            self.found.append(exc)

    def raise_any(self) -> None:
        """Raise the one problem as it is, or several as one ValidationFailed whose message
        lists them all and whose ``details.fields`` maps each field to its message."""
        if len(self.found) == 1:
            raise self.found[0]
        if self.found:
            fields = {str(e.details.get("field")): e.message for e in self.found}
            raise ValidationFailed(" ".join(e.message for e in self.found),
                                   details={"field": next(iter(fields)), "fields": fields})


def check_values(kind: str, values: dict[str, str]) -> list[str]:
    """The sorted field names of ``values`` for a credential of ``kind``; ValidationFailed
    (naming fields, never values) if they do not fit the type."""
    spec = KINDS.get(kind)
    if spec is None:
        raise _invalid(f"must be one of {', '.join(KINDS)}.", "type")
    names = set(values)
    if kind == "custom":
        if not names or len(names) > MAX_CUSTOM_FIELDS:
            raise _invalid(f"a custom credential has 1 to {MAX_CUSTOM_FIELDS} fields.", "values")
        bad = sorted(n for n in names if not re.match(CUSTOM_FIELD_PATTERN, n))
        if bad:
            raise _invalid(f"field names must be lowercase letters, digits and underscores, "
                           f"starting with a letter (not {', '.join(bad)[:200]}).", "values")
    else:
        missing = [f for f in spec.required if f not in names]
        unknown = sorted(names - set(spec.required) - set(spec.optional))
        if missing or unknown:
            allowed = ", ".join([*spec.required, *(f"{o} (optional)" for o in spec.optional)])
            raise _invalid(f"a '{kind}' credential takes the fields {allowed}"
                           + (f"; missing {', '.join(missing)}" if missing else "")
                           + (f"; unknown {', '.join(unknown)[:200]}" if unknown else "") + ".",
                           "values")
    for name, value in values.items():
        if not isinstance(value, str) or not value or len(value) > MAX_VALUE_CHARS:
            raise _invalid(f"'{name}' must be text of 1 to {MAX_VALUE_CHARS} characters.",
                           "values")
        if any(c in value for c in "\r\n\x00"):
            raise _invalid(f"'{name}' must not contain line breaks or NUL characters.", "values")
    return sorted(names)


def check_token_url(url: str, *, allow_private_network: bool) -> None:
    """The checks of the egress guard that need no DNS (scheme, no user info, an address
    literal or ``localhost``): a token URL is saved even while its host does not resolve
    here, and is checked in full, DNS included, at every refresh. Raises EgressRefused."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise EgressRefused(f"not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise EgressRefused("only http:// and https:// URLs with a host are allowed")
    if parsed.userinfo:
        raise EgressRefused("URLs may not contain a user name or password")
    host = parsed.host.strip("[]")
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        if host.lower().rstrip(".") != "localhost":
            return
        addresses = [ipaddress.ip_address("127.0.0.1")]
    check_addresses(host, addresses, allow_private=allow_private_network)


def check_settings(kind: str, settings: dict[str, str | None], *,
                   allow_private_network: bool) -> dict[str, str]:
    """The non-secret settings of a credential (oauth2 only: token_url, client_id, scope).
    The token URL must pass the egress guard. Raises ValidationFailed."""
    given = {k: v for k, v in settings.items() if v}
    if kind != "oauth2":
        if given:
            raise _invalid("only oauth2 credentials take token_url, client_id and scope.",
                           sorted(given)[0])
        return {}
    token_url = given.get("token_url")
    if token_url:
        try:
            check_token_url(token_url, allow_private_network=allow_private_network)
        except EgressRefused as exc:
            raise ValidationFailed(f"token_url: {exc}.", details={"field": "token_url"},
                                   code="egress_refused") from None
    return {k: v for k, v in given.items() if k in OAUTH2_SETTINGS and v is not None}


def check_allowed_hosts(patterns: Sequence[str]) -> list[str]:
    """The normalised host patterns (hosts.py); ValidationFailed naming the bad entry and
    what to write instead."""
    try:
        return normalize_patterns(list(patterns))
    except HostPatternError as exc:
        raise _invalid(f"{exc}.", "allowed_hosts") from None


def _hint(kind: str, values: dict[str, str]) -> str | None:
    field = KINDS[kind].hint_field
    value = values.get(field) if field else None
    if value is None or len(value) < HINT_MIN_CHARS:
        return None
    return "****" + value[-4:]


async def _seal(db: AsyncSession, keyring: Keyring, credential: Credential,
                values: dict[str, str]) -> None:
    plaintext = json.dumps(values, separators=(",", ":"), sort_keys=True).encode()
    credential.ciphertext, credential.key_version = await keyring.seal(db, binding(credential),
                                                                       plaintext)


async def open_values(db: AsyncSession, credential: Credential,
                      keyring: Keyring) -> dict[str, str]:
    """Decrypt a credential's secret fields. For the run-time resolver and rotation only:
    never return the result from a route. Raises CredentialUnusable with a safe message."""
    try:
        plaintext = await keyring.open(db, binding(credential), credential.ciphertext)
    except VaultError as exc:
        raise CredentialUnusable(
            f"The credential '{credential.name}' cannot be decrypted ({exc}). An organization "
            "admin can store its value again.") from None
    values = json.loads(plaintext)
    assert isinstance(values, dict)
    return {str(k): str(v) for k, v in values.items()}


async def open_for_admin_use(db: AsyncSession, ctx: TenantContext, credential: Credential, *,
                             keyring: Keyring, url: str | None,
                             details: dict[str, Any]) -> dict[str, str]:
    """Decrypt ``credential`` of ``ctx``'s organization for a use outside a run step (an
    admin's connection test or tool discovery), in the caller's transaction.

    ``url``: where the value will be sent; the credential's allowed hosts are checked against
    it first (None: nothing is sent to a host). A refusal is audited as
    ``credential.use_refused`` and raised as CredentialUnusable with the fix; an opened value
    is audited as ``credential.used`` (``details`` say for what; never values) and marks the
    credential used. Run steps use ``credentials.runtime.StepSecrets`` instead.
    """
    details = {"name": credential.name, **details}
    if url is not None and not credential_allows(credential, url):
        await record(db, ctx, "credential.use_refused", target_kind="credential",
                     target_id=credential.id, details={**details, "reason": "host not allowed"})
        raise CredentialUnusable(refusal_message(credential.name, url))
    values = await open_values(db, credential, keyring)
    credential.last_used_at = utcnow()
    await record(db, ctx, "credential.used", target_kind="credential", target_id=credential.id,
                 details=details)
    return values


async def reseal(db: AsyncSession, credential: Credential, values: dict[str, str],
                 keyring: Keyring) -> None:
    """Seal ``values`` again under the primary data key (rotation; same value version)."""
    await _seal(db, keyring, credential, values)


async def list_credentials(db: AsyncSession, ctx: TenantContext) -> list[Credential]:
    return await CredentialRepository(db, ctx).list()


async def access_credential(db: AsyncSession, ctx: TenantContext,
                            credential_id: uuid.UUID) -> Credential:
    """The credential; NotFound for a missing id and for another organization's alike."""
    return await CredentialRepository(db, ctx).access(credential_id)


def _actor(actor: Principal | None) -> dict[str, Any]:
    return {"actor_kind": actor.kind if actor else None,
            "actor_id": actor.actor_id if actor else None}


async def create_credential(db: AsyncSession, ctx: TenantContext, *, name: str, kind: str,
                            values: dict[str, str], description: str = "", provider: str = "",
                            settings: dict[str, str | None] | None = None,
                            expires_at: datetime | None = None, keyring: Keyring,
                            actor: Principal | None, allowed_hosts: Sequence[str] = (),
                            allow_private_network: bool = False) -> Credential:
    """Create a credential and seal its values. Conflict if the name is taken in this
    organization; ValidationFailed for values, settings or allowed hosts that do not fit.
    Audited as ``credential.created`` (name, type, provider, field names, allowed hosts)."""
    repo = CredentialRepository(db, ctx)
    taken = Conflict(f"A credential named '{name}' already exists in this organization; "
                     "choose another name or update that one.", details={"field": "name"})
    problems = _Problems()
    with problems.check():
        if not re.match(NAME_PATTERN, name):
            raise _invalid("1-64 lowercase letters, digits, '-' or '_', starting with a letter "
                           "or digit.", "name")
    with problems.check():
        fields = check_values(kind, values)
    with problems.check():
        config = check_settings(kind, settings or {},
                                allow_private_network=allow_private_network)
    with problems.check():
        hosts = check_allowed_hosts(allowed_hosts)
    with problems.check():
        if expires_at is not None and kind != "oauth2":
            raise _invalid("only oauth2 credentials expire.", "expires_at")
    problems.raise_any()
    if await repo.get_by_name(name) is not None:
        raise taken
    now = utcnow()
    credential = Credential(
        tenant_id=ctx.org_id, id=new_id(), name=name, kind=kind, description=description,
        provider=provider, fields=fields, config=config, allowed_hosts=hosts,
        hint=_hint(kind, values),
        value_version=1, expires_at=expires_at,
        created_by_kind=actor.kind if actor else "system",
        created_by=actor.actor_id if actor else None, created_at=now, updated_at=now)
    await _seal(db, keyring, credential, values)  # before add: no flush without a ciphertext
    repo.add(credential)
    try:
        await db.flush()
    except IntegrityError as exc:
        raise taken from exc
    await record(db, ctx, "credential.created", target_kind="credential", target_id=credential.id,
                 details={"name": name, "type": kind, "provider": provider, "fields": fields,
                          "allowed_hosts": hosts},
                 **_actor(actor))
    return credential


UNCHANGED: Any = object()


async def update_credential(db: AsyncSession, ctx: TenantContext, credential_id: uuid.UUID, *,
                            keyring: Keyring, actor: Principal | None,
                            name: str = UNCHANGED, description: str = UNCHANGED,
                            provider: str = UNCHANGED, values: dict[str, str] = UNCHANGED,
                            settings: dict[str, str | None] = UNCHANGED,
                            expires_at: datetime | None = UNCHANGED,
                            allowed_hosts: Sequence[str] = UNCHANGED,
                            allow_private_network: bool = False) -> Credential:
    """Change metadata and/or replace all values (``values`` is the complete new set; the
    value version increases, so an older ciphertext can never be put back). Arguments left
    ``UNCHANGED`` keep their value; ``allowed_hosts`` replaces the whole list. NotFound,
    Conflict, ValidationFailed as for create. Audited as ``credential.updated`` (what
    changed, the new allowed hosts when they changed; never the values)."""
    repo = CredentialRepository(db, ctx)
    credential = await repo.get_for_update(credential_id)
    if credential is None:
        raise NotFound()
    changed: list[str] = []
    if name is not UNCHANGED and name != credential.name:
        if not re.match(NAME_PATTERN, name):
            raise _invalid("1-64 lowercase letters, digits, '-' or '_', starting with a "
                           "letter or digit.", "name")
        if await repo.get_by_name(name) is not None:
            raise Conflict(f"A credential named '{name}' already exists in this organization.",
                           details={"field": "name"})
        credential.name = name
        changed.append("name")
    for field, value in (("description", description), ("provider", provider)):
        if value is not UNCHANGED and value != getattr(credential, field):
            setattr(credential, field, value)
            changed.append(field)
    if settings is not UNCHANGED:
        merged = {**credential.config, **settings}
        credential.config = check_settings(credential.kind, merged,
                                           allow_private_network=allow_private_network)
        changed.append("settings")
    details: dict[str, Any] = {}
    if allowed_hosts is not UNCHANGED:
        hosts = check_allowed_hosts(allowed_hosts)
        if hosts != list(credential.allowed_hosts or []):
            details["allowed_hosts"] = hosts
            details["previous_allowed_hosts"] = list(credential.allowed_hosts or [])
            credential.allowed_hosts = hosts
            changed.append("allowed_hosts")
    if expires_at is not UNCHANGED:
        if expires_at is not None and credential.kind != "oauth2":
            raise _invalid("only oauth2 credentials expire.", "expires_at")
        credential.expires_at = expires_at
        changed.append("expires_at")
    if values is not UNCHANGED:
        credential.fields = check_values(credential.kind, values)
        credential.hint = _hint(credential.kind, values)
        credential.value_version += 1
        if expires_at is UNCHANGED:
            credential.expires_at = None  # the new token's expiry is unknown unless given
        await _seal(db, keyring, credential, values)
        changed.append("values")
    credential.updated_at = utcnow()
    try:
        await db.flush()
    except IntegrityError as exc:
        raise Conflict(f"A credential named '{credential.name}' already exists in this "
                       "organization.", details={"field": "name"}) from exc
    await record(db, ctx, "credential.updated", target_kind="credential",
                 target_id=credential.id,
                 details={"name": credential.name, "changed": changed, **details},
                 **_actor(actor))
    return credential


async def delete_credential(db: AsyncSession, ctx: TenantContext, credential_id: uuid.UUID, *,
                            actor: Principal | None) -> None:
    """Delete a credential (its ciphertext goes with the row). NotFound as above. Audited as
    ``credential.deleted``."""
    repo = CredentialRepository(db, ctx)
    credential = await repo.access(credential_id)
    await repo.delete(credential)
    await db.flush()
    await record(db, ctx, "credential.deleted", target_kind="credential", target_id=credential_id,
                 details={"name": credential.name}, **_actor(actor))
