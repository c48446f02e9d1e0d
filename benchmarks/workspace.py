"""Per-step cost of the organization-workspace features: MCP tools, model aliases, skills.

One throwaway deployment per backend (SQLite, and PostgreSQL when reachable, created as
``benchmarks/engine.py`` does: fresh database and roles, the app under row-level security),
one organization, and one one-node agent per case. The steps are driven in this process
exactly as a worker drives them (``claim_next`` + ``runs.engine.execute_step`` with the deps
of ``runs.runtime.build_engine``, ``allow_private_network`` on for the 127.0.0.1 servers),
without a server or worker process:

=============  ==============================================================================
``baseline``   a ``tool`` node calling the built-in ``set_output``: no organization resource,
               so ``_prepare`` opens no transaction (the engine's own cost of a step)
``mcp http``   a ``tool`` node calling ``mcp.bench.echo`` of a real MCP server (the tests'
               ``MCPServer`` over Streamable HTTP on 127.0.0.1, in a child process):
               the prepare transaction (server + cached tool list) and, since connections are
               per step, connect + initialize + call + close on every step
``llm``        an ``llm`` node on the quick setup's offline scripted provider (model
               ``default``; one turn: the scripted reply calls ``set_output``)
``llm alias``  the same node with ``model: fast``, an alias to a provider of kind
               ``scripted`` (alias resolution: alias + provider rows; the replies still come
               from the package's ``scripted_replies``)
``llm skills`` the ``llm`` node naming two skills: one from the package
               (``skills/pkg-skill/SKILL.md``), one of the organization
``mcp stdio``  a ``tool`` node calling ``mcp.sandboxed.echo`` of the tests' stdio server
               (tests/fixtures/mcp_stdio_server.py) from the platform catalog: a sandboxed
               Python process spawned, initialized and killed on every step. Only when the
               server's tools can be listed here (as root, or where the sandbox works);
               otherwise the line says why it was not measured
=============  ==============================================================================

The cases run in ``--rounds`` rounds, each running every case back to back (order rotated per
round) for ``--runs`` one-step runs (``--stdio-runs`` for the stdio case), after one warm-up
round. A case's figure is steps/s = runs / seconds from the first claim to the last commit
(queueing the runs is not timed). **Ratios** are medians of the per-round ratios, so drifts of
a shared machine hit both sides alike: ``/baseline`` = case steps/s / baseline steps/s (0.5:
a step of that case takes twice as long), and for the llm variants ``/llm`` = the same
against the plain ``llm`` case (alias resolution, skills). ``CPU ms`` is this process's CPU
time per step plus that of its reaped children (the stdio servers, each reaped when its step
ends); the HTTP MCP server's process and PostgreSQL's backends are not counted. It hardly
depends on how busy the machine is, so ``CPU ratio`` (baseline CPU / case CPU) is the
steadier comparison.

Not a test: it prints figures and exits non-zero only when it could not run.
Run: ``.venv/bin/python benchmarks/workspace.py [--help]`` (about 1.5 minutes for both
backends on a busy 2-core machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # ``benchmarks``, ``tests``

from sqlalchemy import select

from benchmarks.engine import backend_settings, machine_line
from benchmarks.pgdb import PG_ADMIN_DSN, BenchError, pg_problem
from enginex.agents.package import LoadedPackage, load_directory
from enginex.agents.service import deploy_package, known_tool_names
from enginex.config import Settings
from enginex.credentials.vault import Keyring
from enginex.db import Database, set_tenant
from enginex.kit.crypto import load_master_key
from enginex.kit.time import utcnow
from enginex.llm.service import create_provider, set_alias
from enginex.mcp.service import (
    create_catalog_entry,
    create_server,
    discover_tools,
    prepare_refresh,
    store_refresh,
)
from enginex.orgs.service import create_organization
from enginex.runs.engine import EngineDeps, execute_step
from enginex.runs.models import Run
from enginex.runs.runtime import build_engine
from enginex.runs.scheduler import claim_next
from enginex.runs.service import start_run
from enginex.skills.service import create_skill
from enginex.tenancy.context import TenantContext
from tests.mcp_servers import stdio_catalog_entry

ROOT = Path(__file__).resolve().parent.parent
WORKER = "bench-workspace"
HTTP_SERVER = "bench"
STDIO_SERVER = "sandboxed"
ALIAS = "fast"
SCRIPTED_REPLY = [{"tool_calls": [{"name": "set_output",
                                   "arguments": {"key": "answer", "value": "42"}}]}]
PACKAGE_SKILL = ("---\nname: pkg-skill\ndescription: A skill shipped in the agent package.\n"
                 "---\n# Package skill\n\n" + "- Keep answers short and cite the input.\n" * 20)
# The tests' HTTP MCP server (tests/mcp_servers.py), in a process of its own: its CPU is not
# counted as the platform's, and it does not compete with the engine for this process's GIL.
SERVE_MCP = ("import sys\nfrom tests.mcp_servers import serve_http_mcp\n"
             "with serve_http_mcp() as url:\n    print(url, flush=True)\n    sys.stdin.read()\n")
ORG_SKILL = ("---\nname: org-skill\ndescription: A skill of the organization.\n---\n"
             "# Organization skill\n\n" + "- Round hours to 0.25 and flag overtime.\n" * 20)


def log(message: str) -> None:
    print(f"  .. {message}", flush=True)


# --- the agents ----------------------------------------------------------------------------------


def _tool_agent(key: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"agent": {"id": key, "name": key, "version": "1.0.0",
                      "description": f"One tool node calling {tool}."},
            "graph": {"entry_node": "act", "terminal_nodes": ["act"], "max_steps": 3,
                      "nodes": [{"id": "act", "node_type": "tool", "tool": tool,
                                 "arguments": arguments, "output_key": "out"}]}}


def _llm_agent(key: str, *, model: str = "default",
               skills: list[str] | None = None) -> dict[str, Any]:
    return {"agent": {"id": key, "name": key, "version": "1.0.0",
                      "description": "One llm node on a scripted provider."},
            "graph": {"entry_node": "think", "terminal_nodes": ["think"], "max_steps": 3,
                      "nodes": [{"id": "think", "node_type": "llm", "model": model,
                                 "system_prompt": "Answer the question in the inputs.",
                                 "output_keys": ["answer"], "skills": skills or []}]},
            "scripted_replies": {"think": SCRIPTED_REPLY}}


@dataclass
class Case:
    key: str  # the agent's id
    label: str
    manifest: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    reference: str | None = None  # the case a second ratio is taken against
    stdio: bool = False


CASES: list[Case] = [
    Case("baseline", "baseline (set_output)",
         _tool_agent("baseline", "set_output", {"key": "out", "value": 1})),
    Case("mcp-http", "mcp http echo",
         _tool_agent("mcp-http", f"mcp.{HTTP_SERVER}.echo", {"text": "hello"})),
    Case("llm", "llm quick setup", _llm_agent("llm")),
    Case("llm-alias", "llm via alias", _llm_agent("llm-alias", model=ALIAS), reference="llm"),
    Case("llm-skills", "llm + 2 skills", _llm_agent("llm-skills",
                                                     skills=["pkg-skill", "org-skill"]),
         files={"skills/pkg-skill/SKILL.md": PACKAGE_SKILL}, reference="llm"),
    Case("mcp-stdio", "mcp stdio echo",
         _tool_agent("mcp-stdio", f"mcp.{STDIO_SERVER}.echo", {"text": "hello"}), stdio=True),
]


def load_case(tmp: Path, case: Case) -> LoadedPackage:
    root = tmp / "agents" / case.key
    root.mkdir(parents=True, exist_ok=True)
    (root / "agent.json").write_text(json.dumps(case.manifest))
    for path, text in case.files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return load_directory(root, known_tools=known_tool_names())


@contextlib.contextmanager
def mcp_http_server() -> Iterator[str]:
    """The tests' HTTP MCP server in a child process; yields its endpoint URL. It stops when
    its stdin closes."""
    process = subprocess.Popen([sys.executable, "-c", SERVE_MCP], cwd=ROOT, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    try:
        url = process.stdout.readline().strip()
        if not url.startswith("http://"):
            raise BenchError("the MCP test server did not start (see its output above)")
        yield url
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the organization's workspace ----------------------------------------------------------------


async def refresh(db: Database, settings: Settings, ctx: TenantContext,
                  server_id: uuid.UUID) -> str | None:
    """List the server's tools into its cache (as the dashboard's refresh does); None when
    they were listed, else why not."""
    keyring = Keyring.for_master(load_master_key(settings))
    async with db.sessions() as session:
        await set_tenant(session, ctx.org_id)
        plan = await prepare_refresh(session, ctx, server_id, keyring=keyring,
                                     allow_private_network=True,
                                     stdio_user=settings.mcp_stdio_user)
        await session.commit()
    outcome = await discover_tools(plan)
    async with db.sessions() as session:
        await set_tenant(session, ctx.org_id)
        _view, ok, message = await store_refresh(session, ctx, server_id, outcome, actor=None)
        await session.commit()
    return None if ok else (message or "the tools could not be listed")


async def set_up(db: Database, settings: Settings, mcp_url: str, stdio: bool
                 ) -> tuple[TenantContext, str | None]:
    """The organization with every case's agent and the resources they use. Returns the
    context and, when the stdio case cannot run here, why not."""
    async with db.sessions() as session:
        _org, ctx = await create_organization(session, slug="bench-ws", name="Bench workspace")
        for case in CASES:
            await deploy_package(session, ctx, load_case(settings.data_dir, case), actor=None)
        await create_provider(session, ctx, name="offline", kind="scripted", base_url=None,
                              credential_name=None, allowed_models=[], actor=None)
        await set_alias(session, ctx, ALIAS, provider="offline", model="scripted-model",
                        temperature=None, max_tokens=None, actor=None)
        await create_skill(session, ctx, skill_md=ORG_SKILL, actor=None)
        http = await create_server(session, ctx, name=HTTP_SERVER, transport="http",
                                   url=mcp_url, headers={}, catalog_entry=None, env={},
                                   enabled=True, actor=None, allow_private_network=True)
        await session.commit()
    if (problem := await refresh(db, settings, ctx, http.server.id)) is not None:
        raise BenchError(f"the HTTP MCP server's tools could not be listed: {problem}")
    if not stdio:
        return ctx, "not asked for (--no-stdio)"
    try:
        body = stdio_catalog_entry("bench-stdio")
    except RuntimeError as exc:
        return ctx, str(exc)
    arguments = body["args"]
    assert isinstance(arguments, list)
    async with db.sessions() as session:
        entry = await create_catalog_entry(
            session, name=str(body["name"]), description=str(body["description"]),
            command=str(body["command"]), args=[str(a) for a in arguments],
            allowed_env=[], timeout_seconds=60, memory_mb=512, actor_id=uuid.uuid4())
        await session.commit()
    async with db.sessions() as session:
        await set_tenant(session, ctx.org_id)
        server = await create_server(session, ctx, name=STDIO_SERVER, transport="stdio",
                                     url=None, headers={}, catalog_entry=entry.name, env={},
                                     enabled=True, actor=None, allow_private_network=True)
        await session.commit()
    problem = await refresh(db, settings, ctx, server.server.id)
    return ctx, (None if problem is None else f"the stdio server does not start here: {problem}")


# --- measuring -----------------------------------------------------------------------------------


@dataclass
class Sample:
    steps: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.steps / self.seconds


def _cpu() -> float:
    """CPU seconds of this process (all threads) and of its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def run_case(db: Database, deps: EngineDeps, ctx: TenantContext, case: Case,
                   runs: int) -> Sample:
    """Queue ``runs`` runs of the case (not timed), then claim and execute every step."""
    async with db.sessions() as session:
        await set_tenant(session, ctx.org_id)
        ids = [(await start_run(session, ctx, agent_key=case.key, version=None, inputs={})).id
               for _ in range(runs)]
        await session.commit()
    steps = 0
    cpu0, t0 = _cpu(), time.perf_counter()
    while True:
        async with db.sessions() as session:
            found = await claim_next(session, worker=WORKER, lease_seconds=deps.lease_seconds,
                                     tenant_limit=1_000_000)
            await session.commit()
        if found is None:
            break
        steps += await execute_step(deps, found.tenant_id, found.run_id, WORKER)
    elapsed, cpu = time.perf_counter() - t0, _cpu() - cpu0
    async with db.sessions() as session:
        await set_tenant(session, ctx.org_id)
        rows = (await session.execute(select(Run.status, Run.error).where(
            Run.tenant_id == ctx.org_id, Run.id.in_(ids)))).all()
    failed = [error for status, error in rows if status != "succeeded"]
    if failed or len(rows) != runs or steps != runs:
        raise BenchError(f"case {case.key}: {len(failed)} of {runs} runs did not succeed "
                         f"({steps} steps committed); first error: {failed[:1]}")
    return Sample(steps, elapsed, cpu)


