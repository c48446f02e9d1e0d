"""The operator journey through the ``enginex`` command, run as a user runs it: subprocesses
talking to a real server with organization API keys (SQLite and PostgreSQL), and ``enginex
demo`` deploying the shipped demo agent into both demo tenants.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enginex.agents.package import load_directory
from enginex.agents.service import known_tool_names
from enginex.client_cli import describe_event, parse_sse
from enginex.demo import DEMO_AGENT_DIR, DEMO_AGENT_KEY, DEMO_TIMESHEET, load_demo_agent
from enginex.kit.errors import NOT_FOUND_MESSAGE
from tests.factories import AGENT_FIXTURES, TIMESHEET, Org, Server

ENGINEX = Path(sys.executable).with_name("enginex")


@dataclass
class Done:
    code: int
    out: str
    err: str


class EnginexCli:
    """``enginex`` in a subprocess with a clean ENGINEX_* environment and one API key."""

    def __init__(self, cwd: Path, *, url: str | None = None, **env: str) -> None:
        self.cwd, self.url = cwd, url
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEX_")}
        self.env.update(env)

    def argv(self, args: tuple[str, ...]) -> list[str]:
        return [str(ENGINEX), *args, *(["--url", self.url] if self.url else [])]

    def start(self, *args: str, api_key: str | None = None) -> subprocess.Popen[str]:
        env = {**self.env, **({"ENGINEX_API_KEY": api_key} if api_key else {})}
        return subprocess.Popen(self.argv(args), cwd=self.cwd, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run(self, *args: str, api_key: str | None = None) -> Done:
        return self.wait(self.start(*args, api_key=api_key))

    @staticmethod
    def wait(process: subprocess.Popen[str]) -> Done:
        out, err = process.communicate(timeout=90)
        assert "Traceback" not in err, err
        return Done(process.returncode, out, err)

    def ok(self, *args: str, api_key: str | None = None) -> str:
        done = self.run(*args, api_key=api_key)
        assert done.code == 0, (args, done.out, done.err)
        return done.out


def test_the_shipped_demo_package_is_the_test_fixture() -> None:
    """One package, two places: the shipped copy and the fixture the engine tests use.

    Only the version differs: the shipped demo's version goes up whenever its content changes
    (a demo database seeded by an older release then gets a new version instead of a conflict
    on the old one), while the fixture keeps 1.0.0, which the tests that deploy further
    versions of it build on."""
    shipped = load_demo_agent()
    fixture = load_directory(AGENT_FIXTURES / "hourly_tracking", known_tools=known_tool_names())
    assert shipped.manifest.agent.id == DEMO_AGENT_KEY
    assert shipped.files == fixture.files
    assert fixture.manifest.agent.version == "1.0.0"
    assert shipped.manifest.model_copy(update={"agent": fixture.manifest.agent}) \
        == fixture.manifest
    assert DEMO_TIMESHEET.read_text().startswith("date,person,project,hours\n")


def test_sse_parsing_and_event_lines() -> None:
    lines = ["retry: 2000", "", ": keep-alive", "", "id: 7", "event: approval_requested",
             'data: {"seq": 7, "at": "2026-11-02T09:30:05Z", "kind": "approval_requested",',
             'data: "node_id": "ok", "data": {"approval_id": "a1", "approver_role": "operator"}}',
             "", "event: end", "data: {}", ""]
    events = list(parse_sse(lines))
    assert [(e.id, e.event) for e in events] == [("7", "approval_requested"), (None, "end")]
    line = describe_event(json.loads(events[0].data))
    assert re.fullmatch(r"   7  09:30:05  approval_requested\s+ok\s+approval a1 \(operator "
                        r"decides\)", line), line


def test_operator_journey_through_the_cli(server: Server, org_a: Org, org_b: Org,
                                          tmp_path: Path) -> None:
    cli = EnginexCli(tmp_path, url=server.base_url)
    slug, keys = org_a.slug, org_a.api_keys

    pushed = cli.ok("agents", "push", str(DEMO_AGENT_DIR), "--org", slug,
                    api_key=keys["builder"])
    assert pushed.startswith(f"deployed: {DEMO_AGENT_KEY} 1.1.0 to '{slug}'"), pushed

    # Starts, then follows the events and stops (exit status 3) at the manager's approval.
    waiting = cli.run("sessions", "start", DEMO_AGENT_KEY, "--org", slug,
                      "--input", f"timesheet={TIMESHEET}", "--watch", api_key=keys["operator"])
    assert waiting.code == 3, (waiting.out, waiting.err)
    started = re.match(rf"started session (\S+) \({DEMO_AGENT_KEY} 1\.1\.0, queued\)\n",
                       waiting.out)
    assert started, waiting.out
    session_id = started.group(1)
    seqs = [int(line.split()[0]) for line in waiting.out.splitlines()
            if line[:4].strip().isdigit()]
    assert seqs == list(range(1, len(seqs) + 1)), waiting.out
    assert re.search(r"approval_requested\s+manager_approval", waiting.out)
    decide = re.search(rf"enginex approvals decide (\S+) --org {slug} --decision approve",
                       waiting.out)
    assert decide, waiting.out
    approval_id = decide.group(1)
    assert f"session {session_id} is waiting for approval {approval_id}" in waiting.out
    assert "| Alice | Apollo | 16.0 |" in waiting.out  # the question, summary included

    decided = cli.ok("approvals", "decide", approval_id, "--org", slug, "--decision",
                     "approve", "--comment", "checked from the CLI", api_key=keys["operator"])
    assert f"approval {approval_id} approved (approve); session {session_id}" in decided

    finished = cli.run("sessions", "watch", session_id, "--org", slug,
                       api_key=keys["operator"])
    assert finished.code == 0, (finished.out, finished.err)
    assert re.search(r"approval_decided\s+manager_approval\s+approve: checked from the CLI",
                     finished.out)
    assert re.search(r"finished\s+-\s+succeeded", finished.out)
    assert finished.out.rstrip().endswith(f"session {session_id} succeeded")

    created = re.search(r"report_created\s+write_report\s+report (\S+) ", finished.out)
    assert created, finished.out
    report_id, target = created.group(1), tmp_path / "report.md"
    # Independent reads run side by side: the report, its file, the listings, org B's tries.
    listing = cli.start("reports", "list", "--org", slug, "--session", session_id, "--json",
                        api_key=keys["viewer"])
    show = cli.start("reports", "show", report_id, "--org", slug, api_key=keys["viewer"])
    download = cli.start("reports", "download", report_id, "--org", slug, "-o", str(target),
                         api_key=keys["viewer"])
    inbox = cli.start("approvals", "list", "--org", slug, "--status", "approved", "--json",
                      api_key=keys["viewer"])
    foreign = [cli.start("sessions", "show", session_id, "--org", org, api_key=key)
               for org, key in ((slug, org_b.api_keys["admin"]),
                                (org_b.slug, org_b.api_keys["operator"]))]
    shown, saved = cli.wait(show), cli.wait(download)
    reports = json.loads(cli.wait(listing).out)
    assert [(r["id"], r["run_id"], r["title"]) for r in reports] == [
        (report_id, session_id, "Hourly tracking report")]

    assert shown.code == 0, shown.err
    assert shown.out.startswith("# Hourly tracking report\n")
    assert "| Alice | Borealis | 6.5 |" in shown.out and "**Total hours:** 37.5" in shown.out
    assert "- **Decision:** approve" in shown.out
    assert "- **Comment:** checked from the CLI" in shown.out
    assert saved.code == 0, saved.err
    assert target.read_text() == shown.out
    listed = cli.wait(inbox)
    assert [(a["id"], a["run_id"], a["decision"], a["comment"])
            for a in json.loads(listed.out)] == [(approval_id, session_id, "approve",
                                                  "checked from the CLI")]

    for process in foreign:  # another org's key, with either org's slug: "no such session"
        refused = cli.wait(process)
        assert (refused.code, refused.out) == (2, ""), refused
        assert refused.err == f"enginex: error: {NOT_FOUND_MESSAGE}\n"


def test_demo_deploys_the_agent_into_both_demo_tenants_idempotently(tmp_path: Path) -> None:
    from enginex.agents.service import get_agent
    from enginex.cli import DEMO_TENANTS, _in_transaction
    from enginex.config import Settings
    from enginex.db import set_tenant
    from enginex.orgs.repository import get_org_by_slug
    from enginex.tenancy.context import system_context

    data_dir = tmp_path / "demo"
    cli = EnginexCli(tmp_path, ENGINEX_DATA_DIR=str(data_dir))
    first, second = cli.ok("demo"), cli.ok("demo")
    assert first == second
    assert f"Demo agent '{DEMO_AGENT_KEY}'" in first
    assert (f"enginex sessions start {DEMO_AGENT_KEY} --org acme "
            f"--input-file timesheet={DEMO_TIMESHEET}") in first

    expected = load_demo_agent().content_hash

    async def catalog(session: Any, slug: str) -> list[tuple[str, str, bool]]:
        org = await get_org_by_slug(session, slug)
        assert org is not None
        await set_tenant(session, org.id)
        summary, versions = await get_agent(session, system_context(org.id, slug),
                                            DEMO_AGENT_KEY)
        assert summary.latest_version == "1.1.0"
        return [(v.version, v.content_hash, v.deployed_by is None) for v in versions]

    settings = Settings(data_dir=data_dir)
    for slug, _ in DEMO_TENANTS:
        versions = asyncio.run(_in_transaction(settings, lambda s, slug=slug: catalog(s, slug)))
        assert versions == [("1.1.0", expected, True)], slug
