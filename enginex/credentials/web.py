"""The org admin's credentials page (``/o/{org}/settings/credentials``).

Members with credentials:read see names, types, field names, allowed hosts, the hint and the
last change; admins (credentials:write) also create, replace the values (and allowed hosts)
of and delete credentials. Values are write-only: a submitted secret is never put back into a
page, not even when the form re-renders with the service's message. Allowed hosts are typed
one per line; an empty box allows any host.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.credentials import service
from enginex.credentials.api import keyring
from enginex.credentials.models import Credential
from enginex.kit.errors import AppError
from enginex.orgs.web import app_error_fields, paginate
from enginex.tenancy.guards import DB, make_router
from enginex.tenancy.scopes import Scope
from enginex.web.errors import rollback_for_page
from enginex.web.templating import render
from enginex.web.tenant import WebContext, WebTenant

router = make_router(tags=["dashboard"])

TYPES = tuple(service.KINDS)
CUSTOM_SLOTS = 3
OAUTH2_SETTINGS = ("token_url", "client_id", "scope")
NOTICES = {"created": "Credential created.", "replaced": "Values replaced.",
           "deleted": "Credential deleted."}


def _type_fields(kind: str) -> list[tuple[str, bool]]:
    """The secret fields of a (non-custom) type: (name, required)."""
    spec = service.KINDS[kind]
    return [(f, True) for f in spec.required] + [(f, False) for f in spec.optional]


def _custom_fields(credential: Credential) -> list[tuple[str, bool]]:
    """The fields of a custom credential: a replacement sets all of them again."""
    return [(f, True) for f in credential.fields]


def _hosts(form: dict[str, str]) -> list[str]:
    """The allowed hosts typed one per line (blank lines ignored; the service validates)."""
    return [line.strip() for line in form.get("allowed_hosts", "").splitlines()
            if line.strip()]


def _secret_input(field: str) -> bool:
    return field != "username"


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _values(kind: str, form: dict[str, str], custom_names: list[str] | None = None
            ) -> dict[str, str]:
    """The submitted values of a type (empty inputs left out, so the service names what is
    missing); custom credentials take name/value pairs."""
    if kind == "custom":
        values: dict[str, str] = {}
        names = custom_names or [form.get(f"field_name_{i}", "").strip()[:40]
                                 for i in range(1, CUSTOM_SLOTS + 1)]
        for i, name in enumerate(names, start=1):
            value = form.get(f"value.{name}" if custom_names else f"field_value_{i}", "")
            if name and value:
                values[name] = value
        return values
    return {f: form[f"value.{f}"] for f, _ in _type_fields(kind) if form.get(f"value.{f}")}


def _field_messages(exc: AppError) -> dict[str, str]:
    """Every invalid field of a refused form (the service lists them in ``details.fields``
    when there are several), else the one the error names."""
    fields = exc.details.get("fields") if isinstance(exc.details, dict) else None
    if isinstance(fields, dict) and fields:
        return {str(k): str(v) for k, v in fields.items()}
    return app_error_fields(exc, "values")


async def _page(request: Request, db: AsyncSession, web: WebContext, *,
                status_code: int = 200, error: str | None = None,
                form_type: str | None = None, create_form: dict[str, str] | None = None,
                create_errors: dict[str, str] | None = None) -> HTMLResponse:
    ctx = web.ctx
    credentials = await service.list_credentials(db, ctx)
    notice = NOTICES.get(request.query_params.get("notice", "")) if status_code == 200 else None
    return render(request, "settings/credentials.html", principal=web.principal, ctx=ctx,
                  status_code=status_code, error=error, notice=notice,
                  credentials=paginate(credentials, request,
                                       base=f"/o/{ctx.org_slug}/settings/credentials"),
                  can_write=ctx.has(Scope.CREDENTIALS_WRITE), types=TYPES,
                  type_fields={k: _type_fields(k) for k in TYPES if k != "custom"},
                  secret_input=_secret_input, custom_fields=_custom_fields,
                  custom_slots=CUSTOM_SLOTS,
                  form_type=form_type, create_form=create_form or {},
                  create_errors=create_errors or {})


@router.get("/o/{org}/settings/credentials", response_class=HTMLResponse)
async def credentials_page(request: Request, db: DB,
                           web: Annotated[WebContext, WebTenant(Scope.CREDENTIALS_READ)]
                           ) -> HTMLResponse:
    """The organization's credentials: name, type, field names, hint, last change."""
    return await _page(request, db, web)


