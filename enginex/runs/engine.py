"""Executing one step of a run: load (short transaction) -> run the node (no transaction)
-> commit result + events + checkpoint (one short transaction, guarded).

Contract:
* A step's result is committed atomically with its events and checkpoint, and only if the
  worker still holds the run's lease at the expected step (``commit_step_guard``): a step is
  never applied twice, and a worker that lost its lease discards its result.
* A worker that dies mid-step loses nothing committed: after its lease expires another worker
  claims the run and re-executes the step from the last checkpoint. External side effects of
  that step (an HTTP call) may therefore happen again: at-least-once for the outside world,
  exactly-once for the run's own state.
* Every database access re-binds the session to the run's tenant first.
* A step holds at most one pooled connection at a time (load, prepare, the owed audit
  entries, commit: one after another), so steps can never wait on each other's connections.
* A database failure anywhere in a step (no pooled connection within the pool timeout, a
  connection refused or lost, see ``db.is_transient_db_error``) is not the step's fault: the
  run is released to be retried (``release_interrupted``), never marked failed, and the
  attempt is not counted towards MAX_ATTEMPTS_PER_STEP; ``execute_step`` raises
  StepInterrupted, whose ``released`` says whether the caller must retry the release.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import JSON, Integer, String, Uuid, bindparam, column, text
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.agents.manifest import AgentManifest, ApprovalNode, LLMNode, ReportNode, ToolNode
from enginex.approvals.models import Approval
from enginex.approvals.repository import ApprovalRepository
from enginex.credentials.runtime import CredentialRuntime, StepSecrets
from enginex.db import READ_ONLY, SessionFactory, UTCDateTime, is_transient_db_error, set_tenant
from enginex.kit.expressions import evaluate
from enginex.kit.templates import render, render_value
from enginex.kit.time import utcnow
from enginex.llm.base import (
    CompletionRequest,
    LLMError,
    LLMProvider,
    Message,
    ToolCall,
    ToolSpec,
)
from enginex.llm.service import close_provider
from enginex.reports.models import Artifact
from enginex.reports.storage import ArtifactStorage
from enginex.runs.repository import RunRepository
from enginex.tenancy.context import TenantContext, system_context
from enginex.tools.base import ToolContext, ToolError, ToolRegistry
from enginex.usage.meter import StepMeter
from enginex.usage.service import meter_step

log = logging.getLogger("enginex.engine")

MAX_EVENT_TEXT = 4000
# Checkpoints written before the engine kept its control state out of the run's data carry the
# pending approval's id under this key. It is dropped on load and never read: the approval a run
# is parked on is found by run, node and step (``_parked_approval``).
LEGACY_PENDING_APPROVAL = "__pending_approval__"

Event = tuple[str, str | None, dict[str, Any]]
# The LLM provider an llm node uses in the run's organization (its model alias resolved).
ProviderFactory = Callable[[AsyncSession, TenantContext, AgentManifest, LLMNode,
                            StepSecrets | None], Awaitable[LLMProvider]]
# The tools a node may call: the built-ins plus the organization's MCP tools it names. The
# registry is closed (``ToolRegistry.aclose``) when the step ends.
ToolsFactory = Callable[[AsyncSession, TenantContext, AgentManifest, LLMNode | ToolNode,
                         StepSecrets | None], Awaitable[ToolRegistry]]
# The instructions of the skills an llm node names: (name, SKILL.md text) in the node's order;
# the package's own skills first, then the organization's. Raises ToolError for a missing one.
SkillsFactory = Callable[[AsyncSession, TenantContext, dict[str, str], LLMNode],
                         Awaitable[list[tuple[str, str]]]]


@dataclass
class EngineDeps:
    """Process-wide things a worker needs."""

    sessions: SessionFactory
    storage: ArtifactStorage
    tools: ToolRegistry
    provider_for: ProviderFactory
    allow_private_network: bool = False
    lease_seconds: int = 30
    # Resolves the run's own credentials in tool calls (None: credentials unavailable).
    credentials: CredentialRuntime | None = None
    # Per-step tools (None: ``tools`` alone) and skills (None: no skills available).
    tools_for: ToolsFactory | None = None
    skills_for: SkillsFactory | None = None


@dataclass(frozen=True)
class StepRun:
    """The columns of a run that a step reads (one statement, not the ORM row)."""

    id: uuid.UUID
    status: str
    lease_owner: str | None
    attempts: int
    step: int
    agent_version_id: uuid.UUID
    agent_key: str
    inputs: dict[str, Any]
    next_node: str | None


@dataclass
class _Loaded:
    ctx: TenantContext
    run: StepRun
    manifest: AgentManifest
    files: dict[str, str]
    state: dict[str, Any]
    path: list[str]
    node_id: str
    approval: Approval | None
    # Filled by _prepare for the node about to run.
    provider: LLMProvider | LLMError | None = None
    tools: ToolRegistry | None = None
    skills: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Result:
    events: list[Event] = field(default_factory=list)
    outcome: str = "success"
    error: str | None = None
    waiting_approval: Approval | None = None
    artifacts: list[tuple[Artifact, bytes]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Credentials this step resolved: redacted from everything it stores (see _commit).
    secrets: StepSecrets | None = None
    # Usage metering (issue 18): what this step used, written with its commit (see _commit).
    meter: StepMeter = field(default_factory=StepMeter)


def _credential_hooks(result: _Result) -> dict[str, Any]:
    if result.secrets is None:
        return {}
    return {"secrets": result.secrets.values, "resolve_credential": result.secrets.resolve,
            "check_credential_host": result.secrets.check_host}


def _clip(value: Any, limit: int = MAX_EVENT_TEXT) -> Any:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) <= limit:
        return value
    return text[:limit] + f"... [{len(text) - limit} more characters]"


def initial_state(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"inputs": dict(inputs), **inputs}


# The hot path's statements are constant text() SQL: no ORM entity loading, no unit of work,
# no statement walk by the ORM tenant guard (which inspects ORM statements only). Each one
# filters on the tenant explicitly (``tenant_id = :tenant``, joins on the same tenant) and, on
# PostgreSQL, row-level security applies too: the session is bound to the tenant first.
_LOAD = text(
    "SELECT o.slug, r.id, r.status, r.lease_owner, r.attempts, r.step, r.agent_version_id, "
    "r.agent_key, r.inputs, r.next_node, v.content_hash, c.state, c.path "
    "FROM runs r JOIN organizations o ON o.id = r.tenant_id "
    "JOIN agent_versions v ON v.tenant_id = r.tenant_id AND v.id = r.agent_version_id "
    "LEFT JOIN checkpoints c ON c.tenant_id = r.tenant_id AND c.run_id = r.id "
    "AND c.step = (SELECT max(m.step) FROM checkpoints m "
    "WHERE m.tenant_id = r.tenant_id AND m.run_id = r.id) "
    "WHERE r.tenant_id = :tenant AND r.id = :run"
).bindparams(bindparam("tenant", type_=Uuid()), bindparam("run", type_=Uuid())).columns(
    column("slug", String()), column("id", Uuid()), column("status", String()),
    column("lease_owner", String()), column("attempts", Integer()), column("step", Integer()),
    column("agent_version_id", Uuid()), column("agent_key", String()), column("inputs", JSON()),
    column("next_node", String()),
    column("content_hash", String()), column("state", JSON()), column("path", JSON()))
_LOAD_VERSION = text(
    "SELECT manifest, files FROM agent_versions WHERE tenant_id = :tenant AND id = :version"
).bindparams(bindparam("tenant", type_=Uuid()), bindparam("version", type_=Uuid())).columns(
    column("manifest", JSON()), column("files", JSON()))

# Agent versions are immutable (only ``deprecated_at`` ever changes): a process keeps the
# parsed manifest and files of the ones its steps used, keyed by (tenant, version, content
# hash); the key comes from the step's own tenant-filtered load, so a cached version is only
# ever handed to a step of its own tenant. Least recently used first out.
VERSION_CACHE_SIZE = 256
_versions: OrderedDict[tuple[uuid.UUID, uuid.UUID, str],
                       tuple[AgentManifest, dict[str, str]]] = OrderedDict()


async def _version(db: AsyncSession, tenant_id: uuid.UUID, version_id: uuid.UUID,
                   content_hash: str) -> tuple[AgentManifest, dict[str, str]] | None:
    key = (tenant_id, version_id, content_hash)
    cached = _versions.get(key)
    if cached is not None:
        _versions.move_to_end(key)
        return cached
    row = (await db.execute(_LOAD_VERSION, {"tenant": tenant_id, "version": version_id})).first()
    if row is None:
        return None
    loaded = (AgentManifest.model_validate(row.manifest), dict(row.files or {}))
    _versions[key] = loaded
    while len(_versions) > VERSION_CACHE_SIZE:
        _versions.popitem(last=False)
    return loaded


async def _load(deps: EngineDeps, tenant_id: uuid.UUID, run_id: uuid.UUID,
                worker: str) -> _Loaded | None:
    # Only reads: on SQLite a deferred transaction, so loads never queue for the write lock.
    async with deps.sessions(execution_options={READ_ONLY: True}) as db:
        await set_tenant(db, tenant_id)
        row = (await db.execute(_LOAD, {"tenant": tenant_id, "run": run_id})).first()
        if row is None:  # no such run, organization or agent version
            return None
        ctx = system_context(tenant_id, row.slug)
        run = StepRun(id=row.id, status=row.status, lease_owner=row.lease_owner,
                      attempts=row.attempts, step=row.step,
                      agent_version_id=row.agent_version_id, agent_key=row.agent_key,
                      inputs=row.inputs or {}, next_node=row.next_node)
        if run.status != "running" or run.lease_owner != worker:
            return None
        if run.attempts - run.step > MAX_ATTEMPTS_PER_STEP:
            raise _Poisoned(f"step {run.step + 1} could not be completed after "
                            f"{MAX_ATTEMPTS_PER_STEP} attempts (worker crashes or an "
                            "unreadable agent version)")
        version = await _version(db, tenant_id, run.agent_version_id, row.content_hash)
        if version is None:
            return None
        manifest, files = version
        state = dict(row.state) if row.state is not None else initial_state(run.inputs)
        state.pop(LEGACY_PENDING_APPROVAL, None)  # data, not control state: never trusted
        path = list(row.path) if row.path is not None else []
        node_id = run.next_node or manifest.graph.entry_node
        approval = await _parked_approval(db, ctx, manifest, run, node_id)
        db.expunge_all()  # keep loaded values usable after the session closes
        return _Loaded(ctx, run, manifest, dict(files), state, path, node_id, approval)


async def _parked_approval(db: AsyncSession, ctx: TenantContext, manifest: AgentManifest,
                           run: StepRun, node_id: str) -> Approval | None:
    """The approval the run is parked on: the one its approval node ``node_id`` requested at
    the run's last committed step. Found through the tenant-scoped repository by run, node and
    step; nothing in the run's state (which inputs, tools and models write) takes part."""
    if not any(n.id == node_id and isinstance(n, ApprovalNode) for n in manifest.graph.nodes):
        return None
    return await ApprovalRepository(db, ctx).requested_at(run.id, node_id, run.step)


