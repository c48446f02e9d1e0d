"""The tool interface and registry. Built-in tools live in this package; MCP tools plug in later
through the same ``Tool`` protocol (named ``mcp.<server>.<tool>``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from enginex.llm.base import ToolSpec


@dataclass
class ToolContext:
    """What a tool may know about the run calling it. Never another tenant's anything."""

    tenant_id: uuid.UUID
    run_id: uuid.UUID
    node_id: str
    state: dict[str, Any]
    allow_private_network: bool = False
    # Values set through set_output during an llm node (the engine reads them back).
    outputs: dict[str, Any] = field(default_factory=dict)
    # Values that must never be stored (resolved credentials): the engine redacts them.
    secrets: list[str] = field(default_factory=list)
    resolve_credential: Callable[[str, str], str] | None = None


class ToolError(Exception):
    """The tool failed in a way the agent (and the event log) may see. Message is safe to store."""


class Tool(Protocol):
    spec: ToolSpec

    async def call(self, ctx: ToolContext, arguments: dict[str, Any]) -> Any: ...


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def register(self, tool: Tool) -> None:
        self._tools[tool.spec.name] = tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> set[str]:
        return set(self._tools)

    def specs(self, names: list[str]) -> list[ToolSpec]:
        return [self._tools[n].spec for n in names if n in self._tools]
