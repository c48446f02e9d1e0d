"""Bodies of the LLM settings routes. The API key is write-only: it is accepted in
``LLMSettingsUpdate`` and never appears in a response (``has_api_key`` says whether one is set).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StringConstraints

from enginex.kit.schemas import RequestBody, ResponseBody

ProviderName = Literal["scripted", "openai_compatible", "anthropic"]


class LLMSettingsOut(ResponseBody):
    provider: str
    base_url: str | None
    default_model: str
    temperature: float | None
    max_tokens: int | None
    has_api_key: bool = Field(description="Whether an API key is stored. The key itself is "
                                          "never returned.")
    updated_at: datetime | None


class LLMSettingsUpdate(RequestBody):
    provider: ProviderName
    base_url: Annotated[str, StringConstraints(max_length=500)] | None = Field(
        default=None, description="Required for openai_compatible (e.g. https://api.openai.com"
                                  "/v1); optional for anthropic; ignored for scripted. Must "
                                  "be a public http(s) address unless the deployment allows "
                                  "private networks.")
    default_model: Annotated[str, StringConstraints(max_length=200)] | None = Field(
        default=None, description="Model used when an agent asks for 'default'. Required "
                                  "except for scripted.")
    api_key: Annotated[str, StringConstraints(max_length=4096)] | None = Field(
        default=None, description="Write-only. Omit (or null) to keep the stored key, \"\" to "
                                  "clear it.")
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


class LLMTestResult(ResponseBody):
    ok: bool
    message: str
    provider: str
    model: str
    latency_ms: int


# --- providers and model aliases -------------------------------------------------------------

PROVIDER_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"
ALIAS_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,39}$"
CREDENTIAL_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
MAX_ALLOWED_MODELS = 100



def _matching(pattern: str, message: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(message)
        return value

    return AfterValidator(check)


PROVIDER_NAME_RULE = "1-40 lowercase letters, digits, '-' or '_', starting with a letter or digit"
ALIAS_NAME_RULE = ("1-40 lowercase letters, digits, '.', '-' or '_', starting with a letter or "
                   "digit")
MODEL_NAME_RULE = "1-200 characters without spaces"
ProviderKey = Annotated[str, StringConstraints(max_length=40),
                        _matching(PROVIDER_NAME_PATTERN, PROVIDER_NAME_RULE)]
ModelName = Annotated[str, StringConstraints(max_length=200),
                      _matching(r"^[^\s\x00-\x1f]+$", MODEL_NAME_RULE)]
BaseURL = Annotated[str, StringConstraints(min_length=1, max_length=500)]
CredentialName = Annotated[str, StringConstraints(max_length=64), _matching(
    CREDENTIAL_NAME_PATTERN, "the name of one of the organization's credentials (1-64 "
                             "lowercase letters, digits, '-' or '_')")]
Temperature = Annotated[float, Field(ge=0, le=2)]
MaxTokens = Annotated[int, Field(ge=1, le=1_000_000)]

_BASE_URL_DOC = ("Required for openai_compatible (e.g. https://api.openai.com/v1); optional for "
                 "anthropic (default: the Anthropic API); not allowed for scripted. Must pass "
                 "the egress guard (public http(s) unless the deployment allows private "
                 "networks).")
_CREDENTIAL_DOC = ("Name of the organization credential holding the key (api_key: 'key', "
                   "bearer_token: 'token', custom: 'api_key' or 'value'). Required for "
                   "anthropic; optional for openai_compatible (servers without a key); not "
                   "allowed for scripted.")
_ALLOWED_DOC = ("Models agents may use through this provider; empty means any model. Model "
                "aliases and '<provider>/<model>' names are checked against it.")


class ProviderCreate(RequestBody):
    name: ProviderKey = Field(description="Unique in the organization: 1-40 lowercase "
                                          "letters, digits, '-' or '_'. Agents can name "
                                          "'<name>/<model>'.")
    kind: ProviderName
    base_url: BaseURL | None = Field(default=None, description=_BASE_URL_DOC)
    credential_name: CredentialName | None = Field(default=None, description=_CREDENTIAL_DOC)
    allowed_models: Annotated[list[ModelName], Field(max_length=MAX_ALLOWED_MODELS)] = Field(
        default_factory=list, description=_ALLOWED_DOC)


class ProviderUpdate(RequestBody):
    """Omitted fields are kept; ``null`` clears base_url and credential_name."""

    name: ProviderKey | None = None
    kind: ProviderName | None = None
    base_url: BaseURL | None = Field(default=None, description=_BASE_URL_DOC)
    credential_name: CredentialName | None = Field(default=None, description=_CREDENTIAL_DOC)
    allowed_models: Annotated[list[ModelName], Field(max_length=MAX_ALLOWED_MODELS)] | None = \
        Field(default=None, description=_ALLOWED_DOC)


class ProviderOut(ResponseBody):
    id: uuid.UUID
    name: str
    kind: str
    base_url: str | None
    credential_name: str | None
    allowed_models: list[str]
    aliases: list[str] = Field(description="The model aliases that use this provider.")
    created_at: datetime
    updated_at: datetime


class AliasSet(RequestBody):
    provider: ProviderKey = Field(description="Name of one of the organization's providers.")
    model: ModelName = Field(description="The model sent to the provider; must be in its "
                                         "allowed_models when that list is not empty.")
    temperature: Temperature | None = None
    max_tokens: MaxTokens | None = None


class AliasOut(ResponseBody):
    name: str
    provider: str
    provider_id: uuid.UUID
    model: str
    temperature: float | None
    max_tokens: int | None
    updated_at: datetime