def _uses_org_resources(deps: EngineDeps, node: LLMNode | ToolNode) -> bool:
    if isinstance(node, LLMNode):
        return True
    return deps.tools_for is not None and node.tool.startswith("mcp.")


async def _prepare(deps: EngineDeps, loaded: _Loaded, node: LLMNode | ToolNode,
                   result: _Result) -> None:
    """Resolve what the node needs from the organization's workspace (provider and model
    alias, MCP tools, skills) in one short read-only transaction bound to the run's tenant.
    Credentials (and the quick setup's LLM key) the hooks resolve through ``secrets`` are
    read in that same session (``StepSecrets.reading_in``): the step never holds one
    connection while waiting for a second. Their audit entries are written in a short
    transaction of their own once the prepare session is closed -- also when preparing
    fails -- and before the node runs, so nothing is used unaudited. Failures are stored on
    ``loaded`` (provider) or raised as ToolError/LLMError: the step fails with that
    message."""
    loaded.tools = deps.tools
    if not _uses_org_resources(deps, node):
        return
    secrets = result.secrets
    try:
        async with deps.sessions(execution_options={READ_ONLY: True}) as db:
            await set_tenant(db, loaded.ctx.org_id)
            with secrets.reading_in(db) if secrets is not None else nullcontext():
                if isinstance(node, LLMNode):
                    try:
                        loaded.provider = await deps.provider_for(db, loaded.ctx,
                                                                  loaded.manifest, node, secrets)
                    except LLMError as exc:  # surfaces as this step's failure, see _run_llm
                        loaded.provider = exc
                    if node.skills:
                        if deps.skills_for is None:
                            raise ToolError("skills are not available on this deployment")
                        loaded.skills = await deps.skills_for(db, loaded.ctx, loaded.files,
                                                              node)
                if deps.tools_for is not None:
                    loaded.tools = await deps.tools_for(db, loaded.ctx, loaded.manifest, node,
                                                        secrets)
            await db.commit()
    finally:
        if secrets is not None:
            await secrets.write_owed_audit()


