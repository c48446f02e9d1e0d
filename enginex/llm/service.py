"""Per-organization LLM configuration: the quick setup (``llm_settings``, with the encryption
of its API key), named providers and model aliases (keys read from org credentials by name),
and ``provider_for``, which resolves an llm node's model to a provider (docs/LLM.md).

The API key is a vault secret: sealed with AES-256-GCM under the organization's data key
(``enginex.credentials``, docs/CREDENTIALS.md), bound to (tenant, "llm_settings.api_key"), so
a ciphertext copied into another organization's row does not decrypt, master-key rotation
re-wraps the data key that protects it and tenant-key rotation re-encrypts it. Keys saved by
the interim format (``0x01``: a key derived from the master key, AD = tenant id) stay readable
until they are saved again or a rotation re-encrypts them.

Callers pass the master key, or an ``LLMKeyBox`` built once per process from it::

    key_box = LLMKeyBox(load_master_key(settings))
    provider = await provider_for(db, ctx, manifest, key_box=key_box,
                                  allow_private_network=settings.allow_private_network)
    try:
        response = await provider.complete(request)
    finally:
        await close_provider(provider)
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_object_session

from enginex.agents.manifest import AgentManifest, LLMNode
from enginex.audit.service import record
from enginex.credentials.crypto import Binding, VaultError, is_sealed
from enginex.credentials.repository import CredentialRepository
from enginex.credentials.service import CredentialUnusable, open_for_admin_use
from enginex.credentials.vault import Keyring, previous_master_key
from enginex.kit.crypto import derive_key
from enginex.kit.errors import Conflict, NotFound, ValidationFailed
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow
from enginex.llm.base import CompletionRequest, LLMError, LLMProvider, LLMResponse
from enginex.llm.models import LLMProviderConfig, LLMSettings, ModelAlias
from enginex.llm.providers import (
    ANTHROPIC_DEFAULT_BASE_URL,
    DEFAULT_TIMEOUT,
    AnthropicProvider,
    OpenAICompatibleProvider,
    ScriptedProvider,
)
from enginex.llm.repository import AliasRepository, LLMSettingsRepository, ProviderRepository
from enginex.llm.schemas import ALIAS_NAME_PATTERN, ALIAS_NAME_RULE, PROVIDER_NAME_PATTERN
from enginex.tenancy.context import TenantContext
from enginex.tenancy.principal import Principal
from enginex.tools.base import ToolError
from enginex.tools.egress import EgressRefused, check_url_async

if TYPE_CHECKING:
    from enginex.credentials.runtime import StepSecrets

PROVIDERS: tuple[str, ...] = ("scripted", "openai_compatible", "anthropic")
BASE_URL_MISSING = (
    "an openai_compatible provider needs the base URL of its API, the part before "
    "/chat/completions: https://api.openai.com/v1 for OpenAI, http://localhost:11434/v1 for "
    "Ollama, or your gateway's address. The anthropic kind may leave it empty (Anthropic's own "
    "API); scripted takes none.")
API_KEY_PURPOSE = "llm_settings.api_key"
_LEGACY_FORMAT = b"\x01"
_NONCE_BYTES = 12


class KeyDecryptionError(Exception):
    """A stored key does not decrypt (other tenant's ciphertext, tampering, unknown master key,
    destroyed data key)."""


class LLMKeyBox:
    """The organization's provider API key, sealed in the vault under its data key.

    ``seal``/``open`` run in the caller's transaction (the session bound to the tenant).
    ``decrypt`` is synchronous: it reads interim-format keys, and vault keys whose data key
    this process has cached (the keyring is shared per master key); otherwise it raises
    KeyDecryptionError -- use ``open``.
    """

    def __init__(self, master_key: bytes, *, previous: bytes | None = None,
                 keyring: Keyring | None = None) -> None:
        if previous is None:
            previous = previous_master_key()
        self.keyring = keyring or Keyring.for_master(master_key, previous)
        self._legacy = [AESGCM(derive_key(key, "llm-settings"))
                        for key in (master_key, previous) if key is not None]

    @staticmethod
    def binding(tenant_id: uuid.UUID) -> Binding:
        return Binding(API_KEY_PURPOSE, tenant_id, tenant_id)

    async def seal(self, db: AsyncSession, tenant_id: uuid.UUID, api_key: str) -> bytes:
        blob, _version = await self.keyring.seal(db, self.binding(tenant_id), api_key.encode())
        return blob

    async def open(self, db: AsyncSession | None, tenant_id: uuid.UUID, blob: bytes) -> str:
        """Raises KeyDecryptionError when ``blob`` is not ``tenant_id``'s key."""
        if not is_sealed(blob) or db is None:
            return self.decrypt(tenant_id, blob)
        try:
            return (await self.keyring.open(db, self.binding(tenant_id), blob)).decode()
        except VaultError as exc:
            raise KeyDecryptionError(str(exc)) from None

    def decrypt(self, tenant_id: uuid.UUID, blob: bytes) -> str:
        """Raises KeyDecryptionError when ``blob`` was not encrypted for ``tenant_id`` (or its
        data key is not cached in this process)."""
        if is_sealed(blob):
            try:
                plain = self.keyring.open_cached(self.binding(tenant_id), blob)
            except VaultError as exc:
                raise KeyDecryptionError(str(exc)) from None
            if plain is None:
                raise KeyDecryptionError("the organization's data key is not loaded in this "
                                         "process; use LLMKeyBox.open")
            return plain.decode()
        return self.decrypt_interim(tenant_id, blob)

    def decrypt_interim(self, tenant_id: uuid.UUID, blob: bytes) -> str:
        """The interim format ``0x01 || nonce(12) || ciphertext+tag``, AD = tenant id."""
        if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _LEGACY_FORMAT:
            raise KeyDecryptionError("unknown ciphertext format")
        nonce, sealed = blob[1:1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES:]
        for aead in self._legacy:
            try:
                return aead.decrypt(nonce, sealed, tenant_id.bytes).decode()
            except InvalidTag:
                continue
        raise KeyDecryptionError("the stored API key does not decrypt for this organization")


