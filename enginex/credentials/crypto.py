"""Envelope encryption formats: AES-256-GCM, no I/O (the keyring in ``vault.py`` does that).

Key hierarchy::

    master key (ENGINEX_MASTER_KEY, 32 bytes)
      -> KEK = HKDF(master, "enginex:vault-kek")          wraps data keys
      -> kek_id = HMAC(HKDF(master, "enginex:vault-kek-id"), ...)[:16 bytes], hex: a public
         fingerprint naming the master key (tells keys apart, reveals nothing)
    data key (DEK, 32 random bytes) per organization and version, stored only wrapped
      -> seals every secret value of that organization

Wrapped DEK: ``0x01 || nonce(12) || AES-GCM(KEK, nonce, DEK, AD)`` with
``AD = b"enginex:dek:v1" || tenant_id(16) || version(4, big-endian)``: a wrapped key copied to
another tenant or version does not unwrap.

Sealed value: ``0x02 || dek_version(4, big-endian) || nonce(12) || ciphertext || tag(16)``
with ``AD = b"enginex:value:v1" || header(5) || len(purpose)(1) || purpose || tenant_id(16) ||
object_id(16) || value_version(8, big-endian)``. The header is authenticated too, so the key
version cannot be altered; a ciphertext copied to another tenant, another row, another purpose
(a credential into LLM settings) or replayed from an older value version fails to decrypt.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import uuid
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enginex.kit.crypto import MasterKeyError, derive_key

WRAPPED_FORMAT = 0x01
SEALED_FORMAT = 0x02
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
_HEADER = struct.Struct(">BI")  # format, data-key version
_DEK_AD = b"enginex:dek:v1"
_VALUE_AD = b"enginex:value:v1"


class VaultError(Exception):
    """A secret cannot be encrypted or decrypted. Messages never contain key material."""


class DecryptionFailed(VaultError):
    """The ciphertext does not belong here (other tenant, row, purpose or version) or was
    altered."""


class UnknownDataKey(VaultError):
    """The data key a ciphertext names does not exist (destroyed with its organization, or
    retired by a completed rotation)."""


class MasterKeyUnavailable(VaultError, MasterKeyError):
    """A data key is wrapped by a master key this process was not given."""


def kek_id(master: bytes) -> str:
    """The public fingerprint of a master key (32 hex characters)."""
    return hmac.new(derive_key(master, "vault-kek-id"), b"enginex master key id",
                    hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class Kek:
    """A key-encryption key derived from one master key."""

    id: str
    aead: AESGCM

    @classmethod
    def from_master(cls, master: bytes) -> Kek:
        return cls(kek_id(master), AESGCM(derive_key(master, "vault-kek")))


def new_dek() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def _dek_ad(tenant_id: uuid.UUID, version: int) -> bytes:
    return _DEK_AD + tenant_id.bytes + version.to_bytes(4, "big")


def wrap_dek(kek: Kek, tenant_id: uuid.UUID, version: int, dek: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return bytes([WRAPPED_FORMAT]) + nonce + kek.aead.encrypt(nonce, dek,
                                                              _dek_ad(tenant_id, version))


def unwrap_dek(kek: Kek, tenant_id: uuid.UUID, version: int, wrapped: bytes) -> bytes:
    """Raises DecryptionFailed when ``wrapped`` is not this tenant's key ``version`` under
    ``kek``."""
    if len(wrapped) != 1 + NONCE_BYTES + KEY_BYTES + TAG_BYTES or wrapped[0] != WRAPPED_FORMAT:
        raise DecryptionFailed("the stored data key has an unknown format")
    nonce, sealed = wrapped[1:1 + NONCE_BYTES], wrapped[1 + NONCE_BYTES:]
    try:
        return kek.aead.decrypt(nonce, sealed, _dek_ad(tenant_id, version))
    except InvalidTag:
        raise DecryptionFailed("the stored data key does not unwrap with the master key "
                               "that names it") from None


@dataclass(frozen=True)
class Binding:
    """Where a sealed value lives: its associated data. ``purpose`` names the column
    (``credential``, ``llm_settings.api_key``)."""

    purpose: str
    tenant_id: uuid.UUID
    object_id: uuid.UUID
    value_version: int = 0

    def associated_data(self, header: bytes) -> bytes:
        purpose = self.purpose.encode()
        return (_VALUE_AD + header + bytes([len(purpose)]) + purpose + self.tenant_id.bytes
                + self.object_id.bytes + self.value_version.to_bytes(8, "big"))


def seal(dek: bytes, dek_version: int, binding: Binding, plaintext: bytes) -> bytes:
    header = _HEADER.pack(SEALED_FORMAT, dek_version)
    nonce = os.urandom(NONCE_BYTES)
    return header + nonce + AESGCM(dek).encrypt(nonce, plaintext,
                                                binding.associated_data(header))


def is_sealed(blob: bytes) -> bool:
    return len(blob) >= _HEADER.size + NONCE_BYTES + TAG_BYTES and blob[0] == SEALED_FORMAT


def sealed_key_version(blob: bytes) -> int:
    """The data-key version a sealed value names (raises DecryptionFailed if not one)."""
    if not is_sealed(blob):
        raise DecryptionFailed("not a vault ciphertext")
    return int(_HEADER.unpack_from(blob)[1])


def open_sealed(dek: bytes, binding: Binding, blob: bytes) -> bytes:
    """Raises DecryptionFailed when ``blob`` was not sealed for ``binding`` with ``dek``."""
    if not is_sealed(blob):
        raise DecryptionFailed("not a vault ciphertext")
    header = blob[:_HEADER.size]
    nonce = blob[_HEADER.size:_HEADER.size + NONCE_BYTES]
    try:
        return AESGCM(dek).decrypt(nonce, blob[_HEADER.size + NONCE_BYTES:],
                                   binding.associated_data(header))
    except InvalidTag:
        raise DecryptionFailed("the ciphertext does not belong to this record") from None
