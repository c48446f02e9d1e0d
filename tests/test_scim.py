"""SCIM 2.0 per organization: tokens, Users, Groups, filters, pagination, PATCH forms of Entra
and Okta, isolation between organizations, errors in SCIM's format."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.factories import Org, Server, anonymous, api_key_client, run_db

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


def fixture(name: str, **ids: str) -> Any:
    text = (FIXTURES / name).read_text()
    for key, value in ids.items():
        text = text.replace("{" + key + "}", value)
    return json.loads(text)


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


# --- users -------------------------------------------------------------------------------------


def test_users_crud_filter_and_pagination(server: Server, org_a: Org) -> None:
    with scim_client(server, org_a) as scim:
        user = new_user(scim, externalId=f"ext-{uuid.uuid4().hex}")
        assert user["active"] is True and user["meta"]["location"].endswith(user["id"])
        got = scim.get(f"/Users/{user['id']}")
        assert got.status_code == 200 and got.json()["userName"] == user["userName"]
        # filters: userName (case-insensitive), externalId, with the core URN prefix too
        for query in (f'userName eq "{user["userName"].upper()}"',
                      f'externalId eq "{user["externalId"]}"',
                      f'urn:ietf:params:scim:schemas:core:2.0:User:userName eq '
                      f'"{user["userName"]}"'):
            found = scim.get("/Users", params={"filter": query}).json()
            assert found["totalResults"] == 1 and found["Resources"][0]["id"] == user["id"]
        none = scim.get("/Users", params={"filter": 'userName eq "nobody@example.org"'}).json()
        assert none["totalResults"] == 0 and none["Resources"] == []
        for bad in ('name.givenName eq "Ada"', 'userName co "a"', "userName eq", "garbage"):
            body = assert_scim_error(scim.get("/Users", params={"filter": bad}), 400,
                                     "invalidFilter")
            assert "userName, externalId" in body["detail"]
        # members made outside SCIM are SCIM users too (userName = their email)
        everyone = scim.get("/Users", params={"count": 200}).json()
        assert everyone["totalResults"] == len(org_a.members) + 1
        assert org_a.admin.email in {u["userName"] for u in everyone["Resources"]}
        # startIndex/count pages cover everyone exactly once
        seen: list[str] = []
        start = 1
        while True:
            page = scim.get("/Users", params={"startIndex": start, "count": 2}).json()
            seen += [u["id"] for u in page["Resources"]]
            assert page["itemsPerPage"] == len(page["Resources"]) <= 2
            if not page["Resources"]:
                break
            start += 2
        assert sorted(seen) == sorted(u["id"] for u in everyone["Resources"])
        # attributes / excludedAttributes
        only = scim.get(f"/Users/{user['id']}", params={"attributes": "userName"}).json()
        assert "userName" in only and "emails" not in only and only["id"] == user["id"]
        # PUT replaces the SCIM record
        replaced = scim.put(f"/Users/{user['id']}", json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": user["userName"], "displayName": "Ada L.", "active": True})
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["displayName"] == "Ada L." and "emails" not in replaced.json()
        # uniqueness
        assert_scim_error(scim.post("/Users", json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": user["userName"]}), 409, "uniqueness")
        # DELETE removes the membership, not the account
        assert scim.delete(f"/Users/{user['id']}").status_code == 204
        assert_scim_error(scim.get(f"/Users/{user['id']}"), 404)
        assert_scim_error(scim.get("/Users/not-a-uuid"), 404)


SEARCH = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"


def test_post_search_finds_the_same_as_get_and_pages_across_types(server: Server, org_a: Org,
                                                                  org_b: Org) -> None:
    with scim_client(server, org_a) as scim, scim_client(server, org_b) as scim_b:
        user = new_user(scim, externalId=f"ext-{uuid.uuid4().hex}")
        group = scim.post("/Groups", json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": f"g-{uuid.uuid4().hex[:8]}", "externalId": user["externalId"],
            "members": [{"value": user["id"]}]})
        assert group.status_code == 201, group.text
        # one resource type: the filter, attributes and paging of GET, from the body
        found = scim.post("/Users/.search", json={
            "schemas": [SEARCH], "filter": f'userName eq "{user["userName"]}"',
            "attributes": ["userName"]})
        assert found.status_code == 200 and found.headers["content-type"].startswith(SCIM_JSON)
        body = found.json()
        assert body["totalResults"] == 1 and body["Resources"][0]["id"] == user["id"]
        assert "emails" not in body["Resources"][0] and body["Resources"][0]["userName"]
        groups = scim.post("/Groups/.search", json={
            "schemas": [SEARCH], "filter": f'displayName eq "{group.json()["displayName"]}"',
            "excludedAttributes": ["members"]}).json()
        assert groups["totalResults"] == 1 and "members" not in groups["Resources"][0]
        # every type at once: externalId is shared by both types, userName only by Users
        both = scim.post("/.search", json={
            "schemas": [SEARCH], "filter": f'externalId eq "{user["externalId"]}"'}).json()
        assert {r["id"] for r in both["Resources"]} == {user["id"], group.json()["id"]}
        users_only = scim.post("/.search", json={
            "schemas": [SEARCH], "filter": f'userName eq "{user["userName"]}"'}).json()
        assert [r["id"] for r in users_only["Resources"]] == [user["id"]]
        # pages of one across Users then Groups cover everything exactly once
        users_total = scim.get("/Users", params={"count": 0}).json()["totalResults"]
        groups_total = scim.get("/Groups", params={"count": 0}).json()["totalResults"]
        everything = scim.post("/.search", json={"schemas": [SEARCH], "count": 200}).json()
        assert everything["totalResults"] == users_total + groups_total
        seen = []
        for start in range(1, users_total + groups_total + 2):
            page = scim.post("/.search", json={"schemas": [SEARCH], "startIndex": start,
                                               "count": 1}).json()
            assert page["totalResults"] == users_total + groups_total
            seen += [r["id"] for r in page["Resources"]]
        assert seen == [r["id"] for r in everything["Resources"]]
        # another organization's search never sees org A's resources
        other = scim_b.post("/.search", json={
            "schemas": [SEARCH], "filter": f'externalId eq "{user["externalId"]}"'}).json()
        assert other["totalResults"] == 0
        # bad search bodies are SCIM errors
        assert_scim_error(scim.post("/.search", json={"filter": "x"}), 400, "invalidSyntax")
        assert_scim_error(scim.post("/.search", json={"schemas": [SEARCH],
                                                      "filter": 'title eq "x"'}), 400,
                          "invalidFilter")
        assert_scim_error(scim.post("/Users/.search", json={"schemas": [SEARCH],
                                                            "sortBy": "userName"}), 400)
        assert_scim_error(scim.post("/Users/.search", json={"schemas": [SEARCH],
                                                            "count": "many"}), 400)
        assert_scim_error(scim.post("/.search", content=b"{nope"), 400, "invalidSyntax")
        assert_scim_error(scim.post("/.search", json={"schemas": 7}), 400, "invalidSyntax")
        for huge in (10**30, -(10**30)):
            page = scim.post("/Users/.search", json={"schemas": [SEARCH], "startIndex": huge})
            assert page.status_code == 200, page.text
            listed = scim.get("/Users", params={"startIndex": str(huge)})
            assert listed.status_code == 200, listed.text
        assert "POST" in assert_scim_error(scim.get("/.search"), 405)["detail"] and \
            scim.get("/.search").headers["Allow"] == "POST"
        for method in ("GET", "PUT", "PATCH", "DELETE"):  # never read as a user's id
            wrong = scim.request(method, "/Users/.search", json={})
            assert_scim_error(wrong, 405)
            assert wrong.headers["Allow"] == "POST", wrong.headers
        assert_scim_error(httpx.post(f"{server.base_url}/scim/v2/{org_a.slug}/.search",
                                     json={"schemas": [SEARCH]}), 401)


def test_bad_input_is_a_scim_error_and_changes_nothing(server: Server, org_a: Org) -> None:
    with scim_client(server, org_a) as scim:
        before = scim.get("/Users").json()["totalResults"]
        assert_scim_error(scim.post("/Users", content=b"{not json"), 400, "invalidSyntax")
        assert_scim_error(scim.post("/Users", json=["a"]), 400, "invalidSyntax")
        unknown = scim.post("/Users", json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "x@example.org", "favouriteColour": "blue"})
        assert "favouriteColour" in assert_scim_error(unknown, 400)["detail"]
        big = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
               "userName": "big@example.org", "title": "x" * 300_000}
        assert scim.post("/Users", json=big).status_code == 413
        user = new_user(scim)
        refused = scim.patch(f"/Users/{user['id']}", json={
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "path": "displayName", "value": "Changed"},
                           {"op": "move", "path": "title", "value": "x"}]})
        assert_scim_error(refused, 400)
        assert scim.get(f"/Users/{user['id']}").json().get("displayName") is None
        assert scim.get("/Users").json()["totalResults"] == before + 1


def test_a_user_of_org_a_never_appears_in_org_b(server: Server, org_a: Org, org_b: Org) -> None:
    with scim_client(server, org_a) as scim_a, scim_client(server, org_b) as scim_b:
        user = new_user(scim_a, externalId="shared-external-id")
        assert_scim_error(scim_b.get(f"/Users/{user['id']}"), 404)
        for query in (f'userName eq "{user["userName"]}"', 'externalId eq "shared-external-id"'):
            assert scim_b.get("/Users", params={"filter": query}).json()["totalResults"] == 0
        assert user["id"] not in scim_b.get("/Users", params={"count": 200}).text
        assert_scim_error(scim_b.patch(f"/Users/{user['id']}", json=fixture(
            "okta_deactivate_user.json")), 404)
        assert_scim_error(scim_b.delete(f"/Users/{user['id']}"), 404)
        # org B may use the same externalId for its own user: identities are per org
        assert new_user(scim_b, externalId="shared-external-id")["id"] != user["id"]
        members_b = org_b.admin.client.get(f"/api/v1/orgs/{org_b.slug}/members").json()
        assert user["id"] not in {m["user_id"] for m in members_b}


def test_an_existing_account_is_linked_by_email_not_duplicated(
        server: Server, org_a: Org, org_b: Org) -> None:
    """A member of org B provisioned by org A's SCIM is linked: same account, new membership
    in A; org A's SCIM attributes stay in A and B sees nothing of them."""
    person = org_b.members["viewer"]
    with scim_client(server, org_a) as scim_a, scim_client(server, org_b) as scim_b:
        linked = scim_a.post("/Users", json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": person.email.upper(), "externalId": "a-side", "title": "A's title",
            "emails": [{"value": person.email, "primary": True}]})
        assert linked.status_code == 201, linked.text
        assert linked.json()["id"] == person.user_id
        seen_by_b = scim_b.get(f"/Users/{person.user_id}").json()
        assert seen_by_b["userName"] == person.email and "externalId" not in seen_by_b
        assert "title" not in seen_by_b
        # their role in B is unchanged, and in A they are a viewer
        members_a = org_a.admin.client.get(f"/api/v1/orgs/{org_a.slug}/members").json()
        assert {m["user_id"]: m["role"] for m in members_a}[person.user_id] == "viewer"
        assert_scim_error(scim_a.post("/Users", json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "another-name", "emails": [{"value": person.email}]}), 409, "uniqueness")


