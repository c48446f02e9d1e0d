"""Queries of the audit log: the chain head (locked on append), filtered pages, the chain."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from enginex.audit.chain import GENESIS, IMPORTED_ACTION
from enginex.audit.models import AuditEntry, AuditHead
from enginex.tenancy.repository import ScopedRepository


@dataclass(frozen=True)
class AuditFilter:
    actor_id: uuid.UUID | None = None
    action: str | None = None  # exact, or a prefix when it ends with "."  ("member.")
    target_kind: str | None = None
    target_id: str | None = None
    at_from: datetime | None = None
    at_to: datetime | None = None


class AuditRepository(ScopedRepository[AuditEntry]):
    model = AuditEntry

    async def advance_head(self) -> tuple[int, str]:
        """Take the next seq of this organization and return (seq, previous hash).

        One upsert that also locks the head row until the transaction ends (PostgreSQL row
        lock; SQLite's BEGIN IMMEDIATE already admits one writer), so concurrent appends in
        one organization wait for each other and the chain has no gaps or forks.
        """
        insert: Any = pg_insert if self.db.get_bind().dialect.name == "postgresql" \
            else sqlite_insert
        stmt = insert(AuditHead).values(tenant_id=self.ctx.org_id, last_seq=1,
                                        last_hash=GENESIS)
        stmt = stmt.on_conflict_do_update(
            index_elements=[AuditHead.tenant_id],
            set_={"last_seq": AuditHead.last_seq + 1},
        ).returning(AuditHead.last_seq, AuditHead.last_hash)
        seq, prev_hash = (await self.db.execute(stmt)).one()
        return int(seq), str(prev_hash)

    async def set_head_hash(self, seq: int, last_hash: str) -> None:
        await self.db.execute(
            update(AuditHead).where(AuditHead.tenant_id == self.ctx.org_id,
                                    AuditHead.last_seq == seq)
            .values(last_hash=last_hash).execution_options(synchronize_session=False))

    async def has_entry_since(self, *, action: str, actor_id: uuid.UUID,
                              since: datetime) -> bool:
        stmt = (select(AuditEntry.seq)
                .where(AuditEntry.tenant_id == self.ctx.org_id, AuditEntry.actor_id == actor_id,
                       AuditEntry.action == action, AuditEntry.at >= since)
                .limit(1))
        return (await self.db.execute(stmt)).first() is not None

    async def count_since(self, *, action: str, since: datetime, limit: int) -> int:
        """How many ``action`` entries were written since ``since``, counting at most
        ``limit`` (a cap check reads no more rows than the cap)."""
        recent = (select(AuditEntry.seq)
                  .where(AuditEntry.tenant_id == self.ctx.org_id, AuditEntry.action == action,
                         AuditEntry.at >= since)
                  .limit(limit))
        return len((await self.db.execute(recent)).all())

    async def head(self) -> AuditHead | None:
        return (await self.db.execute(select(AuditHead).where(
            AuditHead.tenant_id == self.ctx.org_id))).scalar_one_or_none()

    async def page(self, filters: AuditFilter, *, limit: int,
                   before_seq: int | None) -> Sequence[AuditEntry]:
        """Newest first (by seq); ``before_seq`` is the cursor (the last seq seen)."""
        stmt = select(AuditEntry).where(AuditEntry.tenant_id == self.ctx.org_id)
        if filters.actor_id is not None:
            stmt = stmt.where(AuditEntry.actor_id == filters.actor_id)
        if filters.action:
            if filters.action.endswith("."):
                stmt = stmt.where(AuditEntry.action.startswith(filters.action,
                                                               autoescape=True))
            else:
                stmt = stmt.where(AuditEntry.action == filters.action)
        if filters.target_kind:
            stmt = stmt.where(AuditEntry.target_kind == filters.target_kind)
        if filters.target_id:
            stmt = stmt.where(AuditEntry.target_id == filters.target_id)
        if filters.at_from is not None:
            stmt = stmt.where(AuditEntry.at >= filters.at_from)
        if filters.at_to is not None:
            stmt = stmt.where(AuditEntry.at < filters.at_to)
        if before_seq is not None:
            stmt = stmt.where(AuditEntry.seq < before_seq)
        stmt = stmt.order_by(AuditEntry.seq.desc()).limit(limit)
        return (await self.db.execute(stmt)).scalars().all()

    async def imports(self) -> list[tuple[int, dict[str, Any]]]:
        """(seq, details) of the ``org.imported`` entries, ascending (chain.origins_of)."""
        stmt = (select(AuditEntry.seq, AuditEntry.details)
                .where(AuditEntry.tenant_id == self.ctx.org_id,
                       AuditEntry.action == IMPORTED_ACTION)
                .order_by(AuditEntry.seq))
        return [(seq, dict(details or {})) for seq, details in (await self.db.execute(stmt))]

    async def chain_batch(self, after_seq: int, limit: int) -> Sequence[AuditEntry]:
        """Entries in chain order (ascending seq) after ``after_seq``."""
        stmt = (select(AuditEntry)
                .where(AuditEntry.tenant_id == self.ctx.org_id, AuditEntry.seq > after_seq)
                .order_by(AuditEntry.seq).limit(limit))
        return (await self.db.execute(stmt)).scalars().all()
