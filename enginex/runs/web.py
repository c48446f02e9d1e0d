"""Dashboard pages of sessions (runs): the list, the start form, the session page.

* ``/o/{org}/sessions`` -- filters (status, agent, date range), cursor pagination, and a table
  that htmx refreshes every few seconds while it can still change.
* ``/o/{org}/sessions/new?agent=KEY`` -- a form generated from the agent version's declared
  inputs; ``service.start_run`` validates on the server and the form comes back with per-field
  errors. Needs ``runs:write``.
* ``/o/{org}/sessions/{run_id}`` -- header, live event timeline (static/sessions.js follows the
  API's SSE stream), graph with the current node and the visited path, checkpoints with
  "Replay from here", Cancel, and the pending approval with its decision form.

Every page calls the same service functions as the API. Another organization's run id gets the
same not-found page as a random id (the services raise NotFound for both); controls a role may
not use are not shown, and the routes refuse them anyway.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from typing import Annotated, Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.agents import service as agents_service
from enginex.agents.manifest import AgentManifest, InputSpec
from enginex.agents.models import AgentVersion
from enginex.approvals import service as approvals_service
from enginex.approvals.models import Approval
from enginex.approvals.repository import ApprovalRepository
from enginex.kit.errors import AppError, NotFound, ValidationFailed
from enginex.kit.expressions import describe as describe_expression
from enginex.orgs import service as orgs_service
from enginex.reports import service as reports_service
from enginex.reports.web import parse_id, render_markdown
from enginex.runs import service
from enginex.runs.engine import LEGACY_PENDING_APPROVAL
from enginex.runs.models import ACTIVE, FINISHED, Checkpoint, Run, RunEvent
from enginex.runs.repository import RunFilter
from enginex.runs.trace import Trace, load_trace
from enginex.tenancy.context import TenantContext
from enginex.tenancy.guards import DB, make_router
from enginex.tenancy.principal import UserPrincipal
from enginex.tenancy.scopes import Scope
from enginex.web.templating import is_htmx, render
from enginex.web.tenant import WebContext, WebTenant

router = make_router(tags=["dashboard"])

STATUSES = ("queued", "running", "waiting_approval", "succeeded", "failed", "cancelled")
PAGE_SIZE = 25
EVENTS_ON_PAGE = 500
STATE_PREVIEW_CHARS = 20_000
# The file picker of a multiline text input whose package names no file types.
TEXT_FILES = ".txt,.csv,.tsv,.md,.json,.jsonl,.xml,.yaml,.yml,text/*"


def _org_path(ctx: TenantContext, *parts: str) -> str:
    return "/".join([f"/o/{ctx.org_slug}", *parts])


async def pending_count(db: AsyncSession, ctx: TenantContext) -> int | None:
    """Pending approvals for the nav badge, if this role may read approvals."""
    if not ctx.has(Scope.APPROVALS_READ):
        return None
    return await ApprovalRepository(db, ctx).count_pending()


# --- the list ----------------------------------------------------------------------------------


@dataclass
class ListQuery:
    status: str = ""
    agent: str = ""
    started_by: str = ""
    session_id: str = ""
    date_from: str = ""
    date_to: str = ""
    cursor: str = ""
    errors: dict[str, str] = field(default_factory=dict)

    def filters(self) -> RunFilter:
        after = _day(self.date_from)
        before = _day(self.date_to)
        return RunFilter(status=self.status or None, agent_key=self.agent or None,
                         created_after=after,
                         created_before=before + timedelta(days=1) if before else None,
                         created_by=uuid.UUID(self.started_by) if self.started_by else None,
                         id_prefix=_id_prefix(self.session_id) or None)

    def query(self, **override: str) -> str:
        """The query string of this view (filters, and ``override``), for links."""
        from urllib.parse import urlencode

        values = {"id": self.session_id, "status": self.status, "agent": self.agent,
                  "started_by": self.started_by, "from": self.date_from, "to": self.date_to,
                  "cursor": self.cursor, **override}
        kept = {k: v for k, v in values.items() if v}
        return "?" + urlencode(kept) if kept else ""

    @property
    def filtered(self) -> bool:
        return bool(self.status or self.agent or self.started_by or self.session_id
                    or self.date_from or self.date_to)


def _day(value: str) -> datetime | None:
    if not value:
        return None
    return datetime.combine(date.fromisoformat(value), time.min, tzinfo=UTC)


def _id_prefix(text: str) -> str:
    """A session id, or its first characters, as lowercase hex without dashes ("" if the
    text is not one)."""
    digits = text.strip().lower().replace("-", "")
    if not 4 <= len(digits) <= 32 or any(c not in "0123456789abcdef" for c in digits):
        return ""
    return digits


def _read_list_query(request: Request) -> ListQuery:
    params = request.query_params
    query = ListQuery(status=(params.get("status") or "")[:40],
                      agent=(params.get("agent") or "")[:64],
                      started_by=(params.get("started_by") or "").strip()[:36],
                      session_id=(params.get("id") or "").strip()[:40],
                      date_from=(params.get("from") or "")[:20],
                      date_to=(params.get("to") or "")[:20],
                      cursor=(params.get("cursor") or "")[:200])
    if query.status and query.status not in STATUSES:
        query.errors["status"] = f"must be one of {', '.join(STATUSES)}"
        query.status = ""
    if query.started_by:
        try:
            uuid.UUID(query.started_by)
        except ValueError:
            query.errors["started_by"] = "choose a member from the list"
            query.started_by = ""
    if query.session_id and not _id_prefix(query.session_id):
        query.errors["session_id"] = ("use a session id or its first characters (at least "
                                      "4, like 3f2a9c1b): letters a-f and digits only")
    for name in ("date_from", "date_to"):
        value = getattr(query, name)
        try:
            _day(value)
        except ValueError:
            query.errors[name] = "must be a date like 2026-11-30"
            setattr(query, name, "")
    if query.date_from and query.date_to and query.date_from > query.date_to:
        query.errors["date_to"] = "must not be before the start date"
    return query


@dataclass(frozen=True)
class Names:
    """What the sessions table shows instead of keys and ids: agents' and members' names."""

    agents: dict[str, str]
    people: dict[str, str]

    def agent(self, key: str) -> str:
        return self.agents.get(key, key)

    def person(self, user_id: uuid.UUID | None) -> str:
        if user_id is None:
            return ""
        return self.people.get(str(user_id), str(user_id)[:8])


async def _names(db: AsyncSession, ctx: TenantContext) -> tuple[Names, list[Any], list[Any]]:
    """The agents and members of the organization (for the filters) and the names they give."""
    agents = (await agents_service.list_agents(db, ctx)) if ctx.has(Scope.AGENTS_READ) else []
    members = (await orgs_service.list_members(db, ctx)) if ctx.has(Scope.MEMBERS_READ) else []
    names = Names(agents={item.agent.key: item.agent.name for item in agents},
                  people={str(m.user_id): m.display_name or m.email for m in members})
    return names, agents, members


@router.get("/o/{org}/sessions", response_class=HTMLResponse)
async def sessions_list(request: Request, db: DB,
                        web: Annotated[WebContext, WebTenant(Scope.RUNS_READ)]) -> Response:
    """Sessions, newest first. An htmx request gets only the table (the live refresh)."""
    ctx = web.ctx
    query = _read_list_query(request)
    page: service.RunPage = service.RunPage([], None)
    if not query.errors:
        try:
            page = await service.list_runs(db, ctx, query.filters(), limit=PAGE_SIZE,
                                           cursor=query.cursor or None)
        except ValidationFailed:
            query.errors["cursor"] = "this page link is not valid any more; start again below"
            query.cursor = ""
    status_code = 422 if query.errors else 200
    names, agents, members = await _names(db, ctx)
    data: dict[str, Any] = {"page": page, "query": query, "statuses": STATUSES,
                            "live": _list_is_live(query, page), "names": names,
                            "pending_approvals": await pending_count(db, ctx)}
    if is_htmx(request):
        return render(request, "runs/_table.html", principal=web.principal, ctx=ctx,
                      status_code=status_code, **data)
    return render(request, "runs/list.html", principal=web.principal, ctx=ctx,
                  status_code=status_code, agents=agents, members=members,
                  can_start=ctx.has(Scope.RUNS_WRITE), **data)


def _list_is_live(query: ListQuery, page: service.RunPage) -> bool:
    """Refresh while something on screen can change, or new sessions can appear on it."""
    if query.errors:
        return False
    first_page = not query.cursor and query.status not in FINISHED
    return first_page or any(run.status in ACTIVE for run in page.items)


# --- the start form ----------------------------------------------------------------------------


@dataclass
class InputField:
    """One declared input as a form control."""

    name: str
    spec: InputSpec
    widget: str  # text | textarea | number | integer | checkbox | select | json
    value: str = ""
    checked: bool = False
    error: str | None = None
    choices: list[tuple[str, str]] = field(default_factory=list)  # (value, label)

    @property
    def form_name(self) -> str:
        return f"inputs.{self.name}"

    @property
    def label(self) -> str:
        """The package's title, else the name in words (``max_rows`` -> "Max rows")."""
        if self.spec.title:
            return self.spec.title
        words = self.name.replace("_", " ").replace("-", " ").strip()
        return words[:1].upper() + words[1:] if words else self.name

    @property
    def hint(self) -> str:
        """What to type, for the controls where it is not obvious."""
        return {"integer": "A whole number, like 42.", "number": "A number, like 3.5.",
                "json": "A JSON list, like [1, 2]." if self.spec.type == "array"
                else 'A JSON object, like {"key": "value"}.'}.get(self.widget, "")

    @property
    def file_types(self) -> str | None:
        """The file picker's ``accept`` list, or None when this input has no picker."""
        if self.spec.type != "string" or self.spec.enum is not None:
            return None
        if self.spec.accept:
            return self.spec.accept
        return TEXT_FILES if self.spec.multiline else None

    @property
    def dom_id(self) -> str:
        return f"input-{self.name}"


