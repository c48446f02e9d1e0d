"""Dashboard page of the organization's LLM settings: ``/o/{org}/settings/llm``.

Three parts: the quick setup (provider, base URL, default model, key), the named providers
and the model aliases (docs/LLM.md). Builders (settings:read) see everything read-only;
admins (settings:write) change it and test connections. The quick-setup key is write-only:
the page only ever says whether one is set, and a form re-rendered with errors never carries
the key that was typed. Providers hold no key: they name an org credential.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.credentials.service import list_credentials
from enginex.kit.errors import AppError
from enginex.llm import api as llm_api
from enginex.llm import service
from enginex.llm.models import LLMSettings
from enginex.llm.schemas import AliasSet, LLMSettingsUpdate, LLMTestResult, ProviderCreate
from enginex.orgs.web import app_error_fields, field_errors
from enginex.tenancy.guards import DB, make_router
from enginex.tenancy.scopes import Scope
from enginex.web.errors import rollback_for_page
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


PROVIDER_FIELDS = ("name", "kind", "base_url", "credential_name", "allowed_models")
ALIAS_FIELDS = ("name", "provider", "model", "temperature", "max_tokens")
NOTICES = {"provider-created": "Provider added.", "provider-deleted": "Provider deleted.",
           "alias-set": "Model alias saved.", "alias-deleted": "Model alias deleted."}


async def _page(request: Request, db: AsyncSession, web: WebContext, *,
                status_code: int = 200, values: dict[str, str] | None = None,
                errors: dict[str, str] | None = None,
                test_result: LLMTestResult | None = None,
                provider_form: dict[str, str] | None = None,
                provider_errors: dict[str, str] | None = None,
                alias_form: dict[str, str] | None = None,
                alias_errors: dict[str, str] | None = None,
                provider_test: tuple[uuid.UUID, LLMTestResult | None, str | None] | None = None,
                section_error: str | None = None) -> HTMLResponse:
    """The page. ``provider_errors``/``alias_errors`` are keyed by form field (``name``,
    ``base_url``, ...); the template prefixes their element ids so that they never collide
    with the quick-setup form's."""
    ctx = web.ctx
    row = await service.get_llm_settings(db, ctx)
    can_write = ctx.has(Scope.SETTINGS_WRITE)
    aliases_by_provider = await service.alias_names_by_provider(db, ctx)
    credential_names = [c.name for c in await list_credentials(db, ctx)] \
        if can_write and ctx.has(Scope.CREDENTIALS_READ) else []
    notice = NOTICES.get(request.query_params.get("notice", "")) if status_code == 200 else None
    return render(request, "settings/llm.html", principal=web.principal, ctx=ctx,
                  status_code=status_code, row=row, values=values or _form_values(row),
                  errors=errors or {}, has_api_key=row is not None and
                  row.api_key_ciphertext is not None,
                  providers=PROVIDER_LABELS, can_write=can_write,
                  saved=request.query_params.get("saved") == "1", test_result=test_result,
                  llm_providers=await service.list_providers(db, ctx),
                  aliases_by_provider=aliases_by_provider,
                  model_aliases=await service.list_aliases(db, ctx),
                  credential_names=credential_names,
                  provider_form=provider_form or {"kind": "openai_compatible"},
                  provider_errors=_prefixed("provider_", provider_errors),
                  alias_form=alias_form or {},
                  alias_errors=_prefixed("alias_", alias_errors),
                  provider_test=provider_test, notice=notice, section_error=section_error)


def _prefixed(prefix: str, errors: dict[str, str] | None) -> dict[str, str]:
    return {prefix + k: v for k, v in (errors or {}).items()}


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


# --- providers and model aliases ---------------------------------------------------------------


async def _text_form(request: Request, fields: tuple[str, ...]) -> dict[str, str]:
    form = await request.form()
    return {name: str(form.get(name) or "").strip()[:8192] for name in fields}


def _redirect(web: WebContext, notice: str, anchor: str) -> RedirectResponse:
    return RedirectResponse(f"/o/{web.ctx.org_slug}/settings/llm?notice={notice}#{anchor}",
                            status_code=303)


