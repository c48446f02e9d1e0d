"""Bodies of the agent catalog routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import Field

from enginex.kit.schemas import ResponseBody


class PackageFileOut(ResponseBody):
    path: str
    size_bytes: int


class AgentVersionOut(ResponseBody):
    id: uuid.UUID
    agent_key: str
    version: str
    name: str
    description: str
    content_hash: str = Field(description="SHA-256 over the package's sorted paths and bytes.")
    size_bytes: int
    deployed_by: uuid.UUID | None = Field(
        description="The user who deployed it (for an API key: the key's creator).")
    deployed_at: datetime
    deprecated: bool
    deprecated_at: datetime | None


class AgentVersionDetail(AgentVersionOut):
    manifest: dict[str, Any]
    files: list[PackageFileOut]


class AgentOut(ResponseBody):
    id: uuid.UUID
    key: str
    name: str
    description: str
    latest_version: str | None = Field(
        description="The highest non-deprecated version (the highest one when all are "
                    "deprecated); new sessions start it unless they pin a version.")
    deprecated: bool = Field(description="True when every version is deprecated.")
    version_count: int
    created_at: datetime
    updated_at: datetime


class AgentDetail(AgentOut):
    versions: list[AgentVersionOut]


class FieldChange(ResponseBody):
    field: str
    old: Any = Field(alias="from", serialization_alias="from")
    new: Any = Field(alias="to", serialization_alias="to")


class ChangedItem(ResponseBody):
    id: str
    fields: list[str]


class SetDiff(ResponseBody):
    added: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    changed: list[ChangedItem] = Field(default_factory=list)


class AgentDiff(ResponseBody):
    agent_key: str
    from_version: str
    to_version: str
    identical: bool = Field(description="True when both versions have the same content hash.")
    fields: list[FieldChange]
    nodes: SetDiff
    edges: SetDiff = Field(description="Edges are identified as 'source -> target "
                                       "(condition)'.")
    inputs: SetDiff
    required_tools: SetDiff
    files: SetDiff