def _widget(spec: InputSpec) -> str:
    if spec.enum is not None:
        return "select"
    if spec.type == "string":
        return "textarea" if spec.multiline else "text"
    if spec.type == "boolean":
        return "checkbox"
    if spec.type in {"array", "object"}:
        return "json"
    return spec.type  # number | integer


def _initial_value(spec: InputSpec) -> str:
    if spec.default is None:
        return ""
    if spec.enum is not None or spec.type in {"array", "object"}:
        return json.dumps(spec.default, indent=2 if spec.enum is None else None)
    return str(spec.default)


def build_fields(specs: dict[str, InputSpec], raw: dict[str, str] | None = None,
                 errors: dict[str, str] | None = None) -> list[InputField]:
    raw, errors = raw or {}, errors or {}
    fields = []
    for name, spec in specs.items():
        widget = _widget(spec)
        value = raw[name] if name in raw else _initial_value(spec)
        item = InputField(name=name, spec=spec, widget=widget, value=value,
                          error=errors.get(name))
        if widget == "checkbox":
            item.checked = (raw.get(name) == "on") if raw else bool(spec.default)
        if widget == "select":
            item.choices = [(json.dumps(option), str(option)) for option in spec.enum or []]
        fields.append(item)
    return fields


def parse_inputs(specs: dict[str, InputSpec], form: Any
                 ) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """Form values -> typed inputs. Returns (inputs, raw strings, per-field parse errors).
    An empty optional control is left out, so the declared default applies."""
    inputs: dict[str, Any] = {}
    raw: dict[str, str] = {}
    errors: dict[str, str] = {}
    for name, spec in specs.items():
        key = f"inputs.{name}"
        widget = _widget(spec)
        if widget == "checkbox":
            raw[name] = "on" if form.get(key) else "off"
            inputs[name] = bool(form.get(key))
            continue
        text = str(form.get(key) or "").replace("\r\n", "\n")
        raw[name] = text
        if not text.strip():
            if spec.type == "string" and text and widget != "select":
                inputs[name] = text  # whitespace only: let validation say "must not be empty"
            continue
        try:
            inputs[name] = _parse_value(spec, widget, text)
        except ValueError as exc:
            errors[name] = str(exc)
    return inputs, raw, errors


