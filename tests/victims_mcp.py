"""Objects of the victim organization for the route walk (tests/test_route_isolation.py):
one real id per path parameter name the mcp routes use."""

from __future__ import annotations

import uuid

from tests.factories import Org


def mcp_victim_ids(victim: Org) -> dict[str, str]:
    """A remote server of the victim (its URL is only checked on save, so no MCP server needs
    to run), the name of a tool, and a catalog entry id. Catalog entries are platform-wide,
    not the victim's: the platform-admin routes that take ``entry_id`` refuse org actors
    before any lookup, so any id exercises them."""
    created = victim.admin.client.post(f"/api/v1/orgs/{victim.slug}/mcp/servers", json={
        "name": f"canary-{victim.slug}", "transport": "http",
        "url": "https://mcp.example.com/mcp",
        "headers": {"X-Canary": {"value": f"canary-{victim.slug}"}}})
    assert created.status_code == 201, created.text
    return {"server_id": created.json()["id"], "tool_name": "echo",
            "entry_id": str(uuid.uuid4())}
