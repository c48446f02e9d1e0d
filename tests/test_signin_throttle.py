"""Sign-in throttling under concurrency and behind a shared address, through real HTTP.

Threat model: a guesser fires many wrong passwords for one account at once, hoping every one
passes the throttle check before the first failure is recorded (the per-account limit must
bound the argon2 verifications, not just the answers after the fact); and a guesser sharing
an address with other people (an office NAT, a proxy without ENGINEX_TRUSTED_PROXIES) sprays
many accounts so that the per-address limit locks everyone behind that address out.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from enginex.auth import passwords
from tests.factories import PASSWORD, Org, Server, add_member, client_from, make_org

PARALLEL = 24


def random_address() -> str:
    return "127." + ".".join(str(1 + secrets.randbelow(253)) for _ in range(3))


def login(client: httpx.Client, email: str, password: str = PASSWORD) -> httpx.Response:
    return client.post("/api/v1/auth/login", json={"email": email, "password": password})


def assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "too_many_requests"
    retry_after = int(response.headers["retry-after"])
    assert retry_after > 0 and error["details"]["retry_after_seconds"] == retry_after
    assert "Too many failed sign-in attempts" in error["message"]
    assert f"Wait {retry_after} seconds" in error["message"]


@pytest.fixture(scope="module")
def team(server: Server, platform_admin) -> Org:
    return make_org(server, platform_admin, "throttle", roles=("admin",), with_keys=False)


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], int]]:
    """How many argon2 verifications the in-process test server ran for a given password."""
    counts: dict[str, int] = {}
    lock = threading.Lock()
    real = passwords.verify_password

    def counting(password_hash: str | None, password: str) -> bool:
        with lock:
            counts[password] = counts.get(password, 0) + 1
        return real(password_hash, password)

    monkeypatch.setattr(passwords, "verify_password", counting)
    yield lambda password: counts.get(password, 0)


def test_parallel_wrong_passwords_get_at_most_the_limit_of_verifications(
        server: Server, team: Org, verifications: Callable[[str], int]) -> None:
    person = add_member(server, team, "viewer")
    limit = server.settings.login_max_failures_per_account
    guess = f"parallel wrong guess {secrets.token_hex(4)}"
    address = random_address()
    start = threading.Barrier(PARALLEL)

    def attempt(_: int) -> httpx.Response:
        with client_from(server, address) as client:
            start.wait(timeout=60)
            return login(client, person.email, guess)

    with ThreadPoolExecutor(PARALLEL) as pool:
        answers = list(pool.map(attempt, range(PARALLEL)))
    wrong = [a for a in answers if a.status_code == 401]
    throttled = [a for a in answers if a.status_code == 429]
    assert len(wrong) + len(throttled) == PARALLEL, [a.status_code for a in answers]
    assert all(a.json()["error"]["code"] == "invalid_credentials" for a in wrong)
    for answer in throttled:
        assert_throttled(answer)
    assert len(wrong) <= limit, f"{len(wrong)} wrong-password answers for a limit of {limit}"
    assert verifications(guess) == len(wrong)

    # One at a time, the guesser gets exactly the rest of the budget, and not one more.
    with client_from(server, address) as client:
        for _ in range(PARALLEL):
            answer = login(client, person.email, guess)
            if answer.status_code == 429:
                assert_throttled(answer)
                break
            assert answer.status_code == 401, answer.text
            wrong.append(answer)
        assert_throttled(login(client, person.email))  # even the right password waits
    assert len(wrong) == limit and verifications(guess) == limit


def test_an_address_that_sprayed_accounts_cannot_lock_out_other_accounts(
        server: Server, team: Org) -> None:
    limit = server.settings.login_max_failures_per_address
    bystander = add_member(server, team, "viewer")
    mistyped = add_member(server, team, "viewer")
    sprayed = [f"sprayed-{secrets.token_hex(4)}@example.org" for _ in range(limit)]
    with client_from(server, random_address()) as shared:
        assert login(shared, mistyped.email, "a mistyped password").status_code == 401
        for email in sprayed[1:]:
            assert login(shared, email, "spring-2026-password").status_code == 401
        # The address is throttled: guessing again at an account it failed on is refused...
        assert_throttled(login(shared, sprayed[1], "another guess here"))
        assert_throttled(login(shared, mistyped.email))
        # ...a new account gets one guess from here, not two...
        fresh = f"fresh-{secrets.token_hex(4)}@example.org"
        assert login(shared, fresh, "spring-2026-password").status_code == 401
        assert_throttled(login(shared, fresh, "summer-2026-password"))
        # ...and someone else behind the same address still signs in with their password.
        signed_in = login(shared, bystander.email)
        assert signed_in.status_code == 200, signed_in.text
        assert signed_in.json()["email"] == bystander.email
    # The account that failed here signs in from elsewhere.
    with client_from(server, random_address()) as elsewhere:
        assert login(elsewhere, mistyped.email).status_code == 200
