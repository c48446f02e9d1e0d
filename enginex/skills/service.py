"""Skills of one organization: create, list, read, replace, delete; and the run-time lookup
of the skills an llm node names (``skills_for``, the engine's SkillsFactory).

Contract:
* Another organization's skill id raises NotFound exactly like a missing one; names are
  unique per organization (Conflict otherwise), and two organizations may use the same name.
* A skill is written as SKILL.md text (skill_md.py): its front matter must name the skill;
  ValidationFailed names the field (``skill_md`` with the line and key, or ``files``).
* Limits: instructions 100 KB (UTF-8), description 1024 characters, at most 50 reference
  files of 512 KB in all, with package-style relative paths and text only.
* Every mutation is audited in the caller's transaction (``skill.created`` / ``.updated`` /
  ``.deleted``) with the name and file paths, never the instructions.
* At run time a package's own ``skills/<name>/SKILL.md`` wins over the organization's skill of
  the same name; only the run's organization's skills are ever read.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.agents.manifest import LLMNode
from enginex.agents.package import executable_reason
from enginex.audit.service import record
from enginex.kit.errors import Conflict, NotFound, ValidationFailed
from enginex.kit.ids import new_id
from enginex.kit.time import utcnow
from enginex.skills.models import Skill
from enginex.skills.repository import SkillRepository
from enginex.skills.skill_md import (
    NAME_RULE,
    SkillMdError,
    parse_skill_md,
    render_skill_md,
)
from enginex.tenancy.context import TenantContext
from enginex.tenancy.principal import Principal
from enginex.tools.base import ToolError

MAX_INSTRUCTIONS_BYTES = 100 * 1024
MAX_FILES = 50
MAX_FILES_BYTES = 512 * 1024
MAX_PATH_CHARS = 240
MAX_PATH_DEPTH = 8
SKILL_FILE = "SKILL.md"
_SEGMENT = re.compile(r"^[\w.@+-][\w .@+()-]{0,127}$")


@dataclass(frozen=True)
class SkillText:
    """The parts of a SKILL.md an organization skill is stored as."""

    name: str
    description: str
    instructions: str


def _invalid(message: str, field: str, **details: Any) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", details={"field": field, **details})


def parse_skill(skill_md: str) -> SkillText:
    """Read an organization skill's SKILL.md. ValidationFailed (field ``skill_md``, with the
    line and front matter key when known) if it cannot be read, has no ``name``, or breaks a
    limit."""
    if "\x00" in skill_md:
        raise _invalid("text cannot contain the NUL character (\\u0000).", "skill_md")
    try:
        document = parse_skill_md(skill_md)
    except SkillMdError as exc:
        details = {k: v for k, v in (("line", exc.line), ("key", exc.key)) if v is not None}
        raise _invalid(str(exc), "skill_md", **details) from None
    if document.name is None:
        problem = ("the front matter must name the skill" if document.has_front_matter else
                   "this SKILL.md has no front matter, which must name the skill")
        raise _invalid(f"{problem}. Start the file with these lines, then the instructions:\n"
                       f"---\nname: my-skill\ndescription: what the skill is for\n---\n"
                       f"(name: {NAME_RULE})", "skill_md", key="name")
    if not document.instructions.strip():
        raise _invalid("there are no instructions after the front matter; write the "
                       "Markdown instructions below the closing '---'", "skill_md")
    size = len(document.instructions.encode())
    if size > MAX_INSTRUCTIONS_BYTES:
        raise _invalid(f"the instructions are {size} bytes; the limit is "
                       f"{MAX_INSTRUCTIONS_BYTES} bytes (100 KB). Move reference material "
                       "into files", "skill_md")
    return SkillText(document.name, document.description or "", document.instructions)


def check_file_path(path: str) -> str | None:
    """Why ``path`` cannot name a skill's reference file, or None. The rules of package
    paths: relative, '/' between folders, no '..', no control characters, short."""
    if not path or any(unicodedata.category(c) == "Cc" for c in path):
        return "the path is empty or contains control characters"
    if "\\" in path:
        return "the path contains a backslash; use '/' between folders"
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        return "absolute paths are not allowed; use a path relative to the skill"
    parts = path.split("/")
    if ".." in parts:
        return "'..' is not allowed in paths"
    if any(p in ("", ".") for p in parts):
        return "write the path without empty or '.' parts (such as 'reference/forms.md')"
    if len(path) > MAX_PATH_CHARS or len(parts) > MAX_PATH_DEPTH:
        return f"the path is longer than {MAX_PATH_CHARS} characters or {MAX_PATH_DEPTH} " \
               "folders deep"
    if any(not _SEGMENT.match(p) for p in parts):
        return "use letters, digits, spaces and . _ - @ + ( ) in file and folder names"
    if path == SKILL_FILE:
        return "SKILL.md is the skill itself; send it as skill_md"
    return None


def check_files(files: dict[str, str]) -> dict[str, str]:
    """The reference files, checked. ValidationFailed (field ``files``, with the path)."""
    if len(files) > MAX_FILES:
        raise _invalid(f"a skill has at most {MAX_FILES} reference files.", "files")
    total = 0
    folded: dict[str, str] = {}
    for path, text in sorted(files.items()):
        problem = check_file_path(path)
        if problem:
            raise _invalid(f"'{path[:120]}': {problem}.", "files", path=path[:240])
        if path.casefold() in folded:
            raise _invalid(f"'{path}' and '{folded[path.casefold()]}' differ only in case; "
                           "rename one.", "files", path=path)
        folded[path.casefold()] = path
        data = text.encode()
        reason = executable_reason(path, data)
        if reason:
            raise _invalid(f"'{path}': executable code is not allowed in skills ({reason}); "
                           "reference files are text.", "files", path=path)
        if "\x00" in text:
            raise _invalid(f"'{path}': text files cannot contain NUL characters.", "files",
                           path=path)
        total += len(data)
    if total > MAX_FILES_BYTES:
        raise _invalid(f"the reference files are {total} bytes in all; the limit is "
                       f"{MAX_FILES_BYTES} bytes (512 KB).", "files")
    return dict(sorted(files.items()))


def skill_md_text(skill: Skill) -> str:
    """The SKILL.md of a stored skill (front matter + instructions): what the API serves
    for download and accepts back unchanged."""
    return render_skill_md(skill.name, skill.description, skill.instructions)


async def list_skills(db: AsyncSession, ctx: TenantContext) -> list[Skill]:
    return await SkillRepository(db, ctx).list()


async def access_skill(db: AsyncSession, ctx: TenantContext, skill_id: uuid.UUID) -> Skill:
    """The skill; NotFound for a missing id and for another organization's alike."""
    return await SkillRepository(db, ctx).access(skill_id)


