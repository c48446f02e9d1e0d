"""``record``: the one function every mutation calls to write its audit entry.

It writes in the caller's transaction, so an entry exists exactly when the change does.
Secrets never go into ``details``. (The tamper-evident chain and the audit pages come with the
workspaces issue; call sites are final.)
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from enginex.audit.models import AuditEntry
from enginex.tenancy.context import TenantContext
from enginex.tenancy.repository import ScopedRepository


class AuditRepository(ScopedRepository[AuditEntry]):
    model = AuditEntry


async def record(db: AsyncSession, ctx: TenantContext, action: str, *, target_kind: str,
                 target_id: uuid.UUID | str, details: dict[str, Any] | None = None,
                 actor_kind: str | None = None, actor_id: uuid.UUID | None = None) -> None:
    principal = ctx.principal
    AuditRepository(db, ctx).add(AuditEntry(
        actor_kind=actor_kind or (principal.kind if principal else "system"),
        actor_id=actor_id or (principal.actor_id if principal else None),
        action=action, target_kind=target_kind, target_id=str(target_id),
        details=details or {},
    ))
