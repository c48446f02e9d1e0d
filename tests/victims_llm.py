"""Objects of the victim organization for the route walk (tests/test_route_isolation.py):
one real id per path parameter name the llm routes use."""

from __future__ import annotations

from tests.factories import Org


def llm_victim_ids(victim: Org) -> dict[str, str]:
    """A provider (``provider_id``) and a model alias (``alias``) of ``victim``, made through
    its admin's API."""
    admin = victim.admin.client
    base = f"/api/v1/orgs/{victim.slug}/llm"
    provider = admin.post(f"{base}/providers", json={
        "name": f"canary-{victim.slug}", "kind": "scripted", "allowed_models": ["canary-model"]})
    assert provider.status_code == 201, provider.text
    alias = admin.put(f"{base}/aliases/canary-alias", json={
        "provider": f"canary-{victim.slug}", "model": "canary-model"})
    assert alias.status_code == 201, alias.text
    return {"provider_id": provider.json()["id"], "alias": "canary-alias"}