def test_scim_tokens_are_bound_to_their_organization(server: Server, org_a: Org,
                                                     org_b: Org) -> None:
    token_a = scim_token(org_a)
    with scim_client(server, org_b, token_a) as stolen:
        for path in ("/Users", "/Groups", "/ServiceProviderConfig", f"/Users/{uuid.uuid4()}"):
            assert_scim_error(stolen.get(path), 404)
    with anonymous(server) as anon:
        assert_scim_error(anon.get(f"/scim/v2/{org_a.slug}/Users"), 401)
    with api_key_client(server, org_a.api_keys["admin"]) as key:  # API keys are no SCIM token
        assert_scim_error(key.get(f"/scim/v2/{org_a.slug}/Users"), 401)
    assert_scim_error(org_a.admin.client.get(f"/scim/v2/{org_a.slug}/Users"), 401)


# --- identity providers' request shapes --------------------------------------------------------


def test_entra_requests(server: Server, org_a: Org) -> None:
    with scim_client(server, org_a) as scim:
        body = fixture("entra_create_user.json")
        created = scim.post("/Users", json=body)
        assert created.status_code == 201, created.text
        user = created.json()
        found = scim.get("/Users", params={"filter": f'userName eq "{body["userName"]}"'})
        assert found.json()["Resources"][0]["id"] == user["id"]
        patched = scim.patch(f"/Users/{user['id']}", json=fixture("entra_patch_user.json"))
        assert patched.status_code == 200, patched.text
        doc = patched.json()
        assert doc["emails"][0]["value"] == "updatedEmail@contoso.example"
        assert doc["name"]["familyName"] == "updatedFamilyName"
        enterprise = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
        assert doc[enterprise]["employeeNumber"] == "701985"
        disabled = scim.patch(f"/Users/{user['id']}", json=fixture("entra_disable_user.json"))
        assert disabled.status_code == 200 and disabled.json()["active"] is False
        group = scim.post("/Groups", json=fixture("entra_create_group.json"))
        assert group.status_code == 201, group.text
        gid = group.json()["id"]
        lookup = scim.get("/Groups", params={"filter": 'displayName eq "EngineX Admins"',
                                             "excludedAttributes": "members"})
        assert lookup.json()["Resources"][0]["id"] == gid
        added = scim.patch(f"/Groups/{gid}", json=fixture("entra_add_member.json",
                                                          user_id=user["id"]))
        assert added.status_code == 200, added.text
        assert [m["value"] for m in added.json()["members"]] == [user["id"]]
        removed = scim.patch(f"/Groups/{gid}", json=fixture("entra_remove_member.json",
                                                            user_id=user["id"]))
        assert removed.status_code == 200, removed.text
        assert "members" not in removed.json()


