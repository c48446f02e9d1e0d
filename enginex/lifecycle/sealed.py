"""Credential values in an export, encrypted to an import key (X25519), never in plaintext.

The platform admin of the importing deployment makes a key pair (``enginex tenant keygen -o
KEYFILE``): the identity (private key) stays in KEYFILE (0600), the recipient (public key,
``enginex-x25519:<base64url>``) is given to the org admin who asks for an export with secrets.

Each credential's values (the JSON object of its fields) are sealed on their own: a fresh
ephemeral X25519 key pair, ``key = HKDF-SHA256(shared secret, salt = ephemeral public ||
recipient public, info = "enginex-export-secrets-v1")``, AES-256-GCM with a random 96-bit
nonce and associated data naming the credential (id and name), so a sealed value cannot be
moved to another credential of the archive. Written as ``enginex-sealed-v1:<base64url of
ephemeral public (32) || nonce (12) || ciphertext+tag>``. Only the holder of the identity can
open it; the exporting deployment cannot (it keeps no private key).
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

RECIPIENT_PREFIX = "enginex-x25519:"
IDENTITY_PREFIX = "ENGINEX-X25519-IDENTITY:"
SEALED_PREFIX = "enginex-sealed-v1:"
INFO = b"enginex-export-secrets-v1"
SCHEME = "x25519-hkdf-sha256-aes256gcm-v1"


class SealError(ValueError):
    """A recipient, identity or sealed value is malformed, or does not open (the message says
    which, for people)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_identity() -> tuple[str, str]:
    """A new key pair as (identity, recipient) strings."""
    private = X25519PrivateKey.generate()
    raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    return IDENTITY_PREFIX + _b64(raw), RECIPIENT_PREFIX + _b64(_raw(private.public_key()))


def parse_recipient(text: str) -> X25519PublicKey:
    value = text.strip()
    if not value.startswith(RECIPIENT_PREFIX):
        raise SealError(f"an import key starts with '{RECIPIENT_PREFIX}' (make one with "
                        "`enginex tenant keygen` on the importing deployment)")
    try:
        raw = _unb64(value[len(RECIPIENT_PREFIX):])
        if len(raw) != 32:
            raise ValueError
        return X25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise SealError("the import key is not a valid X25519 public key: copy it again "
                        "exactly as `enginex tenant keygen` printed it") from None


def parse_identity(text: str) -> X25519PrivateKey:
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.startswith("#")]
    if len(lines) != 1 or not lines[0].startswith(IDENTITY_PREFIX):
        raise SealError(f"an identity file holds one line starting with '{IDENTITY_PREFIX}' "
                        "(the KEYFILE written by `enginex tenant keygen`)")
    try:
        raw = _unb64(lines[0][len(IDENTITY_PREFIX):])
        if len(raw) != 32:
            raise ValueError
        return X25519PrivateKey.from_private_bytes(raw)
    except ValueError:
        raise SealError("the identity file is damaged: it holds no valid X25519 key") from None


def recipient_of(identity: X25519PrivateKey) -> str:
    return RECIPIENT_PREFIX + _b64(_raw(identity.public_key()))


def _key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient,
                info=INFO).derive(shared)


def seal(recipient: X25519PublicKey, plaintext: bytes, associated: bytes) -> str:
    ephemeral = X25519PrivateKey.generate()
    ephemeral_raw = _raw(ephemeral.public_key())
    key = _key(ephemeral.exchange(recipient), ephemeral_raw, _raw(recipient))
    nonce = os.urandom(12)
    return SEALED_PREFIX + _b64(ephemeral_raw + nonce +
                                AESGCM(key).encrypt(nonce, plaintext, associated))


def open_sealed(identity: X25519PrivateKey, sealed: str, associated: bytes) -> bytes:
    if not sealed.startswith(SEALED_PREFIX):
        raise SealError("not a sealed value")
    try:
        data = _unb64(sealed[len(SEALED_PREFIX):])
    except ValueError:
        raise SealError("a sealed value is not valid base64") from None
    if len(data) < 32 + 12 + 16:
        raise SealError("a sealed value is truncated")
    ephemeral_raw, nonce, body = data[:32], data[32:44], data[44:]
    try:
        shared = identity.exchange(X25519PublicKey.from_public_bytes(ephemeral_raw))
    except ValueError:
        raise SealError("a sealed value is damaged") from None
    key = _key(shared, ephemeral_raw, _raw(identity.public_key()))
    try:
        return AESGCM(key).decrypt(nonce, body, associated)
    except InvalidTag:
        raise SealError("a sealed value does not open with this identity: the export was "
                        "made for another import key, or the value was changed") from None


def associated_data(credential_id: str, name: str) -> bytes:
    return f"enginex-credential|{credential_id}|{name}".encode()
