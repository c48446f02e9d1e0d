"""Built-in tools: ``http_request``, ``set_output`` and ``render_report``.

Every failure an agent may see is a ``ToolError`` whose message is safe to store. Resolved
credential values are appended to ``ToolContext.secrets`` (the engine redacts them from
everything it stores) and are also replaced by ``[redacted]`` in the tool's own result.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from enginex.llm.base import ToolSpec
from enginex.tools.base import ToolContext, ToolError
from enginex.tools.egress import EgressRefused, check_url_async, guarded_transport

REPORT_OUTPUT_KEY = "__report__"
MAX_TIMEOUT_SECONDS = 30.0
DEFAULT_TIMEOUT_SECONDS = 15.0
DEFAULT_MAX_RESPONSE_BYTES = 1_000_000
MAX_REDIRECTS = 5
MAX_OUTPUT_BYTES = 1_000_000
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MIN_SECRET_CHARS = 4  # as the engine's redaction: shorter values match ordinary text
# Headers an agent may not set: the HTTP layer owns them.
_FORBIDDEN_REQUEST_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
    "te", "trailer", "proxy-authorization", "proxy-connection"})
# Response headers never handed back to the agent.
_HIDDEN_RESPONSE_HEADERS = frozenset({
    "set-cookie", "set-cookie2", "authorization", "proxy-authorization", "cookie",
    "proxy-authenticate"})


def _validation_message(tool: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "arguments"
        message = "unknown argument" if err.get("type") == "extra_forbidden" else err["msg"]
        problems.append(f"{where}: {message}")
    return f"{tool}: invalid arguments ({'; '.join(problems)})"


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- http_request ----------------------------------------------------------------------------


class HttpRequestArgs(_Args):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: Annotated[str, Field(min_length=1, max_length=8000)]
    headers: Annotated[dict[str, Annotated[str, Field(max_length=8000)]],
                       Field(max_length=50)] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    body: Annotated[str, Field(max_length=MAX_OUTPUT_BYTES)] | None = None
    timeout: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_SECONDS)] = DEFAULT_TIMEOUT_SECONDS
    credential: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    credential_header: Annotated[str, Field(min_length=1, max_length=100,
                                            pattern=r"^[A-Za-z0-9-]+$")] = "Authorization"


HTTP_REQUEST_SPEC = ToolSpec(
    name="http_request",
    description=(
        "Send one HTTP request and return {status, url, headers, body, truncated}. Only "
        "public http(s) addresses are reachable. Redirects are followed (at most 5). To "
        "authenticate, name an organization credential in 'credential': its value is sent "
        "in 'credential_header' (default Authorization) and never shown to you."),
    parameters={
        "type": "object",
        "properties": {
            "method": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE"],
                       "default": "GET"},
            "url": {"type": "string", "description": "http:// or https:// URL"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "Request headers"},
            "json": {"description": "A JSON value sent as the body (application/json)"},
            "body": {"type": "string", "description": "A text body (instead of json)"},
            "timeout": {"type": "number", "minimum": 1, "maximum": MAX_TIMEOUT_SECONDS,
                        "default": DEFAULT_TIMEOUT_SECONDS, "description": "Seconds"},
            "credential": {"type": "string",
                           "description": "Name of an organization credential to attach"},
            "credential_header": {"type": "string", "default": "Authorization"},
        },
        "required": ["url"],
        "additionalProperties": False,
    },
)


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


_NOT_SHOWN = "details not shown: the URL carries a credential"


def _carries_secret(url: str, secrets: list[str]) -> bool:
    """Whether ``url`` holds one of the step's credential values (ignoring case)."""
    lowered = url.lower()
    return any(s.lower() in lowered for s in secrets if len(s) >= MIN_SECRET_CHARS)


def _redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


