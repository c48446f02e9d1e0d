"""Bodies of the MCP routes: the platform catalog (admin), its public view (organizations),
and the organization's servers and tools.

A tenant never sends a command: stdio servers name a catalog entry. Secret header and
environment values are credential names, never values; literal header values are for
non-secret settings and are shown back in responses.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from enginex.kit.schemas import RequestBody, ResponseBody

SERVER_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
ENV_NAME_PATTERN = r"^[A-Z_][A-Z0-9_]{0,63}$"
# RFC 9110 token characters.
HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$"
MAX_HEADERS = 20
MAX_ENV = 50

ServerName = Annotated[str, StringConstraints(pattern=SERVER_NAME_PATTERN)]
EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME_PATTERN)]
HeaderName = Annotated[str, StringConstraints(pattern=HEADER_NAME_PATTERN)]
CredentialName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Url = Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class HeaderValue(RequestBody):
    """Exactly one of ``credential`` (a credential's name, resolved at use, audited and
    redacted) or ``value`` (a literal, non-secret value: it is shown back)."""

    credential: CredentialName | None = None
    value: Annotated[str, StringConstraints(min_length=1, max_length=2000)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> HeaderValue:
        if (self.credential is None) == (self.value is None):
            raise ValueError('give exactly one of {"credential": NAME} (secret) or '
                             '{"value": "..."} (not secret)')
        return self


Headers = Annotated[dict[HeaderName, HeaderValue], Field(max_length=MAX_HEADERS)]
Env = Annotated[dict[EnvName, CredentialName], Field(max_length=MAX_ENV)]


# --- platform catalog -----------------------------------------------------------------------


class CatalogEntryCreate(RequestBody):
    name: ServerName = Field(description="Organizations choose the entry by this name.")
    description: Annotated[str, StringConstraints(max_length=500)] = ""
    command: Annotated[str, StringConstraints(min_length=1, max_length=1000)] = Field(
        description="The executable, started through the sandbox launcher (never a shell).")
    args: Annotated[list[Annotated[str, StringConstraints(max_length=1000)]],
                    Field(max_length=50)] = Field(default_factory=list)
    allowed_env: Annotated[list[EnvName], Field(max_length=MAX_ENV)] = Field(
        default_factory=list, description="Environment variables an organization may set, "
                                          "each from one of its credentials.")
    timeout_seconds: Annotated[int, Field(ge=1, le=600)] = 60
    memory_mb: Annotated[int, Field(ge=64, le=16384)] = 512
    network: bool = Field(default=False, description=(
        "Whether the process may use the network. Off (the default), it runs in a network "
        "namespace of its own and cannot open any connection, not even to 127.0.0.1. On, it "
        "has the host's network: the egress guard does not apply to stdio servers."))


class CatalogEntryOut(ResponseBody):
    """What the platform admin sees."""

    id: uuid.UUID
    name: str
    description: str
    command: str
    args: list[str]
    allowed_env: list[str]
    timeout_seconds: int
    memory_mb: int
    network: bool
    created_at: datetime


class CatalogEntryPublic(ResponseBody):
    """What organizations see: never the command line."""

    name: str
    description: str
    allowed_env: list[str]


# --- organization servers -------------------------------------------------------------------


class ServerCreate(RequestBody):
    name: ServerName = Field(description="Agents call its tools as mcp.<name>.<tool>.")
    transport: Literal["http", "stdio"]
    url: Url | None = Field(default=None, description="http: the Streamable HTTP endpoint.")
    headers: Headers = Field(default_factory=dict, description="http: request headers.")
    catalog_entry: ServerName | None = Field(default=None, description="stdio: the name of a "
                                             "platform catalog entry.")
    env: Env = Field(default_factory=dict, description="stdio: {VAR: credential name}; VAR "
                                                       "must be allowed by the catalog entry.")
    enabled: bool = True


class ServerUpdate(RequestBody):
    """Fields left out are kept; ``headers`` and ``env`` replace the whole mapping. The
    transport cannot change: delete the server and create it again."""

    name: ServerName | None = None
    url: Url | None = None
    headers: Headers | None = None
    catalog_entry: ServerName | None = None
    env: Env | None = None
    enabled: bool | None = None


class ToolUpdate(RequestBody):
    enabled: bool


class ToolOut(ResponseBody):
    name: str
    description: str
    input_schema: dict[str, Any]
    enabled: bool


class ServerOut(ResponseBody):
    id: uuid.UUID
    name: str
    transport: str
    url: str | None
    headers: dict[str, dict[str, str]] = Field(description='{"Header": {"credential": NAME} '
                                                           'or {"value": "literal"}}')
    catalog_entry: str | None
    env: dict[str, str]
    enabled: bool
    tools: list[ToolOut]
    tools_refreshed_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


class RefreshOut(ResponseBody):
    ok: bool
    message: str | None = Field(description="Why the tools could not be listed (ok=false).")
    server: ServerOut