# --- node kinds --------------------------------------------------------------------------------

SET_OUTPUT = ToolSpec(
    name="set_output",
    description="Set one of this step's declared output keys. Call once per key.",
    parameters={"type": "object", "properties": {"key": {"type": "string"}, "value": {}},
                "required": ["key", "value"]},
)


async def _run_llm(deps: EngineDeps, loaded: _Loaded, node: LLMNode, result: _Result) -> None:
    provider = loaded.provider
    if isinstance(provider, LLMError):
        raise provider
    assert provider is not None
    state = loaded.state
    system = node.system_prompt
    if node.system_prompt_file:
        system = loaded.files.get(node.system_prompt_file, "")
    system = render(system, state)
    for name, instructions in loaded.skills:
        system += f"\n\n## Skill: {name}\n\n{instructions}"
    system += ("\n\nWhen done, call set_output once for each of these keys: "
               + ", ".join(node.output_keys) + ".")
    inputs = {key: state.get(key) for key in node.input_keys} if node.input_keys else {
        "inputs": state.get("inputs", {})}
    messages: list[Message] = [Message("system", system),
                               Message("user", json.dumps(inputs, default=str, indent=2))]
    tools = loaded.tools or deps.tools
    tool_specs = [SET_OUTPUT, *[s for s in tools.specs(node.tools) if s.name != "set_output"]]
    tool_ctx = ToolContext(tenant_id=loaded.ctx.org_id, run_id=loaded.run.id, node_id=node.id,
                           state=state, allow_private_network=deps.allow_private_network,
                           **_credential_hooks(result))
    outputs: dict[str, Any] = {}
    for _ in range(node.max_iterations):
        request = CompletionRequest(messages=tuple(messages), tools=tuple(tool_specs),
                                    model=node.model, node_id=node.id)
        result.events.append(("llm_request", node.id, {"model": node.model,
                                                        "messages": len(messages)}))
        began = time.monotonic()
        response = await provider.complete(request)
        took_ms = round((time.monotonic() - began) * 1000)
        result.prompt_tokens += response.usage.prompt_tokens
        result.completion_tokens += response.usage.completion_tokens
        result.meter.llm(getattr(provider, "usage_provider", "other"),  # usage metering
                         response.model or node.model or "",
                         input_tokens=response.usage.prompt_tokens,
                         output_tokens=response.usage.completion_tokens,
                         cached_tokens=response.usage.cached_tokens,
                         reported=response.usage.reported)
        result.events.append(("llm_response", node.id, {
            "model": response.model, "text": _clip(response.text),
            "tool_calls": [c.name for c in response.tool_calls],
            "prompt_tokens": response.usage.prompt_tokens,
            "completion_tokens": response.usage.completion_tokens, "duration_ms": took_ms}))
        messages.append(Message("assistant", response.text, tool_calls=response.tool_calls))
        if not response.tool_calls:
            missing = [k for k in node.output_keys if k not in outputs]
            if len(missing) == 1 and response.text:
                outputs[missing[0]] = response.text
            else:
                messages.append(Message("user", "Call set_output for: " + ", ".join(missing)))
        for call in response.tool_calls:
            content = await _llm_tool_call(tools, node, call, tool_ctx, outputs, result)
            messages.append(Message("tool", content, tool_call_id=call.id, name=call.name))
        if all(k in outputs for k in node.output_keys):
            state.update({k: outputs[k] for k in node.output_keys})
            report = tool_ctx.outputs.get("__report__")
            if isinstance(report, dict):
                _store_report(deps, loaded, node.id, str(report.get("title") or "Report"),
                              str(report.get("markdown") or ""), result)
            return
    missing = [k for k in node.output_keys if k not in outputs]
    raise ToolError(f"the model did not set {', '.join(missing)} within "
                    f"{node.max_iterations} iterations")