async def get_llm_settings(db: AsyncSession, ctx: TenantContext) -> LLMSettings | None:
    """The organization's settings, or None if it never saved any (then: scripted)."""
    return await LLMSettingsRepository(db, ctx).get_settings()


async def update_llm_settings(db: AsyncSession, ctx: TenantContext, *, provider: str,
                              base_url: str | None, default_model: str | None,
                              api_key: str | None, temperature: float | None,
                              max_tokens: int | None, actor: Principal | None,
                              key_box: LLMKeyBox, allow_private_network: bool = False
                              ) -> LLMSettings:
    """Create or replace the organization's LLM settings.

    ``api_key``: None keeps the stored key, ``""`` clears it, anything else replaces it
    (encrypted). ``base_url`` is required for ``openai_compatible``, optional for
    ``anthropic`` (default: the Anthropic API) and ignored for ``scripted``; it must pass the
    egress guard unless ``allow_private_network``. Raises ValidationFailed with the field at
    fault. Audited as ``llm_settings.updated`` (the key itself is never logged: the entry only
    says whether it was set, kept or cleared). ``actor`` is recorded through ``ctx``.
    """
    if provider not in PROVIDERS:
        raise ValidationFailed(f"provider: must be one of {', '.join(PROVIDERS)}.",
                               details={"field": "provider"})
    if provider == "scripted":
        base_url = None
        default_model = default_model or "scripted"
    else:
        if not default_model:
            raise ValidationFailed(f"default_model: required for the '{provider}' provider "
                                   "(for example gpt-4o-mini or claude-sonnet-4-5).",
                                   details={"field": "default_model"})
        if provider == "openai_compatible" and not base_url:
            raise ValidationFailed(f"base_url: {BASE_URL_MISSING}",
                                   details={"field": "base_url"})
    if base_url:
        base_url = base_url.rstrip("/")
        try:
            await check_url_async(base_url, allow_private=allow_private_network)
        except EgressRefused as exc:
            raise ValidationFailed(f"base_url: {exc}.", details={"field": "base_url"},
                                   code="egress_refused") from None
    repo = LLMSettingsRepository(db, ctx)
    row = await repo.get_settings()
    if row is None:
        row = repo.add(LLMSettings())
    row.provider = provider
    row.base_url = base_url
    row.default_model = default_model
    row.temperature = temperature
    row.max_tokens = max_tokens
    row.updated_at = utcnow()
    key_change = "kept"
    if api_key == "":
        row.api_key_ciphertext, key_change = None, "cleared"
    elif api_key is not None:
        row.api_key_ciphertext, key_change = await key_box.seal(db, ctx.org_id, api_key), "set"
    await db.flush()
    details: dict[str, Any] = {"provider": provider, "base_url": base_url,
                               "default_model": default_model, "temperature": temperature,
                               "max_tokens": max_tokens, "api_key": key_change}
    await record(db, ctx, "llm_settings.updated", target_kind="llm_settings",
                 target_id=ctx.org_id, details=details,
                 actor_kind=actor.kind if actor else None,
                 actor_id=actor.actor_id if actor else None)
    return row


