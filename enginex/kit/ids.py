"""Identifiers and opaque tokens."""

import hashlib
import secrets
import uuid


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def new_token(prefix: str = "") -> str:
    """An opaque random token with 256 bits of entropy."""
    return prefix + secrets.token_urlsafe(32)


def token_digest(token: str) -> bytes:
    """SHA-256 of a high-entropy token: how tokens are stored and looked up.

    Tokens are random, so a fast hash is enough (argon2 is for low-entropy passwords).
    """
    return hashlib.sha256(token.encode()).digest()
