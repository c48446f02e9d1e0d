"""Dashboard pages of the organization's skills: ``/o/{org}/settings/skills`` (the list, and
for admins a form to paste a new SKILL.md) and ``/o/{org}/settings/skills/{skill_id}`` (one
skill: read-only for builders, an editable SKILL.md for admins, and delete).

Builders (settings:read) read; admins (settings:write) create, edit and delete. Reference
files are shown by path; they are set through the API. A refused SKILL.md re-renders the form
with the text as typed and the service's message (422/409), never a 500.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.kit.errors import AppError
from enginex.orgs.web import paginate
from enginex.skills import service
from enginex.skills.models import Skill
from enginex.tenancy.guards import DB, make_router
from enginex.tenancy.scopes import Scope
from enginex.web.errors import rollback_for_page
from enginex.web.templating import render
from enginex.web.tenant import WebContext, WebTenant

router = make_router(tags=["dashboard"])

NOTICES = {"created": "Skill created.", "saved": "Skill saved.", "deleted": "Skill deleted."}
MAX_FORM_CHARS = 200_000  # as the API's skill_md; longer text is refused with a message
TEMPLATE = """---
name: my-skill
description: What this skill is for, in one sentence.
---

# My skill

Instructions for the agent, in Markdown.
"""


async def _skill_md_field(request: Request) -> str | None:
    """The submitted SKILL.md text, or None when it is longer than the form allows."""
    form = await request.form()
    value = form.get("skill_md")
    text = value if isinstance(value, str) else ""
    return None if len(text) > MAX_FORM_CHARS else text.replace("\r\n", "\n").strip()


def _too_long() -> str:
    return f"skill_md: the text is longer than {MAX_FORM_CHARS} characters."


async def _list_page(request: Request, db: AsyncSession, web: WebContext, *,
                     status_code: int = 200, error: str | None = None,
                     draft: str | None = None) -> HTMLResponse:
    ctx = web.ctx
    skills = await service.list_skills(db, ctx)
    notice = NOTICES.get(request.query_params.get("notice", "")) if status_code == 200 else None
    return render(request, "settings/skills.html", principal=web.principal, ctx=ctx,
                  status_code=status_code, error=error, notice=notice,
                  skills=paginate(skills, request, base=f"/o/{ctx.org_slug}/settings/skills"),
                  can_write=ctx.has(Scope.SETTINGS_WRITE),
                  draft=draft or "", placeholder=TEMPLATE)


async def _skill_page(request: Request, web: WebContext, skill: Skill, *,
                      status_code: int = 200, error: str | None = None,
                      draft: str | None = None) -> HTMLResponse:
    notice = NOTICES.get(request.query_params.get("notice", "")) if status_code == 200 else None
    text = service.skill_md_text(skill)
    return render(request, "settings/skill.html", principal=web.principal, ctx=web.ctx,
                  status_code=status_code, error=error, notice=notice, skill=skill,
                  skill_md=text, draft=text if draft is None else draft,
                  can_write=web.ctx.has(Scope.SETTINGS_WRITE))


@router.get("/o/{org}/settings/skills", response_class=HTMLResponse)
async def skills_page(request: Request, db: DB,
                      web: Annotated[WebContext, WebTenant(Scope.SETTINGS_READ)]
                      ) -> HTMLResponse:
    """The organization's skills: name, description, reference files, last change."""
    return await _list_page(request, db, web)


@router.post("/o/{org}/settings/skills", response_class=HTMLResponse)
async def create_skill(request: Request, db: DB,
                       web: Annotated[WebContext, WebTenant(Scope.SETTINGS_WRITE)]
                       ) -> Response:
    """Create a skill from the pasted SKILL.md; a refused text re-renders with the message."""
    text = await _skill_md_field(request)
    if text is None:
        return await _list_page(request, db, web, status_code=422, error=_too_long(), draft="")
    try:
        skill = await service.create_skill(db, web.ctx, skill_md=text, actor=web.principal)
    except AppError as exc:
        await db.rollback()
        return await _list_page(request, db, web, status_code=exc.status_code,
                                error=exc.message, draft=text)
    return RedirectResponse(f"/o/{web.ctx.org_slug}/settings/skills/{skill.id}?notice=created",
                            status_code=303)


@router.get("/o/{org}/settings/skills/{skill_id}", response_class=HTMLResponse)
async def skill_page(request: Request, skill_id: uuid.UUID, db: DB,
                     web: Annotated[WebContext, WebTenant(Scope.SETTINGS_READ)]
                     ) -> HTMLResponse:
    """One skill: its SKILL.md (editable by admins) and reference file paths."""
    skill = await service.access_skill(db, web.ctx, skill_id)
    return await _skill_page(request, web, skill)


@router.post("/o/{org}/settings/skills/{skill_id}", response_class=HTMLResponse)
async def save_skill(request: Request, skill_id: uuid.UUID, db: DB,
                     web: Annotated[WebContext, WebTenant(Scope.SETTINGS_WRITE)]
                     ) -> Response:
    """Replace the skill's SKILL.md (reference files are kept)."""
    text = await _skill_md_field(request)
    skill = await service.access_skill(db, web.ctx, skill_id)
    if text is None:
        return await _skill_page(request, web, skill, status_code=422, error=_too_long(),
                                 draft="")
    try:
        await service.update_skill(db, web.ctx, skill_id, skill_md=text, actor=web.principal)
    except AppError as exc:
        await rollback_for_page(db, exc)
        skill = await service.access_skill(db, web.ctx, skill_id)
        return await _skill_page(request, web, skill, status_code=exc.status_code,
                                 error=exc.message, draft=text)
    return RedirectResponse(f"/o/{web.ctx.org_slug}/settings/skills/{skill_id}?notice=saved",
                            status_code=303)


@router.post("/o/{org}/settings/skills/{skill_id}/delete", response_class=HTMLResponse)
async def delete_skill(request: Request, skill_id: uuid.UUID, db: DB,
                       web: Annotated[WebContext, WebTenant(Scope.SETTINGS_WRITE)]
                       ) -> Response:
    """Delete a skill; agents that name it fail at that step from then on."""
    await service.delete_skill(db, web.ctx, skill_id, actor=web.principal)
    return RedirectResponse(f"/o/{web.ctx.org_slug}/settings/skills?notice=deleted",
                            status_code=303)
