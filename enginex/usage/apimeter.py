"""API requests in the usage ledger, aggregated per organization and minute.

A request never writes the ledger: the rate-limit hook counts it in this process's memory
(``count``), and a background task of the API process (``run``) writes one ``api_requests``
row per (organization, minute, process) once the minute is over, and everything left at
shutdown. The row's idempotency key is ``api:<minute>:<process token>``: a flush retried after
a failure cannot count twice, and two processes never share a key.

What is counted: requests of tenant routes that passed the access rule and the rate limit (a
429, 401, 403 or 404 of the guard is not an API request used). A process killed with SIGKILL
loses at most its last unflushed minute and a half (documented in docs/USAGE.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from enginex.db import SessionFactory, set_tenant
from enginex.tenancy.context import system_context

log = logging.getLogger(__name__)
MINUTE = 60
FLUSH_SECONDS = 15.0


class ApiRequestMeter:
    """Per-process counts of API requests per (organization, minute start in epoch s)."""

    def __init__(self, sessions: SessionFactory, *, clock: Any = time.time) -> None:
        self.sessions = sessions
        self.clock = clock
        self.token = uuid.uuid4().hex[:12]  # this process; keys never collide across them
        self.counts: dict[tuple[uuid.UUID, int], int] = {}

    def count(self, org_id: uuid.UUID) -> None:
        """One API request of ``org_id`` now (no I/O)."""
        minute = int(self.clock() // MINUTE) * MINUTE
        key = (org_id, minute)
        self.counts[key] = self.counts.get(key, 0) + 1

    async def flush(self, *, everything: bool = False) -> int:
        """Write the counts of finished minutes (``everything``: the current one too), one
        transaction per organization and minute. Counts that fail to be written are kept for
        the next flush. Returns how many rows were written."""
        from enginex.usage.models import UNITS, UsageKind
        from enginex.usage.repository import UsageRepository

        current = int(self.clock() // MINUTE) * MINUTE
        due = sorted(k for k in self.counts if everything or k[1] < current)
        written = 0
        for org_id, minute in due:
            quantity = self.counts.pop((org_id, minute))
            at = datetime.fromtimestamp(minute, UTC)
            row = {"id": uuid.uuid4(), "kind": str(UsageKind.API_REQUESTS),
                   "quantity": quantity, "unit": UNITS[UsageKind.API_REQUESTS],
                   "provider": "", "model": "", "agent_key": "", "run_id": None,
                   "cost_micro_usd": 0, "price": None, "estimated": False,
                   "idempotency_key": f"api:{at:%Y-%m-%dT%H:%M}:{self.token}",
                   "occurred_at": at}
            try:
                async with self.sessions() as db:
                    await set_tenant(db, org_id)
                    await UsageRepository(db, system_context(org_id, "")).append([row])
                    await db.commit()
                written += 1
            except IntegrityError:  # the organization was deleted meanwhile: nothing to bill
                log.info("api request count dropped: organization gone",
                         extra={"tenant_id": str(org_id)})
            except Exception:  # the database is away: keep the count, try again later
                key = (org_id, minute)
                self.counts[key] = self.counts.get(key, 0) + quantity
                log.warning("api request metering flush failed; will retry",
                            extra={"tenant_id": str(org_id)}, exc_info=True)
                break
        return written

    async def run(self, stop: asyncio.Event, *, every: float = FLUSH_SECONDS) -> None:
        """Flush finished minutes every ``every`` seconds until ``stop``; then everything."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)
            await self.flush(everything=stop.is_set())