@router.post("/o/{org}/settings/credentials", response_class=HTMLResponse)
async def create_credential(request: Request, db: DB,
                            web: Annotated[WebContext, WebTenant(Scope.CREDENTIALS_WRITE)]
                            ) -> Response:
    """Create a credential of the submitted type; errors re-render without the values."""
    form = await _form(request)
    kind = form.get("type", "")
    # Only non-secret inputs go back into the re-rendered form.
    kept = {"name": form.get("name", "")[:100], "description": form.get("description", "")[:500],
            **{k: form.get(k, "")[:2000] for k in OAUTH2_SETTINGS},
            "allowed_hosts": form.get("allowed_hosts", "")[:10000],
            **{f"field_name_{i}": form.get(f"field_name_{i}", "")[:40]
               for i in range(1, CUSTOM_SLOTS + 1)}}
    if kind not in service.KINDS:
        return await _page(request, db, web, status_code=422,
                           error=f"type: must be one of {', '.join(TYPES)}.")
    settings: dict[str, str | None] = {k: form.get(k) or None for k in OAUTH2_SETTINGS}
    try:
        await service.create_credential(
            db, web.ctx, name=kept["name"], kind=kind, values=_values(kind, form),
            description=kept["description"], settings=settings, keyring=keyring(request),
            actor=web.principal, allowed_hosts=_hosts(form),
            allow_private_network=bool(getattr(request.app.state.settings,
                                               "allow_private_network", False)))
    except AppError as exc:
        await db.rollback()
        return await _page(request, db, web, status_code=exc.status_code, form_type=kind,
                           create_form=kept, create_errors=_field_messages(exc))
    return RedirectResponse(f"/o/{web.ctx.org_slug}/settings/credentials?notice=created",
                            status_code=303)


@router.post("/o/{org}/settings/credentials/{credential_id}/replace",
             response_class=HTMLResponse)
async def replace_values(request: Request, credential_id: uuid.UUID, db: DB,
                         web: Annotated[WebContext, WebTenant(Scope.CREDENTIALS_WRITE)]
                         ) -> Response:
    """Replace all values of a credential (its fields stay the same) and its allowed hosts
    (the form shows the current ones)."""
    form = await _form(request)
    credential = await service.access_credential(db, web.ctx, credential_id)
    custom = list(credential.fields) if credential.kind == "custom" else None
    name = credential.name  # read before a rollback expires the row
    values = _values(credential.kind, form, custom)
    if custom is not None and len(values) != len(custom):
        # The page replaces the values, not the field set (that is the API's job).
        return await _page(request, db, web, status_code=422,
                           error=f"{name}: fill in every field ({', '.join(custom)}).")
    try:
        await service.update_credential(
            db, web.ctx, credential_id, keyring=keyring(request), actor=web.principal,
            values=values, **({"allowed_hosts": _hosts(form)}
                              if "allowed_hosts" in form else {}))
    except AppError as exc:
        await rollback_for_page(db, exc)
        return await _page(request, db, web, status_code=exc.status_code,
                           error=f"{name}: {exc.message}")
    return RedirectResponse(f"/o/{web.ctx.org_slug}/settings/credentials?notice=replaced",
                            status_code=303)


@router.post("/o/{org}/settings/credentials/{credential_id}/delete",
             response_class=HTMLResponse)
async def delete_credential(request: Request, credential_id: uuid.UUID, db: DB,
                            web: Annotated[WebContext, WebTenant(Scope.CREDENTIALS_WRITE)]
                            ) -> Response:
    """Delete a credential; runs that reference it fail from then on."""
    await service.delete_credential(db, web.ctx, credential_id, actor=web.principal)
    return RedirectResponse(f"/o/{web.ctx.org_slug}/settings/credentials?notice=deleted",
                            status_code=303)
