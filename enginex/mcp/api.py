"""REST API of the organization's mcp settings (filled in by issue 7)."""

from __future__ import annotations

from enginex.tenancy.guards import make_router

router = make_router(tags=["mcp"])
