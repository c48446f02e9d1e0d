"""The demo content shipped with EngineX: the "hourly-tracking" agent package and a timesheet.

``enginex demo`` (and ``enginex serve --demo``) deploy the package into both demo tenants
through the catalog service, exactly as a builder's push would store it. The package is plain
package data (``agents/hourly_tracking/``); tests check that it stays identical to the test
fixture ``tests/fixtures/agents/hourly_tracking``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from enginex.agents.models import AgentVersion
from enginex.agents.package import LoadedPackage, load_directory
from enginex.agents.service import deploy_package, known_tool_names
from enginex.db import set_tenant
from enginex.tenancy.context import TenantContext

DEMO_DIR = Path(__file__).resolve().parent
DEMO_AGENT_DIR = DEMO_DIR / "agents" / "hourly_tracking"
DEMO_SKILL = DEMO_DIR / "skills" / "timesheet-conventions" / "SKILL.md"
DEMO_AGENT_KEY = "hourly-tracking"
DEMO_TIMESHEET = DEMO_DIR / "timesheet.csv"


def load_demo_agent() -> LoadedPackage:
    """The shipped demo package, validated like an upload. Raises PackageInvalid."""
    return load_directory(DEMO_AGENT_DIR, known_tools=known_tool_names())


async def deploy_demo_agent(db: AsyncSession, ctx: TenantContext) -> tuple[AgentVersion, bool]:
    """Deploy the demo package into ``ctx``'s catalog. Returns (version, created).

    Idempotent: the same content deployed again returns the existing version, created False.
    Audited as ``agent.deployed`` by the system (no acting user). The caller commits.
    """
    package = await asyncio.to_thread(load_demo_agent)
    await set_tenant(db, ctx.org_id)
    return await deploy_package(db, ctx, package, actor=None)


async def seed_demo_skill(db: AsyncSession, ctx: TenantContext) -> bool:
    """Add the demo skill ``timesheet-conventions`` to ``ctx``'s organization unless a skill of
    that name exists (so the Skills page has an example). Returns True when it was added.
    Audited as ``skill.created`` by the system. The caller commits."""
    from enginex.skills.service import create_skill, list_skills

    text = DEMO_SKILL.read_text(encoding="utf-8")
    if any(s.name == DEMO_SKILL.parent.name for s in await list_skills(db, ctx)):
        return False
    await create_skill(db, ctx, skill_md=text, actor=None)
    return True


def demo_instructions(base_url: str, slug: str, admin_email: str, password: str, *,
                      command: str = "enginex") -> list[str]:
    """How to run the demo agent from a shell, as printed by ``enginex demo``; ``command`` is
    how the user runs enginex (``.venv/bin/enginex`` when the virtualenv is not activated)."""
    enginex = command
    return [
        f"Demo agent '{DEMO_AGENT_KEY}' is in the catalog of both demo organizations. "
        "Run it from a shell",
        f"while `{enginex} serve` is running (API at {base_url}):",
        f"  export ENGINEX_API_KEY=$(echo '{password}' | {enginex} api-keys create --org {slug} "
        f"--email {admin_email} --role operator --password-stdin)",
        f"  {enginex} sessions start {DEMO_AGENT_KEY} --org {slug} "
        f"--input-file timesheet={DEMO_TIMESHEET} --watch",
        f"  {enginex} approvals decide APPROVAL_ID --org {slug} --decision approve",
        f"  {enginex} sessions watch SESSION_ID --org {slug}",
        f"  {enginex} reports list --org {slug} --session SESSION_ID",
    ]
