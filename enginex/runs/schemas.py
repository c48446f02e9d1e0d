"""Bodies of the session (run), approval and report routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from enginex.kit.schemas import RequestBody, ResponseBody


class SessionCreate(RequestBody):
    agent: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    version: Annotated[str, StringConstraints(max_length=64)] | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)


class SessionFork(RequestBody):
    step: Annotated[int, Field(ge=0)]


class SessionOut(ResponseBody):
    id: uuid.UUID
    agent: str = Field(validation_alias="agent_key")
    version: str = Field(validation_alias="agent_version")
    status: str
    inputs: dict[str, Any]
    next_node: str | None
    step: int
    created_by: uuid.UUID | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    parent_run_id: uuid.UUID | None
    forked_from_step: int | None
    prompt_tokens: int
    completion_tokens: int


class SessionPage(ResponseBody):
    items: list[SessionOut]
    next_cursor: str | None


class EventOut(ResponseBody):
    seq: int
    at: datetime
    kind: str
    node_id: str | None
    data: dict[str, Any]


class CheckpointOut(ResponseBody):
    step: int
    at: datetime
    node_id: str | None
    next_node: str | None
    status: str
    state: dict[str, Any]
    path: list[str]


class ApprovalDecision(RequestBody):
    decision: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    comment: Annotated[str, StringConstraints(max_length=4000)] = ""


class ApprovalOut(ResponseBody):
    id: uuid.UUID
    run_id: uuid.UUID
    node_id: str
    question: str
    options: list[str]
    approver_role: str
    status: str
    decision: str | None
    comment: str | None
    decided_by: uuid.UUID | None
    decided_at: datetime | None
    expires_at: datetime
    created_at: datetime


class ReportOut(ResponseBody):
    id: uuid.UUID
    run_id: uuid.UUID
    node_id: str
    title: str
    filename: str
    media_type: str
    size_bytes: int
    sha256: str
    created_at: datetime


class ReportWithContent(ReportOut):
    content: str
