"""Objects of the victim organization for the route walk (tests/test_route_isolation.py):
a finished export of the victim and a live single-use download link to it."""

from __future__ import annotations

from tests.factories import Org, wait_for


def lifecycle_victim_ids(victim: Org) -> dict[str, str]:
    client = victim.admin.client
    base = f"/api/v1/orgs/{victim.slug}/exports"
    asked = client.post(base)
    assert asked.status_code == 202, asked.text
    export_id = asked.json()["id"]
    wait_for(lambda: client.get(f"{base}/{export_id}").json()["status"] == "succeeded",
             what="the victim's export")
    link = client.post(f"{base}/{export_id}/link")
    assert link.status_code == 201, link.text
    return {"export_id": export_id, "token": link.json()["url"].rsplit("/", 1)[1]}