def test_okta_requests(server: Server, org_a: Org) -> None:
    with scim_client(server, org_a) as scim:
        body = fixture("okta_create_user.json")
        body["userName"] = body["emails"][0]["value"] = f"okta-{uuid.uuid4().hex[:8]}@ex.org"
        body["externalId"] = uuid.uuid4().hex
        created = scim.post("/Users", json=body)
        assert created.status_code == 201, created.text
        user = created.json()
        assert "password" not in user and user["displayName"] == "Test User"
        page = scim.get("/Users", params={"filter": f'userName eq "{body["userName"]}"',
                                          "startIndex": 1, "count": 100}).json()
        assert page["totalResults"] == 1 and page["startIndex"] == 1
        off = scim.patch(f"/Users/{user['id']}", json=fixture("okta_deactivate_user.json"))
        assert off.status_code == 200 and off.json()["active"] is False
        members = org_a.admin.client.get(f"/api/v1/orgs/{org_a.slug}/members").json()
        assert {m["user_id"]: m["disabled_at"] for m in members}[user["id"]] is not None
        group = scim.post("/Groups", json=fixture("okta_create_group.json"))
        assert group.status_code == 201, group.text
        gid = group.json()["id"]
        renamed = scim.patch(f"/Groups/{gid}", json=fixture("okta_rename_group.json",
                                                            group_id=gid))
        assert renamed.status_code == 200 and renamed.json()["displayName"] == \
            "Test SCIMv2 renamed"
        added = scim.patch(f"/Groups/{gid}", json=fixture("okta_add_member.json",
                                                          user_id=user["id"]))
        assert added.json()["members"][0]["display"] == "test.user@okta.example"
        assert scim.get(f"/Users/{user['id']}").json()["groups"][0]["value"] == gid
        removed = scim.patch(f"/Groups/{gid}", json=fixture("okta_remove_member.json",
                                                            user_id=user["id"]))
        assert removed.status_code == 200 and "members" not in removed.json()
        assert scim.delete(f"/Groups/{gid}").status_code == 204
        assert_scim_error(scim.get(f"/Groups/{gid}"), 404)