def _parse_value(spec: InputSpec, widget: str, text: str) -> Any:
    if widget == "select":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError("choose one of the listed options") from exc
    if widget in {"text", "textarea"}:
        return text
    if widget == "integer":
        try:
            return int(text.strip())
        except ValueError as exc:
            raise ValueError("must be a whole number, like 42") from exc
    if widget == "number":
        stripped = text.strip()
        try:
            return int(stripped)
        except ValueError:
            pass
        try:
            number = float(stripped)
        except ValueError as exc:
            raise ValueError("must be a number, like 3.5") from exc
        if number != number or number in {float("inf"), float("-inf")}:
            raise ValueError("must be a finite number")
        return number
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        kind = "a JSON array, like [1, 2]" if spec.type == "array" else \
            'a JSON object, like {"key": "value"}'
        raise ValueError(f"must be {kind}; the JSON is invalid at line {exc.lineno}, "
                         f"column {exc.colno} ({exc.msg})") from exc


async def _form_version(db: AsyncSession, ctx: TenantContext, agent_key: str,
                        version: str | None) -> tuple[Any, AgentVersion, list[AgentVersion]]:
    """The agent's summary, the version the form is for (latest unless pinned), and the live
    versions to choose from. NotFound for unknown agents and versions."""
    summary, versions = await agents_service.get_agent(db, ctx, agent_key)
    if version:
        chosen = next((v for v in versions if v.version == version), None)
    else:
        chosen = next((v for v in versions if v.id == summary.agent.latest_version_id), None)
    if chosen is None:
        raise NotFound()
    live = sorted((v for v in versions if v.deprecated_at is None),
                  key=lambda v: agents_service.version_key(v.version), reverse=True)
    return summary, chosen, live


