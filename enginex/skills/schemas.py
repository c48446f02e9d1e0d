"""Bodies of the skill routes.

A skill is written as its whole SKILL.md text (``skill_md``: front matter with ``name`` and
``description``, then the Markdown instructions), the same text ``GET .../skill.md`` returns,
plus optional reference files. See docs/SKILLS.md.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints

from enginex.kit.schemas import RequestBody, ResponseBody

MAX_FILES = 50
# Generous bounds for the parser; the service checks the real limits (in bytes) and says so.
SkillMdText = Annotated[str, StringConstraints(min_length=1, max_length=200_000)]
FilePath = Annotated[str, StringConstraints(min_length=1, max_length=240,
                                            strip_whitespace=False)]
FileText = Annotated[str, StringConstraints(max_length=600_000, strip_whitespace=False)]
Files = Annotated[dict[FilePath, FileText], Field(max_length=MAX_FILES)]

SKILL_MD_HELP = ("The whole SKILL.md: front matter between '---' lines with 'name' (required; "
                 "1-64 lowercase letters, digits, '-' or '_') and 'description' (optional, "
                 "up to 1024 characters), then the Markdown instructions (up to 100 KB).")
FILES_HELP = ("Optional reference files, {relative path: text}: at most 50, 512 KB in all, "
              "paths like 'reference/forms.md' (no '..', no leading '/', no backslashes), "
              "text only, no executable code.")


class SkillCreate(RequestBody):
    skill_md: SkillMdText = Field(description=SKILL_MD_HELP)
    files: Files = Field(default_factory=dict, description=FILES_HELP)


class SkillUpdate(RequestBody):
    """Replaces the SKILL.md (name, description and instructions). ``files`` replaces all
    reference files when given ({} removes them); omitted or null keeps them."""

    skill_md: SkillMdText = Field(description=SKILL_MD_HELP)
    files: Files | None = Field(default=None, description=FILES_HELP)


class SkillSummary(ResponseBody):
    id: uuid.UUID
    name: str
    description: str
    files: list[str] = Field(description="Paths of the reference files.")
    created_at: datetime
    updated_at: datetime


class SkillOut(ResponseBody):
    id: uuid.UUID
    name: str
    description: str
    instructions: str
    files: dict[str, str]
    skill_md: str = Field(description="The SKILL.md text (front matter + instructions).")
    created_at: datetime
    updated_at: datetime
