"""The cross-tenant route walk: every registered route, every actor that must be refused.

Routes are read from the running app, so a new route is covered the moment it is added; a
route whose path parameters this test cannot fill fails the test until it learns them.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import Mount

from enginex.kit.errors import NOT_FOUND_MESSAGE
from enginex.tenancy.guards import access_rules, registered_routes
from enginex.tenancy.scopes import ROLE_SCOPES, Role
from tests.factories import (
    Org,
    Server,
    anonymous,
    api_key_client,
    deploy_agent,
    pending_approval,
    start_session,
    wait_for_status,
)
from tests.victims_lifecycle import lifecycle_victim_ids
from tests.victims_llm import llm_victim_ids
from tests.victims_mcp import mcp_victim_ids
from tests.victims_skill import skill_victim_ids
from tests.victims_sso import PUBLIC_SSO_ROUTES, sso_victim_ids

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
WEB_KINDS = {"web", "web_tenant", "web_platform_admin"}
EXPECTED_404 = {"error": {"code": "not_found", "message": NOT_FOUND_MESSAGE, "details": {}}}
SCIM_ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
SCIM_404 = {"schemas": [SCIM_ERROR], "status": "404", "detail": NOT_FOUND_MESSAGE}


def scim_token_of(org: Org) -> str:
    created = org.admin.client.post(f"/api/v1/orgs/{org.slug}/scim/tokens",
                                    json={"name": "attacker"})
    assert created.status_code == 201, created.text
    return str(created.json()["token"])


def check_scim_route(case: RouteCase, url: str, random_url: str, anon: httpx.Client,
                     attackers: list[httpx.Client], stolen_token: httpx.Client,
                     leak_canaries: list[str]) -> int:
    """A SCIM route (``ScimClient``): anonymous, cookies and API keys (of any org) -> 401; the
    SCIM token of another organization -> 404 with the body of an unknown organization; all
    in SCIM's error format."""
    where = f"{case.method} {case.path}"
    for actor in (anon, *attackers):
        response = send(actor, case, url)
        assert response.status_code == 401, (where, response.text)
        assert response.json()["schemas"] == [SCIM_ERROR], where
        assert_no_leak(response, leak_canaries, where)
    response = send(stolen_token, case, url)
    baseline = send(stolen_token, case, random_url)
    assert response.status_code == 404, (where, response.text)
    assert response.headers["content-type"].startswith("application/scim+json")
    assert response.json() == SCIM_404 == baseline.json(), where
    assert_no_leak(response, leak_canaries, where)
    return 2 + len(attackers)


@dataclass(frozen=True)
class RouteCase:
    path: str
    method: str
    kind: str
    scope: str | None
    has_body: bool


def walk_routes(app) -> list[RouteCase]:
    cases: list[RouteCase] = []
    for registered in registered_routes(app):
        route = registered.route
        if isinstance(route, Mount) and registered.path == "/static":
            continue
        if not isinstance(route, APIRoute):
            if registered.path in {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}:
                continue
            pytest.fail(f"unexpected non-API route {registered.path}: declare it or list it")
        rules = access_rules(route.dependant)
        kinds = {r.kind for r in rules}
        assert len(kinds) == 1, f"{registered.path} declares {kinds or 'no'} access rule"
        kind = kinds.pop()
        scope = next((str(r.scope) for r in rules if r.scope), None)
        for method in sorted(registered.methods - {"HEAD", "OPTIONS"}):
            cases.append(RouteCase(registered.path, method, kind, scope,
                                   route.body_field is not None))
    return cases