class HttpRequestTool:
    """``http_request``: one HTTP request through the egress guard.

    Redirects are followed by hand (each target passes ``check_url``, and every connection the
    guarded transport opens is re-checked). A ``credential`` is checked against its allowed
    hosts (``ToolContext.check_credential_host``) before the first byte is sent and again for
    every hop that still carries it. When a redirect leaves the original origin, the
    credential header and every header holding a credential value (``ToolContext.secrets``,
    e.g. a ``{{credentials.NAME.FIELD}}`` placeholder) are dropped, and a redirect that would
    resend a body holding a credential value to another origin is refused. The response body
    is read up to ``max_response_bytes`` (``truncated`` tells whether more was sent);
    ``Accept-Encoding: identity`` is asked for so that the cap applies to what the server
    sends. When the URL holds a credential value, errors name what failed (the egress
    guard's reason, the error class) but never the URL, its host or the HTTP stack's message.
    """

    spec = HTTP_REQUEST_SPEC

    def __init__(self, *, max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        self.max_response_bytes = max_response_bytes

    async def call(self, ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            args = HttpRequestArgs.model_validate(arguments)
        except ValidationError as exc:
            raise ToolError(_validation_message("http_request", exc)) from None
        if args.json_body is not None and args.body is not None:
            raise ToolError("http_request: give either 'json' or 'body', not both")
        headers = self._headers(args)
        secrets: list[str] = []
        credential_header = None
        if args.credential is not None:
            credential_header = args.credential_header
            self._check_host(ctx, args.credential, args.url)
            value = self._resolve(ctx, args.credential, credential_header)
            secrets.append(value)
            _scheme, _, token = value.partition(" ")
            if token and len(token) >= 8:  # "Bearer <token>": the token alone is secret too
                secrets.append(token)
            ctx.secrets.extend(secrets)
            headers[credential_header] = value
        # A URL holding a credential value (a placeholder in its path or query) is never
        # quoted in an error, nor is anything the HTTP stack derived from it.
        hidden = _carries_secret(args.url, ctx.secrets)
        try:
            async with asyncio.timeout(args.timeout):
                result = await self._send(ctx, args, headers, credential_header, hidden)
        except TimeoutError:
            raise ToolError(f"http_request: no complete answer within {args.timeout:g} s "
                            "(raise 'timeout', at most 30)") from None
        except EgressRefused as exc:
            if hidden:
                raise ToolError(f"http_request refused the URL of argument 'url': "
                                f"{exc.reason} ({_NOT_SHOWN})") from None
            raise ToolError(f"http_request refused: {exc}") from None
        except httpx.InvalidURL as exc:
            if hidden:
                raise ToolError("http_request: the URL of argument 'url' is not a valid URL "
                                f"({_NOT_SHOWN})") from None
            raise ToolError(f"http_request: not a valid URL: {exc}") from None
        except httpx.HTTPError as exc:
            if hidden:
                raise ToolError("http_request: the request to the URL of argument 'url' "
                                f"failed: {type(exc).__name__} ({_NOT_SHOWN})") from None
            raise ToolError(_redact(f"http_request failed: {type(exc).__name__}: {exc}",
                                    secrets)) from None
        result["body"] = _redact(result["body"], secrets)
        result["headers"] = {k: _redact(v, secrets) for k, v in result["headers"].items()}
        return result

    @staticmethod
    def _headers(args: HttpRequestArgs) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, value in args.headers.items():
            lower = name.lower()
            if lower in _FORBIDDEN_REQUEST_HEADERS:
                raise ToolError(f"http_request: the header '{name}' cannot be set")
            if args.credential is not None and lower == args.credential_header.lower():
                raise ToolError(f"http_request: '{name}' is set from the credential; "
                                "do not set it in 'headers'")
            headers[name] = value
        if not any(k.lower() == "accept-encoding" for k in headers):
            headers["Accept-Encoding"] = "identity"
        return headers

    @staticmethod
    def _check_host(ctx: ToolContext, name: str, url: str) -> None:
        """ToolError unless credential ``name`` may be sent to ``url`` (its allowed hosts)."""
        if ctx.check_credential_host is None:
            return  # no credential store with allowed hosts (e.g. a bare ToolContext)
        try:
            ctx.check_credential_host(name, url)
        except ToolError:
            raise
        except (LookupError, ValueError):
            raise ToolError(f"http_request: no usable credential named '{name}' in this "
                            "organization") from None

    @staticmethod
    def _resolve(ctx: ToolContext, name: str, header: str) -> str:
        if ctx.resolve_credential is None:
            raise ToolError("credentials are not available")
        try:
            value = ctx.resolve_credential(name, header)
        except ToolError:
            raise
        except (LookupError, ValueError):
            raise ToolError(f"http_request: no usable credential named '{name}' in this "
                            "organization") from None
        if not isinstance(value, str) or not value:
            raise ToolError(f"http_request: the credential '{name}' has no value")
        return value

    async def _send(self, ctx: ToolContext, args: HttpRequestArgs, headers: dict[str, str],
                    credential_header: str | None, hidden: bool) -> dict[str, Any]:
        allow_private = ctx.allow_private_network
        method = args.method
        content: bytes | None = None
        if args.json_body is not None:
            content = json.dumps(args.json_body).encode()
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        elif args.body is not None:
            content = args.body.encode()
        origin = httpx.URL(args.url)
        url = origin
        step_secrets = [s for s in ctx.secrets if len(s) >= MIN_SECRET_CHARS]
        async with httpx.AsyncClient(transport=guarded_transport(allow_private=allow_private),
                                     follow_redirects=False, trust_env=False,
                                     timeout=httpx.Timeout(args.timeout)) as client:
            for _hop in range(MAX_REDIRECTS + 1):
                await check_url_async(str(url), allow_private=allow_private)
                if credential_header and args.credential is not None:
                    self._check_host(ctx, args.credential, str(url))
                request = client.build_request(method, url, headers=headers, content=content)
                response = await client.send(request, stream=True)
                try:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECT_STATUSES and location:
                        url = response.url.join(location)
                        if response.status_code == 303 or (
                                response.status_code in (301, 302) and method == "POST"):
                            method, content = "GET", None
                            headers = {k: v for k, v in headers.items()
                                       if k.lower() != "content-type"}
                        if not _same_origin(origin, url):
                            if credential_header:
                                headers = {k: v for k, v in headers.items()
                                           if k.lower() != credential_header.lower()}
                                credential_header = None
                            headers = {k: v for k, v in headers.items()
                                       if not any(s in v for s in step_secrets)}
                            if content is not None and any(
                                    form.encode() in content for s in step_secrets
                                    for form in (s, json.dumps(s)[1:-1])):
                                target = ("a redirect" if hidden else
                                          f"the redirect to {url.scheme}://{url.host}")
                                raise ToolError(
                                    f"http_request: refused to follow {target}: it would "
                                    "resend a body holding a credential to another origin")
                        continue
                    body, truncated = await self._read(response)
                    return {
                        "status": response.status_code,
                        "url": str(response.url),
                        "headers": {k: v for k, v in response.headers.items()
                                    if k.lower() not in _HIDDEN_RESPONSE_HEADERS},
                        "body": body.decode(response.encoding or "utf-8", errors="replace"),
                        "truncated": truncated,
                    }
                finally:
                    await response.aclose()
        raise ToolError(f"http_request: more than {MAX_REDIRECTS} redirects")

    async def _read(self, response: httpx.Response) -> tuple[bytes, bool]:
        cap = self.max_response_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                return b"".join(chunks)[:cap], True
        return b"".join(chunks), False


# --- set_output and render_report ------------------------------------------------------------


class SetOutputArgs(_Args):
    key: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")]
    value: Any


class SetOutputTool:
    """``set_output``: records ``value`` under ``key`` in ``ToolContext.outputs``. The engine
    decides which keys a node may set (its declared output keys)."""

    spec = ToolSpec(
        name="set_output",
        description="Set one of this step's declared output keys to a value. Call it once per "
                    "output key; the step ends when every declared output is set.",
        parameters={
            "type": "object",
            "properties": {"key": {"type": "string", "description": "A declared output key"},
                           "value": {"description": "The value (any JSON)"}},
            "required": ["key", "value"],
            "additionalProperties": False,
        },
    )

    async def call(self, ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            args = SetOutputArgs.model_validate(arguments)
        except ValidationError as exc:
            raise ToolError(_validation_message("set_output", exc)) from None
        if args.key.startswith("__"):
            raise ToolError(f"set_output: '{args.key}' is reserved; keys starting with '__' "
                            "cannot be set")
        if len(json.dumps(args.value, default=str)) > MAX_OUTPUT_BYTES:
            raise ToolError(f"set_output: the value is larger than {MAX_OUTPUT_BYTES} bytes")
        ctx.outputs[args.key] = args.value
        return {"ok": True, "key": args.key}


class RenderReportArgs(_Args):
    title: Annotated[str, Field(min_length=1, max_length=200)]
    markdown: Annotated[str, Field(max_length=MAX_OUTPUT_BYTES)]


class RenderReportTool:
    """``render_report``: stores ``{"title", "markdown"}`` in
    ``ToolContext.outputs["__report__"]``; the engine turns it into a report artifact."""

    spec = ToolSpec(
        name="render_report",
        description="Produce this run's report as Markdown.",
        parameters={
            "type": "object",
            "properties": {"title": {"type": "string"},
                           "markdown": {"type": "string", "description": "The report body"}},
            "required": ["title", "markdown"],
            "additionalProperties": False,
        },
    )

    async def call(self, ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            args = RenderReportArgs.model_validate(arguments)
        except ValidationError as exc:
            raise ToolError(_validation_message("render_report", exc)) from None
        ctx.outputs[REPORT_OUTPUT_KEY] = {"title": args.title, "markdown": args.markdown}
        return {"ok": True}
