"""The LLM provider interface every provider implements (OpenAI-compatible, Anthropic, scripted).

A provider turns a chat (messages + tool schemas) into one assistant turn: text and/or tool
calls, with token usage. The engine runs the tool-use loop; providers do one request each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # for role == "tool"
    name: str | None = None  # tool name for role == "tool"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, read from the provider's prompt cache
    reported: bool = True  # False: the provider reported no usage; the counts are estimates


@dataclass(frozen=True)
class LLMResponse:
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=Usage)
    model: str = ""


@dataclass(frozen=True)
class CompletionRequest:
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...]
    model: str
    temperature: float | None = None
    max_tokens: int | None = None
    node_id: str = ""  # lets the scripted provider pick the node's replies


class LLMError(Exception):
    """A provider failed (network, HTTP status, malformed reply). Message is safe to store."""


class LLMProvider(Protocol):
    async def complete(self, request: CompletionRequest) -> LLMResponse: ...
