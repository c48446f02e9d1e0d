"""SCIM 2.0 per organization: tokens, Users, Groups, filters, pagination, PATCH forms of Entra
and Okta, isolation between organizations, errors in SCIM's format."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import Org, Server, add_member, anonymous, api_key_client

FIXTURES = Path(__file__).parent / "fixtures" / "scim"
SCIM_JSON = "application/scim+json"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"


def scim_token(org: Org) -> str:
    created = org.admin.client.post(f"/api/v1/orgs/{org.slug}/scim/tokens",
                                    json={"name": "idp"})
    assert created.status_code == 201, created.text
    return created.json()["token"]


def scim_client(server: Server, org: Org, token: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=f"{server.base_url}/scim/v2/{org.slug}", timeout=30,
                        headers={"Authorization": f"Bearer {token or scim_token(org)}",
                                 "Content-Type": SCIM_JSON})


def assert_scim_error(response: httpx.Response, status: int,
                      scim_type: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(SCIM_JSON)
    body = response.json()
    assert body["schemas"] == [ERROR] and body["status"] == str(status)
    assert body["detail"]
    if scim_type is not None:
        assert body.get("scimType") == scim_type, body
    return body


def new_user(scim: httpx.Client, **extra: Any) -> dict[str, Any]:
    name = f"u-{uuid.uuid4().hex[:10]}@example.org"
    body = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name,
            "emails": [{"value": name, "primary": True, "type": "work"}],
            "name": {"givenName": "Ada", "familyName": "Lovelace"}, "active": True, **extra}
    created = scim.post("/Users", json=body)
    assert created.status_code == 201, created.text
    return created.json()


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


# --- tokens ------------------------------------------------------------------------------------


def test_scim_tokens_are_shown_once_hashed_listed_and_revoked(server: Server, org_a: Org) -> None:
    base = f"/api/v1/orgs/{org_a.slug}/scim/tokens"
    created = org_a.admin.client.post(base, json={"name": "okta"})
    assert created.status_code == 201, created.text
    body = created.json()
    token = body["token"]
    assert token.startswith("scim_") and body["scim_base_url"].endswith(f"/scim/v2/{org_a.slug}")
    listed = org_a.admin.client.get(base)
    assert listed.status_code == 200 and token not in listed.text
    assert any(t["id"] == body["id"] and t["hint"] == token[-4:] for t in listed.json())
    with scim_client(server, org_a, token) as scim:
        assert scim.get("/ServiceProviderConfig").status_code == 200
        assert org_a.admin.client.delete(f"{base}/{body['id']}").status_code == 204
        assert_scim_error(scim.get("/Users"), 401)
    audit = org_a.admin.client.get(f"/api/v1/orgs/{org_a.slug}/audit",
                                   params={"action": "scim_token.revoked"})
    assert audit.status_code == 200 and body["id"] in audit.text


def test_scim_tokens_need_an_admin(server: Server, org_a: Org) -> None:
    for role in ("builder", "operator", "viewer"):
        refused = org_a.members[role].client.post(f"/api/v1/orgs/{org_a.slug}/scim/tokens",
                                                  json={"name": "x"})
        assert refused.status_code == 403, refused.text


# --- discovery ---------------------------------------------------------------------------------


def test_discovery_documents(server: Server, org_a: Org) -> None:
    with scim_client(server, org_a) as scim:
        config = scim.get("/ServiceProviderConfig")
        assert config.status_code == 200 and config.headers["content-type"].startswith(SCIM_JSON)
        assert config.json()["patch"]["supported"] is True
        assert config.json()["filter"]["supported"] is True
        schemas = scim.get("/Schemas").json()
        ids = {s["id"] for s in schemas["Resources"]}
        assert "urn:ietf:params:scim:schemas:core:2.0:User" in ids
        assert "urn:ietf:params:scim:schemas:core:2.0:Group" in ids
        types = scim.get("/ResourceTypes").json()
        assert {t["name"] for t in types["Resources"]} == {"User", "Group"}
        assert scim.get("/ResourceTypes/User").json()["endpoint"] == "/Users"
        assert_scim_error(scim.get(f"/{uuid.uuid4()}"), 404)
        assert_scim_error(scim.post("/ServiceProviderConfig", json={}), 405)
