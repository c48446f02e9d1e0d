"""Per-organization LLM settings, the encryption of their API key, and ``provider_for``.

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

import uuid
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_object_session

from enginex.agents.manifest import AgentManifest
from enginex.audit.service import record
from enginex.credentials.crypto import Binding, VaultError, is_sealed
from enginex.credentials.vault import Keyring, previous_master_key
from enginex.kit.crypto import derive_key
from enginex.kit.errors import ValidationFailed
from enginex.kit.time import utcnow
from enginex.llm.base import LLMError, LLMProvider
from enginex.llm.models import LLMSettings
from enginex.llm.providers import (
    DEFAULT_TIMEOUT,
    AnthropicProvider,
    OpenAICompatibleProvider,
    ScriptedProvider,
)
from enginex.tenancy.context import TenantContext
from enginex.tenancy.principal import Principal
from enginex.tenancy.repository import ScopedRepository
from enginex.tools.egress import EgressRefused, check_url_async

PROVIDERS: tuple[str, ...] = ("scripted", "openai_compatible", "anthropic")
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


class LLMSettingsRepository(ScopedRepository[LLMSettings]):
    """The organization's one settings row (keyed by tenant_id alone)."""

    model = LLMSettings

    async def get_settings(self) -> LLMSettings | None:
        stmt = select(LLMSettings).where(LLMSettings.tenant_id == self.ctx.org_id)
        return (await self.db.execute(stmt)).scalar_one_or_none()


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
            raise ValidationFailed("base_url: required for the 'openai_compatible' provider "
                                   "(for example https://api.openai.com/v1).",
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


async def provider_for(db: AsyncSession, ctx: TenantContext, manifest: AgentManifest, *,
                       allow_private_network: bool, master_key: bytes | None = None,
                       key_box: LLMKeyBox | None = None) -> LLMProvider:
    """The LLM provider runs of ``manifest`` use in ``ctx``'s organization.

    The organization's settings when it has saved any (with its decrypted key, temperature
    and max_tokens defaults), otherwise the offline scripted provider with the manifest's
    ``scripted_replies``. Never another organization's settings: the row is read through a
    tenant-scoped repository, and the key only decrypts for its own tenant. Raises LLMError
    (key does not decrypt, base URL refused). Network providers hold an HTTP client: close it
    with ``close_provider`` when the run step is done.

    Pass either the master key bytes or a prebuilt ``LLMKeyBox`` (cheaper per call).
    """
    if key_box is None:
        if master_key is None:
            raise TypeError("provider_for needs master_key or key_box")
        key_box = LLMKeyBox(master_key)
    row = await get_llm_settings(db, ctx)
    return await provider_from_settings(ctx, row, scripted_replies=manifest.scripted_replies,
                                        allow_private_network=allow_private_network,
                                        key_box=key_box, db=db)


async def close_provider(provider: LLMProvider) -> None:
    """Release a provider's HTTP connections (no-op for the scripted provider)."""
    close = getattr(provider, "aclose", None)
    if close is not None:
        await close()
