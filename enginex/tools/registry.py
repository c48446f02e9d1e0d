"""The built-in tool registry. MCP tools (``mcp.<server>.<tool>``) register into the same
``ToolRegistry`` later; the engine builds one registry per run."""

from __future__ import annotations

from enginex.tools.base import ToolRegistry
from enginex.tools.builtin import HttpRequestTool, RenderReportTool, SetOutputTool
from enginex.tools.data import TabulateCsvTool

BUILTIN_TOOLS = (HttpRequestTool, SetOutputTool, RenderReportTool, TabulateCsvTool)


def builtin_registry() -> ToolRegistry:
    """A fresh registry holding ``http_request``, ``set_output``, ``render_report`` and
    ``tabulate_csv``."""
    registry = ToolRegistry()
    for tool in BUILTIN_TOOLS:
        registry.register(tool())
    return registry


def builtin_tool_names() -> set[str]:
    """Names of the built-in tools (what agent manifests may list without MCP)."""
    return {tool.spec.name for tool in BUILTIN_TOOLS}
