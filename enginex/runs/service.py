"""Sessions (runs): start, list, inspect, cancel, fork.

Every function acts inside ``ctx``'s organization only; ids of other organizations' runs or
agents raise NotFound exactly like ids that do not exist. Starting, cancelling and forking are
audited in the same transaction, and wake the workers after commit.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.agents.manifest import RESERVED_PREFIX, AgentManifest, InputSpec, is_reserved
from enginex.agents.models import Agent, AgentVersion
from enginex.agents.repository import AgentRepository, AgentVersionRepository
from enginex.approvals.repository import ApprovalRepository
from enginex.audit.service import record
from enginex.db import Notifier, on_commit
from enginex.kit.errors import Conflict, NotFound, ValidationFailed
from enginex.kit.pagination import Page, decode_cursor, page_of
from enginex.kit.time import utcnow
from enginex.runs.engine import LEGACY_PENDING_APPROVAL, initial_state
from enginex.runs.models import FINISHED, Checkpoint, Run, RunEvent
from enginex.runs.repository import RunFilter, RunRepository
from enginex.tenancy.context import TenantContext
from enginex.tenancy.principal import acting_user_id
from enginex.usage.service import admit_session, record_session_started

RUN_CHANNEL = "enginex_runs"


async def notify_workers(db: AsyncSession) -> None:
    """Wake workers after this transaction commits: NOTIFY on PostgreSQL, in-process always."""
    if db.get_bind().dialect.name == "postgresql":
        await db.execute(text("SELECT pg_notify(:channel, '')"), {"channel": RUN_CHANNEL})
    notifier: Notifier | None = db.info.get("notifier")
    if notifier is not None:
        on_commit(db, notifier.wake)


# --- inputs ------------------------------------------------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "number": (int, float),
                                       "integer": (int,), "boolean": (bool,), "array": (list,),
                                       "object": (dict,)}


def validate_inputs(specs: dict[str, InputSpec], inputs: dict[str, Any]) -> dict[str, Any]:
    """Check ``inputs`` against the agent's declared inputs; every problem is reported.

    Names starting with ``__`` are refused even when an agent version stored before uploads
    refused them declares one (``manifest.RESERVED_PREFIX``); such a declared input is never
    filled, not even with its default."""
    problems: list[dict[str, str]] = []
    for name in inputs:
        if is_reserved(name):
            problems.append({"field": f"inputs.{name}",
                             "message": f"names starting with '{RESERVED_PREFIX}' are reserved "
                                        "for the engine; rename the input"})
        elif name not in specs:
            problems.append({"field": f"inputs.{name}",
                             "message": f"unknown input; this agent takes {sorted(specs)}"})
    result: dict[str, Any] = {}
    for name, spec in specs.items():
        if is_reserved(name):
            continue
        if name not in inputs:
            if spec.required:
                problems.append({"field": f"inputs.{name}", "message": "required"})
            elif spec.default is not None:
                result[name] = spec.default
            continue
        value = inputs[name]
        ok = isinstance(value, _TYPES[spec.type]) and not (
            isinstance(value, bool) and spec.type in {"number", "integer"})
        if not ok:
            problems.append({"field": f"inputs.{name}", "message": f"must be a {spec.type}"})
            continue
        if spec.enum is not None and value not in spec.enum:
            problems.append({"field": f"inputs.{name}", "message": f"must be one of {spec.enum}"})
            continue
        if len(json.dumps(value, default=str)) > spec.max_length:
            problems.append({"field": f"inputs.{name}",
                             "message": f"is longer than {spec.max_length} characters"})
            continue
        if spec.required and spec.type == "string" and not str(value).strip():
            problems.append({"field": f"inputs.{name}", "message": "must not be empty"})
            continue
        result[name] = value
    if problems:
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
        raise ValidationFailed(f"The inputs are not valid: {summary}.",
                               details={"errors": problems})
    return result


# --- start / fork / cancel ---------------------------------------------------------------------


async def _resolve_version(db: AsyncSession, ctx: TenantContext, agent_key: str,
                           version: str | None) -> tuple[Agent, AgentVersion]:
    agent = await AgentRepository(db, ctx).get_by_key(agent_key)
    if agent is None:
        raise NotFound()
    versions = AgentVersionRepository(db, ctx)
    found = (await versions.get_version(agent.id, version) if version
             else await versions.get(agent.latest_version_id) if agent.latest_version_id
             else None)
    if found is None:
        raise NotFound()
    if found.deprecated_at is not None:
        raise Conflict(f"Version {found.version} of '{agent_key}' is deprecated; start a "
                       "newer version.", code="version_deprecated")
    return agent, found


async def start_run(db: AsyncSession, ctx: TenantContext, *, agent_key: str,
                    version: str | None, inputs: dict[str, Any], actor: object = None) -> Run:
    """Queue a new session of ``agent_key`` (latest non-deprecated version unless pinned).

    Raises NotFound for an agent/version this org does not have; ValidationFailed for inputs
    that do not match the agent's declared inputs. Audited.
    """
    agent, agent_version = await _resolve_version(db, ctx, agent_key, version)
    manifest = AgentManifest.model_validate(agent_version.manifest)
    clean = validate_inputs(manifest.inputs, inputs)
    await admit_session(db, ctx)  # usage quotas: serialised per organization (issue 18)
    run = RunRepository(db, ctx).add(Run(
        agent_id=agent.id, agent_version_id=agent_version.id, agent_key=agent.key,
        agent_version=agent_version.version, status="queued", inputs=clean,
        next_node=manifest.graph.entry_node, created_by=acting_user_id(ctx.principal),
        last_event_seq=1))
    await db.flush()
    RunRepository(db, ctx).add_events(run.id, 1, [("queued", None, {
        "agent": agent.key, "version": agent_version.version})])
    await record(db, ctx, "session.started", target_kind="session", target_id=run.id,
                 details={"agent": agent.key, "version": agent_version.version})
    await record_session_started(db, ctx, run)  # usage metering
    await notify_workers(db)
    return run


async def fork_run(db: AsyncSession, ctx: TenantContext, run_id: uuid.UUID, *, step: int,
                   actor: object = None) -> Run:
    """Start a new session from checkpoint ``step`` of a finished session (replay/fork).

    The new run pins the same agent version, copies that checkpoint's state and continues with
    its next node. Conflict if the source is still active; NotFound for an unknown step.
    """
    repo = RunRepository(db, ctx)
    source = await repo.access(run_id)
    if source.status not in FINISHED:
        raise Conflict("Only finished, failed or cancelled sessions can be forked; cancel it "
                       "first.", code="session_active")
    if step == 0:
        state, path, following = initial_state(source.inputs), [], None
    else:
        checkpoint = await repo.checkpoint(run_id, step)
        if checkpoint is None:
            raise NotFound()
        state, path, following = dict(checkpoint.state), list(checkpoint.path), \
            checkpoint.next_node
    version = await AgentVersionRepository(db, ctx).access(source.agent_version_id)
    manifest = AgentManifest.model_validate(version.manifest)
    if step == 0:
        following = manifest.graph.entry_node
    if following is None:
        raise Conflict(f"Checkpoint {step} is the end of the session; fork from an earlier "
                       "one.", code="nothing_to_replay")
    state.pop(LEGACY_PENDING_APPROVAL, None)
    await admit_session(db, ctx)  # usage quotas: serialised per organization (issue 18)
    run = repo.add(Run(
        agent_id=source.agent_id, agent_version_id=source.agent_version_id,
        agent_key=source.agent_key, agent_version=source.agent_version, status="queued",
        inputs=source.inputs, next_node=following, created_by=acting_user_id(ctx.principal),
        parent_run_id=source.id, forked_from_step=step, last_event_seq=1))
    await db.flush()
    repo.add_events(run.id, 1, [("queued", None, {"forked_from": str(source.id),
                                                  "step": step})])
    db.add(Checkpoint(tenant_id=ctx.org_id, run_id=run.id, step=0, node_id=None,
                      next_node=following, status="queued", state=state, path=path))
    await record(db, ctx, "session.forked", target_kind="session", target_id=run.id,
                 details={"source": str(source.id), "step": step})
    await record_session_started(db, ctx, run)  # usage metering
    await notify_workers(db)
    return run


async def cancel_run(db: AsyncSession, ctx: TenantContext, run_id: uuid.UUID, *,
                     actor: object = None) -> Run:
    """Cancel an active session; a worker in the middle of a step discards its result.

    Conflict if the session already finished. Pending approvals are closed. Audited.
    """
    repo = RunRepository(db, ctx)
    run = await repo.access(run_id)
    if run.status in FINISHED:
        raise Conflict(f"This session already {run.status}; there is nothing to cancel.",
                       code="session_finished")
    run.status = "cancelled"
    run.finished_at = utcnow()
    run.lease_owner = None
    run.lease_expires_at = None
    for approval in await ApprovalRepository(db, ctx).pending_for_run(run.id):
        approval.status = "cancelled"
    await db.flush()
    await repo.append_events(run.id, [("cancelled", None, {}),
                                      ("finished", None, {"status": "cancelled"})])
    await record(db, ctx, "session.cancelled", target_kind="session", target_id=run.id)
    return run


# --- reads -------------------------------------------------------------------------------------


RunPage = Page[Run]


async def list_runs(db: AsyncSession, ctx: TenantContext, filters: RunFilter, *, limit: int,
                    cursor: str | None) -> RunPage:
    before = decode_cursor(cursor) if cursor else None
    rows = await RunRepository(db, ctx).list(filters, limit=limit + 1, before=before)
    return page_of(rows, limit, lambda run: (run.created_at, run.id))


async def access_run(db: AsyncSession, ctx: TenantContext, run_id: uuid.UUID) -> Run:
    return await RunRepository(db, ctx).access(run_id)


async def list_events(db: AsyncSession, ctx: TenantContext, run_id: uuid.UUID, *,
                      after: int = 0, limit: int = 500) -> list[RunEvent]:
    repo = RunRepository(db, ctx)
    await repo.access(run_id)
    return await repo.events_after(run_id, after, limit)


async def list_checkpoints(db: AsyncSession, ctx: TenantContext,
                           run_id: uuid.UUID) -> list[Checkpoint]:
    repo = RunRepository(db, ctx)
    await repo.access(run_id)
    return await repo.checkpoints(run_id)
