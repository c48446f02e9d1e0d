"""Strict parsing of numbers and ids taken from requests (headers, query strings, cursors).

Python's ``int`` and ``str.isdigit`` are lenient in ways that do not belong in a protocol:
``"²".isdigit()`` is true but ``int("²")`` raises (an unhandled 500), and ``int`` accepts
other scripts' digits (``"٣"``), signs, spaces, underscores and thousands of digits (slow,
then ValueError). Every number or hex id the application reads from a request goes through
this module instead: ASCII ``0-9`` (or ``0-9a-fA-F``) only, bounded length, bounded value.
"""

from __future__ import annotations

import re
import uuid

from enginex.kit.errors import BadRequest

MAX_INT = 2**63 - 1  # the largest value a BIGINT column holds
_DIGITS = re.compile(r"[0-9]+")
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")


def ascii_int_or_none(text: str | bytes | None, *, minimum: int = 0,
                      maximum: int = MAX_INT) -> int | None:
    """``text`` as an int when it is only ASCII digits (no sign, space, underscore or other
    script's digits) and ``minimum <= value <= maximum``; None otherwise (never raises)."""
    if text is None:
        return None
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    # Check the length before the pattern: a megabyte of digits is refused at once.
    if not 0 < len(text) <= len(str(maximum)) + 2 or not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if minimum <= value <= maximum else None


def parse_ascii_int(text: str, *, name: str, minimum: int = 0, maximum: int = MAX_INT) -> int:
    """``text`` as a strict ASCII integer (see ``ascii_int_or_none``).

    Raises BadRequest (400) naming ``name`` (a header or parameter) when it is anything else.
    """
    value = ascii_int_or_none(text, minimum=minimum, maximum=maximum)
    if value is None:
        raise BadRequest(f"{name}: must be a whole number from {minimum} to {maximum}, "
                         "written with the digits 0-9 only.",
                         details={"field": name, "minimum": minimum, "maximum": maximum})
    return value


def hex_uuid_or_none(text: str) -> uuid.UUID | None:
    """A UUID written as exactly 32 ASCII hex digits (the form embedded in API keys and
    invitation tokens); None for anything else, including other scripts' digits, which
    ``uuid.UUID(hex=...)`` would accept."""
    if not _HEX32.fullmatch(text):
        return None
    return uuid.UUID(hex=text)
