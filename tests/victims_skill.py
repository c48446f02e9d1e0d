"""Objects of the victim organization for the route walk (tests/test_route_isolation.py):
one real id per path parameter name the skill routes use."""

from __future__ import annotations

from tests.factories import Org


def skill_victim_ids(victim: Org) -> dict[str, str]:
    """A skill of the victim, created by its admin, whose text holds the victim's canary."""
    canary = f"canary-{victim.slug}"
    response = victim.admin.client.post(f"/api/v1/orgs/{victim.slug}/skills", json={
        "skill_md": f"---\nname: victim-skill\ndescription: {canary}\n---\n\n{canary}\n",
        "files": {"reference/notes.md": canary}})
    assert response.status_code == 201, response.text
    return {"skill_id": response.json()["id"]}
