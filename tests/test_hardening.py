"""Smaller hardening, through real HTTP on both backends.

Threat model:
* login CSRF: another site (or a tool that strips both Origin and Referer) posts the HTML
  sign-in form to sign the visitor's browser into an account of the attacker's choosing;
* the site's identity is ENGINEX_BASE_URL, never the request's own ``Host`` header: a page
  that forges ``Host`` and ``Origin`` alike (DNS rebinding, a proxy that forwards any host)
  must not pass the Origin check of cookie requests, the sign-in form or the invitation form;
* other local users of the host must not read the embedded database, its WAL, the master key
  or report files: the data directory is 0700 and its files 0600 whatever the umask.
"""

from __future__ import annotations

import os
import secrets
import stat
import uuid
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import httpx
import pytest

from enginex.reports.storage import ArtifactStorage
from tests.conftest import separate_deployment
from tests.factories import PASSWORD, Actor, Org, Server, anonymous, make_org

REFUSED = "Sign-in was refused: the form was not sent from this site"


@pytest.fixture(scope="module")
def shop(server: Server, platform_admin: Actor) -> Org:
    return make_org(server, platform_admin, "harden", roles=("admin",), with_keys=False)


def post_login(server: Server, email: str, headers: dict[str, str]) -> httpx.Response:
    with anonymous(server) as browser:
        return browser.post("/login", headers=headers,
                            data={"email": email, "password": PASSWORD, "next": "/"})


def signed_in(response: httpx.Response, server: Server) -> bool:
    return response.status_code == 303 and \
        server.settings.session_cookie_name in response.headers.get("set-cookie", "")


# --- (a) the HTML sign-in form needs proof that it was sent by this site --------------------


def test_the_sign_in_form_refuses_a_post_that_names_no_site_or_another_site(
        server: Server, shop: Org) -> None:
    email = shop.admin.email
    for headers in ({}, {"Origin": "https://evil.example"}, {"Origin": "null"},
                    {"Referer": "https://evil.example/login"}):
        response = post_login(server, email, headers)
        assert response.status_code == 403, (headers, response.text)
        assert REFUSED in response.text
        assert "set-cookie" not in response.headers
        assert f'value="{email}"' in response.text  # the form again, email kept


def test_the_sign_in_form_accepts_this_sites_origin_or_referer(server: Server,
                                                               shop: Org) -> None:
    base = server.settings.base_url
    assert signed_in(post_login(server, shop.admin.email, {"Origin": base}), server)
    assert signed_in(post_login(server, shop.admin.email, {"Referer": f"{base}/login?next=/"}),
                     server)


# --- (b) the site is ENGINEX_BASE_URL, never the request's Host ------------------------------


FORGED = {"Host": "evil.example", "Origin": "http://evil.example"}


def test_a_cookie_request_whose_origin_matches_a_forged_host_is_refused(
        server: Server, shop: Org) -> None:
    base = f"/api/v1/orgs/{shop.slug}/invitations"
    body = {"email": f"forged-{secrets.token_hex(3)}@example.org", "role": "viewer"}
    forged = shop.admin.client.post(base, json=body, headers=FORGED)
    assert forged.status_code == 403, forged.text
    assert forged.json()["error"]["code"] == "csrf_failed"
    assert body["email"] not in shop.admin.client.get(base).text  # nothing was created
    same_site = shop.admin.client.post(base, json=body,
                                       headers={"Origin": server.settings.base_url})
    assert same_site.status_code == 201, same_site.text


def test_forms_whose_origin_matches_a_forged_host_are_refused(server: Server,
                                                              shop: Org) -> None:
    login = post_login(server, shop.admin.email, FORGED)
    assert login.status_code == 403 and REFUSED in login.text
    assert "set-cookie" not in login.headers
    token = shop.admin.client.post(f"/api/v1/orgs/{shop.slug}/invitations", json={
        "email": f"forged-{secrets.token_hex(3)}@example.org"}).json()["token"]
    with anonymous(server) as browser:
        accepted = browser.post("/invitations/accept", headers=FORGED, data={
            "token": token, "password": PASSWORD, "password_confirm": PASSWORD})
    assert accepted.status_code == 403 and "another site was refused" in accepted.text


# --- (c) private data directory ----------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def fresh(backend: str, tmp_path: Path) -> Iterator[Server]:
    """A deployment started on a data directory that does not exist yet, under the usual
    umask (022: group and others could read what is created without an explicit mode)."""
    previous = os.umask(0o022)
    os.umask(previous)
    if previous & 0o044:
        pytest.skip(f"umask {previous:o} already hides new files from other users")
    with separate_deployment(backend, tmp_path / "data") as deployment:
        yield deployment


def test_the_data_directory_and_its_files_are_private_after_startup(fresh: Server) -> None:
    settings = fresh.settings
    with anonymous(fresh) as client:
        assert client.get("/readyz").status_code == 200
    ArtifactStorage(settings.resolved_storage_dir).write(uuid.uuid4(), uuid.uuid4(), b"report")
    data_dir = settings.data_dir
    assert mode(data_dir) == 0o700
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    if fresh.backend == "sqlite":
        names = {p.name for p in files}
        assert {"enginex.db", "enginex.db-wal", "enginex.db-shm"} <= names, names
    assert files and {str(p): oct(mode(p)) for p in files} == \
        {str(p): oct(0o600) for p in files}
    folders = [p for p in data_dir.rglob("*") if p.is_dir()]
    assert {str(p): oct(mode(p)) for p in folders} == {str(p): oct(0o700) for p in folders}


@pytest.mark.parametrize(("sender", "base_url", "same"), [
    ("https://app.example", "https://app.example/", True),
    ("https://app.example:443", "https://app.example", True),
    ("https://APP.example/login?next=/", "https://app.example", True),
    ("http://app.example", "https://app.example", False),
    ("https://app.example.evil.example", "https://app.example", False),
    ("https://app.example:8443", "https://app.example", False),
    ("null", "https://app.example", False),
    ("http://localhost", "https://app.example", False),
    # A developer's loopback base URL: the other loopback names on the same port are the same
    # server (a rebinding page's Origin names the attacker's host, never a loopback name).
    ("http://localhost:8000", "http://127.0.0.1:8000", True),
    ("http://[::1]:8000", "http://127.0.0.1:8000", True),
    ("http://localhost:8001", "http://127.0.0.1:8000", False),
    ("https://localhost:8000", "http://127.0.0.1:8000", False),
])
def test_this_site_is_the_base_url_origin(sender: str, base_url: str, same: bool) -> None:
    from enginex.kit.origin import is_this_site

    assert is_this_site(sender, base_url) is same


# --- the region field is a label, and says so ----------------------------------------------


REGION_NOTE = "all data lives in this deployment's database"


def test_the_region_is_presented_as_a_label_not_a_data_location(
        server: Server, platform_admin: Actor, shop: Org) -> None:
    """Nothing routes data by region yet: no page or schema may promise where data lives."""
    tenants = platform_admin.client.get("/admin/tenants")
    assert tenants.status_code == 200
    assert "Where the tenant" not in tenants.text
    assert "Region label" in tenants.text and REGION_NOTE in unescape(tenants.text)
    settings = shop.admin.client.get(f"/o/{shop.slug}/settings")
    assert settings.status_code == 200
    assert "Region label" in settings.text and REGION_NOTE in unescape(settings.text)
    with anonymous(server) as client:
        schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("TenantCreate", "TenantOut"):
        assert "label only" in schemas[name]["properties"]["region"]["description"], name
