"""Dashboard page of the audit log: ``/o/{org}/audit`` (organization admins, ``audit:read``).

Filters (actor, action or a whole area of actions, target kind and id, date range) offered as
choices, cursor pagination newest first, and ``/o/{org}/audit/verify`` which recomputes the
hash chain and shows the verdict (an htmx request gets only the verdict, in place). Entries
read in words: actors by name and email (members) or key name (API keys), with the id on
hover; actions and target kinds by ``audit/labels.py``; details as a key/value list. Names
come from this organization's members and keys only: a former member shows as an id. The page
calls the same service functions as the API.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, Response

from enginex.audit import labels, service
from enginex.audit.anchor import anchor_keys
from enginex.audit.models import AuditEntry
from enginex.audit.repository import AuditFilter
from enginex.auth import service as auth_service
from enginex.kit.errors import ValidationFailed
from enginex.orgs import service as orgs_service
from enginex.tenancy.context import TenantContext
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


@dataclass(frozen=True)
class ActorChoice:
    id: str
    label: str


@dataclass(frozen=True)
class ActorView:
    """Who did it, in words: ``name`` (a member's name, a key's name, or the kind),
    ``secondary`` (a member's email, or what kind of actor), ``id`` for the tooltip."""

    name: str
    secondary: str
    id: str


@dataclass(frozen=True)
class Detail:
    key: str
    text: str
    structured: bool = False  # a list or an object, shown as JSON
    href: str = ""


@dataclass
class Directory:
    """This organization's members and API keys, by id, for the actors' names."""

    members: dict[str, orgs_service.Member]
    keys: dict[str, str]  # id -> name

    def actor(self, entry: AuditEntry) -> ActorView:
        kind_label = labels.actor_kind_label(entry.actor_kind)
        actor_id = str(entry.actor_id) if entry.actor_id else ""
        if entry.actor_kind in {"user", "platform_admin"} and actor_id in self.members:
            member = self.members[actor_id]
            if member.display_name:
                return ActorView(member.display_name, member.email, actor_id)
            return ActorView(member.email, kind_label, actor_id)
        if entry.actor_kind == "api_key" and actor_id in self.keys:
            return ActorView(self.keys[actor_id], kind_label, actor_id)
        if entry.actor_kind == "user" and actor_id:
            return ActorView("Former member", actor_id[:8], actor_id)
        return ActorView(kind_label, actor_id[:8], actor_id)

    def choices(self) -> list[ActorChoice]:
        people = [ActorChoice(user_id, f"{m.display_name} ({m.email})" if m.display_name
                              else m.email) for user_id, m in self.members.items()]
        keys = [ActorChoice(key_id, f"{name} (API key)") for key_id, name in self.keys.items()]
        return sorted(people, key=lambda c: c.label.lower()) + \
            sorted(keys, key=lambda c: c.label.lower())


async def _directory(db: Any, ctx: TenantContext) -> Directory:
    members = await orgs_service.list_members(db, ctx)
    keys = await auth_service.list_api_keys(db, ctx)
    return Directory({str(m.user_id): m for m in members},
                     {str(k.id): k.name for k in keys})


def details_of(entry: AuditEntry, org_slug: str) -> list[Detail]:
    """An entry's details as key/value pairs; a session's id links to the session."""
    out = []
    for key, value in (entry.details or {}).items():
        words = key.replace("_", " ")
        if isinstance(value, dict | list):
            out.append(Detail(words, json.dumps(value, ensure_ascii=False, sort_keys=True),
                              structured=True))
            continue
        text = "—" if value is None else str(value).lower() if isinstance(value, bool) \
            else str(value)
        href = ""
        if key == "run_id" and isinstance(value, str) and _is_uuid(value):
            href = f"/o/{org_slug}/sessions/{value}"
        out.append(Detail(words, text, href=href))
    return out


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


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
    directory = await _directory(db, ctx)
    data: dict[str, Any] = {
        "page": page, "query": query, "directory": directory,
        "actor_choices": directory.choices(), "action_groups": labels.action_groups(),
        "target_kinds": labels.TARGET_KINDS, "labels": labels,
        "details_of": lambda entry: details_of(entry, ctx.org_slug)}
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