@dataclass
class CaseResult:
    case: Case
    samples: list[Sample] = field(default_factory=list)
    skipped: str | None = None


async def bench_backend(backend: str, args: argparse.Namespace) -> list[CaseResult]:
    with backend_settings(backend) as (settings, _pg), mcp_http_server() as mcp_url:
        settings = settings.model_copy(update={"allow_private_network": True})
        db = Database(settings, pool_size=4)
        try:
            deps = build_engine(settings, db, load_master_key(settings))
            ctx, stdio_problem = await set_up(db, settings, mcp_url, not args.no_stdio)
            results = {c.key: CaseResult(c, skipped=stdio_problem if c.stdio else None)
                       for c in CASES}
            active = [c for c in CASES if results[c.key].skipped is None]
            log(f"warm-up: {', '.join(c.key for c in active)}")
            for case in active:
                await run_case(db, deps, ctx, case, 2)
            for round_no in range(args.rounds):
                shift = round_no % len(active)
                for case in active[shift:] + active[:shift]:
                    runs = args.stdio_runs if case.stdio else args.runs
                    results[case.key].samples.append(
                        await run_case(db, deps, ctx, case, runs))
                log(f"round {round_no + 1}/{args.rounds}: " + ", ".join(
                    f"{c.key} {results[c.key].samples[-1].rate:.0f}/s" for c in active))
            return list(results.values())
        finally:
            await db.dispose()


