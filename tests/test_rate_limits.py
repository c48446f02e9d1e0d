"""API rate limits with their counters in Redis (``ENGINEX_REDIS_URL``) and per address for
anonymous routes, the platform admin's usage across tenants, and ``/metrics``.

Redis is a real redis-server started by the test on a free port of 127.0.0.1 (missing
redis-server: skipped locally, a failure in CI).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import IN_CI, separate_deployment
from tests.factories import (
    Actor,
    Org,
    Server,
    deploy_agent,
    free_port,
    make_org,
    make_platform_admin,
    start_session,
    wait_for,
)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed (apt-get install -y redis-server)"
        if IN_CI:
            pytest.fail(message + " (mandatory in CI)")
        pytest.skip(message)
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(answers, what="redis-server to answer")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_redis_counters_per_principal_and_per_address(backend: str, redis_url: str,
                                                      tmp_path: Path) -> None:
    with separate_deployment(backend, tmp_path, redis_url=redis_url,
                             rate_limit_anonymous_per_minute=40) as server:
        admin = make_platform_admin(server)
        org = make_org(server, admin, "redis")
        assert admin.client.put(f"/api/v1/admin/tenants/{org.id}/plan", json={
            "overrides": {"api_requests_per_minute": 3}}).status_code == 200
        url = f"/api/v1/orgs/{org.slug}/agents"
        viewer = org.members["viewer"].client
        codes = [viewer.get(url).status_code for _ in range(6)]
        assert 429 in codes and set(codes) <= {200, 429}
        keys = redis.Redis.from_url(redis_url).keys("enginex:rl:org:*")
        assert keys and all(org.id.encode() in k for k in keys)  # ids, never names
        assert all(org.slug.encode() not in k for k in keys)
        with httpx.Client(base_url=server.base_url) as anon:
            # An empty body (422) still counts: the access rule runs first.
            answers = [anon.post("/api/v1/auth/login", json={}) for _ in range(41)]
        assert 429 in [a.status_code for a in answers]
        limited = next(a for a in answers if a.status_code == 429)
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.headers["RateLimit-Limit"] == "40"
        assert httpx.get(f"{server.base_url}/healthz").status_code == 200  # never limited


def test_admin_usage_across_tenants_and_metrics(server: Server, platform_admin: Actor,
                                                org_a: Org, org_b: Org,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    org = make_org(server, platform_admin, "top")
    deploy_agent(org)
    start_session(org)
    usage = platform_admin.client.get("/api/v1/admin/usage", params={"sort": "sessions"})
    assert usage.status_code == 200, usage.text
    mine = [r for r in usage.json() if r["tenant_id"] == org.id]
    assert len(mine) == 1 and mine[0]["sessions"] >= 1 and mine[0]["slug"] == org.slug
    exported = platform_admin.client.get("/api/v1/admin/usage/export.csv")
    assert exported.status_code == 200 and org.id in exported.text
    assert org_a.admin.client.get("/api/v1/admin/usage").status_code == 403
    bad = platform_admin.client.get("/api/v1/admin/usage", params={"sort": "names"})
    assert bad.status_code == 422
    # /metrics: off without a token; with one, ids and counts only.
    assert httpx.get(f"{server.base_url}/metrics").status_code == 404
    monkeypatch.setattr(server.app.state.settings, "metrics_token", "scrape-token-123")
    assert httpx.get(f"{server.base_url}/metrics").status_code == 401
    scraped = httpx.get(f"{server.base_url}/metrics",
                        headers={"Authorization": "Bearer scrape-token-123"})
    assert scraped.status_code == 200, scraped.text
    assert f'enginex_usage_month{{kind="session_started",org_id="{org.id}"}}' in scraped.text
    for name in (org.slug, org.name, org_a.slug, org_b.name):
        assert name not in scraped.text
    om = httpx.get(f"{server.base_url}/metrics", headers={
        "Authorization": "Bearer scrape-token-123", "Accept": "application/openmetrics-text"})
    assert om.status_code == 200 and om.text.rstrip().endswith("# EOF")
    assert time.time() > 0
