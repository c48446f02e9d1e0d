"""SAML sign-in over HTTP, end to end: a real IdP (pysaml2's ``saml2.server.Server``, which
reads EngineX's SP metadata and AuthnRequest and signs real responses with xmlsec1) ->
``POST /sso/{org}/saml/acs`` -> a browser session in the right organization with the role
the IdP's groups map to. On SQLite and PostgreSQL (``server``).
"""

from __future__ import annotations

import http.server
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from enginex.kit.time import utcnow
from tests.factories import Actor, Org, Server, anonymous, private_network, run_db
from tests.idp.saml.idp import KeyPair, TestIdp, make_key_pair

ENG_ADMINS = "eng-admins"


@pytest.fixture(scope="module")
def idp_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    directory = Path(tmp_path_factory.mktemp("saml-signin-keys"))
    return {name: make_key_pair(directory, name) for name in ("idp",)}


class _Metadata(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/samlmetadata+xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        return


@dataclass
class SamlOrg:
    org: Org
    domain: str
    connection_id: str


@dataclass
class World:
    server: Server
    idp: TestIdp
    a: SamlOrg
    b: SamlOrg


def sp_metadata(server: Server, slug: str) -> bytes:
    with anonymous(server) as client:
        response = client.get(f"/sso/{slug}/saml/metadata")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/samlmetadata+xml")
    return response.content


def set_up_org(server: Server, platform_admin: Actor, org: Org, metadata_url: str) -> SamlOrg:
    """A verified domain, a role rule and an enabled SAML connection created from the IdP's
    metadata URL, all through the API."""
    admin = org.admin.client
    base = f"/api/v1/orgs/{org.slug}/sso"
    domain = f"{org.slug}.example.com"
    claim = admin.post(f"{base}/domains", json={"domain": domain})
    assert claim.status_code == 201, claim.text
    verified = platform_admin.client.post(
        f"/api/v1/admin/tenants/{org.id}/domains/{claim.json()['id']}/verify")
    assert verified.status_code == 200, verified.text
    rule = admin.post(f"{base}/role-rules", json={"group": ENG_ADMINS, "role": "builder",
                                                  "priority": 10})
    assert rule.status_code == 201, rule.text
    with private_network(server):
        created = admin.post(f"{base}/connections", json={
            "name": "corp-saml", "kind": "saml", "enabled": True, "default_role": "viewer",
            "groups_claim": "groups", "saml": {"metadata_url": metadata_url}})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["saml_acs_url"] == f"{server.base_url}/sso/{org.slug}/saml/acs"
    assert body["saml_entity_id"] == f"{server.base_url}/sso/{org.slug}/saml/metadata"
    assert "BEGIN CERTIFICATE" in body["settings"]["certificates"][0]
    return SamlOrg(org=org, domain=domain, connection_id=body["id"])


@pytest.fixture
def world(server: Server, platform_admin: Actor, org_a: Org, org_b: Org,
          idp_keys: dict[str, KeyPair]) -> Iterator[World]:
    port_holder = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
    base = f"http://127.0.0.1:{port_holder.server_address[1]}"
    idp = TestIdp(entity_id=f"{base}/idp/metadata", sso_url=f"{base}/idp/sso",
                  keys=idp_keys["idp"],
                  sp_metadata=[sp_metadata(server, org_a.slug), sp_metadata(server, org_b.slug)])
    port_holder.RequestHandlerClass = type("Handler", (_Metadata,),
                                           {"body": idp.metadata_xml()})
    thread = threading.Thread(target=port_holder.serve_forever, daemon=True)
    thread.start()
    try:
        a = set_up_org(server, platform_admin, org_a, f"{base}/idp/metadata")
        b = set_up_org(server, platform_admin, org_b, f"{base}/idp/metadata")
        yield World(server=server, idp=idp, a=a, b=b)
    finally:
        port_holder.shutdown()
        port_holder.server_close()


def start(client: httpx.Client, slug: str) -> str:
    """``GET /sso/{org}/start``: the redirect to the IdP (HTTP-Redirect binding)."""
    response = client.get(f"/sso/{slug}/start", follow_redirects=False)
    assert response.status_code == 303, response.text
    return response.headers["location"]


def idp_answer(world: World, redirect_url: str, *, user: str, email: str,
               groups: list[str]) -> dict[str, str]:
    """The IdP's auto-submitted form: SAMLResponse and the RelayState it echoes."""
    relay_state = parse_qs(urlsplit(redirect_url).query)["RelayState"][0]
    response = world.idp.respond(redirect_url, name_id=user,
                                 attributes={"email": [email], "displayName": ["Sam L"],
                                             "groups": groups})
    return {"SAMLResponse": response, "RelayState": relay_state}


def post_acs(client: httpx.Client, slug: str, form: dict[str, str]) -> httpx.Response:
    return client.post(f"/sso/{slug}/saml/acs", data=form, follow_redirects=False)


def membership(client: httpx.Client, slug: str) -> dict[str, str] | None:
    me = client.get("/api/v1/me")
    assert me.status_code == 200, me.text
    return next((o for o in me.json()["organizations"] if o["slug"] == slug), None)


def test_new_user_signs_in_through_saml_with_the_mapped_role(world: World):
    org = world.a.org
    user = f"u-{secrets.token_hex(4)}"
    email = f"{user}@{world.a.domain}"
    with anonymous(world.server) as browser:
        redirect = start(browser, org.slug)
        assert redirect.startswith(world.idp.sso_url + "?SAMLRequest=")
        form = idp_answer(world, redirect, user=user, email=email,
                          groups=["staff", ENG_ADMINS])
        landed = post_acs(browser, org.slug, form)
        assert landed.status_code == 303, landed.text
        assert landed.headers["location"] == f"/o/{org.slug}"
        found = membership(browser, org.slug)
        assert found is not None and found["role"] == "builder"
        assert membership(browser, world.b.org.slug) is None

        # The same form again (replay): refused, and no second session is opened.
        replayed = post_acs(anonymous(world.server), org.slug, form)
        assert replayed.status_code == 400
        assert "Start the sign-in again" in replayed.text

    # Next sign-in without the group: the role follows the IdP (default role), same account.
    with anonymous(world.server) as browser:
        form = idp_answer(world, start(browser, org.slug), user=user, email=email,
                          groups=["staff"])
        assert post_acs(browser, org.slug, form).status_code == 303
        found = membership(browser, org.slug)
        assert found is not None and found["role"] == "viewer"
        me = browser.get("/api/v1/me").json()
        assert me["email"] == email

    audit = org.admin.client.get(f"/api/v1/orgs/{org.slug}/audit").json()
    entries = audit["items"] if isinstance(audit, dict) else audit
    actions = {e["action"] for e in entries}
    assert {"sso.login_succeeded", "sso.user_provisioned", "sso.role_changed"} <= actions


def test_response_for_org_a_is_refused_at_org_b(world: World):
    a, b = world.a.org, world.b.org
    user = f"u-{secrets.token_hex(4)}"
    with anonymous(world.server) as browser:
        form = idp_answer(world, start(browser, a.slug), user=user,
                          email=f"{user}@{world.a.domain}", groups=[ENG_ADMINS])
        # Posted to B's ACS as it is: B has no such request.
        refused = post_acs(browser, b.slug, form)
        assert refused.status_code == 400, refused.text
        # With a RelayState of a flow really pending at B: the response is not for B's SP.
        pending_at_b = parse_qs(urlsplit(start(browser, b.slug)).query)["RelayState"][0]
        refused = post_acs(browser, b.slug, {**form, "RelayState": pending_at_b})
        assert refused.status_code == 400, refused.text
        assert "not for this connection" in refused.text or "Recipient" in refused.text \
            or "meant for" in refused.text
        assert browser.get("/api/v1/me").status_code == 401
        # The response still works where it belongs.
        assert post_acs(browser, a.slug, form).status_code == 303
        assert membership(browser, a.slug) is not None
        assert membership(browser, b.slug) is None


def test_email_of_a_domain_the_org_did_not_verify_is_not_provisioned(world: World):
    org = world.a.org
    user = f"u-{secrets.token_hex(4)}"
    with anonymous(world.server) as browser:
        form = idp_answer(world, start(browser, org.slug), user=user,
                          email=f"{user}@{world.b.domain}", groups=[ENG_ADMINS])
        refused = post_acs(browser, org.slug, form)
        assert refused.status_code == 403, refused.text
        assert browser.get("/api/v1/me").status_code == 401


def test_tampered_response_is_refused_and_writes_nothing(world: World):
    from tests.idp.saml import attacks

    org = world.a.org
    user = f"u-{secrets.token_hex(4)}"
    with anonymous(world.server) as browser:
        form = idp_answer(world, start(browser, org.slug), user=user,
                          email=f"{user}@{world.a.domain}", groups=[ENG_ADMINS])
        forged = {**form, "SAMLResponse": attacks.xsw_sibling_before(form["SAMLResponse"],
                                                                     "someone-else")}
        refused = post_acs(browser, org.slug, forged)
        assert refused.status_code == 400
        assert "signature" in refused.text.lower() or "assertion" in refused.text.lower()
        # Nothing was consumed: the genuine response still signs in.
        assert post_acs(browser, org.slug, form).status_code == 303


def test_acs_refuses_missing_fields_and_garbage_with_a_page(world: World):
    org = world.a.org
    with anonymous(world.server) as client:
        empty = client.post(f"/sso/{org.slug}/saml/acs", data={})
        assert empty.status_code == 400
        assert "SAMLResponse" in empty.text
        garbage = client.post(f"/sso/{org.slug}/saml/acs",
                              data={"SAMLResponse": "PGE+", "RelayState": "_nope"})
        assert garbage.status_code == 400
        unknown = client.post("/sso/no-such-org/saml/acs",
                              data={"SAMLResponse": "PGE+", "RelayState": "_nope"})
        assert unknown.status_code == 404


def test_entra_group_overage_is_refused_with_a_fix_when_rules_decide_roles(world: World):
    from enginex.sso.provisioning import ENTRA_SAML_GROUPS_LINK

    org = world.a.org
    user = f"u-{secrets.token_hex(4)}"
    with anonymous(world.server) as browser:
        redirect = start(browser, org.slug)
        relay_state = parse_qs(urlsplit(redirect).query)["RelayState"][0]
        # Beyond 150 groups Entra sends a Graph link instead of the groups.
        response = world.idp.respond(redirect, name_id=user, attributes={
            "email": [f"{user}@{world.a.domain}"], "displayName": ["Sam L"],
            ENTRA_SAML_GROUPS_LINK: ["https://graph.windows.net/tenant/users/x/getMemberObjects"]})
        refused = post_acs(browser, org.slug, {"SAMLResponse": response,
                                               "RelayState": relay_state})
        assert refused.status_code == 403, refused.text
        assert "group overage" in refused.text and "Groups assigned to the application" in \
            refused.text
        assert browser.get("/api/v1/me").status_code == 401
    # nothing was provisioned; the refusal is audited
    members = org.admin.client.get(f"/api/v1/orgs/{org.slug}/members",
                                   params={"limit": 200}).json()
    assert user not in str(members)
    assert [e["details"]["error"] for e in failed_sign_ins(org)] == ["sso_group_overage"]


def failed_sign_ins(org: Org) -> list[dict[str, Any]]:
    response = org.admin.client.get(f"/api/v1/orgs/{org.slug}/audit",
                                    params={"action": "sso.login_failed", "limit": 200})
    assert response.status_code == 200, response.text
    return response.json()["items"]


def test_refused_sign_ins_are_audited_without_personal_data_and_capped(world: World):
    from enginex.sso.signin import FAILED_SIGN_INS_PER_MINUTE

    org = world.a.org
    user = f"u-{secrets.token_hex(4)}"
    with anonymous(world.server) as browser:
        form = idp_answer(world, start(browser, org.slug), user=user,
                          email=f"{user}@{world.b.domain}", groups=[ENG_ADMINS])
        assert post_acs(browser, org.slug, form).status_code == 403
    [entry] = failed_sign_ins(org)
    assert entry["actor_kind"] == "anonymous" and entry["actor_id"] is None
    assert entry["details"] == {"protocol": "saml", "error": "sso_domain_not_verified",
                                "status": 403}
    # what failed, never who: no name id, email or domain of the person
    assert user not in str(entry) and world.b.domain not in str(entry)
    # the other organization's log holds nothing of it
    assert failed_sign_ins(world.b.org) == []
    # a public endpoint cannot flood the audit log: at most N entries a minute
    garbage = {"SAMLResponse": "PGE+", "RelayState": "_nope"}
    with anonymous(world.server) as client:
        for _ in range(FAILED_SIGN_INS_PER_MINUTE + 5):
            assert post_acs(client, org.slug, garbage).status_code == 400
    entries = failed_sign_ins(org)
    assert entries[0]["details"]["protocol"] == "saml" and "error" in entries[0]["details"]
    times = sorted(datetime.fromisoformat(e["at"]) for e in entries)
    for at in times:
        within_a_minute = [t for t in times if at - timedelta(seconds=59) < t <= at]
        assert len(within_a_minute) <= FAILED_SIGN_INS_PER_MINUTE, times
    assert len(entries) > 1  # the garbage was audited too, up to the cap
    verified = org.admin.client.get(f"/api/v1/orgs/{org.slug}/audit/verify")
    assert verified.status_code == 200 and verified.json()["intact"] is True, verified.text


def test_sp_metadata_of_an_unknown_org_is_404(server: Server):
    with anonymous(server) as client:
        assert client.get("/sso/no-such-org/saml/metadata").status_code == 404


def test_connection_test_button_reports_the_idp_certificate(world: World):
    org = world.a.org
    with private_network(world.server):
        report = org.admin.client.post(
            f"/api/v1/orgs/{org.slug}/sso/connections/{world.a.connection_id}/test")
    assert report.status_code == 200, report.text
    body = report.json()
    assert body["ok"] is True, body
    assert body["discovery"]["idp_entity_id"] == world.idp.entity_id
    assert len(body["keys"]) == 1 and body["keys"][0]["sha256"]


def test_replay_cache_refuses_a_seen_assertion_and_forgets_expired_ones(world: World):
    from sqlalchemy import func, select

    from enginex.db import set_tenant
    from enginex.sso import saml_state
    from enginex.tenancy.context import system_context

    org = world.a.org
    org_id = uuid.UUID(org.id)
    connection_id = uuid.UUID(world.a.connection_id)
    results: list[object] = []

    async def work(db) -> None:
        await set_tenant(db, org_id)
        ctx = system_context(org_id, org.slug)
        now = utcnow()
        for expires in (now + timedelta(minutes=5), now + timedelta(minutes=5)):
            results.append(await saml_state.record_assertion(
                db, ctx, connection_id=connection_id, assertion_id="_seen-1",
                expires_at=expires))
        await saml_state.record_assertion(db, ctx, connection_id=connection_id,
                                          assertion_id="_old", expires_at=now - timedelta(1))
        await saml_state.purge_expired(db, ctx, now)
        left = await db.execute(select(func.count()).select_from(saml_state.SamlSeenAssertion)
                                .where(saml_state.SamlSeenAssertion.tenant_id == org_id,
                                       saml_state.SamlSeenAssertion.assertion_id == "_old"))
        results.append(left.scalar_one())

    run_db(world.server, work)
    assert results == [True, False, 0]
