"""What one step used, collected while the step runs (no I/O) and written with the step's
commit (``service.meter_step``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelUse:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False  # the provider reported no usage for at least one call


@dataclass
class StepMeter:
    """Per step: model tokens per (provider, model), tool and MCP calls, http_request bytes
    (request body sent + response body received), report bytes stored."""

    models: dict[tuple[str, str], ModelUse] = field(default_factory=dict)
    tool_calls: int = 0
    mcp_calls: int = 0
    egress_bytes: int = 0
    storage_bytes: int = 0

    def llm(self, provider: str, model: str, *, input_tokens: int, output_tokens: int,
            cached_tokens: int = 0, reported: bool = True) -> None:
        use = self.models.setdefault((provider, model), ModelUse())
        use.input_tokens += input_tokens
        use.output_tokens += output_tokens
        use.cached_tokens += cached_tokens
        use.estimated = use.estimated or not reported

    def tool(self, name: str, arguments: dict[str, Any] | None = None,
             value: Any = None) -> None:
        if name == "set_output":
            return  # the engine's own output channel, not a tool use
        if name.startswith("mcp."):
            self.mcp_calls += 1
        else:
            self.tool_calls += 1
        if name == "http_request":
            self.egress_bytes += _http_bytes(arguments or {}, value)

    def stored(self, size_bytes: int) -> None:
        self.storage_bytes += size_bytes


def _http_bytes(arguments: dict[str, Any], value: Any) -> int:
    sent = 0
    if isinstance(arguments.get("body"), str):
        sent = len(arguments["body"].encode())
    elif arguments.get("json") is not None:
        sent = len(json.dumps(arguments["json"]).encode())
    received = 0
    if isinstance(value, dict) and isinstance(value.get("body"), str):
        received = len(value["body"].encode())
    return sent + received