# --- groups and roles --------------------------------------------------------------------------


def add_rule(server: Server, org: Org, group: str, role: str, priority: int = 100) -> None:
    async def work(session: Any) -> None:
        from enginex.db import set_tenant
        from enginex.sso.models import RoleMappingRule

        await set_tenant(session, uuid.UUID(org.id))
        session.add(RoleMappingRule(tenant_id=uuid.UUID(org.id), group_name=group, role=role,
                                    priority=priority))

    run_db(server, work)


def member_roles(org: Org) -> dict[str, str]:
    members = org.admin.client.get(f"/api/v1/orgs/{org.slug}/members").json()
    return {m["user_id"]: m["role"] for m in members}


def test_groups_map_to_roles_by_the_role_mapping_rules(server: Server, org_a: Org,
                                                       org_b: Org) -> None:
    add_rule(server, org_a, "EngineX Operators", "operator")
    with scim_client(server, org_a) as scim:
        user = new_user(scim)
        other_org_member = org_b.members["viewer"].user_id
        refused = scim.post("/Groups", json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": "Intruders", "members": [{"value": other_org_member}]})
        assert_scim_error(refused, 400, "invalidValue")
        group = scim.post("/Groups", json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": "enginex operators ", "members": [{"value": user["id"]}]})
        assert group.status_code == 201, group.text
        assert member_roles(org_a)[user["id"]] == "operator"
        # a member not provisioned by SCIM keeps the role the admins gave
        builder = org_a.members["builder"].user_id
        scim.patch(f"/Groups/{group.json()['id']}", json=fixture("okta_add_member.json",
                                                                 user_id=builder))
        assert member_roles(org_a)[builder] == "builder"
        # out of the group: back to the default role
        scim.patch(f"/Groups/{group.json()['id']}", json=fixture("okta_remove_member.json",
                                                                 user_id=user["id"]))
        assert member_roles(org_a)[user["id"]] == "viewer"
        assert_scim_error(scim.post("/Groups", json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": "EngineX Operators"}), 409, "uniqueness")
    audit = org_a.admin.client.get(f"/api/v1/orgs/{org_a.slug}/audit",
                                   params={"action": "member.role_changed"}).text
    assert user["id"] in audit
