"""Liveness and readiness probes (public, no tenant data)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from enginex.tenancy.guards import Public, make_router

router = make_router(tags=["health"])


@router.get("/healthz")
async def healthz(_: Annotated[None, Public()]) -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, _: Annotated[None, Public()]) -> JSONResponse:
    """The database answers."""
    try:
        async with request.app.state.db.sessions() as session:
            await session.execute(text("SELECT 1"))
    except Exception:
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})