def _render_form(request: Request, web: WebContext, summary: Any, version: AgentVersion,
                 live: list[AgentVersion], fields: list[InputField], *,
                 error: str | None = None, status_code: int = 200,
                 pending: int | None = None) -> HTMLResponse:
    manifest = version.manifest
    return render(request, "runs/new.html", principal=web.principal, ctx=web.ctx,
                  status_code=status_code, summary=summary, version=version, live=live,
                  fields=fields, error=error, pending_approvals=pending,
                  description=manifest.get("agent", {}).get("description", ""))


@router.get("/o/{org}/sessions/new", response_class=HTMLResponse)
async def new_session_form(request: Request, db: DB,
                           web: Annotated[WebContext, WebTenant(Scope.RUNS_WRITE)]
                           ) -> HTMLResponse:
    """Without ``?agent=``: the agents to choose from. With it: that agent's input form."""
    ctx = web.ctx
    agent_key = (request.query_params.get("agent") or "")[:64]
    pending = await pending_count(db, ctx)
    if not agent_key:
        agents = [a for a in await agents_service.list_agents(db, ctx) if not a.deprecated]
        return render(request, "runs/choose_agent.html", principal=web.principal, ctx=ctx,
                      agents=agents, pending_approvals=pending)
    pinned = (request.query_params.get("version") or "")[:64] or None
    summary, version, live = await _form_version(db, ctx, agent_key, pinned)
    specs = AgentManifest.model_validate(version.manifest).inputs
    return _render_form(request, web, summary, version, live, build_fields(specs),
                        pending=pending)


@router.post("/o/{org}/sessions/new", response_class=HTMLResponse)
async def new_session_submit(request: Request, db: DB,
                             web: Annotated[WebContext, WebTenant(Scope.RUNS_WRITE)]
                             ) -> Response:
    """Start the session and go to its page; invalid inputs re-render the form (422)."""
    ctx = web.ctx
    form = await request.form()
    agent_key = str(form.get("agent") or "")[:64]
    pinned = str(form.get("version") or "")[:64] or None
    if not agent_key:
        raise NotFound()
    summary, version, live = await _form_version(db, ctx, agent_key, pinned)
    specs = AgentManifest.model_validate(version.manifest).inputs
    inputs, raw, errors = parse_inputs(specs, form)
    try:
        if errors:
            # Report the remaining problems too, all at once.
            service.validate_inputs(specs, {k: v for k, v in inputs.items()
                                            if k not in errors})
        else:
            run = await service.start_run(db, ctx, agent_key=agent_key,
                                          version=version.version, inputs=inputs,
                                          actor=ctx.principal)
            return RedirectResponse(_org_path(ctx, "sessions", str(run.id)), status_code=303)
    except ValidationFailed as exc:
        for problem in exc.details.get("errors", []):
            name = str(problem.get("field", "")).removeprefix("inputs.")
            text = str(problem.get("message", "is not valid"))
            errors.setdefault(name, "required: fill it in" if text == "required" else text)
    except AppError as exc:
        return _render_form(request, web, summary, version, live,
                            build_fields(specs, raw, errors), error=exc.message,
                            status_code=exc.status_code, pending=await pending_count(db, ctx))
    message = "Some inputs are not valid; fix the fields marked below and start again."
    return _render_form(request, web, summary, version, live, build_fields(specs, raw, errors),
                        error=message, status_code=422, pending=await pending_count(db, ctx))