def _actor(actor: Principal | None) -> dict[str, Any]:
    return {"actor_kind": actor.kind if actor else None,
            "actor_id": actor.actor_id if actor else None}


def _taken(name: str) -> Conflict:
    return Conflict(f"A skill named '{name}' already exists in this organization; change the "
                    "name in the front matter or edit that skill instead.",
                    details={"field": "skill_md", "key": "name"})


async def create_skill(db: AsyncSession, ctx: TenantContext, *, skill_md: str,
                       files: dict[str, str] | None = None,
                       actor: Principal | None) -> Skill:
    """Create a skill from its SKILL.md text. ValidationFailed for unreadable text or bad
    files; Conflict if the name is taken here. Audited as ``skill.created``."""
    text = parse_skill(skill_md)
    checked = check_files(files or {})
    repo = SkillRepository(db, ctx)
    if await repo.get_by_name(text.name) is not None:
        raise _taken(text.name)
    now = utcnow()
    skill = Skill(tenant_id=ctx.org_id, id=new_id(), name=text.name,
                  description=text.description, instructions=text.instructions,
                  files=checked, created_at=now, updated_at=now)
    repo.add(skill)
    try:
        await db.flush()
    except IntegrityError as exc:  # a concurrent create of the same name
        raise _taken(text.name) from exc
    await record(db, ctx, "skill.created", target_kind="skill", target_id=skill.id,
                 details={"name": skill.name, "files": list(checked)}, **_actor(actor))
    return skill


