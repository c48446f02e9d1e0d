"""Scoped queries on approvals (no dependency on the run engine, which uses them too)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select, update

from enginex.approvals.models import Approval
from enginex.kit.pagination import Cursor, older_than
from enginex.kit.time import utcnow
from enginex.tenancy.repository import ScopedRepository


class ApprovalRepository(ScopedRepository[Approval]):
    model = Approval

    async def list(self, status: str | None, limit: int,
                   before: Cursor | None = None) -> list[Approval]:
        """Newest first; ``before``: the (created_at, id) of the last row already seen."""
        stmt = select(Approval).where(Approval.tenant_id == self.ctx.org_id)
        if status:
            stmt = stmt.where(Approval.status == status)
        if before:
            stmt = stmt.where(older_than(Approval.created_at, Approval.id, before))
        stmt = stmt.order_by(Approval.created_at.desc(), Approval.id.desc()).limit(limit)
        return list((await self.db.execute(stmt)).scalars())

    async def count_pending(self) -> int:
        stmt = select(func.count()).select_from(Approval).where(
            Approval.tenant_id == self.ctx.org_id, Approval.status == "pending")
        return int((await self.db.execute(stmt)).scalar_one())

    async def mark_decided(self, approval_id: uuid.UUID, *, status: str, decision: str,
                           comment: str, decided_by: uuid.UUID | None) -> bool:
        """Record the decision iff still pending and unexpired (atomic: decided at most once)."""
        now = utcnow()
        stmt = (update(Approval)
                .where(Approval.tenant_id == self.ctx.org_id, Approval.id == approval_id,
                       Approval.status == "pending", Approval.expires_at > now)
                .values(status=status, decision=decision, comment=comment,
                        decided_by=decided_by, decided_at=now)
                .execution_options(synchronize_session=False))
        return bool((await self.db.execute(stmt)).rowcount)  # type: ignore[attr-defined]

    async def requested_at(self, run_id: uuid.UUID, node_id: str, step: int) -> Approval | None:
        """The approval that node ``node_id`` of run ``run_id`` requested at ``step``, or None.

        The only way the engine and the pages find the approval a run is parked on: the row is
        the source of truth, never a value in the run's state (which inputs, tools and models
        can write). At most one exists (unique on tenant, run and step)."""
        stmt = select(Approval).where(Approval.tenant_id == self.ctx.org_id,
                                      Approval.run_id == run_id, Approval.node_id == node_id,
                                      Approval.step == step)
        return (await self.db.execute(stmt)).scalar_one_or_none()

    async def pending_for_run(self, run_id: uuid.UUID) -> list[Approval]:
        stmt = select(Approval).where(Approval.tenant_id == self.ctx.org_id,
                                      Approval.run_id == run_id, Approval.status == "pending")
        return list((await self.db.execute(stmt)).scalars())