async def _llm_tool_call(tools: ToolRegistry, node: LLMNode, call: ToolCall,
                         tool_ctx: ToolContext, outputs: dict[str, Any], result: _Result) -> str:
    result.events.append(("tool_call", node.id, {"tool": call.name,
                                                 "arguments": _clip(call.arguments)}))
    began = time.monotonic()
    if call.name == "set_output":
        key, value = call.arguments.get("key"), call.arguments.get("value")
        if key not in node.output_keys:
            content = f"error: '{key}' is not an output key of this step ({node.output_keys})"
        else:
            outputs[str(key)] = value
            content = "ok"
    elif call.name not in node.tools or tools.get(call.name) is None:
        content = f"error: tool '{call.name}' is not available to this step"
    else:
        tool = tools.get(call.name)
        assert tool is not None
        if result.secrets is not None:
            await result.secrets.prepare(call.arguments)
        try:
            value = await tool.call(tool_ctx, dict(call.arguments))
            result.meter.tool(call.name, call.arguments, value)  # usage metering
            content = json.dumps(value, default=str)
        except ToolError as exc:
            result.meter.tool(call.name, call.arguments)  # usage metering
            content = f"error: {exc}"
    result.events.append(("tool_result", node.id, {
        "tool": call.name, "result": _clip(content),
        "duration_ms": round((time.monotonic() - began) * 1000)}))
    return content


