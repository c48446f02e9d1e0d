"""Shared pydantic building blocks: strict request bodies and common field types."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

_EMAIL = re.compile(r"^[^@\s]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+$")
# RFC 3339 date-time, the OpenAPI ``date-time`` format: the offset is required.
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?"
                        r"(?:[Zz]|[+-]\d{2}:\d{2})$")
SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$"
RESERVED_SLUGS = frozenset({"admin", "api", "static", "login", "logout", "me", "new", "orgs",
                            "settings", "healthz", "readyz", "invitations"})


def _nul_at(value: Any, path: str) -> str | None:
    """The path of the first string (key or value) holding a NUL character, if any."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and "\x00" in key:
                return where
            found = _nul_at(item, where)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_at(item, f"{path}.{index}" if path else str(index))
            if found:
                return found
    return None


class RequestBody(BaseModel):
    """Base of every request body: no type coercion, unknown fields rejected, and no NUL
    character in any text (PostgreSQL cannot store it; refused on every backend alike)."""

    model_config = ConfigDict(strict=True, extra="forbid", str_strip_whitespace=True)

    @model_validator(mode="before")
    @classmethod
    def _refuse_nul(cls, data: Any) -> Any:
        where = _nul_at(data, "")
        if where is not None:
            raise PydanticCustomError(
                "nul_character", "{field}: text cannot contain the NUL character (\\u0000)",
                {"field": where.replace("\x00", "\\u0000") or "body"})
        return data


class ResponseBody(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def _check_email(value: str) -> str:
    value = value.strip()
    if len(value) > 254 or not _EMAIL.match(value):
        raise ValueError("not a valid email address (expected name@example.com)")
    return value


def _check_date_time(value: object) -> object:
    # Lax pydantic would also take numbers ("0.5" as a Unix time) and dates without a time or
    # zone; a query parameter documented as date-time accepts exactly that format.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _DATE_TIME.match(value):
        raise ValueError("expected a date-time with a time zone, such as 2026-01-31T09:00:00Z")
    return value


def _check_slug(value: str) -> str:
    if value in RESERVED_SLUGS:
        raise ValueError(f"'{value}' is reserved; choose another slug")
    return value


Email = Annotated[str, StringConstraints(max_length=254), AfterValidator(_check_email)]
Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN), AfterValidator(_check_slug)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=120)]
Password = Annotated[str, StringConstraints(max_length=128)]
# For query parameters (request bodies are strict models already).
DateTimeParam = Annotated[AwareDatetime, BeforeValidator(_check_date_time)]
