"""The LLM providers: offline ``scripted``, OpenAI-compatible chat completions, and Anthropic.

Each provider does one request per ``complete`` call (the engine runs the tool-use loop) and
raises ``LLMError`` for every failure, with a message that is safe to store in the run's event
log: it never contains the API key, even when the remote server echoes it back.

Network providers talk through the egress guard's transport (``enginex.tools.egress``) unless
``allow_private_network`` is set, so a base URL whose DNS later points at a private address is
still refused at connection time. They never read credentials, organizations or base URLs from
the platform's environment (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ...): every value comes
from the organization's settings. Caveat: the SDKs still add headers from the environment
variables ``OPENAI_CUSTOM_HEADERS`` / ``ANTHROPIC_CUSTOM_HEADERS`` if the operator sets them;
do not set those on a multi-tenant deployment.

A model of ``""`` or ``"default"`` in the request means the provider's ``default_model``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import httpx2

from enginex.llm.base import (
    CompletionRequest,
    LLMError,
    LLMResponse,
    Message,
    ToolCall,
    ToolSpec,
    Usage,
)
from enginex.tools.egress import EgressRefused, guarded_sdk_transport

DEFAULT_TIMEOUT = 60.0
DEFAULT_ANTHROPIC_MAX_TOKENS = 4096
ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"
_SERVER_MESSAGE_LIMIT = 300


# --- scripted ------------------------------------------------------------------------------


def _approx_tokens(text: str) -> int:
    return len(text.split())


class ScriptedProvider:
    """Offline replies from the agent package (``scripted_replies``), for demos and tests.

    Stateless and deterministic: the reply used is ``replies[node_id][n]`` where ``n`` is the
    number of assistant messages already in the request, so a run resumed from a checkpoint
    gets the same reply as before. A reply is a string (assistant text) or
    ``{"text": str?, "tool_calls": [{"name": str, "arguments": {...}}]}``; tool call ids are
    ``call_<node>_<turn>_<i>``. Token usage is approximated by word counts.
    """

    usage_provider = "scripted"  # the provider name usage is metered under

    def __init__(self, replies: dict[str, list[Any]] | None) -> None:
        self._replies = dict(replies or {})

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        node = request.node_id
        if node not in self._replies:
            raise LLMError(f"The scripted provider has no replies for node '{node}'. Add them "
                           "under scripted_replies in agent.json, or configure a real LLM "
                           "provider in the organization's LLM settings.")
        replies = self._replies[node]
        turn = sum(1 for m in request.messages if m.role == "assistant")
        if turn >= len(replies):
            raise LLMError(f"The scripted provider ran out of replies for node '{node}': it has "
                           f"{len(replies)} and this is turn {turn + 1}. Add replies to "
                           "scripted_replies in agent.json.")
        text, calls = self._parse(replies[turn], node, turn)
        prompt = sum(_approx_tokens(m.content) + sum(_approx_tokens(json.dumps(c.arguments))
                                                     for c in m.tool_calls)
                     for m in request.messages)
        completion = _approx_tokens(text) + sum(_approx_tokens(json.dumps(c.arguments))
                                                for c in calls)
        return LLMResponse(text=text, tool_calls=calls,
                           usage=Usage(prompt_tokens=prompt, completion_tokens=completion,
                                       reported=False),
                           model=request.model or "scripted")

    @staticmethod
    def _parse(reply: Any, node: str, turn: int) -> tuple[str, tuple[ToolCall, ...]]:
        where = f"scripted_replies.{node}[{turn}]"
        if isinstance(reply, str):
            return reply, ()
        if not isinstance(reply, dict) or set(reply) - {"text", "tool_calls"}:
            raise LLMError(f"{where}: a reply is a string or an object with 'text' and/or "
                           "'tool_calls'.")
        text = reply.get("text", "")
        raw_calls = reply.get("tool_calls", [])
        if not isinstance(text, str) or not isinstance(raw_calls, list):
            raise LLMError(f"{where}: 'text' must be a string and 'tool_calls' a list.")
        calls = []
        for i, raw in enumerate(raw_calls):
            if (not isinstance(raw, dict) or not isinstance(raw.get("name"), str)
                    or not isinstance(raw.get("arguments", {}), dict)):
                raise LLMError(f"{where}.tool_calls[{i}]: expected "
                               "{\"name\": str, \"arguments\": {...}}.")
            calls.append(ToolCall(id=f"call_{node}_{turn}_{i}", name=raw["name"],
                                  arguments=dict(raw.get("arguments", {}))))
        return text, tuple(calls)


# --- shared helpers for the network providers ------------------------------------------------


class _ToolNames:
    """Tool names on the wire. Providers accept ``^[A-Za-z0-9_-]{1,64}$`` only, while ours may
    contain dots (``mcp.<server>.<tool>``): names are mapped per request and mapped back."""

    def __init__(self, names: Iterable[str]) -> None:
        self._to_wire: dict[str, str] = {}
        self._from_wire: dict[str, str] = {}
        for name in names:
            self.wire(name)

    def wire(self, name: str) -> str:
        if name in self._to_wire:
            return self._to_wire[name]
        base = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "tool"
        candidate, n = base, 1
        while candidate in self._from_wire:
            n += 1
            suffix = f"_{n}"
            candidate = base[: 64 - len(suffix)] + suffix
        self._to_wire[name] = candidate
        self._from_wire[candidate] = name
        return candidate

    def real(self, wire_name: str) -> str:
        return self._from_wire.get(wire_name, wire_name)


def _redact(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "[redacted]")
    return text


def _server_message(body: object, fallback: str) -> str:
    message: object = None
    if isinstance(body, dict):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else error
    if not isinstance(message, str) or not message:
        message = fallback
    message = " ".join(message.split()).rstrip(".")
    if len(message) > _SERVER_MESSAGE_LIMIT:
        message = message[:_SERVER_MESSAGE_LIMIT] + "..."
    return message


def _status_hint(status: int) -> str:
    if status in (401, 403):
        return " Check the API key in the organization's LLM settings."
    if status == 404:
        return " Check the base URL and the model name."
    if status == 429:
        return " The provider is rate limiting this key; retry later."
    return ""


def _egress_cause(exc: BaseException) -> EgressRefused | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, EgressRefused):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _translate(exc: Exception, *, label: str, api_key: str | None, timeout: float,
               status_error: type[Exception], timeout_error: type[Exception],
               connection_error: type[Exception]) -> LLMError:
    """An SDK exception as an LLMError whose message never contains ``api_key``."""
    if isinstance(exc, timeout_error):
        message = f"{label} did not answer within {timeout:g} s."
    elif isinstance(exc, status_error):
        status = int(getattr(exc, "status_code", 0))
        server = _server_message(getattr(exc, "body", None), f"HTTP {status}")
        message = f"{label} answered HTTP {status}: {server}.{_status_hint(status)}"
    elif isinstance(exc, connection_error):
        refused = _egress_cause(exc)
        if refused is not None:
            message = f"{label} is not reachable: {refused}"
        else:
            cause = exc.__cause__
            detail = type(cause).__name__ if cause else "connection failed"
            message = f"could not connect to {label} ({detail})."
    elif isinstance(exc, EgressRefused):
        message = f"{label} is not reachable: {exc}"
    else:
        message = (f"{label} sent a response that could not be understood "
                   f"({type(exc).__name__}).")
    return LLMError(_redact(f"LLM request failed: {message}", api_key))


def _http_client(*, allow_private_network: bool, timeout: float) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        transport=guarded_sdk_transport(allow_private=allow_private_network),
        timeout=httpx2.Timeout(timeout, connect=min(timeout, 10.0)),
        follow_redirects=False, trust_env=False)


def _arguments(raw: Any, label: str) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if raw in (None, ""):
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        raise LLMError(f"{label} returned tool call arguments that are not JSON.") from None
    if not isinstance(value, dict):
        raise LLMError(f"{label} returned tool call arguments that are not a JSON object.")
    return value


# --- OpenAI-compatible -----------------------------------------------------------------------


class OpenAICompatibleProvider:
    """Chat completions with function calling, through the official ``openai`` SDK.

    Works with OpenAI and with servers that implement its API (vLLM, Ollama, LiteLLM proxy,
    ...). ``api_key`` may be None for servers that need none (no Authorization header is sent).
    """

    usage_provider = "openai"  # the provider name usage is metered (and priced) under

    def __init__(self, base_url: str, api_key: str | None, default_model: str,
                 timeout: float = DEFAULT_TIMEOUT, *, temperature: float | None = None,
                 max_tokens: int | None = None, allow_private_network: bool = False,
                 max_retries: int = 1) -> None:
        import openai  # imported lazily: the SDKs take seconds to import
        self.base_url = base_url
        self.default_model = default_model
        self.timeout = timeout
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._api_key = api_key or None
        self._label = f"the OpenAI-compatible endpoint {base_url}"
        headers: dict[str, Any] = {"OpenAI-Organization": openai.Omit(),
                                   "OpenAI-Project": openai.Omit()}
        # Explicit empty values keep the SDK from reading OPENAI_* variables of the platform.
        self._client = openai.AsyncOpenAI(
            api_key=self._api_key or "", admin_api_key="", organization="", project="",
            webhook_secret="", base_url=base_url, timeout=timeout, max_retries=max_retries,
            default_headers=headers,
            http_client=_http_client(allow_private_network=allow_private_network,
                                     timeout=timeout))

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        import openai  # imported lazily: the SDKs take seconds to import
        names = _ToolNames(t.name for t in request.tools)
        model = request.model if request.model not in ("", "default") else self.default_model
        kwargs: dict[str, Any] = {
            "model": model, "messages": [self._message(m, names) for m in request.messages]}
        if request.tools:
            kwargs["tools"] = [self._tool(t, names) for t in request.tools]
        temperature = request.temperature if request.temperature is not None \
            else self.temperature
        if temperature is not None:
            kwargs["temperature"] = temperature
        max_tokens = request.max_tokens or self.max_tokens
        if max_tokens:
            kwargs["max_tokens"] = max_tokens
        if not self._api_key:
            kwargs["extra_headers"] = {"Authorization": openai.Omit()}
        try:
            response = await self._client.chat.completions.create(**kwargs)
        except Exception as exc:
            raise _translate(exc, label=self._label, api_key=self._api_key,
                             timeout=self.timeout, status_error=openai.APIStatusError,
                             timeout_error=openai.APITimeoutError,
                             connection_error=openai.APIConnectionError) from None
        return self._parse(response, names, model)

    def _parse(self, response: Any, names: _ToolNames, model: str) -> LLMResponse:
        import openai  # imported lazily: the SDKs take seconds to import
        try:
            choice = response.choices[0]
            message = choice.message
            calls = tuple(
                ToolCall(id=call.id, name=names.real(call.function.name),
                         arguments=_arguments(call.function.arguments, self._label))
                for call in (message.tool_calls or ()))
            usage = response.usage
            details = getattr(usage, "prompt_tokens_details", None)
            return LLMResponse(
                text=message.content or "", tool_calls=calls,
                usage=Usage(prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                            cached_tokens=int(getattr(details, "cached_tokens", 0) or 0),
                            reported=usage is not None),
                model=str(getattr(response, "model", "") or model))
        except LLMError:
            raise
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            raise _translate(exc, label=self._label, api_key=self._api_key,
                             timeout=self.timeout, status_error=openai.APIStatusError,
                             timeout_error=openai.APITimeoutError,
                             connection_error=openai.APIConnectionError) from None

    @staticmethod
    def _tool(tool: ToolSpec, names: _ToolNames) -> dict[str, Any]:
        return {"type": "function", "function": {
            "name": names.wire(tool.name), "description": tool.description,
            "parameters": tool.parameters or {"type": "object", "properties": {}}}}

    @staticmethod
    def _message(message: Message, names: _ToolNames) -> dict[str, Any]:
        if message.role == "tool":
            return {"role": "tool", "tool_call_id": message.tool_call_id or "",
                    "content": message.content}
        if message.role == "assistant":
            out: dict[str, Any] = {"role": "assistant", "content": message.content or None}
            if message.tool_calls:
                out["tool_calls"] = [
                    {"id": call.id, "type": "function",
                     "function": {"name": names.wire(call.name),
                                  "arguments": json.dumps(call.arguments)}}
                    for call in message.tool_calls]
            return out
        return {"role": message.role, "content": message.content}

    async def aclose(self) -> None:
        await self._client.close()


# --- Anthropic -------------------------------------------------------------------------------


class AnthropicProvider:
    """The Messages API with tool use, through the official ``anthropic`` SDK.

    System messages become the ``system`` parameter; tool results are sent as ``tool_result``
    blocks in a user turn (consecutive ones merged, as the API requires alternating roles).
    A key is required: without one the SDK would fall back to the platform's environment.
    """

    usage_provider = "anthropic"

    def __init__(self, api_key: str | None, base_url: str | None = None,
                 default_model: str = "", timeout: float = DEFAULT_TIMEOUT, *,
                 temperature: float | None = None, max_tokens: int | None = None,
                 allow_private_network: bool = False, max_retries: int = 1) -> None:
        import anthropic  # imported lazily: the SDKs take seconds to import
        self.base_url = base_url or ANTHROPIC_DEFAULT_BASE_URL
        self.default_model = default_model
        self.timeout = timeout
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._api_key = api_key or None
        self._label = (f"the Anthropic endpoint {base_url}" if base_url
                       else "the Anthropic API")
        self._client = (anthropic.AsyncAnthropic(
            api_key=self._api_key, base_url=self.base_url, timeout=timeout,
            max_retries=max_retries,
            http_client=_http_client(allow_private_network=allow_private_network,
                                     timeout=timeout))
            if self._api_key else None)

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        if self._client is None:
            raise LLMError("The Anthropic provider needs an API key: set one in the "
                           "organization's LLM settings.")
        names = _ToolNames(t.name for t in request.tools)
        model = request.model if request.model not in ("", "default") else self.default_model
        system, messages = self._messages(request.messages, names)
        kwargs: dict[str, Any] = {
            "model": model, "messages": messages,
            "max_tokens": request.max_tokens or self.max_tokens or DEFAULT_ANTHROPIC_MAX_TOKENS}
        if system:
            kwargs["system"] = system
        if request.tools:
            kwargs["tools"] = [{"name": names.wire(t.name), "description": t.description,
                                "input_schema": t.parameters or {"type": "object",
                                                                 "properties": {}}}
                               for t in request.tools]
        temperature = request.temperature if request.temperature is not None \
            else self.temperature
        if temperature is not None:
            # Not a named parameter of this SDK version; still part of the Messages API.
            kwargs["extra_body"] = {"temperature": temperature}
        try:
            response = await self._client.messages.create(**kwargs)
        except Exception as exc:
            raise self._error(exc) from None
        try:
            text_parts: list[str] = []
            calls: list[ToolCall] = []
            for block in response.content:
                if block.type == "text":
                    text_parts.append(block.text)
                elif block.type == "tool_use":
                    calls.append(ToolCall(id=block.id, name=names.real(block.name),
                                          arguments=_arguments(block.input, self._label)))
            usage = response.usage
            return LLMResponse(
                text="".join(text_parts), tool_calls=tuple(calls),
                usage=Usage(prompt_tokens=int(getattr(usage, "input_tokens", 0) or 0),
                            completion_tokens=int(getattr(usage, "output_tokens", 0) or 0),
                            cached_tokens=int(getattr(usage, "cache_read_input_tokens", 0)
                                              or 0),
                            reported=usage is not None),
                model=str(getattr(response, "model", "") or model))
        except LLMError:
            raise
        except (AttributeError, TypeError, ValueError) as exc:
            raise self._error(exc) from None

    def _error(self, exc: Exception) -> LLMError:
        import anthropic  # imported lazily: the SDKs take seconds to import
        return _translate(exc, label=self._label, api_key=self._api_key, timeout=self.timeout,
                          status_error=anthropic.APIStatusError,
                          timeout_error=anthropic.APITimeoutError,
                          connection_error=anthropic.APIConnectionError)

    @staticmethod
    def _messages(messages: Iterable[Message], names: _ToolNames
                  ) -> tuple[str, list[dict[str, Any]]]:
        system: list[str] = []
        out: list[dict[str, Any]] = []

        def append(role: str, blocks: list[dict[str, Any]]) -> None:
            if not blocks:
                return
            if out and out[-1]["role"] == role:
                out[-1]["content"].extend(blocks)
            else:
                out.append({"role": role, "content": blocks})

        for message in messages:
            if message.role == "system":
                if message.content:
                    system.append(message.content)
            elif message.role == "user":
                append("user", [{"type": "text", "text": message.content or " "}])
            elif message.role == "assistant":
                blocks: list[dict[str, Any]] = []
                if message.content:
                    blocks.append({"type": "text", "text": message.content})
                blocks.extend({"type": "tool_use", "id": call.id, "name": names.wire(call.name),
                               "input": call.arguments} for call in message.tool_calls)
                append("assistant", blocks)
            else:
                append("user", [{"type": "tool_result", "tool_use_id": message.tool_call_id or "",
                                 "content": message.content}])
        return "\n\n".join(system), out

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