async def _run_tool(deps: EngineDeps, loaded: _Loaded, node: ToolNode, result: _Result) -> None:
    tool = (loaded.tools or deps.tools).get(node.tool)
    if tool is None:
        raise ToolError(f"tool '{node.tool}' is not available")
    if result.secrets is not None:  # {{credentials.NAME.FIELD}} too (package text only)
        arguments = await result.secrets.render_arguments(node.arguments, loaded.state,
                                                          tool=node.tool)
        await result.secrets.prepare(arguments)
    else:
        arguments = render_value(node.arguments, loaded.state)
    result.events.append(("tool_call", node.id, {"tool": node.tool,
                                                 "arguments": _clip(arguments)}))
    tool_ctx = ToolContext(tenant_id=loaded.ctx.org_id, run_id=loaded.run.id, node_id=node.id,
                           state=loaded.state, allow_private_network=deps.allow_private_network,
                           **_credential_hooks(result))
    began = time.monotonic()
    try:
        value = await tool.call(tool_ctx, arguments)
    except ToolError:
        result.meter.tool(node.tool, arguments)  # usage metering: a failed call counts too
        raise
    result.meter.tool(node.tool, arguments, value)  # usage metering
    result.events.append(("tool_result", node.id, {
        "tool": node.tool, "result": _clip(value),
        "duration_ms": round((time.monotonic() - began) * 1000)}))
    loaded.state[node.output_key or node.id] = value


DECIDED = frozenset({"approved", "rejected", "expired"})


def _run_approval(loaded: _Loaded, node: ApprovalNode, step: int, result: _Result) -> bool:
    """Request a decision, or apply one. Returns True when the node is complete.

    The request is a row (run, node, step ``step``, approver role), committed with the step;
    the run's state gets nothing. On resume the decision applied is that row's (see
    ``_parked_approval``), and only if it matches this run, node, step and approver role:
    anything else fails the step rather than pass the gate."""
    approval = loaded.approval
    if approval is None:
        approval = Approval(
            id=uuid.uuid4(), tenant_id=loaded.ctx.org_id, run_id=loaded.run.id, node_id=node.id,
            step=step, question=render(node.question, loaded.state), options=list(node.options),
            approver_role=node.approver_role, status="pending",
            expires_at=utcnow() + timedelta(minutes=node.expires_in_minutes))
        result.waiting_approval = approval
        result.events.append(("approval_requested", node.id, {
            "approval_id": str(approval.id), "question": _clip(approval.question),
            "options": approval.options, "approver_role": approval.approver_role,
            "expires_at": approval.expires_at.isoformat()}))
        return False
    if (approval.tenant_id, approval.run_id, approval.node_id, approval.step,
            approval.approver_role) != (loaded.ctx.org_id, loaded.run.id, node.id,
                                        loaded.run.step, node.approver_role):
        raise ToolError(f"approval {approval.id} was not requested by this step; refused")
    if approval.status == "pending":
        raise _NotReady
    if approval.status not in DECIDED:
        raise ToolError(f"approval {approval.id} was {approval.status}, not decided")
    if approval.status == "expired":
        # A decision through the API logs its own approval_decided event; the expiry sweep
        # (platform-wide, outside any tenant) does not, so the step records it here.
        result.events.append(("approval_decided", node.id, {
            "approval_id": str(approval.id), "decision": approval.decision,
            "comment": approval.comment or "", "decided_by": None, "status": "expired"}))
    loaded.state[node.output_key or node.id] = {
        "decision": approval.decision, "comment": approval.comment or "",
        "status": approval.status,
        "decided_by": str(approval.decided_by) if approval.decided_by else None}
    return True


async def _run_report(deps: EngineDeps, loaded: _Loaded, node: ReportNode,
                      result: _Result) -> None:
    template = loaded.files.get(node.template_file, "") if node.template_file else node.template
    artifact = _store_report(deps, loaded, node.id, render(node.title, loaded.state),
                             render(template, loaded.state), result)
    loaded.state[node.output_key or node.id] = {"artifact_id": str(artifact.id),
                                                "title": artifact.title}


def _store_report(deps: EngineDeps, loaded: _Loaded, node_id: str, title: str, markdown: str,
                  result: _Result) -> Artifact:
    """Write the bytes under the tenant's prefix now; the row is inserted with the step."""
    data = markdown.encode()
    artifact = Artifact(id=uuid.uuid4(), tenant_id=loaded.ctx.org_id, run_id=loaded.run.id,
                        node_id=node_id, title=title[:200], filename=f"{node_id}.md",
                        media_type="text/markdown", size_bytes=len(data),
                        sha256=hashlib.sha256(data).hexdigest())
    deps.storage.write(loaded.ctx.org_id, artifact.id, data)
    result.artifacts.append((artifact, data))
    result.meter.stored(len(data))  # usage metering
    result.events.append(("report_created", node_id, {"artifact_id": str(artifact.id),
                                                      "title": artifact.title,
                                                      "size_bytes": len(data)}))
    return artifact


