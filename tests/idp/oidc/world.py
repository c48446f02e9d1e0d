"""A deployment with two organizations whose SSO goes through ONE real OpenID Provider
(oidc-provider on 127.0.0.1): org A's and org B's connections are two clients of the same
IdP, so every cross-organization test is about the same IdP.

Domains are verified through the DNS TXT path with an injected resolver (the external DNS
service is replaced; EngineX's own verification code runs).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.factories import Actor, Org, Server, anonymous, make_org, private_network
from tests.idp.oidc.flow import idp_sign_in
from tests.idp.oidc.launcher import OidcProvider


class FakeTxtResolver:
    """Answers TXT lookups from a dict (the DNS service, injected)."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}

    async def txt(self, name: str) -> list[str]:
        return list(self.records.get(name, []))


@dataclass
class World:
    server: Server
    idp: OidcProvider
    dns: FakeTxtResolver
    orgs: dict[str, Org]
    domains: dict[str, str]
    secrets: dict[str, str]
    connections: dict[str, str] = field(default_factory=dict)

    def email(self, org: str, local: str) -> str:
        return f"{local}@{self.domains[org]}"

    def callback_prefix(self) -> str:
        return f"{self.server.base_url}/sso/"

    def start(self, client: httpx.Client, org: str) -> str:
        """GET /sso/{org}/start; returns the IdP authorization URL."""
        response = client.get(f"/sso/{self.orgs[org].slug}/start")
        assert response.status_code == 303, response.text
        return response.headers["location"]

    def reach_callback(self, client: httpx.Client, org: str, login: str) -> str:
        """Start at ``org``, sign ``login`` in at the IdP; the callback URL (not fetched)."""
        return idp_sign_in(client, self.start(client, org), login=login,
                           stop_prefix=self.callback_prefix())

    def sign_in(self, org: str, login: str,
                client: httpx.Client | None = None) -> tuple[httpx.Client, httpx.Response]:
        """The whole flow; returns the client (with its cookies) and the callback's answer."""
        client = client or anonymous(self.server)
        return client, client.get(self.reach_callback(client, org, login))


def add_account(accounts: dict[str, dict[str, Any]], login: str, email: str,
                groups: list[str] | None = None, *, verified: bool = True) -> None:
    accounts[login] = {"email": email, "email_verified": verified, "name": login.title(),
                       "groups": groups or []}


def verify_domain_by_dns(world: World, org: str, domain: str) -> dict[str, Any]:
    admin = world.orgs[org].admin.client
    claimed = admin.post(f"/api/v1/orgs/{world.orgs[org].slug}/sso/domains",
                         json={"domain": domain})
    assert claimed.status_code == 201, claimed.text
    body = claimed.json()
    world.dns.records[body["txt_record_name"]] = [body["txt_record_value"]]
    verified = admin.post(f"/api/v1/orgs/{world.orgs[org].slug}/sso/domains/{body['id']}/verify")
    assert verified.status_code == 200, verified.text
    assert verified.json()["verified"] is True
    return verified.json()


def create_connection(world: World, org: str, client_id: str, **extra: Any) -> dict[str, Any]:
    admin = world.orgs[org].admin.client
    response = admin.post(f"/api/v1/orgs/{world.orgs[org].slug}/sso/connections", json={
        "name": "idp", "kind": "oidc", "enabled": True, "default_role": "viewer",
        "oidc": {"issuer": world.idp.issuer, "client_id": client_id,
                 "scopes": ["openid", "email", "profile", "groups"]},
        "client_secret": world.secrets[client_id], **extra})
    assert response.status_code == 201, response.text
    world.connections[org] = response.json()["id"]
    return response.json()


@contextmanager
def sso_world(server: Server, platform_admin: Actor, accounts: dict[str, dict[str, Any]],
              *, labels: tuple[str, ...] = ("a", "b")) -> Iterator[World]:
    """Organizations ``labels`` (admin + viewer each, with API keys), each with a verified
    domain ``<slug>.example.com`` and an enabled connection to one shared provider.
    ``accounts`` may use the placeholder ``{a}``/``{b}``... in emails for those domains."""
    orgs = {label: make_org(server, platform_admin, f"sso{label}", roles=("admin", "viewer"))
            for label in labels}
    domains = {label: f"{org.slug}.example.com" for label, org in orgs.items()}
    resolved = {login: {**claims, "email": claims["email"].format(**domains)}
                for login, claims in accounts.items()}
    client_secrets = {f"client-{label}": secrets.token_urlsafe(32) for label in labels}
    clients = {f"client-{label}": {
        "client_secret": client_secrets[f"client-{label}"],
        "redirect_uris": [f"{server.base_url}/sso/{orgs[label].slug}/oidc/callback"]}
        for label in labels}
    idp = OidcProvider(clients=clients, accounts=resolved).start()
    dns = FakeTxtResolver()
    previous = server.app.state.dns_resolver
    server.app.state.dns_resolver = dns
    try:
        with private_network(server):
            world = World(server=server, idp=idp, dns=dns, orgs=orgs, domains=domains,
                          secrets=client_secrets)
            for label in labels:
                verify_domain_by_dns(world, label, domains[label])
                create_connection(world, label, f"client-{label}")
            yield world
    finally:
        server.app.state.dns_resolver = previous
        idp.stop()
