"""The master key and keys derived from it.

The master key is 32 random bytes, given base64url-encoded in ENGINEX_MASTER_KEY or, for the
embedded default only, generated once into ``<data_dir>/master.key`` with mode 0600 (the data
directory is created with mode 0700).
Purpose-specific subkeys are derived with HKDF so one key never serves two purposes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enginex.config import Settings


class MasterKeyError(RuntimeError):
    pass


def generate_master_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def _decode(text: str) -> bytes:
    text = text.strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise MasterKeyError("ENGINEX_MASTER_KEY is not base64url text; "
                             "generate one with `enginex keys generate`.") from exc
    if len(raw) != 32:
        raise MasterKeyError("ENGINEX_MASTER_KEY must decode to 32 bytes; "
                             "generate one with `enginex keys generate`.")
    return raw


def load_master_key(settings: Settings) -> bytes:
    """Return the master key, creating the development key file on first use if allowed."""
    if settings.master_key:
        return _decode(settings.master_key)
    path = Path(settings.data_dir) / "master.key"
    if path.exists():
        return _decode(path.read_text())
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Written complete under a temporary name, then published with link(), which fails if
    # another process (a worker starting alongside) got there first: all use the same key.
    temporary = path.with_name(f".master.key.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(generate_master_key() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return _decode(path.read_text())


def derive_key(master: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=f"enginex:{purpose}".encode()).derive(master)


def hmac_hex(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()
