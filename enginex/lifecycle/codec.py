"""Rows to JSON and back, by column type: UUIDs as strings, datetimes as RFC 3339 UTC with
microseconds, bytes as base64, JSON columns as they are. Pure functions (no database)."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, LargeBinary, Uuid

from enginex.db import UTCDateTime


class RowError(ValueError):
    """A line of the archive does not describe a valid row (the message says which field)."""


def to_json_value(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


def dump_line(record: dict[str, Any]) -> bytes:
    """One JSON Lines line: sorted keys, no whitespace, UTF-8, newline-terminated."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8") + b"\n"


def from_json_value(column: Column[Any], value: Any) -> Any:
    """``value`` as ``column`` stores it. RowError names the column when it does not fit."""
    if value is None:
        if not column.nullable and not column.primary_key:
            raise RowError(f"{column.key}: a value is required")
        return None
    kind = column.type
    try:
        if isinstance(kind, Uuid):
            return uuid.UUID(str(value))
        if isinstance(kind, UTCDateTime):
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                raise ValueError("no time zone")
            return parsed.astimezone(UTC)
        if isinstance(kind, LargeBinary):
            return base64.b64decode(str(value), validate=True)
        if isinstance(kind, JSON):
            return value
        python_type = kind.python_type
    except (ValueError, TypeError) as exc:
        raise RowError(f"{column.key}: {exc}") from None
    if python_type is bool:
        if not isinstance(value, bool):
            raise RowError(f"{column.key}: expected true or false")
        return value
    if python_type is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise RowError(f"{column.key}: expected an integer")
        return value
    if python_type is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise RowError(f"{column.key}: expected a number")
        return float(value)
    if python_type is str:
        if not isinstance(value, str):
            raise RowError(f"{column.key}: expected a string")
        if "\x00" in value:
            raise RowError(f"{column.key}: NUL character")
        return value
    raise RowError(f"{column.key}: unsupported column type {kind!r}")
