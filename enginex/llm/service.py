"""Per-organization LLM settings, the encryption of their API key, and ``provider_for``.

The API key is stored encrypted with AES-256-GCM under a key derived from the master key
(``derive_key(master, "llm-settings")``), a fresh 96-bit nonce per encryption, and the tenant id
as associated data: a ciphertext copied into another organization's row does not decrypt.
This is an interim until org credentials (the credential vault) hold provider keys.

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

import os
import uuid
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.agents.manifest import AgentManifest
from enginex.audit.service import record
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
_FORMAT_V1 = b"\x01"
_NONCE_BYTES = 12


class KeyDecryptionError(Exception):
    """A stored key does not decrypt (other tenant's ciphertext, tampering, new master key)."""


class LLMKeyBox:
    """AES-256-GCM encryption of provider API keys, bound to the tenant.

    Format: ``0x01 || nonce(12) || ciphertext+tag``; associated data is ``tenant_id.bytes``.
    """

    def __init__(self, master_key: bytes) -> None:
        self._aead = AESGCM(derive_key(master_key, "llm-settings"))

    def encrypt(self, tenant_id: uuid.UUID, api_key: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _FORMAT_V1 + nonce + self._aead.encrypt(nonce, api_key.encode(), tenant_id.bytes)

    def decrypt(self, tenant_id: uuid.UUID, blob: bytes) -> str:
        """Raises KeyDecryptionError when ``blob`` was not encrypted for ``tenant_id``."""
        if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _FORMAT_V1:
            raise KeyDecryptionError("unknown ciphertext format")
        nonce, sealed = blob[1:1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, sealed, tenant_id.bytes).decode()
        except InvalidTag:
            raise KeyDecryptionError("the stored API key does not decrypt for this "
                                     "organization") from None


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
        row.api_key_ciphertext, key_change = key_box.encrypt(ctx.org_id, api_key), "set"
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
                                 request_timeout: float = DEFAULT_TIMEOUT) -> LLMProvider:
    """The provider a settings row describes (scripted when ``row`` is None).

    Raises LLMError when the stored key does not decrypt or the base URL is refused by the
    egress guard (checked again here: DNS may have changed since the settings were saved).
    """
    if row is None or row.provider == "scripted":
        return ScriptedProvider(scripted_replies)
    api_key: str | None = None
    if row.api_key_ciphertext is not None:
        try:
            api_key = key_box.decrypt(ctx.org_id, row.api_key_ciphertext)
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
                                        key_box=key_box)


async def close_provider(provider: LLMProvider) -> None:
    """Release a provider's HTTP connections (no-op for the scripted provider)."""
    close = getattr(provider, "aclose", None)
    if close is not None:
        await close()
