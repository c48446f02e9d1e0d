"""Audit log responses: entries with their place in the chain, and pages of them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from enginex.kit.schemas import ResponseBody


class AuditEntryOut(ResponseBody):
    seq: int
    id: uuid.UUID
    at: datetime
    actor_kind: str
    actor_id: uuid.UUID | None
    action: str
    target_kind: str
    target_id: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPageOut(ResponseBody):
    items: list[AuditEntryOut]
    next_cursor: str | None


class AuditVerifyOut(ResponseBody):
    intact: bool
    entries: int
    broken_seq: int | None
    message: str