async def update_skill(db: AsyncSession, ctx: TenantContext, skill_id: uuid.UUID, *,
                       skill_md: str, files: dict[str, str] | None = None,
                       actor: Principal | None) -> Skill:
    """Replace a skill's name, description and instructions from SKILL.md text, and its
    reference files when ``files`` is not None. NotFound, Conflict (a new name that is
    taken), ValidationFailed as for create. Audited as ``skill.updated`` (what changed)."""
    text = parse_skill(skill_md)
    checked = check_files(files) if files is not None else None
    repo = SkillRepository(db, ctx)
    skill = await repo.get_for_update(skill_id)
    if skill is None:
        raise NotFound()
    changed: list[str] = []
    if text.name != skill.name:
        if await repo.get_by_name(text.name) is not None:
            raise _taken(text.name)
        changed.append("name")
    for field in ("description", "instructions"):
        if getattr(text, field) != getattr(skill, field):
            changed.append(field)
    if checked is not None and checked != skill.files:
        changed.append("files")
    previous = skill.name
    skill.name, skill.description, skill.instructions = (text.name, text.description,
                                                         text.instructions)
    if checked is not None:
        skill.files = checked
    skill.updated_at = utcnow()
    try:
        await db.flush()
    except IntegrityError as exc:
        raise _taken(text.name) from exc
    details: dict[str, Any] = {"name": skill.name, "changed": changed,
                               "files": list(skill.files)}
    if previous != skill.name:
        details["previous_name"] = previous
    await record(db, ctx, "skill.updated", target_kind="skill", target_id=skill.id,
                 details=details, **_actor(actor))
    return skill


async def delete_skill(db: AsyncSession, ctx: TenantContext, skill_id: uuid.UUID, *,
                       actor: Principal | None) -> None:
    """Delete a skill; llm nodes that name it (and have no package skill of that name) fail
    from then on. NotFound as above. Audited as ``skill.deleted``."""
    repo = SkillRepository(db, ctx)
    skill = await repo.access(skill_id)
    name = skill.name
    await repo.delete(skill)
    await db.flush()
    await record(db, ctx, "skill.deleted", target_kind="skill", target_id=skill_id,
                 details={"name": name}, **_actor(actor))


# --- run time ----------------------------------------------------------------------------------


def package_skill_path(name: str) -> str:
    return f"skills/{name}/{SKILL_FILE}"


def _with_file_list(skill: Skill) -> str:
    if not skill.files:
        return skill.instructions
    paths = ", ".join(f"`{p}`" for p in skill.files)
    return (f"{skill.instructions}\n\nThis skill also has reference files, not included "
            f"here: {paths}.")


async def skills_for(db: AsyncSession, ctx: TenantContext, files: dict[str, str],
                     node: LLMNode) -> list[tuple[str, str]]:
    """(name, instructions) for each skill ``node`` names, in its order (the engine's
    SkillsFactory). The agent version's own ``skills/<name>/SKILL.md`` (front matter
    stripped; its other files are not inlined) wins; otherwise the organization's skill of
    that name (its instructions, plus the paths of its reference files). ``db`` must be
    bound to ``ctx``'s tenant: another organization's skills are never visible. Raises
    ToolError for a name found in neither place, or an unreadable package SKILL.md."""
    found: dict[str, str] = {}
    wanted_from_org: list[str] = []
    for name in node.skills:
        text = files.get(package_skill_path(name))
        if text is None:
            wanted_from_org.append(name)
            continue
        try:
            found[name] = parse_skill_md(text).instructions
        except SkillMdError as exc:
            raise ToolError(f"skill '{name}': {package_skill_path(name)} cannot be read "
                            f"({exc}); deploy a corrected version of the agent") from None
    org_skills = await SkillRepository(db, ctx).by_names(wanted_from_org)
    result: list[tuple[str, str]] = []
    for name in node.skills:
        if name in found:
            result.append((name, found[name]))
        elif name in org_skills:
            result.append((name, _with_file_list(org_skills[name])))
        else:
            raise ToolError(f"skill '{name}' is neither in the agent package "
                            f"({package_skill_path(name)}) nor in the organization's skills; "
                            "add it on the Skills page")
    return result

