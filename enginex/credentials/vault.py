"""The keyring: master keys, each organization's data keys, and a bounded cache of them.

One ``Keyring`` per process and master-key pair (``Keyring.for_master``). It seals and opens
secret values for a tenant inside the caller's transaction; the session must be bound to that
tenant (``set_tenant``), so a data key is only ever read for the tenant whose secret is being
sealed or opened.

Data keys are created lazily (the first secret of an organization), wrapped with the current
master key, and cached unwrapped in memory, keyed by (tenant, version), for at most
``DEK_CACHE_SECONDS``; ``forget_tenant`` drops a tenant's keys (crypto-shredding).

A master key must be registered in ``vault_master_keys`` before it wraps a data key:
``verify_master_key`` registers the first one, refuses a key the database does not know (a
wrong or lost ENGINEX_MASTER_KEY: a clear error instead of secrets no process can read), and
accepts a new key while the previous one is configured (ENGINEX_MASTER_KEY_PREVIOUS) for a
rotation.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections import OrderedDict
from typing import ClassVar

from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.credentials import repository as repo
from enginex.credentials.crypto import (
    Binding,
    Kek,
    MasterKeyUnavailable,
    UnknownDataKey,
    new_dek,
    open_sealed,
    seal,
    sealed_key_version,
    unwrap_dek,
    wrap_dek,
)
from enginex.credentials.models import TenantKey
from enginex.kit.crypto import MasterKeyError

DEK_CACHE_SECONDS = 300.0
DEK_CACHE_ENTRIES = 10_000
ROTATION_GUIDE = "docs/CREDENTIALS.md, 'Rotating the master key'"


class _VaultSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENGINEX_", extra="ignore")

    master_key_previous: str = ""


def previous_master_key() -> bytes | None:
    """The previous master key during a master-key rotation (ENGINEX_MASTER_KEY_PREVIOUS), or
    None. It is only ever used to unwrap data keys, never to wrap new ones."""
    text = _VaultSettings().master_key_previous.strip()
    if not text:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise MasterKeyError("ENGINEX_MASTER_KEY_PREVIOUS must be a base64url master key "
                             "(32 bytes), the one ENGINEX_MASTER_KEY had before the rotation.")
    return raw


class Keyring:
    """Master keys (the current one wraps, the previous one only unwraps) and the cache of
    unwrapped data keys."""

    _shared: ClassVar[dict[tuple[str, str | None], Keyring]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, master: bytes, previous: bytes | None = None, *,
                 cache_seconds: float = DEK_CACHE_SECONDS,
                 cache_entries: int = DEK_CACHE_ENTRIES) -> None:
        self.current = Kek.from_master(master)
        self.previous = (Kek.from_master(previous)
                         if previous is not None and previous != master else None)
        self.cache_seconds = cache_seconds
        self.cache_entries = cache_entries
        self._cache: OrderedDict[tuple[uuid.UUID, int], tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def for_master(cls, master: bytes, previous: bytes | None = None) -> Keyring:
        """The process's keyring for this master key (and previous key, read from
        ENGINEX_MASTER_KEY_PREVIOUS when not given): one cache per process and key pair."""
        if previous is None:
            previous = previous_master_key()
        current, prior = Kek.from_master(master), (Kek.from_master(previous)
                                                   if previous and previous != master else None)
        key = (current.id, prior.id if prior else None)
        with cls._shared_lock:
            keyring = cls._shared.get(key)
            if keyring is None:
                keyring = cls._shared[key] = cls(master, previous)
            return keyring

    @classmethod
    def forget_tenant_everywhere(cls, tenant_id: uuid.UUID) -> None:
        """Drop a tenant's cached data keys from every keyring of this process."""
        with cls._shared_lock:
            keyrings = list(cls._shared.values())
        for keyring in keyrings:
            keyring.forget_tenant(tenant_id)

    def kek(self, kek_id: str) -> Kek:
        """The master key with fingerprint ``kek_id``; MasterKeyUnavailable if this process
        was not given it."""
        for kek in (self.current, self.previous):
            if kek is not None and kek.id == kek_id:
                return kek
        raise MasterKeyUnavailable(
            f"A data key is wrapped by master key {kek_id}, which this process does not have "
            f"(ENGINEX_MASTER_KEY is {self.current.id}). If a master-key rotation is under way, "
            f"set ENGINEX_MASTER_KEY_PREVIOUS to the old key ({ROTATION_GUIDE}).")

    # --- cache --------------------------------------------------------------------------------

    def cached_dek(self, tenant_id: uuid.UUID, version: int) -> bytes | None:
        """The unwrapped data key if this process has it cached (and not expired)."""
        if self.cache_seconds <= 0:
            return None
        with self._lock:
            entry = self._cache.get((tenant_id, version))
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del self._cache[(tenant_id, version)]
                return None
            return entry[1]

    def _remember(self, tenant_id: uuid.UUID, version: int, dek: bytes) -> None:
        if self.cache_seconds <= 0:
            return
        with self._lock:
            self._cache[(tenant_id, version)] = (time.monotonic() + self.cache_seconds, dek)
            self._cache.move_to_end((tenant_id, version))
            while len(self._cache) > self.cache_entries:
                self._cache.popitem(last=False)

    def forget_tenant(self, tenant_id: uuid.UUID) -> None:
        with self._lock:
            for key in [k for k in self._cache if k[0] == tenant_id]:
                del self._cache[key]

    # --- data keys (the session is bound to the tenant) ---------------------------------------

    def unwrap(self, key: TenantKey) -> bytes:
        dek = unwrap_dek(self.kek(key.kek_id), key.tenant_id, key.version, key.wrapped_key)
        self._remember(key.tenant_id, key.version, dek)
        return dek

    async def dek(self, db: AsyncSession, tenant_id: uuid.UUID, version: int) -> bytes:
        """Data key ``version`` of ``tenant_id``. Raises UnknownDataKey if it does not exist
        (destroyed with its organization or by a finished rotation), MasterKeyUnavailable if
        its master key is not configured."""
        cached = self.cached_dek(tenant_id, version)
        if cached is not None:
            return cached
        key = await repo.get_tenant_key(db, tenant_id, version)
        if key is None:
            raise UnknownDataKey("the data key this secret was encrypted with no longer "
                                 "exists")
        return self.unwrap(key)

    async def primary(self, db: AsyncSession, tenant_id: uuid.UUID) -> tuple[int, bytes]:
        """The version and key new ciphertexts of ``tenant_id`` use (created on first use).

        The key's row stays share-locked until commit (PostgreSQL), so a rotation cannot
        destroy a data key that an uncommitted ciphertext was sealed with.
        """
        key = await repo.latest_tenant_key(db, tenant_id, share_lock=True)
        if key is None:
            await self.check_can_wrap(db)
            await repo.add_tenant_key_if_absent(db, tenant_id, 1, self.current.id,
                                                wrap_dek(self.current, tenant_id, 1, new_dek()))
            key = await repo.latest_tenant_key(db, tenant_id, share_lock=True)
            assert key is not None
        cached = self.cached_dek(tenant_id, key.version)
        return key.version, cached if cached is not None else self.unwrap(key)

    async def add_version(self, db: AsyncSession, tenant_id: uuid.UUID, version: int) -> None:
        """Create data key ``version`` (a tenant-key rotation), wrapped with the current key."""
        await self.check_can_wrap(db)
        await repo.add_tenant_key_if_absent(db, tenant_id, version, self.current.id,
                                            wrap_dek(self.current, tenant_id, version, new_dek()))

    async def check_can_wrap(self, db: AsyncSession) -> None:
        """Refuse to wrap a data key with a master key the database does not accept (see
        ``verify_master_key``); the registry row stays share-locked until commit."""
        row = await repo.get_master_key(db, self.current.id, lock="share")
        if row is None:
            await verify_master_key(db, self)
            row = await repo.get_master_key(db, self.current.id, lock="share")
        if row is None or row.status != "active":
            raise MasterKeyUnavailable(
                f"ENGINEX_MASTER_KEY ({self.current.id}) is the master key being rotated out: "
                "set ENGINEX_MASTER_KEY to the new key and ENGINEX_MASTER_KEY_PREVIOUS to this "
                f"one, then restart ({ROTATION_GUIDE}).")

    # --- values -------------------------------------------------------------------------------

    async def seal(self, db: AsyncSession, binding: Binding, plaintext: bytes
                   ) -> tuple[bytes, int]:
        """Encrypt ``plaintext`` for ``binding`` with the tenant's primary data key; returns
        (ciphertext, data-key version)."""
        version, dek = await self.primary(db, binding.tenant_id)
        return seal(dek, version, binding, plaintext), version

    async def open(self, db: AsyncSession, binding: Binding, blob: bytes) -> bytes:
        """Decrypt a value sealed for ``binding``. Raises DecryptionFailed (wrong tenant, row,
        purpose or version; tampered), UnknownDataKey or MasterKeyUnavailable."""
        dek = await self.dek(db, binding.tenant_id, sealed_key_version(blob))
        return open_sealed(dek, binding, blob)

    def open_cached(self, binding: Binding, blob: bytes) -> bytes | None:
        """Decrypt without I/O when the data key is cached; None when it is not."""
        dek = self.cached_dek(binding.tenant_id, sealed_key_version(blob))
        return None if dek is None else open_sealed(dek, binding, blob)