async def provider_from_settings(ctx: TenantContext, row: LLMSettings | None, *,
                                 scripted_replies: dict[str, list[Any]] | None,
                                 allow_private_network: bool, key_box: LLMKeyBox,
                                 request_timeout: float = DEFAULT_TIMEOUT,
                                 db: AsyncSession | None = None) -> LLMProvider:
    """The provider a settings row describes (scripted when ``row`` is None).

    The key is opened in ``db`` (default: the session ``row`` was loaded in, which is bound to
    the organization). Raises LLMError when the stored key does not decrypt or the base URL is
    refused by the egress guard (checked again here: DNS may have changed since the settings
    were saved).
    """
    if row is None or row.provider == "scripted":
        return ScriptedProvider(scripted_replies)
    api_key: str | None = None
    if row.api_key_ciphertext is not None:
        try:
            api_key = await key_box.open(db or async_object_session(row), ctx.org_id,
                                         row.api_key_ciphertext)
        except KeyDecryptionError:
            raise LLMError("The organization's LLM API key cannot be decrypted (was the "
                           "master key changed?). Set the key again in LLM settings.") from None
    if row.base_url:
        try:
            await check_url_async(row.base_url, allow_private=allow_private_network)
        except EgressRefused as exc:
            raise LLMError(f"The LLM base URL is refused: {exc}.") from None
    common: dict[str, Any] = {"timeout": request_timeout, "temperature": row.temperature,
                              "max_tokens": row.max_tokens,
                              "allow_private_network": allow_private_network}
    if row.provider == "anthropic":
        return AnthropicProvider(api_key, row.base_url, row.default_model, **common)
    if row.provider == "openai_compatible" and row.base_url:
        return OpenAICompatibleProvider(row.base_url, api_key, row.default_model, **common)
    raise LLMError(f"The organization's LLM settings name an unusable provider "
                   f"'{row.provider}'. Save the LLM settings again.")


# --- providers and model aliases ---------------------------------------------------------------

UNCHANGED: Any = object()
SETTINGS_PAGE = "Settings → LLM"
# Credential types that can hold a provider key, and the field that holds it.
KEY_FIELDS: dict[str, tuple[str, ...]] = {"api_key": ("key",), "bearer_token": ("token",),
                                          "custom": ("api_key", "value")}


def _actor(actor: Principal | None) -> dict[str, Any]:
    return {"actor_kind": actor.kind if actor else None,
            "actor_id": actor.actor_id if actor else None}


def _invalid(field: str, message: str, *, code: str | None = None) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", details={"field": field}, code=code)


def _key_field(kind: str, fields: list[str] | tuple[str, ...]) -> str | None:
    """The field of a credential of ``kind`` (with ``fields``) that holds a provider key."""
    return next((f for f in KEY_FIELDS.get(kind, ()) if f in fields), None)


async def list_providers(db: AsyncSession, ctx: TenantContext) -> list[LLMProviderConfig]:
    return await ProviderRepository(db, ctx).list()


async def access_provider(db: AsyncSession, ctx: TenantContext,
                          provider_id: uuid.UUID) -> LLMProviderConfig:
    """The provider; NotFound for a missing id and for another organization's alike."""
    return await ProviderRepository(db, ctx).access(provider_id)


async def list_aliases(db: AsyncSession, ctx: TenantContext
                       ) -> list[tuple[ModelAlias, LLMProviderConfig]]:
    """The organization's aliases with their providers, by alias name."""
    providers = {p.id: p for p in await ProviderRepository(db, ctx).list()}
    return [(a, providers[a.provider_id]) for a in await AliasRepository(db, ctx).list()
            if a.provider_id in providers]


