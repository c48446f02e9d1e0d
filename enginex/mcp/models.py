"""Tables of the mcp feature (filled in by issue 7)."""

from __future__ import annotations
