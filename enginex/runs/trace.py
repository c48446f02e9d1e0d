"""The trace of a session: its steps as a waterfall, each with its duration, model tokens,
estimated cost, the model, tool and MCP calls made in it (arguments and results as the event
log holds them: clipped, credentials redacted by the engine), what it wrote to the state, and
for a failed session a summary of where and why it failed.

Built from what the session page already reads (the run, its checkpoints, its agent version's
manifest) plus the run's events and its rows of the usage ledger (cost per step and model).
``assemble_trace`` is pure; ``load_trace`` reads. Another organization's run never gets here:
callers pass a run they fetched with ``access_run``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from enginex.kit.time import utcnow
from enginex.runs.engine import LEGACY_PENDING_APPROVAL
from enginex.runs.models import Checkpoint, Run, RunEvent
from enginex.runs.repository import RunRepository
from enginex.tenancy.context import TenantContext
from enginex.tenancy.scopes import Scope
from enginex.usage.models import UsageEvent, UsageKind
from enginex.usage.repository import UsageRepository

TRACE_EVENTS = 5000  # a session with more shows the steps of its first 5000 events
PREVIEW_CHARS = 8000
WATERFALL = 1000  # the bars' coordinate width (an SVG viewBox, no inline style under the CSP)


def _span(start: datetime | None, end: datetime | None) -> timedelta | None:
    """How long from ``start`` to ``end`` (never negative), or None when either is unknown."""
    if start is None or end is None:
        return None
    return max(end - start, timedelta(0))


@dataclass
class TraceCall:
    """One call made during a step: ``kind`` is model, tool, mcp or output (set_output)."""

    kind: str
    name: str
    arguments: str | None = None
    result: str | None = None
    failed: bool = False
    duration_ms: int | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    requested: list[str] = field(default_factory=list)  # a model call's tool calls
    answered: bool = False


@dataclass
class TraceStep:
    step: int
    node_id: str
    name: str
    node_type: str
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str = "running"  # success | failure | waiting | paused | running
    error: str | None = None
    calls: list[TraceCall] = field(default_factory=list)
    approval: dict[str, Any] | None = None
    report: str | None = None
    reads: str | None = None
    writes: str | None = None
    cost_micro_usd: int = 0
    cost_known: bool = False
    cost_estimated: bool = False
    models: list[str] = field(default_factory=list)
    bar_x: float = 0.0
    bar_width: float = 0.0
    waited: timedelta | None = None  # after asking for approval: until the next step began

    @property
    def duration(self) -> timedelta | None:
        return _span(self.started_at, self.ended_at)

    @property
    def tokens_in(self) -> int:
        return sum(c.tokens_in for c in self.calls)

    @property
    def tokens_out(self) -> int:
        return sum(c.tokens_out for c in self.calls)

    @property
    def tool_calls(self) -> int:
        return sum(1 for c in self.calls if c.kind in {"tool", "mcp"})


@dataclass
class FailureSummary:
    message: str
    node_id: str | None
    node_name: str | None
    step: int | None
    last_call: TraceCall | None
    at: datetime | None


@dataclass
class Trace:
    steps: list[TraceStep]
    failure: FailureSummary | None
    started_at: datetime | None
    ended_at: datetime | None
    truncated: bool
    cost_visible: bool

    @property
    def duration(self) -> timedelta | None:
        return _span(self.started_at, self.ended_at)

    @property
    def tokens_in(self) -> int:
        return sum(s.tokens_in for s in self.steps)

    @property
    def tokens_out(self) -> int:
        return sum(s.tokens_out for s in self.steps)

    @property
    def cost_micro_usd(self) -> int:
        return sum(s.cost_micro_usd for s in self.steps)

    @property
    def cost_known(self) -> bool:
        return any(s.cost_known for s in self.steps)

    @property
    def cost_estimated(self) -> bool:
        return any(s.cost_estimated for s in self.steps)


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, default=str,
                                                           ensure_ascii=False)
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "\n… (truncated)"


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in after.items()
            if k != LEGACY_PENDING_APPROVAL and (k not in before or before[k] != v)}


def _step_of(key: str, run_prefix: str) -> int | None:
    """The step of a ledger row keyed ``run:<id>:<step>:...`` (``usage.service.meter_step``)."""
    if not key.startswith(run_prefix):
        return None
    head = key[len(run_prefix):].split(":", 1)[0]
    return int(head) if head.isdigit() else None


def assemble_trace(run: Run, events: list[RunEvent], checkpoints: list[Checkpoint],
                   manifest: dict[str, Any] | None, usage: list[UsageEvent] | None, *,
                   truncated: bool = False, now: datetime | None = None) -> Trace:
    """The trace of ``run`` from its events (in order), checkpoints, manifest (None when the
    version is gone) and ledger rows (None when the reader may not see costs)."""
    nodes = {n.get("id"): n for n in (manifest or {}).get("graph", {}).get("nodes", [])}
    steps: list[TraceStep] = []
    current: TraceStep | None = None
    run_error: tuple[str, str | None, datetime] | None = None
    for event in events:
        data = event.data if isinstance(event.data, dict) else {}
        kind = event.kind
        if kind == "node_started":
            node = nodes.get(event.node_id, {})
            current = TraceStep(step=_int(data.get("step")) or len(steps) + 1,
                                node_id=event.node_id or "",
                                name=str(node.get("name") or event.node_id or ""),
                                node_type=str(data.get("node_type") or node.get("node_type", "")),
                                started_at=_parse_time(data.get("started_at")))
            steps.append(current)
            continue
        if current is None:
            if kind == "approval_decided":  # decided through the API, between two steps
                waiting = next((s for s in reversed(steps) if s.approval is not None), None)
                if waiting is not None and waiting.approval is not None:
                    waiting.approval.update(decision=data.get("decision"),
                                            comment=data.get("comment") or "",
                                            status=data.get("status") or "decided",
                                            decided_at=event.at)
            elif kind == "error":
                run_error = (str(data.get("message") or ""), event.node_id, event.at)
            continue
        if kind == "llm_request":
            current.calls.append(TraceCall("model", str(data.get("model") or "model")))
        elif kind == "llm_response":
            call = next((c for c in reversed(current.calls)
                         if c.kind == "model" and not c.answered), None)
            if call is None:
                call = TraceCall("model", str(data.get("model") or "model"))
                current.calls.append(call)
            call.answered = True
            call.name = str(data.get("model") or call.name)
            call.tokens_in = _int(data.get("prompt_tokens"))
            call.tokens_out = _int(data.get("completion_tokens"))
            call.duration_ms = data.get("duration_ms") if isinstance(
                data.get("duration_ms"), int) else None
            call.result = _text(data.get("text") or "") or None
            call.requested = [str(t) for t in data.get("tool_calls") or []]
            if call.name not in current.models:
                current.models.append(call.name)
        elif kind == "tool_call":
            name = str(data.get("tool") or "tool")
            call_kind = "output" if name == "set_output" else \
                "mcp" if name.startswith("mcp.") else "tool"
            current.calls.append(TraceCall(call_kind, name, arguments=_text(
                data.get("arguments") if data.get("arguments") is not None else {})))
        elif kind == "tool_result":
            name = str(data.get("tool") or "")
            call = next((c for c in reversed(current.calls)
                         if c.kind != "model" and c.name == name and not c.answered), None)
            if call is None:
                call = TraceCall("tool", name or "tool")
                current.calls.append(call)
            call.answered = True
            result = data.get("result")
            call.result = _text(result)
            call.failed = isinstance(result, str) and result.startswith("error:")
            call.duration_ms = data.get("duration_ms") if isinstance(
                data.get("duration_ms"), int) else None
        elif kind == "approval_requested":
            current.approval = {"options": data.get("options") or [],
                                "role": data.get("approver_role") or "", "decision": None}
        elif kind == "approval_decided":  # recorded by the step (an expiry)
            current.approval = {**(current.approval or {}), "decision": data.get("decision"),
                                "comment": data.get("comment") or "",
                                "status": data.get("status") or "decided",
                                "decided_at": event.at}
        elif kind == "report_created":
            current.report = str(data.get("title") or "Report")
        elif kind == "error":
            current.error = str(data.get("message") or "")
            current.outcome = "failure"
            pending = next((c for c in reversed(current.calls)
                            if c.kind != "model" and not c.answered), None)
            if pending is not None:
                pending.failed, pending.answered = True, True
                pending.result = current.error
        elif kind == "node_finished":
            current.outcome = "failure" if data.get("outcome") == "failure" else "success"
        elif kind == "quota_paused":
            current.outcome = "paused"
        elif kind == "checkpoint":
            current.ended_at = event.at
            if data.get("status") == "waiting_approval":
                current.outcome = "waiting"
            elif current.outcome == "running":
                current.outcome = "success"
            current = None
    _fill_times(run, steps)
    _fill_state(steps, checkpoints, nodes)
    if usage is not None:
        _fill_costs(run, steps, usage)
    started = run.started_at or (steps[0].started_at if steps else None)
    ended = run.finished_at or (steps[-1].ended_at if steps and run.status not in (
        "queued", "running") else None) or (now or utcnow())
    _fill_bars(steps, started, ended)
    return Trace(steps=steps, failure=_failure(run, steps, run_error), started_at=started,
                 ended_at=ended if started else None, truncated=truncated,
                 cost_visible=usage is not None)


def _fill_times(run: Run, steps: list[TraceStep]) -> None:
    """A step's start is recorded in its node_started event (sessions before it was recorded:
    the previous step's end, or the session's start); its end is its commit."""
    previous_end = run.started_at
    for step in steps:
        if step.started_at is None:
            step.started_at = previous_end
        if step.ended_at is not None:
            previous_end = step.ended_at
    for asked, following in pairwise(steps):
        if asked.outcome == "waiting" and asked.ended_at and following.started_at:
            asked.waited = max(following.started_at - asked.ended_at, timedelta(0))


def _fill_state(steps: list[TraceStep], checkpoints: list[Checkpoint],
                nodes: dict[Any, dict[str, Any]]) -> None:
    states = {cp.step: cp.state if isinstance(cp.state, dict) else {} for cp in checkpoints}
    for step in steps:
        before = states.get(step.step - 1, {})
        after = states.get(step.step)
        node = nodes.get(step.node_id, {})
        keys = node.get("input_keys") if step.node_type == "llm" else None
        if step.node_type == "llm":
            reads = {k: before.get(k) for k in keys} if keys else {
                "inputs": before.get("inputs", {})}
            step.reads = _text(reads)
        if after is not None:
            written = _changed(before, after)
            step.writes = _text(written) if written else None


def _fill_costs(run: Run, steps: list[TraceStep], usage: list[UsageEvent]) -> None:
    prefix = f"run:{run.id}:"
    model_kinds = {str(UsageKind.LLM_INPUT_TOKENS), str(UsageKind.LLM_OUTPUT_TOKENS)}
    by_step = {s.step: s for s in steps}
    for row in usage:
        number = _step_of(row.idempotency_key, prefix)
        step = by_step.get(number) if number is not None else None
        if step is None or row.kind not in model_kinds:
            continue
        step.cost_micro_usd += int(row.cost_micro_usd or 0)
        step.cost_known = step.cost_known or row.price is not None
        step.cost_estimated = step.cost_estimated or bool(row.estimated)


def _fill_bars(steps: list[TraceStep], started: datetime | None,
               ended: datetime | None) -> None:
    if started is None or ended is None:
        return
    span = max((ended - started).total_seconds(), 0.001)
    for step in steps:
        begin = step.started_at or started
        end = step.ended_at or ended
        x = min(max((begin - started).total_seconds() / span, 0.0), 1.0) * WATERFALL
        width = min(max((end - begin).total_seconds() / span * WATERFALL, 4.0), WATERFALL)
        step.bar_x = round(min(x, WATERFALL - width), 2)  # a short last step stays visible
        step.bar_width = round(width, 2)


def _failure(run: Run, steps: list[TraceStep],
             run_error: tuple[str, str | None, datetime] | None) -> FailureSummary | None:
    if run.status != "failed":
        return None
    failed = next((s for s in reversed(steps) if s.outcome == "failure" or s.error), None)
    message = run.error or (failed.error if failed else None) or (
        run_error[0] if run_error else "") or "The session failed without a recorded reason."
    if failed is not None:
        last = next((c for c in reversed(failed.calls) if c.failed), None) or (
            failed.calls[-1] if failed.calls else None)
        return FailureSummary(message, failed.node_id, failed.name, failed.step, last,
                              failed.ended_at or run.finished_at)
    node_id = run_error[1] if run_error else None
    return FailureSummary(message, node_id, node_id, None, None, run.finished_at)


async def load_trace(db: AsyncSession, ctx: TenantContext, run: Run,
                     checkpoints: list[Checkpoint], manifest: dict[str, Any] | None) -> Trace:
    """The trace of ``run`` (already fetched for ``ctx``). Costs only for roles that may read
    usage (usage:read); everyone who may read the session sees durations and tokens."""
    events = await RunRepository(db, ctx).events_after(run.id, 0, limit=TRACE_EVENTS)
    usage: list[UsageEvent] | None = None
    if ctx.has(Scope.USAGE_READ):
        end = (run.finished_at or utcnow()) + timedelta(seconds=5)
        usage = await UsageRepository(db, ctx).run_usage(
            run.id, run.created_at - timedelta(seconds=5), end)
    return assemble_trace(run, events, checkpoints, manifest, usage,
                          truncated=len(events) >= TRACE_EVENTS)
