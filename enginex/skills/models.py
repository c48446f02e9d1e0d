"""Tables of the skills feature (filled in by issue 7)."""

from __future__ import annotations