class _NotReady(Exception):
    """The run was claimed while its approval is still pending: release it unchanged."""


# --- edges -------------------------------------------------------------------------------------


def next_node(manifest: AgentManifest, node_id: str, outcome: str,
              state: dict[str, Any]) -> str | None:
    """The first matching edge (highest priority first, then file order), or None."""
    for edge in manifest.graph.edges_from(node_id):
        if edge.condition == "always":
            return edge.target
        if edge.condition == "on_success" and outcome == "success":
            return edge.target
        if edge.condition == "on_failure" and outcome == "failure":
            return edge.target
        if edge.condition == "conditional" and outcome == "success" and edge.expr and \
                bool(evaluate(edge.expr, state)):
            return edge.target
    return None


# --- one step ----------------------------------------------------------------------------------


MAX_ATTEMPTS_PER_STEP = 5


class _Poisoned(Exception):
    """A step that keeps failing before it can commit (crashing workers, unreadable version)."""


async def fail_run(deps: EngineDeps, tenant_id: uuid.UUID, run_id: uuid.UUID, worker: str,
                   error: str) -> bool:
    """Mark a run this worker holds as failed, with error and finished events. Guarded like a
    step commit: does nothing if the lease was lost meanwhile."""
    async with deps.sessions() as db:
        await set_tenant(db, tenant_id)
        ctx = system_context(tenant_id, "")
        repo = RunRepository(db, ctx)
        run = await repo.get(run_id)
        if run is None:
            return False
        last = await repo.commit_step_guard(
            run_id, expected_step=run.step, worker=worker, n_events=2,
            values={"step": run.step, "status": "failed", "finished_at": utcnow(),
                    "error": error[:2000], "lease_owner": None, "lease_expires_at": None})
        if last is None:
            await db.rollback()
            return False
        repo.add_events(run_id, last, [("error", run.next_node, {"message": error}),
                                       ("finished", None, {"status": "failed", "error": error})])
        await db.commit()
        return True


class StepInterrupted(Exception):
    """A step was interrupted by the database (see the module docstring); nothing of it was
    committed. ``released``: its run was released for a retry; if False (the database was
    still unreachable), the caller retries ``release_interrupted`` with these arguments
    once the database answers, or lets the lease lapse."""

    def __init__(self, tenant_id: uuid.UUID, run_id: uuid.UUID, expected_step: int | None,
                 *, released: bool) -> None:
        super().__init__(f"step of run {run_id} interrupted by the database"
                         + ("" if released else "; run not released yet"))
        self.tenant_id, self.run_id, self.expected_step = tenant_id, run_id, expected_step
        self.released = released


async def release_interrupted(deps: EngineDeps, tenant_id: uuid.UUID, run_id: uuid.UUID,
                              worker: str, expected_step: int | None) -> None:
    """Release a run whose step the database interrupted (``RunRepository.
    release_interrupted``): claimable again at once, the attempt not counted. Raises what
    the database raises."""
    async with deps.sessions() as db:
        await set_tenant(db, tenant_id)
        await RunRepository(db, system_context(tenant_id, "")).release_interrupted(
            run_id, worker=worker, expected_step=expected_step)
        await db.commit()


async def execute_step(deps: EngineDeps, tenant_id: uuid.UUID, run_id: uuid.UUID,
                       worker: str) -> bool:
    """Run the next node of a claimed run and commit its result. Returns True if committed.

    A step that was attempted more than MAX_ATTEMPTS_PER_STEP times without committing fails
    the run instead of being retried forever. A step the database interrupts raises
    StepInterrupted instead: its run released for a retry, or (``released`` False) still to
    be released by the caller."""
    expected_step: int | None = None
    try:
        try:
            loaded = await _load(deps, tenant_id, run_id, worker)
        except _Poisoned as exc:
            return await fail_run(deps, tenant_id, run_id, worker, str(exc))
        if loaded is None:
            return False
        expected_step = loaded.run.step
        return await _execute_loaded(deps, loaded, worker)
    except Exception as exc:
        if not is_transient_db_error(exc):
            raise
        log.warning("run %s: the database interrupted the step (%s); releasing the run for a "
                    "retry", run_id, type(exc).__name__)
        cause = exc
    try:
        await release_interrupted(deps, tenant_id, run_id, worker, expected_step)
    except Exception as exc:
        if not is_transient_db_error(exc):
            raise
        raise StepInterrupted(tenant_id, run_id, expected_step, released=False) from exc
    raise StepInterrupted(tenant_id, run_id, expected_step, released=True) from cause