# --- the session page --------------------------------------------------------------------------


@dataclass
class NodeView:
    id: str
    name: str
    kind: str
    state: str  # current | visited | idle
    visits: int
    entry: bool
    terminal: bool
    edges: list[dict[str, Any]]


def event_summary(kind: str, data: dict[str, Any]) -> str:
    """One line about an event. static/sessions.js has the same rules for live events."""
    def clip(value: Any, n: int = 160) -> str:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        return text if len(text) <= n else text[:n - 1] + "…"

    if kind == "queued":
        if data.get("forked_from"):
            return f"replay of {str(data['forked_from'])[:8]} from checkpoint {data.get('step')}"
        return f"{data.get('agent', '')} {data.get('version', '')}".strip()
    if kind == "node_started":
        return f"{data.get('node_type', '')} step {data.get('step', '')}".strip()
    if kind == "llm_request":
        return f"model {data.get('model', '')}, {data.get('messages', 0)} messages"
    if kind == "llm_response":
        text = f"{data.get('prompt_tokens', 0)} prompt + {data.get('completion_tokens', 0)} " \
               "completion tokens"
        if data.get("tool_calls"):
            text += " → " + ", ".join(map(str, data["tool_calls"]))
        return text
    if kind in {"tool_call", "tool_result"}:
        detail = data.get("arguments") if kind == "tool_call" else data.get("result")
        return f"{data.get('tool', '')}: {clip(detail)}" if detail not in (None, "") \
            else str(data.get("tool", ""))
    if kind == "approval_requested":
        return f"waiting for the {data.get('approver_role', '')} role: " + \
            " / ".join(map(str, data.get("options", [])))
    if kind == "approval_decided":
        text = str(data.get("decision") or data.get("status") or "")
        if data.get("status") == "expired":
            text = f"expired ({text})" if text else "expired"
        if data.get("comment"):
            text += f" — “{clip(data['comment'])}”"
        return text
    if kind == "report_created":
        return str(data.get("title", ""))
    if kind == "node_finished":
        return str(data.get("outcome", ""))
    if kind == "checkpoint":
        return f"step {data.get('step')} saved; next: {data.get('next_node') or 'end'} " \
               f"({data.get('status', '')})"
    if kind == "error":
        return clip(data.get("message", ""), 400)
    if kind == "finished":
        return str(data.get("status", "")) + (f": {clip(data['error'])}"
                                                if data.get("error") else "")
    return ""


def edge_label(edge: dict[str, Any]) -> tuple[str, str | None]:
    """An edge's condition in words, and the expression as written (None for the fixed
    conditions): ``approval.decision == 'approve'`` reads "approved"."""
    condition = edge.get("condition", "on_success")
    fixed = {"always": "always", "on_success": "on success", "on_failure": "on failure"}
    if condition in fixed:
        return fixed[condition], None
    expr = str(edge.get("expr") or "")
    return (describe_expression(expr) if expr else "if its condition holds"), expr or None


