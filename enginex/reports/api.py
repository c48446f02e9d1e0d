"""Reports API: list, show (with Markdown content), download."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Query, Request, Response

from enginex.kit.pagination import next_link
from enginex.reports import service
from enginex.runs.schemas import ReportOut, ReportWithContent
from enginex.tenancy.context import TenantContext
from enginex.tenancy.guards import DB, Require, make_router
from enginex.tenancy.scopes import Scope

router = make_router(prefix="/api/v1", tags=["reports"])


@router.get("/orgs/{org}/reports", response_model=list[ReportOut])
async def list_reports(request: Request, response: Response, db: DB,
                       ctx: Annotated[TenantContext, Require(Scope.REPORTS_READ)],
                       session: Annotated[uuid.UUID | None, Query()] = None,
                       limit: Annotated[int, Query(ge=1, le=500)] = 100,
                       cursor: Annotated[str | None, Query(max_length=200)] = None
                       ) -> list[ReportOut]:
    """Reports of this organization's sessions, newest first (``?session=`` to filter). When
    more follow, the ``Link`` header names the next page (``rel="next"``, with ``cursor``)."""
    page = await service.list_reports(db, ctx, run_id=session, limit=limit, cursor=cursor)
    response.headers.update(next_link(str(request.url), page.next_cursor))
    return [ReportOut.model_validate(a) for a in page.items]


@router.get("/orgs/{org}/reports/{report_id}", response_model=ReportWithContent)
async def get_report(report_id: uuid.UUID, request: Request, db: DB,
                     ctx: Annotated[TenantContext, Require(Scope.REPORTS_READ)]
                     ) -> ReportWithContent:
    artifact = await service.access_report(db, ctx, report_id)
    data = service.read_report(request.app.state.storage, ctx, artifact)
    return ReportWithContent.model_validate(
        {**ReportOut.model_validate(artifact).model_dump(), "content": data.decode()})


@router.get("/orgs/{org}/reports/{report_id}/download")
async def download_report(report_id: uuid.UUID, request: Request, db: DB,
                          ctx: Annotated[TenantContext, Require(Scope.REPORTS_READ)]) -> Response:
    """The report file as an attachment."""
    artifact = await service.access_report(db, ctx, report_id)
    data = service.read_report(request.app.state.storage, ctx, artifact)
    return Response(data, media_type=f"{artifact.media_type}; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="{artifact.filename}"'})
