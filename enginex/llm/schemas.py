"""Bodies of the LLM settings routes. The API key is write-only: it is accepted in
``LLMSettingsUpdate`` and never appears in a response (``has_api_key`` says whether one is set).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

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