async def alias_names_by_provider(db: AsyncSession, ctx: TenantContext
                                  ) -> dict[uuid.UUID, list[str]]:
    found: dict[uuid.UUID, list[str]] = {}
    for alias in await AliasRepository(db, ctx).list():
        found.setdefault(alias.provider_id, []).append(alias.name)
    return found


def _allowed_models(models: list[str]) -> list[str]:
    return list(dict.fromkeys(m.strip() for m in models if m.strip()))


async def _checked_settings(db: AsyncSession, ctx: TenantContext, *, kind: str,
                            base_url: str | None, credential_name: str | None,
                            allow_private_network: bool) -> str | None:
    """Check a provider's kind, base URL and credential; returns the normalised base URL.
    Raises ValidationFailed naming the field (``egress_refused`` for a refused URL)."""
    if kind not in PROVIDERS:
        raise _invalid("kind", f"must be one of {', '.join(PROVIDERS)}.")
    if kind == "scripted":
        if base_url:
            raise _invalid("base_url", "the scripted provider takes no base URL; leave it "
                                       "empty.")
        if credential_name:
            raise _invalid("credential_name", "the scripted provider takes no credential; "
                                              "leave it empty.")
        return None
    if kind == "openai_compatible" and not base_url:
        raise _invalid("base_url", BASE_URL_MISSING)
    if kind == "anthropic" and not credential_name:
        raise _invalid("credential_name", "required for an anthropic provider: name the "
                                          "organization credential that holds the API key.")
    if base_url:
        base_url = base_url.rstrip("/")
        try:
            await check_url_async(base_url, allow_private=allow_private_network)
        except EgressRefused as exc:
            raise _invalid("base_url", f"{exc}.", code="egress_refused") from None
    if credential_name:
        credential = await CredentialRepository(db, ctx).get_by_name(credential_name)
        if credential is None:
            raise _invalid("credential_name", f"this organization has no credential named "
                                              f"'{credential_name}'. Create it on Settings → "
                                              "Credentials first, or fix the name.")
        if _key_field(credential.kind, credential.fields) is None:
            raise _invalid("credential_name", f"the credential '{credential_name}' is of type "
                                              f"'{credential.kind}'; a provider key needs an "
                                              "api_key or bearer_token credential, or a custom "
                                              "one with an 'api_key' or 'value' field.")
    return base_url


async def create_provider(db: AsyncSession, ctx: TenantContext, *, name: str, kind: str,
                          base_url: str | None, credential_name: str | None,
                          allowed_models: list[str], actor: Principal | None,
                          allow_private_network: bool = False) -> LLMProviderConfig:
    """Add a provider. Conflict if the name is taken in this organization; ValidationFailed
    for a missing base URL or credential, a base URL refused by the egress guard, or a
    credential that cannot hold a key. Audited as ``llm_provider.created`` (name, kind, base
    URL, credential name, allowed models; never a key)."""
    repo = ProviderRepository(db, ctx)
    taken = Conflict(f"A provider named '{name}' already exists in this organization; choose "
                     "another name or change that one.", details={"field": "name"})
    base_url = await _checked_settings(db, ctx, kind=kind, base_url=base_url,
                                       credential_name=credential_name,
                                       allow_private_network=allow_private_network)
    if await repo.get_by_name(name) is not None:
        raise taken
    now = utcnow()
    provider = repo.add(LLMProviderConfig(
        id=new_id(), name=name, kind=kind, base_url=base_url, credential_name=credential_name,
        allowed_models=_allowed_models(allowed_models), created_at=now, updated_at=now))
    try:
        await db.flush()
    except IntegrityError as exc:
        raise taken from exc
    await record(db, ctx, "llm_provider.created", target_kind="llm_provider",
                 target_id=provider.id, details=_provider_details(provider), **_actor(actor))
    return provider


def _provider_details(provider: LLMProviderConfig) -> dict[str, Any]:
    return {"name": provider.name, "kind": provider.kind, "base_url": provider.base_url,
            "credential_name": provider.credential_name,
            "allowed_models": list(provider.allowed_models)}


def _not_allowed(provider: LLMProviderConfig, model: str, where: str) -> str:
    return (f"the model '{model}' is not among the allowed models of the provider "
            f"'{provider.name}' ({', '.join(provider.allowed_models)}). {where}")


