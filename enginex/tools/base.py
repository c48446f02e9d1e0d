"""The tool interface and registry. Built-in tools live in this package; MCP tools plug in later
through the same ``Tool`` protocol (named ``mcp.<server>.<tool>``)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
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
    # (credential name, url): raises ToolError if the credential may not be sent to url's host.
    check_credential_host: Callable[[str, str], None] | None = None


class ToolError(Exception):
    """The tool failed in a way the agent (and the event log) may see. Message is safe to store."""


class Tool(Protocol):
    spec: ToolSpec

    async def call(self, ctx: ToolContext, arguments: dict[str, Any]) -> Any: ...


class ToolRegistry:
    """Tools by name. A per-step registry may hold resources (MCP sessions, child processes):
    whoever built it calls ``aclose`` when the step ends."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._closers: list[Callable[[], Awaitable[None]]] = []

    def register(self, tool: Tool) -> None:
        self._tools[tool.spec.name] = tool

    def copy(self) -> ToolRegistry:
        """A new registry with the same tools and no resources to close."""
        other = ToolRegistry()
        other._tools = dict(self._tools)
        return other

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        self._closers.append(closer)

    async def aclose(self) -> None:
        """Run the closers (last registered first); every closer runs even if one fails."""
        closers, self._closers = self._closers[::-1], []
        errors: list[BaseException] = []
        for closer in closers:
            try:
                await closer()
            except Exception as exc:  # the remaining closers must still run
                errors.append(exc)
        if errors:
            raise errors[0]

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> set[str]:
        return set(self._tools)

    def specs(self, names: list[str]) -> list[ToolSpec]:
        return [self._tools[n].spec for n in names if n in self._tools]