async def _execute_loaded(deps: EngineDeps, loaded: _Loaded, worker: str) -> bool:
    run, manifest = loaded.run, loaded.manifest
    step = run.step + 1
    node = manifest.graph.node(loaded.node_id)
    result = _Result(secrets=deps.credentials.for_step(loaded.ctx, run.id, node.id)
                     if deps.credentials is not None else None)
    try:
        return await _execute(deps, loaded, worker, step, node, result)
    finally:
        if result.secrets is not None:
            result.secrets.close()


async def _execute(deps: EngineDeps, loaded: _Loaded, worker: str, step: int,
                   node: LLMNode | ToolNode | ApprovalNode | ReportNode, result: _Result) -> bool:
    run_id, manifest = loaded.run.id, loaded.manifest
    result.events.append(("node_started", node.id, {"node_type": node.node_type, "step": step,
                                                    "started_at": utcnow().isoformat()}))
    complete = True
    try:
        if step > manifest.graph.max_steps:
            raise ToolError(f"the run exceeded max_steps ({manifest.graph.max_steps})")
        if isinstance(node, LLMNode | ToolNode):
            await _prepare(deps, loaded, node, result)
        if isinstance(node, LLMNode):
            await _run_llm(deps, loaded, node, result)
        elif isinstance(node, ToolNode):
            await _run_tool(deps, loaded, node, result)
        elif isinstance(node, ApprovalNode):
            complete = _run_approval(loaded, node, step, result)
        else:
            await _run_report(deps, loaded, node, result)
    except _NotReady:
        await _release(deps, loaded, worker)
        return False
    except Exception as exc:
        if is_transient_db_error(exc):
            raise  # not the step's fault: execute_step releases the run for a retry
        if isinstance(exc, ToolError | LLMError):
            message = result.secrets.redact(str(exc)) if result.secrets is not None \
                else str(exc)
            result.outcome, result.error = "failure", message[:2000]
        else:
            log.exception("node %s of run %s failed", node.id, run_id)
            result.outcome = "failure"
            result.error = f"internal error in node '{node.id}' ({type(exc).__name__})"
        result.events.append(("error", node.id, {"message": result.error}))
    finally:
        if loaded.provider is not None and not isinstance(loaded.provider, LLMError):
            await close_provider(loaded.provider)
        if loaded.tools is not None and loaded.tools is not deps.tools:
            await loaded.tools.aclose()
    return await _commit(deps, loaded, worker, step, node.id, result, complete)


def _step_update(finished: bool) -> Any:
    """The guarded step commit (``RunRepository.commit_step_guard``'s condition) as one
    constant statement: advance the run by one step iff this worker still holds it at the
    expected step, reserve the events' sequence numbers, release the lease."""
    sets = ("step = :step, last_event_seq = last_event_seq + :n_events, status = :status, "
            "next_node = :next_node, lease_owner = NULL, lease_expires_at = NULL, "
            "prompt_tokens = prompt_tokens + :prompt_tokens, "
            "completion_tokens = completion_tokens + :completion_tokens")
    if finished:
        sets += ", finished_at = :finished_at, error = :error"
    return text(
        f"UPDATE runs SET {sets} "  # noqa: S608 - constant SQL
        "WHERE tenant_id = :tenant AND id = :run AND step = :expected AND "
        "lease_owner = :worker AND status = 'running' RETURNING last_event_seq"
    ).bindparams(bindparam("tenant", type_=Uuid()), bindparam("run", type_=Uuid()),
                 *([bindparam("finished_at", type_=UTCDateTime())] if finished else [])
                 ).columns(column("last_event_seq", Integer()))


_STEP_UPDATE = {finished: _step_update(finished) for finished in (False, True)}
_EVENT_COLUMNS = "INSERT INTO run_events (tenant_id, run_id, seq, at, kind, node_id, data) VALUES "
_insert_events_cache: dict[int, Any] = {}


def _insert_events(n: int) -> Any:
    """One multi-row INSERT of a step's ``n`` events (kept per ``n``)."""
    statement = _insert_events_cache.get(n)
    if statement is None:
        rows = ", ".join(f"(:tenant, :run, :seq_{i}, :at, :kind_{i}, :node_id_{i}, :data_{i})"
                         for i in range(n))
        statement = text(_EVENT_COLUMNS + rows).bindparams(
            bindparam("tenant", type_=Uuid()), bindparam("run", type_=Uuid()),
            bindparam("at", type_=UTCDateTime()),
            *[bindparam(f"data_{i}", type_=JSON()) for i in range(n)])
        if n <= 64:
            _insert_events_cache[n] = statement
    return statement


