"""Invitations are not an account-existence oracle, through real HTTP on both backends.

Threat model: an org admin (or anyone holding an invitation link) invites an address -- the
platform admin's login, a member of another organization, anybody -- then accepts the link
signed out, or signed in as themselves, to learn whether that address has an EngineX account
anywhere. Every answer that does not create an account must read the same for an address with
and without an account: status, JSON body, page text (with the invited token, which differs per
link, taken out). The one remaining difference is the end of the road: a valid new password
creates the account when the address has none; for an existing account nothing is written and
its password is never set (see docs/MULTI_TENANT.md, "Invitations").
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest

from tests.factories import PASSWORD, Actor, Org, Server, anonymous, make_org, sign_in

API = "/api/v1/invitations/accept"
PAGE = "/invitations/accept"


@pytest.fixture(scope="module")
def inviter(server: Server, platform_admin: Actor) -> Org:
    """The probing organization: an admin who can invite anyone."""
    return make_org(server, platform_admin, "oracle", roles=("admin",), with_keys=False)


@pytest.fixture(scope="module")
def elsewhere(server: Server, platform_admin: Actor) -> Org:
    """Another tenant whose member's address is probed."""
    return make_org(server, platform_admin, "elsewhere", roles=("admin", "viewer"),
                    with_keys=False)


def invite(org: Org, email: str) -> str:
    response = org.admin.client.post(f"/api/v1/orgs/{org.slug}/invitations",
                                     json={"email": email, "role": "viewer"})
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


def existing_and_new(inviter: Org, platform_admin: Actor, elsewhere: Org
                     ) -> list[tuple[str, str]]:
    """(label, token) for the platform admin's address, another tenant's member and an address
    with no account."""
    return [("platform admin", invite(inviter, platform_admin.email)),
            ("other tenant's member", invite(inviter, elsewhere.members["viewer"].email)),
            ("new address", invite(inviter, f"nobody-{secrets.token_hex(4)}@example.org"))]


def seen(response: httpx.Response, token: str) -> tuple[int, str, str]:
    """What the holder of the link observes, with the link's own token taken out."""
    return (response.status_code, response.headers.get("content-type", ""),
            response.text.replace(token, "<token>"))


def assert_all_alike(answers: dict[str, tuple[int, str, str]]) -> None:
    (first_label, first), *rest = answers.items()
    for label, answer in rest:
        assert answer == first, f"{label} answers differently from {first_label}:\n" \
                                f"{answer}\n---\n{first}"


ANONYMOUS_API_PROBES: list[dict[str, Any]] = [
    {},                                              # no password: "sign in or set one?"
    {"password": "short"},                           # policy
    {"password": "x" * 12},                          # policy (too simple)
    {"display_name": "Probe"},
]

ANONYMOUS_PAGE_PROBES: list[dict[str, str]] = [
    {},
    {"display_name": "Probe"},
    {"password": "short", "password_confirm": "short"},
    {"password": PASSWORD, "password_confirm": PASSWORD + "x"},
]


def test_anonymous_api_answers_do_not_depend_on_the_address_having_an_account(
        server: Server, platform_admin: Actor, inviter: Org, elsewhere: Org) -> None:
    links = existing_and_new(inviter, platform_admin, elsewhere)
    for probe in ANONYMOUS_API_PROBES:
        answers = {}
        for label, token in links:
            with anonymous(server) as holder:
                response = holder.post(API, json={"token": token, **probe})
            assert "set-cookie" not in response.headers
            answers[label] = seen(response, token)
        assert_all_alike(answers)
        assert next(iter(answers.values()))[0] == 422, (probe, answers)


def test_anonymous_page_answers_do_not_depend_on_the_address_having_an_account(
        server: Server, platform_admin: Actor, inviter: Org, elsewhere: Org) -> None:
    links = existing_and_new(inviter, platform_admin, elsewhere)
    for probe in [*ANONYMOUS_PAGE_PROBES, {"__get__": ""}]:
        answers = {}
        for label, token in links:
            with anonymous(server) as holder:
                if "__get__" in probe:
                    response = holder.get(PAGE)
                else:
                    response = holder.post(PAGE, data={"token": token, **probe})
            assert "set-cookie" not in response.headers
            answers[label] = seen(response, token)
        assert_all_alike(answers)
    # The refusal of a missing password offers both ways in, whoever the link is for.
    with anonymous(server) as holder:
        page = holder.post(PAGE, data={"token": links[0][1]})
    assert page.status_code == 422
    assert 'id="password-error"' in page.text and "sign in as it first" in page.text
    assert 'href="/login?next=/invitations/accept"' in page.text


def test_signed_in_answers_do_not_depend_on_the_address_having_an_account(
        server: Server, platform_admin: Actor, inviter: Org, elsewhere: Org) -> None:
    """The inviting admin, signed in, posts each link as themselves: one 'not for you'."""
    links = existing_and_new(inviter, platform_admin, elsewhere)
    admin = inviter.admin
    api_answers, page_answers = {}, {}
    for label, token in links:
        api = admin.client.post(API, json={"token": token})
        api_answers[label] = seen(api, token)
        form = httpx.Client(base_url=server.base_url, timeout=30, cookies=admin.client.cookies)
        with form:
            page = form.post(PAGE, data={"token": token,
                                         "csrf_token": admin.client.headers["X-CSRF-Token"]})
        page_answers[label] = seen(page, token)
    assert_all_alike(api_answers)
    assert_all_alike(page_answers)
    assert next(iter(api_answers.values()))[0] == 401
    assert f"not for {admin.email}" in next(iter(page_answers.values()))[2]


def test_a_new_password_never_joins_or_changes_an_existing_account(
        server: Server, platform_admin: Actor, inviter: Org, elsewhere: Org) -> None:
    """The end of the road: the address with no account gets it; the existing accounts are
    not joined, their password is unchanged, and the link still works for them signed in."""
    links = existing_and_new(inviter, platform_admin, elsewhere)
    chosen = "holder chosen pass phrase"
    for label, token in links:
        with anonymous(server) as holder:
            response = holder.post(API, json={"token": token, "password": chosen})
        if label == "new address":
            assert response.status_code == 200, response.text
            continue
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "sign_in_required"
        assert "set-cookie" not in response.headers
    with anonymous(server) as holder:
        assert holder.post("/api/v1/auth/login", json={
            "email": platform_admin.email, "password": chosen}).status_code == 401
    member = elsewhere.members["viewer"]
    again = sign_in(server, member.email, PASSWORD)
    joined = again.client.post(API, json={"token": links[1][1]})
    assert joined.status_code == 200, joined.text
    assert joined.json()["new_account"] is False
    again.close()

