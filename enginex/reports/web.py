"""Dashboard pages of reports: the list (``/o/{org}/reports``) and one rendered report.

Reports come from tenant-controlled templates and LLM output, so their Markdown is rendered
with raw HTML disabled (it is shown escaped), images disabled (the CSP would refuse remote
ones anyway) and table alignment expressed as classes instead of inline styles (the CSP
refuses ``style=""``). Other organizations' report ids get the same not-found page as ids
that do not exist (the service raises NotFound for both).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from markdown_it import MarkdownIt
from markupsafe import Markup

from enginex.kit.errors import NotFound
from enginex.kit.parsing import ascii_int_or_none
from enginex.reports import service
from enginex.reports.models import Artifact
from enginex.tenancy.guards import DB, make_router
from enginex.tenancy.scopes import Scope
from enginex.web.templating import render
from enginex.web.tenant import WebContext, WebTenant

router = make_router(tags=["dashboard"])

PAGE_SIZE = 25
# The report service lists with a limit only (no cursor): pages are windows of at most this
# many of the newest rows.
MAX_ROWS = 500
MAX_PAGE = MAX_ROWS // PAGE_SIZE

_markdown = MarkdownIt("commonmark", {"html": False}).enable("table").disable("image")


def render_markdown(text: str) -> Markup:
    """Safe HTML for Markdown written by tenants or models: raw HTML comes out escaped,
    ``javascript:`` and similar links are not linked, and no inline style is produced."""
    tokens = _markdown.parse(text)
    for token in tokens:
        if token.type in {"th_open", "td_open"}:
            style = str(token.attrGet("style") or "")
            if style:
                token.attrs.pop("style", None)
                token.attrSet("class", "align-" + style.rpartition(":")[2].strip())
    html = _markdown.renderer.render(tokens, _markdown.options, {})
    return Markup(html)  # noqa: S704 -- markdown-it escapes everything with html disabled


def parse_id(value: str) -> uuid.UUID:
    """A path id; anything that is not a UUID is simply not found (same page as a random id)."""
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise NotFound() from exc


def parse_page(raw: str | None) -> int:
    """The ``page`` query parameter: 1 when missing or not ASCII digits, clamped."""
    return min(max(ascii_int_or_none(raw) or 1, 1), MAX_PAGE)


@dataclass(frozen=True)
class PageWindow:
    items: list[Any]
    page: int
    has_next: bool


def window(rows: list[Any], page: int, size: int = PAGE_SIZE) -> PageWindow:
    """Page ``page`` of ``rows`` fetched with ``limit=page * size + 1``."""
    start = (page - 1) * size
    return PageWindow(rows[start:start + size], page,
                      len(rows) > page * size and page < MAX_PAGE)


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


@router.get("/o/{org}/reports", response_class=HTMLResponse)
async def reports_list(request: Request, db: DB,
                       web: Annotated[WebContext, WebTenant(Scope.REPORTS_READ)]
                       ) -> HTMLResponse:
    """Reports of this organization, newest first; ``?session=`` narrows to one session."""
    page = parse_page(request.query_params.get("page"))
    session_raw = request.query_params.get("session") or ""
    run_id: uuid.UUID | None = None
    error = None
    if session_raw:
        try:
            run_id = uuid.UUID(session_raw)
        except ValueError:
            error = "session: not a session id; open the reports list from a session page."
    rows: list[Artifact] = []
    if error is None:
        rows = (await service.list_reports(db, web.ctx, run_id=run_id,
                                           limit=page * PAGE_SIZE + 1)).items
    return render(request, "reports/list.html", principal=web.principal, ctx=web.ctx,
                  status_code=422 if error else 200, error=error,
                  reports=window(rows, page), session=run_id, human_size=human_size)


@router.get("/o/{org}/reports/{report_id}", response_class=HTMLResponse)
async def report_view(request: Request, db: DB, report_id: str,
                      web: Annotated[WebContext, WebTenant(Scope.REPORTS_READ)]
                      ) -> HTMLResponse:
    """One report, rendered; the Download link uses the API's download route."""
    artifact = await service.access_report(db, web.ctx, parse_id(report_id))
    data = service.read_report(request.app.state.storage, web.ctx, artifact)
    text = data.decode("utf-8", errors="replace")
    body = render_markdown(text) if artifact.media_type == "text/markdown" else None
    return render(request, "reports/view.html", principal=web.principal, ctx=web.ctx,
                  report=artifact, body=body, text=text, human_size=human_size,
                  download=f"/api/v1/orgs/{web.ctx.org_slug}/reports/{artifact.id}/download")