# --- report --------------------------------------------------------------------------------------


def _median_ratio(case: CaseResult, reference: CaseResult) -> tuple[float, float, float]:
    """(median, min, max) of the per-round ratios case rate / reference rate."""
    ratios = [a.rate / b.rate for a, b in zip(case.samples, reference.samples, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def _cpu_ms(result: CaseResult) -> float:
    return 1000 * sum(s.cpu_seconds for s in result.samples) / sum(
        s.steps for s in result.samples)


def report(backend: str, results: list[CaseResult]) -> None:
    by_key = {r.case.key: r for r in results}
    base = by_key["baseline"]
    print(f"\n[{backend}]")
    print(f"  {'case':<22} {'steps/s':>8} {'ms/step':>8} {'CPU ms':>7}   {'/baseline':<18} "
          f"{'CPU ratio':>9}   vs reference")
    for result in results:
        if result.skipped is not None:
            print(f"  {result.case.label:<22} not measured: {result.skipped}")
            continue
        rate = statistics.median(s.rate for s in result.samples)
        ratio, low, high = _median_ratio(result, base)
        cpu = _cpu_ms(result)
        line = (f"  {result.case.label:<22} {rate:8.1f} {1000 / rate:8.2f} {cpu:7.2f}   "
                f"{ratio:5.2f} ({low:.2f}-{high:.2f})  {_cpu_ms(base) / cpu:9.2f}")
        if result.case.reference is not None:
            ref = by_key[result.case.reference]
            r, r_low, r_high = _median_ratio(result, ref)
            line += (f"   /{result.case.reference}: {r:.2f} ({r_low:.2f}-{r_high:.2f}), CPU "
                     f"{_cpu_ms(ref) / cpu:.2f}")
        print(line)
    runs = {r.case.key: sum(s.steps for s in r.samples) for r in results if r.samples}
    print(f"  ({len(base.samples)} rounds; steps per case: "
          + ", ".join(f"{k} {v}" for k, v in runs.items()) + ")")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both",
                        help="default both (PostgreSQL is skipped when it is not reachable)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (default 5)")
    parser.add_argument("--runs", type=int, default=30,
                        help="one-step runs per case per round (default 30)")
    parser.add_argument("--stdio-runs", type=int, default=3,
                        help="runs of the stdio case per round: a process each (default 3)")
    parser.add_argument("--no-stdio", action="store_true", help="skip the stdio MCP case")
    args = parser.parse_args(argv)
    if min(args.rounds, args.runs, args.stdio_runs) < 1:
        parser.error("--rounds, --runs and --stdio-runs must be at least 1")
    return args


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """The engine logs a line per failed step at INFO/WARNING: keep the report readable."""
    import logging

    previous = logging.root.level
    logging.basicConfig(level=logging.WARNING)
    try:
        yield
    finally:
        logging.root.setLevel(previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("EngineX workspace benchmark: per-step cost of MCP tools, model aliases and skills")
    print(machine_line())
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    began = time.monotonic()
    reports: list[tuple[str, list[CaseResult]]] = []
    with _quiet_logs():
        for backend in backends:
            if backend == "postgres" and (problem := pg_problem()):
                print(f"\n[postgres] skipped: PostgreSQL is not reachable at {PG_ADMIN_DSN}: "
                      f"{problem}")
                continue
            print(f"\n== {backend} ==", flush=True)
            try:
                reports.append((backend, asyncio.run(bench_backend(backend, args))))
            except BenchError as exc:
                print(f"[{backend}] could not run: {exc}", file=sys.stderr)
                return 1
    print("\n=== summary ===")
    print(machine_line())
    for backend, results in reports:
        report(backend, results)
    print(f"\n(total {time.monotonic() - began:.0f} s; finished at {utcnow():%Y-%m-%d %H:%M} UTC)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
