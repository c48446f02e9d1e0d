"""The fused API-key guard (auth/repository.py ``_KEY_FOR_AUTH``, raw SQL) keeps tenants
apart on both backends. On SQLite there is no row-level security: the statement's own tenant
filter is the only thing between an organization's key and another organization's rows, so
these tests run there as on PostgreSQL.

Threat model: a program holding organization A's API key must not read anything of B --
not by calling B's routes with it, not by splicing B's id into the key, and the guard's
statement must not find A's key when asked for B, even inside a transaction bound to A.
"""

from __future__ import annotations

import uuid
from typing import Any

from enginex.auth.repository import get_api_key_for_auth
from enginex.db import set_tenant
from enginex.kit.errors import NOT_FOUND_MESSAGE
from enginex.kit.ids import token_digest
from tests.factories import Org, Server, api_key_client, deploy_agent, run_db, start_session

NOT_FOUND = {"error": {"code": "not_found", "message": NOT_FOUND_MESSAGE, "details": {}}}


def _key(org: Org) -> str:
    return org.api_keys["admin"] if "admin" in org.api_keys else next(iter(org.api_keys.values()))


def test_an_org_a_key_reads_nothing_of_org_b(server: Server, org_a: Org, org_b: Org) -> None:
    deploy_agent(org_b)
    theirs = start_session(org_b)["id"]
    paths = ["/members", "/sessions", f"/sessions/{theirs}", f"/sessions/{theirs}/events",
             "/api-keys", "/agents", "/approvals", "/reports", "/invitations"]
    with api_key_client(server, _key(org_a)) as a_key, \
            api_key_client(server, _key(org_b)) as b_key:
        for path in paths:
            foreign = a_key.get(f"/api/v1/orgs/{org_b.slug}{path}")
            assert foreign.status_code == 404, (path, foreign.text)
            assert foreign.json() == NOT_FOUND, path
            assert b_key.get(f"/api/v1/orgs/{org_b.slug}{path}").status_code == 200, path
        missing = a_key.get(f"/api/v1/orgs/{org_a.slug}/sessions/{theirs}")
        assert missing.status_code == 404 and missing.json() == NOT_FOUND


def test_a_key_with_another_orgs_id_spliced_in_is_refused(server: Server, org_a: Org,
                                                          org_b: Org) -> None:
    prefix, _a_org, secret = _key(org_a).split("_", 2)
    forged = f"{prefix}_{uuid.UUID(org_b.id).hex}_{secret}"
    with api_key_client(server, forged) as client:
        for slug in (org_b.slug, org_a.slug):
            response = client.get(f"/api/v1/orgs/{slug}/members")
            assert response.status_code == 401, (slug, response.text)
            assert response.json()["error"]["code"] == "unauthenticated"


def test_the_guard_statement_finds_a_key_only_in_its_own_org(server: Server, org_a: Org,
                                                              org_b: Org) -> None:
    """Asked for B with A's key digest, the statement finds nothing -- also in a transaction
    bound to A, where row-level security (PostgreSQL) would let A's rows through: the
    statement's own tenant filter decides."""
    a_id, b_id = uuid.UUID(org_a.id), uuid.UUID(org_b.id)
    digest = token_digest(_key(org_a))

    def bound_to(tenant: uuid.UUID, asked: uuid.UUID) -> Any:
        async def look(session: Any) -> Any:
            await set_tenant(session, tenant)
            return await get_api_key_for_auth(session, asked, digest)
        return run_db(server, look)

    own = bound_to(a_id, a_id)
    assert own is not None and own.org_slug == org_a.slug
    assert bound_to(a_id, b_id) is None, "the statement ignored the tenant it was given"
    assert bound_to(b_id, b_id) is None