async def update_provider(db: AsyncSession, ctx: TenantContext, provider_id: uuid.UUID, *,
                          actor: Principal | None, allow_private_network: bool = False,
                          name: str = UNCHANGED, kind: str = UNCHANGED,
                          base_url: str | None = UNCHANGED,
                          credential_name: str | None = UNCHANGED,
                          allowed_models: list[str] = UNCHANGED) -> LLMProviderConfig:
    """Change a provider; arguments left ``UNCHANGED`` keep their value. NotFound (missing or
    another organization's), Conflict (name taken), ValidationFailed as for create, and also
    when the new allowed models leave out a model an alias of this provider uses. Audited as
    ``llm_provider.updated`` (what changed and the new values; never a key)."""
    repo = ProviderRepository(db, ctx)
    provider = await repo.access(provider_id)
    changed: list[str] = []
    if name is not UNCHANGED and name != provider.name:
        if await repo.get_by_name(name) is not None:
            raise Conflict(f"A provider named '{name}' already exists in this organization.",
                           details={"field": "name"})
        provider.name = name
        changed.append("name")
    new_kind = provider.kind if kind is UNCHANGED else kind
    new_credential = provider.credential_name if credential_name is UNCHANGED \
        else credential_name
    new_base = provider.base_url if base_url is UNCHANGED else base_url
    if new_kind == "scripted" and kind is not UNCHANGED:
        # Switching to scripted drops what it does not use, unless it was given explicitly.
        new_base = None if base_url is UNCHANGED else base_url
        new_credential = None if credential_name is UNCHANGED else credential_name
    if (new_kind, new_base, new_credential) != (provider.kind, provider.base_url,
                                                provider.credential_name) or \
            base_url is not UNCHANGED or credential_name is not UNCHANGED:
        checked = await _checked_settings(db, ctx, kind=new_kind, base_url=new_base,
                                          credential_name=new_credential,
                                          allow_private_network=allow_private_network)
        for field, value in (("kind", new_kind), ("base_url", checked),
                             ("credential_name", new_credential)):
            if value != getattr(provider, field):
                setattr(provider, field, value)
                changed.append(field)
    if allowed_models is not UNCHANGED:
        models = _allowed_models(allowed_models)
        if models:
            stranded = [a for a in await AliasRepository(db, ctx).using(provider.id)
                        if a.model not in models]
            if stranded:
                listed = ", ".join(f"{a.name} ({a.model})" for a in stranded)
                raise _invalid("allowed_models", f"the aliases {listed} use models not in the "
                                                 "new list; add those models or change the "
                                                 "aliases first.")
        if models != list(provider.allowed_models):
            provider.allowed_models = models
            changed.append("allowed_models")
    provider.updated_at = utcnow()
    try:
        await db.flush()
    except IntegrityError as exc:
        raise Conflict(f"A provider named '{provider.name}' already exists in this "
                       "organization.", details={"field": "name"}) from exc
    await record(db, ctx, "llm_provider.updated", target_kind="llm_provider",
                 target_id=provider.id,
                 details={**_provider_details(provider), "changed": changed}, **_actor(actor))
    return provider


async def delete_provider(db: AsyncSession, ctx: TenantContext, provider_id: uuid.UUID, *,
                          actor: Principal | None) -> None:
    """Delete a provider. NotFound as above; Conflict naming the aliases that still use it.
    Audited as ``llm_provider.deleted``."""
    repo = ProviderRepository(db, ctx)
    provider = await repo.access(provider_id)
    users = await AliasRepository(db, ctx).using(provider.id)
    if users:
        names = ", ".join(a.name for a in users)
        raise Conflict(f"The provider '{provider.name}' is used by the model aliases {names}; "
                       "point them at another provider or delete them first.",
                       details={"aliases": [a.name for a in users]})
    name = provider.name
    await repo.delete(provider)
    await db.flush()
    await record(db, ctx, "llm_provider.deleted", target_kind="llm_provider",
                 target_id=provider_id, details={"name": name}, **_actor(actor))


def check_alias_name(name: str) -> None:
    """Raises ValidationFailed unless ``name`` is a valid alias name."""
    if not re.fullmatch(ALIAS_NAME_PATTERN, name):
        raise _invalid("alias", f"'{name[:60]}' is not a valid alias name: use {ALIAS_NAME_RULE} "
                                "(for example default, fast, smart).")