def victim_ids(victim: Org) -> dict[str, str]:
    """Real ids of the victim's objects, one per path parameter name used by the routes."""
    admin = victim.admin.client
    keys = admin.get(f"/api/v1/orgs/{victim.slug}/api-keys").json()
    invite = admin.post(f"/api/v1/orgs/{victim.slug}/invitations",
                        json={"email": f"canary-{victim.slug}@example.org", "role": "viewer"})
    assert invite.status_code == 201
    deployed = deploy_agent(victim)
    # One finished session with a report, and one waiting for its approval.
    finished = start_session(victim, {"timesheet": f"2026-11-02,canary-{victim.slug},Apollo,1"})
    wait_for_status(victim, finished["id"], {"waiting_approval"})
    decided = victim.members["operator"].client.post(
        f"/api/v1/orgs/{victim.slug}/approvals/"
        f"{pending_approval(victim, finished['id'])['id']}/decision",
        json={"decision": "approve", "comment": f"canary-{victim.slug}"})
    assert decided.status_code == 200, decided.text
    wait_for_status(victim, finished["id"], {"succeeded"})
    report = victim.admin.client.get(f"/api/v1/orgs/{victim.slug}/reports",
                                     params={"session": finished["id"]}).json()[0]
    waiting = start_session(victim, {"timesheet": f"2026-11-02,canary-{victim.slug},Apollo,2"})
    wait_for_status(victim, waiting["id"], {"waiting_approval"})
    approval = pending_approval(victim, waiting["id"])
    # A credential whose value holds the canary: no response to anyone, the victim's own
    # admin included, may ever carry it.
    secret_value = f"sk-canary-{victim.slug}-{uuid.uuid4().hex}"
    credentials = f"/api/v1/orgs/{victim.slug}/credentials"
    credential = admin.post(credentials, json={"name": "canary", "type": "api_key",
                                               "values": {"key": secret_value}})
    assert credential.status_code == 201, credential.text
    own_views = [credential, admin.get(credentials),
                 admin.get(f"{credentials}/{credential.json()['id']}")]
    assert all(v.status_code in (200, 201) and secret_value not in v.text for v in own_views)
    scim_token = admin.post(f"/api/v1/orgs/{victim.slug}/scim/tokens", json={"name": "canary"})
    assert scim_token.status_code == 201, scim_token.text
    scim_group = httpx.post(
        f"{scim_token.json()['scim_base_url']}/Groups",
        headers={"Authorization": f"Bearer {scim_token.json()['token']}"},
        json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
              "displayName": f"canary-{victim.slug}"})
    assert scim_group.status_code == 201, scim_group.text
    return {"org": victim.slug, "user_id": victim.members["viewer"].user_id,
            "token_id": scim_token.json()["id"], "group_id": scim_group.json()["id"],
            "schema_id": "urn:ietf:params:scim:schemas:core:2.0:User", "type_id": "User",
            "rest": "Unknown",
            "key_id": keys[0]["id"], "invitation_id": invite.json()["id"],
            "tenant_id": victim.id, "agent_key": deployed["agent_key"],
            "version": deployed["version"], "run_id": waiting["id"],
            "approval_id": approval["id"], "report_id": report["id"],
            "credential_id": credential.json()["id"],
            # Platform admin routes of plans and prices (usage, issue 18).
            "plan_key": "team", "provider": "openai", "model": "gpt-4o-mini",
            **llm_victim_ids(victim), **mcp_victim_ids(victim), **skill_victim_ids(victim),
            **lifecycle_victim_ids(victim), **sso_victim_ids(victim)}

