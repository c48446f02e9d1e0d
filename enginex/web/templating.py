"""The dashboard's Jinja2 environment and the one helper pages render with.

Templates live in enginex/web/templates (``<feature>/<page>.html``). Every page gets the
signed-in principal, the current organization context (if any) and the user's organizations
for the switcher; forms carry ``csrf_token``; htmx requests send it as X-CSRF-Token (app.js).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from enginex.tenancy.context import TenantContext
from enginex.tenancy.principal import UserPrincipal

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def render(request: Request, template: str, *, principal: UserPrincipal | None = None,
           ctx: TenantContext | None = None, status_code: int = 200,
           headers: dict[str, str] | None = None, **data: Any) -> HTMLResponse:
    orgs = getattr(request.state, "web_orgs", None)
    context = {"principal": principal, "ctx": ctx, "orgs": orgs or [], **data}
    return templates.TemplateResponse(request, template, context, status_code=status_code,
                                      headers=headers)


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"