@router.post("/o/{org}/settings/llm/providers", response_class=HTMLResponse)
async def create_provider(request: Request, db: DB,
                          web: Annotated[WebContext, WebTenant(Scope.SETTINGS_WRITE)]
                          ) -> Response:
    """Add a provider from the form (allowed models one per line). Re-renders with the message
    next to the field (422/409) when refused."""
    form = await _text_form(request, PROVIDER_FIELDS)
    models = [line.strip() for line in form["allowed_models"].splitlines() if line.strip()]
    try:
        body = ProviderCreate.model_validate({
            "name": form["name"], "kind": form["kind"], "base_url": form["base_url"] or None,
            "credential_name": form["credential_name"] or None, "allowed_models": models})
        await service.create_provider(
            db, web.ctx, name=body.name, kind=body.kind, base_url=body.base_url,
            credential_name=body.credential_name, allowed_models=list(body.allowed_models),
            actor=web.principal,
            allow_private_network=llm_api.allow_private_network(request))
    except ValidationError as exc:
        return await _page(request, db, web, status_code=422, provider_form=form,
                           provider_errors=field_errors(exc))
    except AppError as exc:
        await db.rollback()
        return await _page(request, db, web, status_code=exc.status_code, provider_form=form,
                           provider_errors=app_error_fields(exc, "name"))
    return _redirect(web, "provider-created", "llm-providers")


@router.post("/o/{org}/settings/llm/providers/{provider_id}/delete",
             response_class=HTMLResponse)
async def delete_provider(request: Request, provider_id: uuid.UUID, db: DB,
                          web: Annotated[WebContext, WebTenant(Scope.SETTINGS_WRITE)]
                          ) -> Response:
    """Delete a provider; 409 with the aliases that still use it."""
    try:
        await service.delete_provider(db, web.ctx, provider_id, actor=web.principal)
    except AppError as exc:
        await rollback_for_page(db, exc)
        return await _page(request, db, web, status_code=exc.status_code,
                           section_error=exc.message)
    return _redirect(web, "provider-deleted", "llm-providers")


@router.post("/o/{org}/settings/llm/providers/{provider_id}/test",
             response_class=HTMLResponse)
async def test_provider(request: Request, provider_id: uuid.UUID, db: DB,
                        web: Annotated[WebContext, WebTenant(Scope.SETTINGS_WRITE)]
                        ) -> HTMLResponse:
    """One tiny completion through the provider, shown in its row (audited like the API's
    test)."""
    try:
        result = await llm_api.test_provider(provider_id, request, db, web.ctx, model=None)
    except AppError as exc:
        await rollback_for_page(db, exc)
        return await _page(request, db, web, status_code=exc.status_code,
                           provider_test=(provider_id, None, exc.message))
    return await _page(request, db, web, provider_test=(provider_id, result, None))


@router.post("/o/{org}/settings/llm/aliases", response_class=HTMLResponse)
async def set_alias(request: Request, db: DB,
                    web: Annotated[WebContext, WebTenant(Scope.SETTINGS_WRITE)]) -> Response:
    """Create or replace the alias named in the form. Re-renders with the message next to the
    field when refused (422)."""
    form = await _text_form(request, ALIAS_FIELDS)
    errors: dict[str, str] = {}
    temperature = _number(form["temperature"], float, "temperature", errors)
    max_tokens = _number(form["max_tokens"], int, "max_tokens", errors)
    if errors:
        return await _page(request, db, web, status_code=422, alias_form=form,
                           alias_errors=errors)
    try:
        service.check_alias_name(form["name"])
        body = AliasSet.model_validate({"provider": form["provider"], "model": form["model"],
                                        "temperature": temperature, "max_tokens": max_tokens})
        await service.set_alias(db, web.ctx, form["name"], provider=body.provider,
                                model=body.model, temperature=body.temperature,
                                max_tokens=body.max_tokens, actor=web.principal)
    except ValidationError as exc:
        return await _page(request, db, web, status_code=422, alias_form=form,
                           alias_errors=field_errors(exc))
    except AppError as exc:
        await db.rollback()
        fields = app_error_fields(exc, "name")
        if "alias" in fields:
            fields["name"] = fields.pop("alias")
        return await _page(request, db, web, status_code=exc.status_code, alias_form=form,
                           alias_errors=fields)
    return _redirect(web, "alias-set", "llm-aliases")


@router.post("/o/{org}/settings/llm/aliases/{alias}/delete", response_class=HTMLResponse)
async def delete_alias(request: Request, alias: str, db: DB,
                       web: Annotated[WebContext, WebTenant(Scope.SETTINGS_WRITE)]
                       ) -> Response:
    """Delete an alias (404 if the organization has none of that name)."""
    await service.delete_alias(db, web.ctx, alias, actor=web.principal)
    return _redirect(web, "alias-deleted", "llm-aliases")