def fill(path: str, values: dict[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            pytest.fail(f"route {path}: teach this test a value for path parameter '{name}'")
        return values[name]
    return re.sub(r"\{([a-z_]+)(?::[a-z]+)?\}", sub, path)


def send(client: httpx.Client, case: RouteCase, url: str,
         headers: dict[str, str] | None = None) -> httpx.Response:
    kwargs = {"json": {}} if case.has_body else {}
    return client.request(case.method, url, headers=headers, **kwargs)


def canaries(victim: Org) -> list[str]:
    found = [victim.id, victim.name, *(a.email for a in victim.members.values()),
             *(a.user_id for a in victim.members.values()), f"canary-{victim.slug}"]
    return [c for c in found if c]


def assert_no_leak(response: httpx.Response, secrets_of_victim: list[str], where: str) -> None:
    haystack = response.text + " ".join(f"{k}: {v}" for k, v in response.headers.items())
    for canary in secrets_of_victim:
        assert canary not in haystack, f"{where}: leaked {canary!r}"


def test_every_route_refuses_the_wrong_actor(server: Server, org_a: Org, org_b: Org) -> None:
    cases = walk_routes(server.app)
    assert any(c.kind == "tenant" for c in cases)
    ids = victim_ids(org_b)
    random_ids = {k: str(uuid.uuid4()) for k in ids} | {"org": f"no-such-{org_b.slug}"}
    leak_canaries = canaries(org_b)
    attempts = 0
    tenant_routes = {c.path for c in cases if c.kind in {"tenant", "web_tenant"}}
    attacker_key = api_key_client(server, org_a.api_keys["admin"])
    attacker_keys = [api_key_client(server, token) for token in org_a.api_keys.values()]
    member_attackers = [m.client for m in org_a.members.values()]
    attackers = [*member_attackers, *attacker_keys]
    stolen_token = api_key_client(server, scim_token_of(org_a))
    random_url_of = {"org": f"no-such-{org_b.slug}"}
    with anonymous(server) as anon:
        for case in cases:
            where = f"{case.method} {case.path}"
            if case.kind == "public":
                continue
            url = fill(case.path, ids)
            if case.kind == "scim":
                attempts += check_scim_route(case, url, fill(case.path, ids | random_url_of),
                                             anon, attackers, stolen_token, leak_canaries)
                continue
            page = case.kind in WEB_KINDS
            # 1. anonymous: 401 on the API, sign-in redirect on pages
            response = send(anon, case, url)
            attempts += 1
            if page:
                assert response.status_code == 303 and "/login" in response.headers["location"]
            else:
                assert response.status_code == 401, (where, response.text)
                assert response.json()["error"]["code"] == "unauthenticated"
            if page:  # pages only honour the session cookie: an API key is anonymous there
                for key in attacker_keys:
                    response = send(key, case, url)
                    attempts += 1
                    assert response.status_code == 303, (where, response.text)
            if case.kind in {"platform_admin", "web_platform_admin"}:
                for actor in (org_a.admin.client, *([] if page else [attacker_key])):
                    response = send(actor, case, url)
                    attempts += 1
                    assert response.status_code == 403, (where, response.text)
                    assert_no_leak(response, leak_canaries, where)
            if case.kind not in {"tenant", "web_tenant"}:
                continue
            # 2. every member and every API key of the other org: 404, same body as a random
            # id; GETs are also tried as an event-stream subscription (SSE must not open).
            random_url = fill(case.path, random_ids)
            for attacker in member_attackers if page else attackers:
                for headers in ({}, {"Accept": "text/event-stream"}) if case.method == "GET" \
                        else ({},):
                    response = send(attacker, case, url, headers)
                    baseline = send(attacker, case, random_url, headers)
                    attempts += 2
                    assert response.status_code == 404, (where, response.text)
                    if page:
                        assert response.headers["content-type"].startswith("text/html")
                        assert response.text == baseline.text, where
                        assert NOT_FOUND_MESSAGE in response.text
                    else:
                        assert response.headers["content-type"].startswith("application/json")
                        assert response.json() == EXPECTED_404 == baseline.json(), where
                    assert_no_leak(response, leak_canaries, where)
            # 3. own members and keys whose role lacks the scope: 403
            for role in Role:
                if case.scope in {str(s) for s in ROLE_SCOPES[role]}:
                    continue
                key = api_key_client(server, org_b.api_keys[str(role)])
                for actor in (org_b.members[str(role)].client, *([] if page else [key])):
                    response = send(actor, case, url)
                    attempts += 1
                    assert response.status_code == 403, (where, role, response.text)
                    if not page:
                        assert response.json()["error"]["code"] == "forbidden"
                key.close()
    attacker_key.close()
    stolen_token.close()
    for client in attacker_keys:
        client.close()
    actors = 1 + len(attackers) + 2 * len(Role)
    print(f"\nisolation[{server.backend}]: {len(cases)} route-methods "
          f"({len(tenant_routes)} tenant paths) x up to {actors} actors = {attempts} attempts, "
          "0 leaks")


# Every public route and why it is public. A new public route fails the test below until it
# is listed here with its reason.
PUBLIC_ROUTES = {
    ("GET", "/healthz"): "liveness probe, no data",
    ("GET", "/readyz"): "readiness probe, no data",
    ("POST", "/api/v1/auth/login"): "sign-in",
    ("POST", "/api/v1/invitations/accept"): "accepting an invitation creates the account",
    ("GET", "/login"): "the sign-in page",
    ("POST", "/login"): "the sign-in form (password, or an email routed to its SSO)",
    ("GET", "/invitations/accept"): "the invitation page",
    ("POST", "/invitations/accept"): "the invitation form",
    ("POST", "/api/v1/auth/password-reset"): "asking for a reset link (same answer for every "
                                             "address; the link goes by mail)",
    ("POST", "/api/v1/auth/password-reset/confirm"): "setting a new password: the single-use "
                                                     "token is the credential",
    ("GET", "/password-reset"): "the forgotten-password page",
    ("POST", "/password-reset"): "the forgotten-password form",
    ("GET", "/password-reset/confirm"): "the new-password page (token in the fragment)",
    ("POST", "/password-reset/confirm"): "the new-password form (the token is the credential)",
    ("GET", "/metrics"): "Prometheus scrape: its own bearer token (ENGINEX_METRICS_TOKEN), 404 "
                         "when none is set; org ids and numbers only",
    **{(method, "/scim/v2/{org}/{rest:path}"): "SCIM's catch-all: only 404/405 in SCIM's "
       "format, the same for every slug" for method in ("GET", "POST", "PUT", "PATCH", "DELETE")},
    **PUBLIC_SSO_ROUTES,
}


def test_every_public_route_is_declared_with_a_reason(server: Server) -> None:
    public = {(c.method, c.path) for c in walk_routes(server.app) if c.kind == "public"}
    assert public == set(PUBLIC_ROUTES), public ^ set(PUBLIC_ROUTES)


def test_write_routes_refuse_mass_assignment(server: Server, org_a: Org, platform_admin) -> None:
    """No write route accepts tenant_id, org_id, is_platform_admin or created_by."""
    ids = victim_ids(org_a)
    forged = {"tenant_id": str(uuid.uuid4()), "org_id": str(uuid.uuid4()),
              "is_platform_admin": True, "created_by": str(uuid.uuid4())}
    checked = 0
    for case in walk_routes(server.app):
        if not case.has_body:
            continue
        client = platform_admin.client if case.kind == "platform_admin" else org_a.admin.client
        response = send_json(client, case, fill(case.path, ids), forged)
        checked += 1
        assert response.status_code == 422, (case, response.text)
        fields = {e["field"] for e in response.json()["error"]["details"]["errors"]}
        assert set(forged) <= fields, (case, fields)
    assert checked >= 5


def send_json(client: httpx.Client, case: RouteCase, url: str, body: dict) -> httpx.Response:
    return client.request(case.method, url, json=body)


def test_a_route_without_access_rule_cannot_be_registered() -> None:
    from enginex.tenancy.guards import make_router

    router = make_router()
    with pytest.raises(RuntimeError, match="exactly one access rule"):
        @router.get("/api/v1/orgs/{org}/unguarded")
        async def unguarded(org: str) -> dict[str, str]:
            return {"org": org}
