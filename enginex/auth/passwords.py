"""Password policy and hashing (argon2id, OWASP parameters: m=19 MiB, t=2, p=1).

The test suite sets ``ENGINEX_ARGON2_TEST_PROFILE=true`` for cheap hashes (see
``Settings.argon2_test_profile``; ``check_safe`` refuses it on an https deployment). Hashes
record their own parameters, so either profile verifies the other's; ``needs_rehash`` tells
sign-in to rewrite a hash made with parameters other than the current ones.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache
from importlib import resources

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from enginex.kit.errors import ValidationFailed

MIN_LENGTH = 12
MAX_LENGTH = 128

# argon2id, OWASP's first recommended configuration (docs/SECURITY_REVIEW.md "Password storage").
PRODUCTION_PARAMETERS = {"time_cost": 2, "memory_cost": 19456, "parallelism": 1}
# Tests only: the cheapest argon2id argon2-cffi accepts (microseconds instead of ~30 ms a hash;
# the suite hashes thousands of passwords on a shared 2-core machine).
TEST_PARAMETERS = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}


@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    """The process's hasher, chosen once from the settings (``argon2_test_profile``)."""
    from enginex.config import get_settings

    fast = get_settings().argon2_test_profile
    return PasswordHasher(**(TEST_PARAMETERS if fast else PRODUCTION_PARAMETERS), type=Type.ID)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """Verified against when the account does not exist, so both paths cost the same time."""
    return _hasher().hash("enginex-timing-equaliser-password")


def hasher_parameters() -> dict[str, int]:
    """The argon2id parameters new hashes are made with."""
    hasher = _hasher()
    return {"time_cost": hasher.time_cost, "memory_cost": hasher.memory_cost,
            "parallelism": hasher.parallelism}


@lru_cache(maxsize=1)
def _common_passwords() -> frozenset[str]:
    text = resources.files("enginex.auth").joinpath("common_passwords.txt").read_text()
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip())


def password_problem(password: str, *, email: str = "") -> str | None:
    """Why ``password`` is refused, or None when it is acceptable."""
    if len(password) < MIN_LENGTH:
        return f"Use at least {MIN_LENGTH} characters (a passphrase of a few words works well)."
    if len(password) > MAX_LENGTH:
        return f"Use at most {MAX_LENGTH} characters."
    lowered = password.lower()
    if lowered in _common_passwords() or len(set(lowered)) <= 2:
        return "This password is too common; choose one that is not on lists of leaked passwords."
    local = email.split("@", 1)[0].lower()
    if len(local) >= 4 and local in lowered:
        return "Do not use your email address in your password."
    return None


def check_password_policy(password: str, *, email: str = "", field: str = "password") -> None:
    problem = password_problem(password, email=email)
    if problem:
        raise ValidationFailed(f"{field}: {problem}", details={"field": field})


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant-work check: also spends the hashing time when there is no hash."""
    try:
        return _hasher().verify(password_hash or _dummy_hash(), password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


async def hash_password_off_loop(password: str) -> str:
    """``hash_password`` in a worker thread: argon2 takes ~30 ms and releases the GIL, so the
    event loop keeps serving other requests meanwhile."""
    return await asyncio.to_thread(hash_password, password)


async def verify_password_off_loop(password_hash: str | None, password: str) -> bool:
    """``verify_password`` in a worker thread (see ``hash_password_off_loop``)."""
    return await asyncio.to_thread(verify_password, password_hash, password)


def needs_rehash(password_hash: str) -> bool:
    """True when ``password_hash`` was made with other parameters (or another argon2 variant)
    than new hashes are: sign-in then stores a fresh hash of the verified password."""
    try:
        return _hasher().check_needs_rehash(password_hash)
    except InvalidHashError:
        return True
