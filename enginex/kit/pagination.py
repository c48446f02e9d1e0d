"""Cursor pagination shared by every list that grows without bound (sessions, approvals,
reports): newest first by ``(created_at, id)``, opaque cursors, and the ``Link`` header.

A page after a cursor is read with the row-value condition ``(created_at, id) < (:at, :id)``:
the indexes of these lists lead with ``tenant_id, created_at``, so the condition bounds the
index scan and a deep page costs what the first page does (``benchmarks/deep_pages.py``).
Rows inserted while a client pages are newer than every cursor it holds, so they never shift
a later page: no row is skipped or repeated.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import ColumnElement, tuple_

from enginex.kit.errors import ValidationFailed

T = TypeVar("T")
Cursor = tuple[datetime, uuid.UUID]


def encode_cursor(created_at: datetime, object_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(object_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Cursor:
    """The position a cursor names. Raises ValidationFailed for anything that is not a
    cursor this module made."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, object_id = json.loads(raw)
        return datetime.fromisoformat(at), uuid.UUID(object_id)
    except (ValueError, TypeError) as exc:
        raise ValidationFailed("cursor: not a cursor from a previous page; start without it.",
                               details={"field": "cursor"}) from exc


def older_than(created_at: Any, object_id: Any, cursor: Cursor) -> ColumnElement[bool]:
    """The condition for rows after ``cursor`` in newest-first order."""
    return tuple_(created_at, object_id) < tuple_(*cursor)


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def page_of(rows: Sequence[T], limit: int, position: Callable[[T], Cursor]) -> Page[T]:
    """The first ``limit`` of ``rows`` (read with ``limit + 1``) and the cursor after them,
    or None when nothing follows."""
    items = list(rows[:limit])
    more = len(rows) > limit and bool(items)
    return Page(items, encode_cursor(*position(items[-1])) if more else None)


def next_link(url: str, next_cursor: str | None) -> dict[str, str]:
    """The ``Link: <…>; rel="next"`` header (RFC 8288) for a list answered as a JSON array,
    or no header on the last page. ``url`` is the request's URL; the link is relative (path
    and query only: the request's ``Host`` is never echoed) with ``cursor`` replaced."""
    if next_cursor is None:
        return {}
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "cursor"]
    query.append(("cursor", next_cursor))
    return {"Link": f'<{urlunsplit(("", "", parts.path, urlencode(query), ""))}>; rel="next"'}
