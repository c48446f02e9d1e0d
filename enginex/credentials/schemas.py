"""Bodies of the credential routes. Values are write-only: accepted in ``values``, never in a
response (``fields`` names them, ``hint`` shows at most the last 4 characters of a long key)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from enginex.credentials.hosts import MAX_ALLOWED_HOSTS, MAX_PATTERN_CHARS
from enginex.kit.schemas import DateTimeParam, RequestBody, ResponseBody

CredentialType = Literal["api_key", "bearer_token", "basic_auth", "oauth2", "custom"]
CredentialName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
FieldName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
SecretValue = Annotated[str, StringConstraints(min_length=1, max_length=8192,
                                               strip_whitespace=False)]
Values = Annotated[dict[FieldName, SecretValue], Field(min_length=1, max_length=20)]
ExpiresAt = Annotated[DateTimeParam, Field(strict=False)]
HostPattern = Annotated[str, StringConstraints(max_length=MAX_PATTERN_CHARS)]
AllowedHosts = Annotated[list[HostPattern], Field(max_length=MAX_ALLOWED_HOSTS)]

VALUES_HELP = ("Write-only secret fields, by type: api_key {key}; bearer_token {token}; "
               "basic_auth {username, password}; oauth2 {access_token, refresh_token?, "
               "client_secret?}; custom: 1-20 fields of your choice. Never returned.")
ALLOWED_HOSTS_HELP = (
    "Hosts the credential may be sent to, at most 20: 'api.example.com', '*.example.com' "
    "(any subdomain, not example.com itself), either with an optional ':port' (without one: "
    "any port). No scheme or path. Empty (the default): any host -- set it, so that a prompt "
    "injection cannot make a run send the credential elsewhere. Stored lowercase and "
    "IDNA-encoded.")


class CredentialCreate(RequestBody):
    name: CredentialName = Field(description="Referenced by runs as {{credentials.NAME.FIELD}} "
                                             "or as http_request's 'credential'.")
    type: CredentialType
    values: Values = Field(description=VALUES_HELP)
    description: Annotated[str, StringConstraints(max_length=500)] = ""
    provider: Annotated[str, StringConstraints(max_length=100)] = ""
    token_url: Annotated[str, StringConstraints(max_length=2000)] | None = Field(
        default=None, description="oauth2: the token endpoint used to refresh the access "
                                  "token (needs a refresh_token).")
    client_id: Annotated[str, StringConstraints(max_length=500)] | None = None
    scope: Annotated[str, StringConstraints(max_length=1000)] | None = None
    expires_at: ExpiresAt | None = Field(default=None, description="oauth2: when the access "
                                                                   "token expires.")
    allowed_hosts: AllowedHosts = Field(default_factory=list, description=ALLOWED_HOSTS_HELP)


class CredentialUpdate(RequestBody):
    """Fields left out are kept. ``values`` replaces all secret fields at once."""

    name: CredentialName | None = None
    values: Values | None = Field(default=None, description=VALUES_HELP)
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    provider: Annotated[str, StringConstraints(max_length=100)] | None = None
    token_url: Annotated[str, StringConstraints(max_length=2000)] | None = None
    client_id: Annotated[str, StringConstraints(max_length=500)] | None = None
    scope: Annotated[str, StringConstraints(max_length=1000)] | None = None
    expires_at: ExpiresAt | None = None
    allowed_hosts: AllowedHosts | None = Field(default=None, description=ALLOWED_HOSTS_HELP
                                               + " Replaces the whole list; [] allows any "
                                               "host.")


class CredentialSummary(ResponseBody):
    """What builders and operators see: enough to reference a credential, nothing more."""

    id: uuid.UUID
    name: str
    type: str
    fields: list[str]
    allowed_hosts: list[str] = Field(description="Hosts the credential may be sent to; empty: "
                                                 "any host.")


class CredentialOut(ResponseBody):
    id: uuid.UUID
    name: str
    type: str
    description: str
    provider: str
    fields: list[str] = Field(description="Names of the stored secret fields (never values).")
    hint: str | None = Field(description="The last 4 characters of a long key or token.")
    allowed_hosts: list[str] = Field(description="Host patterns it may be sent to; empty: "
                                                 "any host.")
    token_url: str | None
    client_id: str | None
    scope: str | None
    expires_at: datetime | None
    refreshed_at: datetime | None
    value_version: int
    created_by_kind: str
    created_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
    last_used_at: datetime | None