async def set_alias(db: AsyncSession, ctx: TenantContext, name: str, *, provider: str,
                    model: str, temperature: float | None, max_tokens: int | None,
                    actor: Principal | None) -> tuple[ModelAlias, LLMProviderConfig, bool]:
    """Create or replace the alias ``name``: (alias, provider, created). ValidationFailed for
    an invalid name, an unknown provider name, or a model outside the provider's non-empty
    allowed models. Audited as ``model_alias.set``."""
    check_alias_name(name)
    target = await ProviderRepository(db, ctx).get_by_name(provider)
    if target is None:
        names = await ProviderRepository(db, ctx).names()
        known = f"its providers: {', '.join(names)}" if names else "it has no providers yet"
        raise _invalid("provider", f"this organization has no provider named '{provider}' "
                                   f"({known}).")
    if target.allowed_models and model not in target.allowed_models:
        raise _invalid("model", _not_allowed(target, model, "Pick one of them, or add the "
                                                            "model to the provider first."))
    repo = AliasRepository(db, ctx)
    alias = await repo.get_by_name(name)
    created = alias is None
    if alias is None:
        alias = repo.add(ModelAlias(name=name))
    alias.provider_id = target.id
    alias.model = model
    alias.temperature = temperature
    alias.max_tokens = max_tokens
    alias.updated_at = utcnow()
    await db.flush()
    await record(db, ctx, "model_alias.set", target_kind="model_alias", target_id=name,
                 details={"alias": name, "provider": target.name,
                          "provider_id": str(target.id), "model": model,
                          "temperature": temperature, "max_tokens": max_tokens,
                          "created": created}, **_actor(actor))
    return alias, target, created


async def delete_alias(db: AsyncSession, ctx: TenantContext, name: str, *,
                       actor: Principal | None) -> None:
    """Delete an alias; NotFound when this organization has none of that name. Audited as
    ``model_alias.deleted``."""
    repo = AliasRepository(db, ctx)
    alias = await repo.get_by_name(name) if re.fullmatch(ALIAS_NAME_PATTERN, name) else None
    if alias is None:
        raise NotFound()
    details = {"alias": name, "provider_id": str(alias.provider_id), "model": alias.model}
    await repo.delete(alias)
    await db.flush()
    await record(db, ctx, "model_alias.deleted", target_kind="model_alias", target_id=name,
                 details=details, **_actor(actor))


# --- resolution --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolution:
    """What an llm node's ``model`` resolved to through the providers table (rules a and b).
    Plain values: usable after the session that read them has closed."""

    requested: str
    provider_id: uuid.UUID
    provider: str
    kind: str
    base_url: str | None
    credential_name: str | None
    model: str
    alias: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


async def resolve_model(db: AsyncSession, ctx: TenantContext, requested: str
                        ) -> Resolution | None:
    """Resolve a node's model name in ``ctx``'s organization:

    a. an alias of the organization → its provider, model, temperature and max_tokens;
    b. ``<provider>/<model>`` where the organization has that provider → that provider and
       model;
    c. otherwise None: the quick setup (``llm_settings``) serves it, as before providers
       existed. A ``x/y`` name whose ``x`` is not a provider is an error when the organization
       has providers (listing its own provider names), and quick setup when it has none.

    Raises LLMError (safe to store) for a model outside the provider's non-empty allowed
    models. Only the organization's own aliases and providers are read (tenant-scoped).
    """
    requested = requested or "default"
    alias = await AliasRepository(db, ctx).get_by_name(requested) \
        if re.fullmatch(ALIAS_NAME_PATTERN, requested) else None
    providers = ProviderRepository(db, ctx)
    where = (f"Change the allowed models or the alias on {SETTINGS_PAGE} "
             f"(/o/{ctx.org_slug}/settings/llm).")
    if alias is not None:
        provider = await providers.get(alias.provider_id)
        if provider is None:  # unreachable: the foreign key holds it
            raise LLMError(f"The model alias '{requested}' points at a provider that no longer "
                           f"exists. Set the alias again on {SETTINGS_PAGE}.")
        if provider.allowed_models and alias.model not in provider.allowed_models:
            raise LLMError(f"Model alias '{requested}': " + _not_allowed(provider, alias.model,
                                                                         where))
        return Resolution(requested, provider.id, provider.name, provider.kind,
                          provider.base_url, provider.credential_name, alias.model,
                          alias=alias.name, temperature=alias.temperature,
                          max_tokens=alias.max_tokens)
    if "/" not in requested:
        return None
    provider_name, model = requested.split("/", 1)
    provider = await providers.get_by_name(provider_name) \
        if re.fullmatch(PROVIDER_NAME_PATTERN, provider_name) else None
    if provider is None:
        names = await providers.names()
        if not names:
            return None
        raise LLMError(f"The model '{requested}' names the provider '{provider_name}', which "
                       f"this organization does not have. Its providers are: "
                       f"{', '.join(names)}; or use a model alias ({SETTINGS_PAGE}).")
    if not model:
        raise LLMError(f"The model '{requested}' names no model after the provider: write "
                       f"'{provider_name}/<model>'.")
    if provider.allowed_models and model not in provider.allowed_models:
        raise LLMError(f"Cannot use '{requested}': " + _not_allowed(provider, model, where))
    return Resolution(requested, provider.id, provider.name, provider.kind, provider.base_url,
                      provider.credential_name, model)


