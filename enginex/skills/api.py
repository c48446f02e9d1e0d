"""Skills of one organization (``/api/v1/orgs/{org}/skills``).

Admins (settings:write) create, replace and delete skills; builders (settings:read) read them,
to reference them from agents by name. A skill is written as its whole SKILL.md text
(``skill_md``) plus optional reference files; ``GET .../skill.md`` returns that text for
download and round trip. Another organization's slug or skill id answers 404 like a missing
one. See docs/SKILLS.md.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Response, status

from enginex.skills import service
from enginex.skills.models import Skill
from enginex.skills.schemas import SkillCreate, SkillOut, SkillSummary, SkillUpdate
from enginex.tenancy.context import TenantContext
from enginex.tenancy.guards import DB, Require, make_router
from enginex.tenancy.scopes import Scope

router = make_router(prefix="/api/v1", tags=["skills"])

Reader = Annotated[TenantContext, Require(Scope.SETTINGS_READ)]
Manager = Annotated[TenantContext, Require(Scope.SETTINGS_WRITE)]
MARKDOWN = "text/markdown; charset=utf-8"


def _summary(skill: Skill) -> SkillSummary:
    return SkillSummary(id=skill.id, name=skill.name, description=skill.description,
                        files=list(skill.files), created_at=skill.created_at,
                        updated_at=skill.updated_at)


def _out(skill: Skill) -> SkillOut:
    return SkillOut(id=skill.id, name=skill.name, description=skill.description,
                    instructions=skill.instructions, files=dict(skill.files),
                    skill_md=service.skill_md_text(skill), created_at=skill.created_at,
                    updated_at=skill.updated_at)


@router.get("/orgs/{org}/skills", response_model=list[SkillSummary])
async def list_skills(db: DB, ctx: Reader) -> list[SkillSummary]:
    """The organization's skills by name: description and reference file paths."""
    return [_summary(s) for s in await service.list_skills(db, ctx)]


@router.post("/orgs/{org}/skills", response_model=SkillOut,
             status_code=status.HTTP_201_CREATED)
async def create_skill(body: SkillCreate, db: DB, ctx: Manager) -> SkillOut:
    """Create a skill from its SKILL.md text (the front matter's ``name`` names it). 422
    with the line and key for front matter that cannot be read; 409 if the name is taken.
    Audited as ``skill.created``."""
    skill = await service.create_skill(db, ctx, skill_md=body.skill_md, files=dict(body.files),
                                       actor=ctx.principal)
    return _out(skill)


@router.get("/orgs/{org}/skills/{skill_id}", response_model=SkillOut)
async def get_skill(skill_id: uuid.UUID, db: DB, ctx: Reader) -> SkillOut:
    """One skill: its instructions, reference files and SKILL.md text."""
    return _out(await service.access_skill(db, ctx, skill_id))


@router.put("/orgs/{org}/skills/{skill_id}", response_model=SkillOut)
async def update_skill(skill_id: uuid.UUID, body: SkillUpdate, db: DB,
                       ctx: Manager) -> SkillOut:
    """Replace the skill's SKILL.md (a changed ``name`` renames it; 409 if taken). ``files``
    replaces the reference files when given; omitted keeps them. Audited as
    ``skill.updated``."""
    skill = await service.update_skill(
        db, ctx, skill_id, skill_md=body.skill_md,
        files=dict(body.files) if body.files is not None else None, actor=ctx.principal)
    return _out(skill)


@router.delete("/orgs/{org}/skills/{skill_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_skill(skill_id: uuid.UUID, db: DB, ctx: Manager) -> Response:
    """Delete a skill; agents that name it (without a skill of that name in their package)
    fail at that step from then on. Audited as ``skill.deleted``."""
    await service.delete_skill(db, ctx, skill_id, actor=ctx.principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/orgs/{org}/skills/{skill_id}/skill.md", response_class=Response,
            responses={200: {"content": {"text/markdown": {}},
                             "description": "The SKILL.md text."}})
async def download_skill_md(skill_id: uuid.UUID, db: DB, ctx: Reader) -> Response:
    """The skill as a SKILL.md file (front matter + instructions); POST or PUT it back as
    ``skill_md`` unchanged."""
    skill = await service.access_skill(db, ctx, skill_id)
    return Response(service.skill_md_text(skill), media_type=MARKDOWN,
                    headers={"Content-Disposition":
                             f'attachment; filename="{skill.name}-SKILL.md"'})
