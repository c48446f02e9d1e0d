"""Password storage: production parameters are the documented argon2id ones, the tests' cheap
profile cannot reach an https deployment, and sign-in upgrades hashes made with other
parameters (docs/SECURITY_REVIEW.md "Password storage")."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from argon2 import PasswordHasher, Type

from enginex.auth import passwords
from enginex.config import Settings, UnsafeConfigurationError, get_settings
from tests.factories import PASSWORD, Server, client_from, run_db, sign_in


@pytest.fixture
def production_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's hasher as a deployment builds it: no ENGINEX_* in the environment."""
    for name in [k for k in os.environ if k.startswith("ENGINEX_")]:
        monkeypatch.delenv(name)
    get_settings.cache_clear()
    passwords._hasher.cache_clear()
    passwords._dummy_hash.cache_clear()
    yield
    monkeypatch.undo()  # the suite's environment back before the hasher is chosen again
    for cached in (get_settings, passwords._hasher, passwords._dummy_hash):
        cached.cache_clear()
    passwords.hasher_parameters()


def test_production_hashes_are_argon2id_t2_m19456_p1(production_environment: None) -> None:
    assert passwords.hasher_parameters() == {"time_cost": 2, "memory_cost": 19456,
                                             "parallelism": 1}
    stored = passwords.hash_password(PASSWORD)
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert passwords.verify_password(stored, PASSWORD)
    assert not passwords.needs_rehash(stored)
    assert passwords.needs_rehash(PasswordHasher(**passwords.TEST_PARAMETERS).hash(PASSWORD))


def test_the_test_profile_is_refused_on_an_https_deployment() -> None:
    with pytest.raises(UnsafeConfigurationError, match="Remove ENGINEX_ARGON2_TEST_PROFILE"):
        Settings(base_url="https://app.enginex.example", argon2_test_profile=True).check_safe()
    Settings(base_url="http://127.0.0.1:8000", argon2_test_profile=True).check_safe()


def _new_account(server: Server, password_hash: str) -> tuple[str, Any]:
    """An account whose stored hash is ``password_hash`` (of PASSWORD); (email, changed_at)."""
    from enginex.orgs.service import ensure_user

    email = f"rehash-{os.urandom(4).hex()}@example.org"

    async def work(session: Any) -> Any:
        user, _ = await ensure_user(session, email=email, password=PASSWORD)
        user.password_hash = password_hash
        return user.password_changed_at

    return email, run_db(server, work)


def _stored(server: Server, email: str) -> tuple[str, Any]:
    from enginex.auth.repository import get_user_by_email

    async def work(session: Any) -> tuple[str, Any]:
        user = await get_user_by_email(session, email)
        assert user is not None
        return user.password_hash, user.password_changed_at

    return run_db(server, work)


def test_a_hash_with_other_parameters_is_rewritten_at_the_next_sign_in(server: Server) -> None:
    old = PasswordHasher(time_cost=3, memory_cost=32, parallelism=1, type=Type.ID).hash(PASSWORD)
    assert passwords.needs_rehash(old)
    email, changed_at = _new_account(server, old)

    with client_from(server) as client:  # a wrong password never rewrites the hash
        wrong = client.post("/api/v1/auth/login", json={"email": email,
                                                        "password": "not-the-pass-phrase-7"})
    assert wrong.status_code == 401
    assert _stored(server, email) == (old, changed_at)

    sign_in(server, email).close()
    upgraded, still_changed_at = _stored(server, email)
    assert upgraded != old and not passwords.needs_rehash(upgraded)
    assert passwords.verify_password(upgraded, PASSWORD)
    assert still_changed_at == changed_at  # the same password: sessions are not revoked
    sign_in(server, email).close()
    assert _stored(server, email)[0] == upgraded  # current hashes are left alone