def build_graph(manifest: dict[str, Any], path: list[str], current: str | None
                ) -> list[NodeView]:
    """Nodes in walking order from the entry node, each with its outgoing edges; the visited
    path and the current node are marked."""
    graph = manifest.get("graph", {})
    nodes = {n["id"]: n for n in graph.get("nodes", [])}
    edges = graph.get("edges", [])
    taken = set(pairwise(path))
    order: list[str] = []
    queue = [graph.get("entry_node")]
    while queue:
        node_id = queue.pop(0)
        if node_id in nodes and node_id not in order:
            order.append(node_id)
            queue.extend(e["target"] for e in edges if e["source"] == node_id)
    order.extend(n for n in nodes if n not in order)
    views = []
    for node_id in order:
        node = nodes[node_id]
        visits = path.count(node_id)
        state = "current" if node_id == current else "visited" if visits else "idle"
        out = []
        for edge in edges:
            if edge["source"] != node_id:
                continue
            label, expr = edge_label(edge)
            out.append({"target": edge["target"], "label": label, "expr": expr,
                        "target_name": nodes.get(edge["target"], {}).get("name")
                        or edge["target"],
                        "taken": (node_id, edge["target"]) in taken})
        views.append(NodeView(node_id, node.get("name") or node_id, node.get("node_type", ""),
                              state, visits, node_id == graph.get("entry_node"),
                              node_id in graph.get("terminal_nodes", []), out))
    return views


def _state_preview(state: dict[str, Any]) -> str:
    text = json.dumps({k: v for k, v in state.items() if k != LEGACY_PENDING_APPROVAL},
                      indent=2, default=str, ensure_ascii=False)
    if len(text) > STATE_PREVIEW_CHARS:
        return text[:STATE_PREVIEW_CHARS] + "\n… (truncated)"
    return text


@dataclass
class SessionView:
    run: Run
    checkpoints: list[Checkpoint]
    graph: list[NodeView]
    approval: Approval | None
    approval_html: Any
    reports: list[Any]
    can_write: bool
    can_decide: bool
    may_decide_this: bool
    path: list[str]
    trace: Trace | None = None
    agent_name: str = ""

    @property
    def active(self) -> bool:
        return self.run.status in ACTIVE

    @property
    def finished(self) -> bool:
        return self.run.status in FINISHED


async def load_session(db: AsyncSession, ctx: TenantContext, run_id: uuid.UUID
                       ) -> SessionView:
    """Everything the session page shows except the events. NotFound for other orgs' runs."""
    run = await service.access_run(db, ctx, run_id)
    checkpoints = await service.list_checkpoints(db, ctx, run_id)
    latest = checkpoints[-1] if checkpoints else None
    path = list(latest.path) if latest else []
    current = run.next_node if run.status in ACTIVE else None
    manifest: dict[str, Any] | None = None
    agent_name = run.agent_key
    try:
        _, version = await agents_service.access_version(db, ctx, run.agent_key,
                                                         run.agent_version)
        manifest = version.manifest
        graph = build_graph(manifest, path, current)
        agent_name = str(manifest.get("agent", {}).get("name") or run.agent_key)
    except NotFound:
        graph = []
    trace = await load_trace(db, ctx, run, checkpoints, manifest)
    approval = (await approvals_service.awaited_by(db, ctx, run)
                if ctx.has(Scope.APPROVALS_READ) else None)
    reports = ((await reports_service.list_reports(db, ctx, run_id=run.id, limit=20)).items
               if ctx.has(Scope.REPORTS_READ) else [])
    can_decide = ctx.has(Scope.APPROVALS_DECIDE)
    return SessionView(
        run=run, checkpoints=checkpoints, graph=graph, approval=approval,
        approval_html=render_markdown(approval.question) if approval else None,
        reports=reports, can_write=ctx.has(Scope.RUNS_WRITE), can_decide=can_decide,
        may_decide_this=bool(approval and can_decide
                             and approvals_service.can_decide(ctx, approval)),
        path=path, trace=trace, agent_name=agent_name)


def render_session(request: Request, principal: UserPrincipal, ctx: TenantContext,
                   view: SessionView, events: list[RunEvent], *, pending: int | None,
                   error: str | None = None, approval_error: str | None = None,
                   comment: str = "", status_code: int = 200) -> HTMLResponse:
    run = view.run
    return render(request, "runs/detail.html", principal=principal, ctx=ctx,
                  status_code=status_code, view=view, run=run, events=events,
                  summary=event_summary, state_preview=_state_preview,
                  last_seq=events[-1].seq if events else 0,
                  live=run.status in ACTIVE, error=error, approval_error=approval_error,
                  comment=comment, pending_approvals=pending,
                  events_url=f"/api/v1/orgs/{ctx.org_slug}/sessions/{run.id}/events")


