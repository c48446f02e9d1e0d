"""``/metrics``: Prometheus/OpenMetrics exposition of usage, for the platform operator.

Protected by a bearer token (``ENGINEX_METRICS_TOKEN``; unset: the route answers 404). Labels
are organization ids and usage kinds only -- never names, slugs or secrets.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Any

from fastapi import Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from enginex.kit.errors import NotFound, Unauthenticated
from enginex.kit.time import utcnow
from enginex.tenancy.guards import DB, Public, make_router
from enginex.usage.repository import TenantUsage, month_of, next_month, usage_by_tenant

router = make_router(tags=["metrics"])


class _UsageCollector(Collector):
    def __init__(self, rows: list[TenantUsage]) -> None:
        self.rows = rows

    def collect(self) -> Iterator[Any]:
        quantity = GaugeMetricFamily(
            "enginex_usage_month", "Usage this calendar month per organization id and kind "
            "(units: docs/USAGE.md)", labels=["org_id", "kind"])
        cost = GaugeMetricFamily(
            "enginex_usage_cost_usd_month", "Estimated model cost this calendar month per "
            "organization id (USD)", labels=["org_id"])
        costs: dict[str, int] = {}
        for row in self.rows:
            quantity.add_metric([str(row.tenant_id), row.kind], row.quantity)
            costs[str(row.tenant_id)] = costs.get(str(row.tenant_id), 0) + row.cost_micro_usd
        for org_id, micro in costs.items():
            cost.add_metric([org_id], micro / 1_000_000)
        yield quantity
        yield cost


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, db: DB, _: None = Public()) -> Response:
    """Public route on purpose: Prometheus scrapes it with ``Authorization: Bearer
    <ENGINEX_METRICS_TOKEN>`` (not a user or an org key). Without the setting: 404; with a
    wrong or missing token: 401. OpenMetrics when the scraper asks for it."""
    token = request.app.state.settings.metrics_token
    if not token:
        raise NotFound()
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise Unauthenticated("Send 'Authorization: Bearer <ENGINEX_METRICS_TOKEN>'.")
    now = utcnow()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_UsageCollector(await usage_by_tenant(db, month_of(now),
                                                            next_month(now))))
    if "application/openmetrics-text" in request.headers.get("accept", ""):
        return Response(generate_openmetrics(registry), media_type=OPENMETRICS)
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")
