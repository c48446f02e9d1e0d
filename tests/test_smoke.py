from tests.factories import Org, Server, anonymous


def test_health(server: Server) -> None:
    with anonymous(server) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200


def test_members_are_scoped(org_a: Org, org_b: Org) -> None:
    mine = org_a.admin.client.get(f"/api/v1/orgs/{org_a.slug}/members")
    assert mine.status_code == 200
    emails = {m["email"] for m in mine.json()}
    assert len(emails) == 4 and all(org_a.slug in e for e in emails)
    theirs = org_a.admin.client.get(f"/api/v1/orgs/{org_b.slug}/members")
    assert theirs.status_code == 404