async def verify_master_key(db: AsyncSession, keyring: Keyring, *, strict: bool = False) -> None:
    """Check the configured master key against the database's registry (global table).

    * empty registry (a new database): the current key is registered;
    * current key unknown: accepted and registered only if ENGINEX_MASTER_KEY_PREVIOUS is a
      registered key (a rotation begins); otherwise MasterKeyError -- a wrong or regenerated
      key must never start wrapping data keys next to the real ones;
    * current key registered but being rotated out: MasterKeyError;
    * ``strict`` (process start): another registered key that is not configured as the
      previous key means a rotation is incomplete: MasterKeyError.
    """
    current = keyring.current.id
    previous = keyring.previous.id if keyring.previous else None
    rows = {row.kek_id: row for row in await repo.list_master_keys(db)}
    if current not in rows:
        if rows and (previous is None or previous not in rows):
            raise MasterKeyUnavailable(
                f"ENGINEX_MASTER_KEY (fingerprint {current}) is not the master key of this "
                f"database (it expects {', '.join(sorted(rows))}). Set the key this deployment "
                "was set up with (the embedded default keeps it in <data dir>/master.key). To "
                f"change the master key, follow {ROTATION_GUIDE}.")
        await repo.add_master_key(db, current, "active")
        rows = {row.kek_id: row for row in await repo.list_master_keys(db)}
    if rows[current].status != "active":
        raise MasterKeyUnavailable(
            f"ENGINEX_MASTER_KEY ({current}) is the master key being rotated out: set "
            "ENGINEX_MASTER_KEY to the new key and ENGINEX_MASTER_KEY_PREVIOUS to this one "
            f"({ROTATION_GUIDE}).")
    pending = sorted(k for k in rows if k not in (current, previous))
    if strict and pending:
        raise MasterKeyUnavailable(
            f"A master-key rotation is incomplete: data keys may still be wrapped by master "
            f"key {', '.join(pending)}. Set ENGINEX_MASTER_KEY_PREVIOUS to that key and run "
            f"`enginex keys rotate-master` ({ROTATION_GUIDE}).")
