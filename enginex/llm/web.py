"""Dashboard page of the organization's LLM settings: ``/o/{org}/settings/llm``.

Builders (settings:read) see the settings; admins (settings:write) change them and test the
connection. The API key is write-only: the page only ever says whether one is set, and a form
re-rendered with errors never carries the key that was typed.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.kit.errors import AppError
from enginex.llm import api as llm_api
from enginex.llm import service
from enginex.llm.models import LLMSettings
from enginex.llm.schemas import LLMSettingsUpdate, LLMTestResult
from enginex.orgs.web import app_error_fields, field_errors
from enginex.tenancy.guards import DB, make_router
from enginex.tenancy.scopes import Scope
from enginex.web.templating import render
from enginex.web.tenant import WebContext, WebTenant

router = make_router(tags=["dashboard"])

PROVIDER_LABELS = {"scripted": "Scripted (offline, for demos and tests)",
                   "openai_compatible": "OpenAI-compatible HTTP API",
                   "anthropic": "Anthropic"}
FORM_FIELDS = ("provider", "base_url", "default_model", "temperature", "max_tokens")


def _form_values(row: LLMSettings | None) -> dict[str, str]:
    if row is None:
        return {"provider": "scripted", "base_url": "", "default_model": "scripted",
                "temperature": "", "max_tokens": ""}
    return {"provider": row.provider, "base_url": row.base_url or "",
            "default_model": row.default_model or "",
            "temperature": "" if row.temperature is None else f"{row.temperature:g}",
            "max_tokens": "" if row.max_tokens is None else str(row.max_tokens)}


async def _page(request: Request, db: AsyncSession, web: WebContext, *,
                status_code: int = 200, values: dict[str, str] | None = None,
                errors: dict[str, str] | None = None,
                test_result: LLMTestResult | None = None) -> HTMLResponse:
    row = await service.get_llm_settings(db, web.ctx)
    return render(request, "settings/llm.html", principal=web.principal, ctx=web.ctx,
                  status_code=status_code, row=row, values=values or _form_values(row),
                  errors=errors or {}, has_api_key=row is not None and
                  row.api_key_ciphertext is not None,
                  providers=PROVIDER_LABELS, can_write=web.ctx.has(Scope.SETTINGS_WRITE),
                  saved=request.query_params.get("saved") == "1", test_result=test_result)


@router.get("/o/{org}/settings/llm", response_class=HTMLResponse)
async def llm_settings_page(request: Request, db: DB,
                            web: Annotated[WebContext, WebTenant(Scope.SETTINGS_READ)]
                            ) -> HTMLResponse:
    """The provider, base URL, default model and limits; never the API key."""
    return await _page(request, db, web)


def _number(raw: str, kind: type[float] | type[int], field: str,
            errors: dict[str, str]) -> float | int | None:
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        errors[field] = "enter a number" if kind is float else "enter a whole number"
        return None


@router.post("/o/{org}/settings/llm", response_class=HTMLResponse)
async def save_llm_settings(request: Request, db: DB,
                            web: Annotated[WebContext, WebTenant(Scope.SETTINGS_WRITE)]
                            ) -> Response:
    """Replace the settings. An empty key field keeps the stored key; "Remove the stored key"
    clears it. Re-renders with field errors (422) when a value is refused."""
    form = await request.form()
    values = {name: str(form.get(name) or "").strip()[:4096] for name in FORM_FIELDS}
    api_key = str(form.get("api_key") or "")
    errors: dict[str, str] = {}
    temperature = _number(values["temperature"], float, "temperature", errors)
    max_tokens = _number(values["max_tokens"], int, "max_tokens", errors)
    if errors:
        return await _page(request, db, web, status_code=422, values=values, errors=errors)
    try:
        body = LLMSettingsUpdate.model_validate({
            "provider": values["provider"], "base_url": values["base_url"] or None,
            "default_model": values["default_model"] or None,
            "api_key": "" if form.get("clear_api_key") else (api_key.strip() or None),
            "temperature": temperature, "max_tokens": max_tokens})
        await service.update_llm_settings(
            db, web.ctx, provider=body.provider, base_url=body.base_url,
            default_model=body.default_model, api_key=body.api_key,
            temperature=body.temperature, max_tokens=body.max_tokens, actor=web.principal,
            key_box=llm_api.key_box(request),
            allow_private_network=llm_api.allow_private_network(request))
    except ValidationError as exc:
        return await _page(request, db, web, status_code=422, values=values,
                           errors=field_errors(exc))
    except AppError as exc:
        await db.rollback()
        return await _page(request, db, web, status_code=exc.status_code, values=values,
                           errors=app_error_fields(exc, "provider"))
    return RedirectResponse(f"/o/{web.ctx.org_slug}/settings/llm?saved=1", status_code=303)


@router.post("/o/{org}/settings/llm/test", response_class=HTMLResponse)
async def test_llm_connection(request: Request, db: DB,
                              web: Annotated[WebContext, WebTenant(Scope.SETTINGS_WRITE)]
                              ) -> HTMLResponse:
    """Send one tiny completion with the saved settings and show what happened (audited as
    ``llm_settings.tested``, exactly like the API's test)."""
    result = await llm_api.test_llm_settings(request, db, web.ctx)
    return await _page(request, db, web, test_result=result)