class ResolvedProvider:
    """A provider from the organization's providers table, bound to the resolved model: every
    request is sent with ``resolution.model`` (never the alias name), and with the alias's
    temperature and max_tokens unless the request sets its own."""

    def __init__(self, inner: LLMProvider, resolution: Resolution) -> None:
        self.inner = inner
        self.resolution = resolution
        # The provider name usage is metered and priced under (issue 18).
        self.usage_provider: str = getattr(inner, "usage_provider", "other")

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        return await self.inner.complete(replace(request, model=self.resolution.model))

    async def aclose(self) -> None:
        await close_provider(self.inner)


def uses_quick_setup(provider: LLMProvider) -> bool:
    """Whether ``provider`` came from the quick setup (rule c), whose key the engine audits
    and redacts with ``StepSecrets.note_llm_key_use``."""
    return not isinstance(provider, ResolvedProvider)


def _key_of(provider: str, credential: str, kind: str, values: dict[str, str]) -> str:
    field = _key_field(kind, tuple(values))
    if field is None:
        raise LLMError(f"The LLM provider '{provider}' uses the credential '{credential}' of "
                       f"type '{kind}', which holds no usable key: use an api_key or "
                       "bearer_token credential, or a custom one with an 'api_key' or 'value' "
                       "field.")
    return values[field]


async def _open_credential(db: AsyncSession, ctx: TenantContext, resolution: Resolution,
                           keyring: Keyring, purpose: str) -> str:
    """The provider's key read directly (no run step): audited here as ``credential.used``."""
    name = resolution.credential_name
    assert name is not None
    credential = await CredentialRepository(db, ctx).get_by_name(name)
    if credential is None:
        raise LLMError(f"The LLM provider '{resolution.provider}' names the credential "
                       f"'{name}', which this organization does not have. Create it, or "
                       f"change the provider on {SETTINGS_PAGE}.")
    try:
        values = await open_for_admin_use(
            db, ctx, credential, keyring=keyring,
            url=resolution.base_url or ANTHROPIC_DEFAULT_BASE_URL,
            details={"purpose": purpose, "provider": resolution.provider,
                     "provider_id": str(resolution.provider_id), "model": resolution.model})
    except CredentialUnusable as exc:
        raise LLMError(str(exc)) from None
    key = _key_of(resolution.provider, name, credential.kind, values)
    return key


