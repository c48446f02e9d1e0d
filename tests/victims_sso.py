"""Objects of the victim organization for the route walk (tests/test_route_isolation.py):
one real id per path parameter name the SSO routes use, and the public SSO routes with the
reason each is public."""

from __future__ import annotations

from tests.factories import Org

# Public on purpose (the walk's expectations): the browser arrives before it has a session.
PUBLIC_SSO_ROUTES = {
    ("GET", "/sso/{org}/start"): "SP-initiated sign-in: the visitor is anonymous until the "
                                 "IdP answers; reveals only whether SSO is on",
    ("GET", "/sso/{org}/oidc/callback"): "the IdP's redirect back; signs in only a response "
                                         "matching this browser's sealed flow cookie",
    ("GET", "/sso/{org}/saml/metadata"): "SP metadata IdPs fetch without credentials; holds "
                                         "only the org's two SAML addresses",
    ("POST", "/sso/{org}/saml/acs"): "the IdP's cross-site form POST, before any session; "
                                     "signs in only a signed response to a pending request",
}


def sso_victim_ids(victim: Org) -> dict[str, str]:
    """A connection, a domain claim (named after the victim's canary) and a role rule."""
    admin = victim.admin.client
    base = f"/api/v1/orgs/{victim.slug}/sso"
    connection = admin.post(f"{base}/connections", json={
        "name": "victim-idp", "kind": "oidc",
        "oidc": {"issuer": "https://idp.victim.invalid", "client_id": f"canary-{victim.slug}"},
        "client_secret": f"canary-{victim.slug}-secret"})
    assert connection.status_code == 201, connection.text
    domain = admin.post(f"{base}/domains", json={"domain": f"canary-{victim.slug}.example"})
    assert domain.status_code == 201, domain.text
    rule = admin.post(f"{base}/role-rules", json={"group": f"canary-{victim.slug}",
                                                  "role": "viewer"})
    assert rule.status_code == 201, rule.text
    return {"connection_id": connection.json()["id"], "domain_id": domain.json()["id"],
            "rule_id": rule.json()["id"]}