async def session_page_response(request: Request, db: AsyncSession, web: WebContext,
                                run_id: uuid.UUID, *, error: str | None = None,
                                approval_error: str | None = None, comment: str = "",
                                status_code: int = 200) -> HTMLResponse:
    """The session page. Events are read before the run: whatever commits in between reaches
    the browser through the event stream, which starts after the last event shown and makes
    the page refresh the rest."""
    events = await service.list_events(db, web.ctx, run_id, limit=EVENTS_ON_PAGE)
    view = await load_session(db, web.ctx, run_id)
    return render_session(request, web.principal, web.ctx, view, events,
                          pending=await pending_count(db, web.ctx), error=error,
                          approval_error=approval_error, comment=comment,
                          status_code=status_code)


@router.get("/o/{org}/sessions/{run_id}", response_class=HTMLResponse)
async def session_detail(request: Request, db: DB, run_id: str,
                         web: Annotated[WebContext, WebTenant(Scope.RUNS_READ)]
                         ) -> HTMLResponse:
    return await session_page_response(request, db, web, parse_id(run_id))


@router.get("/o/{org}/sessions/{run_id}/live", response_class=HTMLResponse)
async def session_live(request: Request, db: DB, run_id: str,
                       web: Annotated[WebContext, WebTenant(Scope.RUNS_READ)]) -> HTMLResponse:
    """The changing part of the session page (header, approval, graph, checkpoints), which the
    page reloads with htmx when the event stream reports progress."""
    view = await load_session(db, web.ctx, parse_id(run_id))
    return render(request, "runs/_live.html", principal=web.principal, ctx=web.ctx, view=view,
                  run=view.run, state_preview=_state_preview, error=None,
                  approval_error=None, comment="",
                  pending_approvals=await pending_count(db, web.ctx))


@router.post("/o/{org}/sessions/{run_id}/cancel", response_class=HTMLResponse)
async def session_cancel(request: Request, db: DB, run_id: str,
                         web: Annotated[WebContext, WebTenant(Scope.RUNS_WRITE)]) -> Response:
    """Cancel, then back to the session page (409 with the reason if it already finished)."""
    run_uuid = parse_id(run_id)
    try:
        await service.cancel_run(db, web.ctx, run_uuid, actor=web.ctx.principal)
    except NotFound:
        raise
    except AppError as exc:
        return await session_page_response(request, db, web, run_uuid, error=exc.message,
                                           status_code=exc.status_code)
    return RedirectResponse(_org_path(web.ctx, "sessions", str(run_uuid)), status_code=303)


@router.post("/o/{org}/sessions/{run_id}/fork", response_class=HTMLResponse)
async def session_fork(request: Request, db: DB, run_id: str,
                       web: Annotated[WebContext, WebTenant(Scope.RUNS_WRITE)]) -> Response:
    """Replay from a checkpoint (``step`` field; 0 = from the start): go to the new session."""
    run_uuid = parse_id(run_id)
    form = await request.form()
    try:
        step = int(str(form.get("step") or ""))
        if step < 0:
            raise ValueError
    except ValueError:
        await service.access_run(db, web.ctx, run_uuid)  # another org's id: not found first
        return await session_page_response(
            request, db, web, run_uuid, status_code=422,
            error="Choose a checkpoint to replay from with its Replay button.")
    try:
        forked = await service.fork_run(db, web.ctx, run_uuid, step=step,
                                        actor=web.ctx.principal)
    except AppError as exc:
        await service.access_run(db, web.ctx, run_uuid)
        message = exc.message if not isinstance(exc, NotFound) else \
            f"This session has no checkpoint {step}; reload the page and pick one listed."
        return await session_page_response(request, db, web, run_uuid, error=message,
                                           status_code=exc.status_code)
    return RedirectResponse(_org_path(web.ctx, "sessions", str(forked.id)), status_code=303)