_INSERT_CHECKPOINT = text(
    "INSERT INTO checkpoints (tenant_id, run_id, step, at, node_id, next_node, status, state, "
    "path) VALUES (:tenant, :run, :step, :at, :node_id, :next_node, :status, :state, :path)"
).bindparams(bindparam("tenant", type_=Uuid()), bindparam("run", type_=Uuid()),
             bindparam("at", type_=UTCDateTime()), bindparam("state", type_=JSON()),
             bindparam("path", type_=JSON()))


async def _commit(deps: EngineDeps, loaded: _Loaded, worker: str, step: int, node_id: str,
                  result: _Result, complete: bool) -> bool:
    run, manifest, state = loaded.run, loaded.manifest, loaded.state
    status_after = "running"
    finished: dict[str, Any] = {}
    path = [*loaded.path, node_id]
    following: str | None = node_id
    if result.waiting_approval is not None:
        status_after = "waiting_approval"
    elif complete:
        is_terminal = node_id in manifest.graph.terminal_nodes and result.outcome == "success"
        try:
            following = None if is_terminal else next_node(manifest, node_id, result.outcome,
                                                           state)
        except Exception as exc:
            result.outcome, result.error = "failure", f"edge condition failed: {exc}"
            following = None
        result.events.append(("node_finished", node_id, {"outcome": result.outcome}))
        if following is None:
            failed = result.outcome == "failure" or not is_terminal
            error = result.error or (None if is_terminal else
                                     f"no outgoing edge of node '{node_id}' matched")
            status_after = "failed" if failed else "succeeded"
            finished = {"finished_at": utcnow(), "error": error}
            result.events.append(("finished", None, {"status": status_after,
                                                     "error": error}))
    if result.secrets is not None:  # no resolved credential value is ever stored
        result.events = result.secrets.redact(result.events)
        if finished.get("error") is not None:
            finished["error"] = result.secrets.redact(finished["error"])
        state = result.secrets.redact(state)
    if finished.get("error") is not None:
        finished["error"] = finished["error"][:2000]
    tenant_id = loaded.ctx.org_id
    async with deps.sessions() as db:
        await set_tenant(db, tenant_id)
        # Usage metering (issue 18): this step's usage rows are written in this, the step's
        # commit transaction (a lost lease rolls them back with the step). A run whose
        # organization's monthly budget is now spent stops at this step boundary, resumable.
        pause = await meter_step(db, loaded.ctx, run, step, result.meter)
        if pause is not None and status_after == "running":
            status_after = "paused_quota"
            result.events.append(("quota_paused", following, pause.event()))
        last_seq = (await db.execute(_STEP_UPDATE[bool(finished)], {
            "tenant": tenant_id, "run": run.id, "expected": run.step, "worker": worker,
            "step": run.step + 1, "n_events": len(result.events) + 1, "status": status_after,
            "next_node": following, "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens, **finished})).scalar_one_or_none()
        if last_seq is None:
            await db.rollback()
            log.info("run %s: lease lost before committing step %s; result discarded",
                     run.id, step)
            return False
        result.events.append(("checkpoint", node_id, {"step": step, "next_node": following,
                                                      "status": status_after}))
        now = utcnow()
        first = last_seq - len(result.events) + 1
        events: dict[str, Any] = {"tenant": tenant_id, "run": run.id, "at": now}
        for i, (kind, event_node, data) in enumerate(result.events):
            events.update({f"seq_{i}": first + i, f"kind_{i}": kind, f"node_id_{i}": event_node,
                           f"data_{i}": data})
        await db.execute(_insert_events(len(result.events)), events)
        await db.execute(_INSERT_CHECKPOINT, {
            "tenant": tenant_id, "run": run.id, "step": step, "at": now, "node_id": node_id,
            "next_node": following, "status": status_after, "state": state, "path": path})
        if result.waiting_approval is not None:
            db.add(result.waiting_approval)
        for artifact, _ in result.artifacts:
            db.add(artifact)
        await db.commit()
    return True


async def _release(deps: EngineDeps, loaded: _Loaded, worker: str) -> None:
    async with deps.sessions() as db:
        await set_tenant(db, loaded.ctx.org_id)
        run = await RunRepository(db, loaded.ctx).get(loaded.run.id)
        if run is not None and run.lease_owner == worker:
            run.lease_owner = None
            run.lease_expires_at = None
            if loaded.approval is not None and loaded.approval.status == "pending":
                run.status = "waiting_approval"
        await db.commit()
