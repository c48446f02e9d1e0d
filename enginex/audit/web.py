"""Dashboard page of the audit log: ``/o/{org}/audit`` (organization admins, ``audit:read``).

Filters (actor id, action or action prefix, target kind and id, date range), cursor pagination
newest first, and ``/o/{org}/audit/verify`` which recomputes the hash chain and shows the
verdict (an htmx request gets only the verdict, in place). The page calls the same service
functions as the API.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, Response

from enginex.audit import service
from enginex.audit.anchor import anchor_keys
from enginex.audit.repository import AuditFilter
from enginex.kit.errors import ValidationFailed
from enginex.tenancy.guards import DB, make_router
from enginex.tenancy.scopes import Scope
from enginex.web.templating import is_htmx, render
from enginex.web.tenant import WebContext, WebTenant

router = make_router(tags=["dashboard"])

PAGE_SIZE = 50
_FIELDS = {"actor": 36, "action": 60, "target_kind": 40, "target_id": 80, "from": 10, "to": 10,
           "cursor": 200}


@dataclass
class AuditQuery:
    values: dict[str, str]
    errors: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str:
        return self.values.get(name, "")

    def query(self, **override: str) -> str:
        """The query string of this view (filters, and ``override``), for links."""
        kept = {k: v for k, v in {**self.values, **override}.items() if v}
        return "?" + urlencode(kept) if kept else ""

    @property
    def filtered(self) -> bool:
        return any(self.get(k) for k in _FIELDS if k != "cursor")

    def filters(self) -> AuditFilter:
        at_from = _day(self.get("from"))
        at_to = _day(self.get("to"))
        return AuditFilter(
            actor_id=uuid.UUID(self.get("actor")) if self.get("actor") else None,
            action=self.get("action") or None, target_kind=self.get("target_kind") or None,
            target_id=self.get("target_id") or None, at_from=at_from,
            at_to=at_to + timedelta(days=1) if at_to else None)


def _day(value: str) -> datetime | None:
    return datetime.combine(date.fromisoformat(value), time.min, tzinfo=UTC) if value else None


def _read_query(request: Request) -> AuditQuery:
    params = request.query_params
    query = AuditQuery({name: (params.get(name) or "").strip()[:limit]
                        for name, limit in _FIELDS.items()})
    if query.get("actor"):
        try:
            uuid.UUID(query.get("actor"))
        except ValueError:
            query.errors["actor"] = "must be a user or API key id (a UUID)"
    for name in ("from", "to"):
        try:
            _day(query.get(name))
        except ValueError:
            query.errors[name] = "must be a date like 2026-11-30"
    if not query.errors and query.get("from") and query.get("to") and \
            query.get("from") > query.get("to"):
        query.errors["to"] = "must not be before the start date"
    for name in query.errors:
        query.values[name] = ""
    return query


@router.get("/o/{org}/audit", response_class=HTMLResponse)
async def audit_list(request: Request, db: DB,
                     web: Annotated[WebContext, WebTenant(Scope.AUDIT_READ)]) -> Response:
    """Audit entries, newest first, with filters and pagination."""
    ctx = web.ctx
    query = _read_query(request)
    page = service.AuditPage([], None)
    if not query.errors:
        try:
            page = await service.list_entries(db, ctx, query.filters(), limit=PAGE_SIZE,
                                              cursor=query.get("cursor") or None)
        except ValidationFailed:
            query.errors["cursor"] = "this page link is not valid any more; start again below"
            query.values["cursor"] = ""
    data: dict[str, Any] = {"page": page, "query": query}
    return render(request, "audit/list.html", principal=web.principal, ctx=ctx,
                  status_code=422 if query.errors else 200, **data)


@router.get("/o/{org}/audit/verify", response_class=HTMLResponse)
async def audit_verify(request: Request, db: DB,
                       web: Annotated[WebContext, WebTenant(Scope.AUDIT_READ)]) -> Response:
    """Recompute the chain and show the verdict (first broken seq, or the entry count)."""
    verdict = await service.verify_chain(
        db, web.ctx, anchor_keys=anchor_keys(request.app.state.master_key))
    template = "audit/_verdict.html" if is_htmx(request) else "audit/verify.html"
    return render(request, template, principal=web.principal, ctx=web.ctx, verdict=verdict)
