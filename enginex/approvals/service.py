"""Approvals: the inbox and decisions.

A decision is recorded once (a second one gets Conflict), only by a member with
``approvals:decide`` whose role is the approval's ``approver_role`` or admin. The decision, the
decider and the comment go into the approval row, the run's event log (immediately) and the
audit log; the run becomes claimable and a worker applies the decision to the run's state in
its next checkpoint -- only to the run, node and step the approval was requested for (the
engine finds it by those, never by an id in the run's state). Other organizations' approval
ids raise NotFound.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from enginex.approvals.models import Approval
from enginex.approvals.repository import ApprovalRepository
from enginex.audit.service import record
from enginex.kit.errors import Conflict, Forbidden, ValidationFailed
from enginex.kit.pagination import Page, decode_cursor, page_of
from enginex.runs.models import Run
from enginex.runs.repository import RunRepository
from enginex.runs.service import notify_workers
from enginex.tenancy.context import TenantContext
from enginex.tenancy.principal import acting_user_id
from enginex.tenancy.scopes import Role


async def list_approvals(db: AsyncSession, ctx: TenantContext, *, status: str | None,
                         limit: int = 100, cursor: str | None = None) -> Page[Approval]:
    """A page of approvals, newest first; ``next_cursor`` continues (ValidationFailed for a
    cursor that no page gave)."""
    before = decode_cursor(cursor) if cursor else None
    rows = await ApprovalRepository(db, ctx).list(status, limit + 1, before)
    return page_of(rows, limit, lambda a: (a.created_at, a.id))


async def access_approval(db: AsyncSession, ctx: TenantContext,
                          approval_id: uuid.UUID) -> Approval:
    return await ApprovalRepository(db, ctx).access(approval_id)


async def awaited_by(db: AsyncSession, ctx: TenantContext, run: Run) -> Approval | None:
    """The approval ``run`` is waiting for, or None when it is not waiting: the one its current
    node requested at its last committed step (the engine's own lookup; nothing in the run's
    state is read)."""
    if run.status != "waiting_approval" or run.next_node is None:
        return None
    return await ApprovalRepository(db, ctx).requested_at(run.id, run.next_node, run.step)


def can_decide(ctx: TenantContext, approval: Approval) -> bool:
    return ctx.role == Role.ADMIN or str(ctx.role) == approval.approver_role


async def decide(db: AsyncSession, ctx: TenantContext, approval_id: uuid.UUID, *,
                 decision: str, comment: str, actor: object = None) -> Approval:
    """Decide a pending approval and resume its run. See the module docstring."""
    repo = ApprovalRepository(db, ctx)
    approval = await repo.access(approval_id)
    if not can_decide(ctx, approval):
        raise Forbidden(f"This approval can be decided by the '{approval.approver_role}' role "
                        f"(or an admin); your role is '{ctx.role}'.", code="approver_role")
    if decision not in approval.options:
        raise ValidationFailed(f"decision: must be one of {approval.options}.",
                               details={"field": "decision", "options": approval.options})
    if approval.status != "pending":
        raise Conflict(f"This approval was already {approval.status}; decisions are final.",
                       code="already_decided")
    status = "rejected" if decision in {"reject", "rejected", "deny"} else "approved"
    decided_by = acting_user_id(ctx.principal)
    if not await repo.mark_decided(approval.id, status=status, decision=decision,
                                   comment=comment, decided_by=decided_by):
        raise Conflict("This approval was decided or expired a moment ago; reload it.",
                       code="already_decided")
    runs = RunRepository(db, ctx)
    await runs.resume_after_decision(approval.run_id)
    await runs.append_events(approval.run_id, [(
        "approval_decided", approval.node_id,
        {"approval_id": str(approval.id), "decision": decision, "comment": comment,
         "decided_by": str(decided_by) if decided_by else None})])
    await record(db, ctx, "approval.decided", target_kind="approval", target_id=approval.id,
                 details={"decision": decision, "run_id": str(approval.run_id)})
    await notify_workers(db)
    await db.refresh(approval)
    return approval
