"""The application the benchmark serves: ``create_app()`` plus one benchmark-only public route.

Started by ``scoped_read.py`` in its own process::

    python -m uvicorn --factory benchmarks.bench_app:build

Configured by environment variables only: the usual ``ENGINEX_*`` settings, plus
``ENGINEX_BENCH_ORG_ID`` and ``ENGINEX_BENCH_ORG_SLUG`` (the seeded organization).

The extra route, ``GET /bench/unscoped/members``, is the baseline: no authentication, no tenant
guard; it binds the database session to the seeded organization and runs the very same
service call, response model and serialization as ``GET /api/v1/orgs/{org}/members``. It is
registered on the guarded router class with ``Public()``, like any other public route, and it
exists only in this process: nothing in ``enginex/`` serves it.
"""

from __future__ import annotations

import os
import uuid
from typing import Annotated

from fastapi import FastAPI

from enginex.app import create_app
from enginex.db import set_tenant
from enginex.orgs import service
from enginex.orgs.api import _member_out
from enginex.orgs.schemas import MemberOut
from enginex.tenancy.context import system_context
from enginex.tenancy.guards import DB, Public, make_router

UNSCOPED_PATH = "/bench/unscoped/members"


def build() -> FastAPI:
    org_id = uuid.UUID(os.environ["ENGINEX_BENCH_ORG_ID"])
    org_slug = os.environ["ENGINEX_BENCH_ORG_SLUG"]
    router = make_router(tags=["benchmark"])

    @router.get(UNSCOPED_PATH, response_model=list[MemberOut])
    async def unscoped_members(db: DB, _: Annotated[None, Public()]) -> list[MemberOut]:
        """The members query of the tenant route, without authentication or guard."""
        await set_tenant(db, org_id)
        ctx = system_context(org_id, org_slug)
        page = await service.page_members(db, ctx, limit=100, cursor=None)  # the route's page
        return [_member_out(m) for m in page.items]

    app = create_app()
    app.include_router(router)
    return app