async def provider_from_resolution(db: AsyncSession, ctx: TenantContext,
                                   resolution: Resolution, *,
                                   scripted_replies: dict[str, list[Any]] | None,
                                   secrets: StepSecrets | None, keyring: Keyring,
                                   allow_private_network: bool,
                                   request_timeout: float = DEFAULT_TIMEOUT,
                                   purpose: str = "llm_provider.test") -> ResolvedProvider:
    """The provider a resolution describes, bound to its model.

    The base URL passes the egress guard again (DNS may have changed since it was saved). The
    key comes from the credential ``credential_name``: through ``secrets`` in a run step
    (read in ``db``, the engine's read-only prepare session that ``secrets`` was lent; the
    ``credential.used`` entry with run and node is owed and written by the engine right after
    that session closes, so no second connection is opened here; the step redacts the value
    from everything it stores), otherwise opened in ``db`` and audited there as
    ``credential.used`` with ``purpose``. Raises LLMError with a message safe to store.
    """
    if resolution.kind == "scripted":
        return ResolvedProvider(ScriptedProvider(scripted_replies), resolution)
    if resolution.base_url:
        try:
            await check_url_async(resolution.base_url, allow_private=allow_private_network)
        except EgressRefused as exc:
            raise LLMError(f"The base URL of the LLM provider '{resolution.provider}' is "
                           f"refused: {exc}.") from None
    api_key: str | None = None
    if resolution.credential_name:
        if secrets is not None:
            try:
                resolved = await secrets.credential(
                    resolution.credential_name,
                    url=resolution.base_url or ANTHROPIC_DEFAULT_BASE_URL)
            except ToolError as exc:
                raise LLMError(f"The LLM provider '{resolution.provider}' cannot use its "
                               f"credential: {exc}.") from None
            api_key = _key_of(resolution.provider, resolved.name, resolved.kind,
                              resolved.values)
        else:
            api_key = await _open_credential(db, ctx, resolution, keyring, purpose)
    common: dict[str, Any] = {"timeout": request_timeout,
                              "temperature": resolution.temperature,
                              "max_tokens": resolution.max_tokens,
                              "allow_private_network": allow_private_network}
    if resolution.kind == "anthropic":
        inner: LLMProvider = AnthropicProvider(api_key, resolution.base_url, resolution.model,
                                               **common)
    elif resolution.kind == "openai_compatible" and resolution.base_url:
        inner = OpenAICompatibleProvider(resolution.base_url, api_key, resolution.model,
                                         **common)
    else:
        raise LLMError(f"The LLM provider '{resolution.provider}' is not usable (kind "
                       f"'{resolution.kind}'). Save it again on {SETTINGS_PAGE}.")
    return ResolvedProvider(inner, resolution)


async def provider_for(db: AsyncSession, ctx: TenantContext, manifest: AgentManifest,
                       node: LLMNode | None = None, secrets: StepSecrets | None = None, *,
                       allow_private_network: bool, master_key: bytes | None = None,
                       key_box: LLMKeyBox | None = None,
                       request_timeout: float = DEFAULT_TIMEOUT,
                       purpose: str = "llm_provider.run") -> LLMProvider:
    """The LLM provider ``node`` uses in ``ctx``'s organization (``node`` None: the model
    ``default``).

    Resolution (``resolve_model``): an alias of the organization, else ``<provider>/<model>``
    of one of its providers (a ``ResolvedProvider``: the key from the provider's credential,
    see ``provider_from_resolution`` for ``secrets``), else the quick setup exactly as before
    providers existed: the organization's ``llm_settings`` when it has saved any (with its
    decrypted key, temperature and max_tokens; the node's model name is sent as is, "default"
    meaning its default model), otherwise the offline scripted provider with the manifest's
    ``scripted_replies``. ``uses_quick_setup`` tells the two apart.

    Never another organization's aliases, providers, credentials or settings: all are read
    through tenant-scoped repositories, and keys only decrypt for their own tenant. Raises
    LLMError (model not allowed, unknown provider, key or credential unusable, base URL
    refused). Network providers hold an HTTP client: close it with ``close_provider``.

    Pass either the master key bytes or a prebuilt ``LLMKeyBox`` (cheaper per call).
    """
    if key_box is None:
        if master_key is None:
            raise TypeError("provider_for needs master_key or key_box")
        key_box = LLMKeyBox(master_key)
    resolution = await resolve_model(db, ctx, node.model if node is not None else "default")
    if resolution is not None:
        return await provider_from_resolution(
            db, ctx, resolution, scripted_replies=manifest.scripted_replies, secrets=secrets,
            keyring=key_box.keyring, allow_private_network=allow_private_network,
            request_timeout=request_timeout, purpose=purpose)
    row = await get_llm_settings(db, ctx)
    return await provider_from_settings(ctx, row, scripted_replies=manifest.scripted_replies,
                                        allow_private_network=allow_private_network,
                                        key_box=key_box, db=db)


async def close_provider(provider: LLMProvider) -> None:
    """Release a provider's HTTP connections (no-op for the scripted provider)."""
    close = getattr(provider, "aclose", None)
    if close is not None:
        await close()
