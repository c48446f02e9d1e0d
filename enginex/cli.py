"""The ``enginex`` command line: serve, migrate, tenant/admin creation, demo data, keys."""

from __future__ import annotations

# Startup time: `enginex --help` and the API-client commands must not load the web framework,
# the ORM or the LLM/MCP clients (~2.9 s). Only the standard library is imported here; each
# command imports what it needs, and tests/test_cli_startup.py checks that this stays so.
import argparse
import asyncio
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from enginex.config import Settings

DEMO_PASSWORD = "enginex-demo-pass"  # noqa: S105 - published demo credential
DEMO_TENANTS = [("acme", "Acme Corp"), ("beta", "Beta Inc")]
DEMO_PLATFORM_ADMIN = "platform@enginex.test"


class CliError(Exception):
    """A problem the user can fix; printed without a traceback, exit status 2."""


def plain_text(doc: str | None) -> str:
    """A docstring as ``--help`` text: reStructuredText literals (double backticks) become
    single backticks, which read as a command in a terminal."""
    return re.sub(r"``(.+?)``", r"`\1`", doc or "")


def command_name() -> str:
    """How the user can run this command again, for hints: ``uv run enginex`` when started by
    ``uv run`` (uv sets ``UV`` for what it starts), ``enginex`` when the shell's PATH finds this
    very script, else its path relative to the working directory (``.venv/bin/enginex`` after
    ``make start``, where the virtualenv is not activated)."""
    import os
    import shutil

    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.basename(script) != "enginex":
        return "enginex"  # imported (tests, python -c): no better answer than the name
    if os.environ.get("UV"):
        return "uv run enginex"
    on_path = shutil.which("enginex")
    if on_path and os.path.samefile(on_path, script):
        return "enginex"
    relative = os.path.relpath(script)
    return relative if not relative.startswith("..") else script


def _read_password(flag: bool, name: str = "--password-stdin") -> str:
    if not flag:
        raise CliError(f"pass the password on standard input with {name}")
    password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise CliError("no password on standard input")
    return password


async def _in_transaction(settings: Settings,
                          work: Callable[[AsyncSession], Awaitable[Any]]) -> Any:
    from enginex.db import Database

    db = Database(settings)
    try:
        async with db.sessions() as session, session.begin():
            return await work(session)
    finally:
        await db.dispose()


async def create_tenant(session: AsyncSession, *, slug: str, name: str, admin_email: str,
                        admin_password: str | None) -> dict[str, str]:
    from enginex.db import set_tenant
    from enginex.orgs import repository as org_repo
    from enginex.orgs import service as org_service
    from enginex.tenancy.context import system_context
    from enginex.tenancy.scopes import Role

    org = await org_repo.get_org_by_slug(session, slug)
    if org is None:
        from enginex.audit.service import record

        org, ctx = await org_service.create_organization(session, slug=slug, name=name)
        await record(session, ctx, "org.created", target_kind="organization", target_id=org.id,
                     actor_kind="cli")
    else:
        await set_tenant(session, org.id)
        ctx = system_context(org.id, org.slug)
    user, _ = await org_service.ensure_user(session, email=admin_email, password=admin_password)
    await org_service.add_member(session, ctx, user, Role.ADMIN)
    return {"org_id": str(org.id), "slug": org.slug, "user_id": str(user.id)}


NOT_PRODUCTION_FLAG = "--i-know-this-is-not-production"


def _check_demo_target(settings: Settings, *, not_production: bool) -> None:
    """Refuse to seed the published demo accounts into PostgreSQL (how production runs)
    unless the operator says the database is not production."""
    if settings.is_postgres and not not_production:
        raise CliError("`enginex demo` creates accounts whose password is published in the "
                       "README, and ENGINEX_DATABASE_URL points at PostgreSQL, which is how "
                       "production runs. If this database is not production, run it again "
                       f"with {NOT_PRODUCTION_FLAG} (the platform admin is then not created; "
                       f"make one with `{command_name()} admin create`).")


async def _seed_demo(settings: Settings) -> list[tuple[str, str, str]]:
    """Seed the demo tenants (idempotent). The platform admin with the published password is
    created on the embedded SQLite database only, never on PostgreSQL."""
    from enginex.demo import deploy_demo_agent, seed_demo_skill
    from enginex.orgs import service as org_service
    from enginex.tenancy.context import system_context
    from enginex.tenancy.scopes import Role

    logins: list[tuple[str, str, str]] = []
    for slug, name in DEMO_TENANTS:
        async def work(session: AsyncSession, slug: str = slug, name: str = name) -> None:
            result = await create_tenant(session, slug=slug, name=name,
                                         admin_email=f"admin@{slug}.test",
                                         admin_password=DEMO_PASSWORD)
            ctx = system_context(__import__("uuid").UUID(result["org_id"]), slug)
            for role in (Role.BUILDER, Role.OPERATOR, Role.VIEWER):
                user, _ = await org_service.ensure_user(
                    session, email=f"{role}@{slug}.test", password=DEMO_PASSWORD)
                await org_service.add_member(session, ctx, user, role)
            await deploy_demo_agent(session, ctx)  # identical content: no new version
            await seed_demo_skill(session, ctx)  # only once per organization
        await _in_transaction(settings, work)
        logins += [(f"{role}@{slug}.test", name, str(role)) for role in Role]
    if settings.is_postgres:
        return logins

    async def admin(session: AsyncSession) -> None:
        from enginex.orgs.service import ensure_user
        user, _ = await ensure_user(session, email=DEMO_PLATFORM_ADMIN, password=DEMO_PASSWORD,
                                    platform_admin=True)
        user.is_platform_admin = True
    await _in_transaction(settings, admin)
    logins.append((DEMO_PLATFORM_ADMIN, "(platform)", "platform admin"))
    return logins


def _print_demo(logins: list[tuple[str, str, str]], settings: Settings) -> None:
    print(f"Demo data ready. Sign in at {settings.base_url}/login with password "
          f"'{DEMO_PASSWORD}' as:")
    for email, org, role in logins:
        print(f"  {email:<26} {org:<12} {role}")
    if settings.is_postgres:
        print(f"No platform admin {DEMO_PLATFORM_ADMIN} on PostgreSQL (its password would be "
              f"the published one): create one with `{command_name()} admin create`.")
    from enginex.demo import demo_instructions
    slug = DEMO_TENANTS[0][0]
    print("\n".join(["", *demo_instructions(settings.base_url, slug, f"admin@{slug}.test",
                                             DEMO_PASSWORD, command=command_name())]))


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from enginex.app import create_app
    from enginex.credentials.cli import check_master_key
    from enginex.kit.crypto import load_master_key
    from enginex.migrate import upgrade

    if args.workers < 1:
        raise CliError("--workers must be at least 1 (API processes; default 1)")
    load_master_key(settings)  # an unusable key is reported before anything changes
    if not settings.is_postgres:
        upgrade(settings)
    elif args.demo:
        raise CliError("--demo seeds the embedded SQLite database only; on PostgreSQL run "
                       "`enginex migrate` and `enginex demo` once, then `enginex serve`")
    check_master_key(settings)  # a wrong or lost master key: a clear error, not corruption
    if args.demo:
        _print_demo(asyncio.run(_seed_demo(settings)), settings)
    if args.no_worker:
        settings = settings.model_copy(update={"embedded_worker": False})
    # N API processes, plus the run worker process when N > 1: each has its own pool.
    processes = args.workers + (1 if args.workers > 1 and settings.embedded_worker else 0)
    _check_connection_budget(settings, processes, f"`enginex serve` ({processes} process"
                             f"{'es' if processes > 1 else ''})")
    if args.workers > 1:
        _serve_processes(args, settings)
        return
    app = create_app(settings)
    print(f"EngineX listening on http://{args.host}:{args.port}  (Ctrl+C to stop)", flush=True)
    # Our logging (kit/logs.py) formats uvicorn's records too; the one access line per request
    # is the middleware's (with tenant and request ids), so uvicorn's own is off.
    uvicorn.run(app, host=args.host, port=args.port, log_level=settings.log_level.lower(),
                proxy_headers=False, log_config=None, access_log=False)


SERVE_HEALTHCHECK_SECONDS = 60


def _check_connection_budget(settings: Settings, processes: int, what: str) -> None:
    """Refuse to start processes whose pools alone exceed PostgreSQL's connections."""
    from enginex.db import Database, check_connection_budget

    async def work() -> None:
        db = Database(settings)
        try:
            await check_connection_budget(db, settings, processes=processes, what=what)
        finally:
            await db.dispose()

    asyncio.run(work())


class _RunWorkerProcess:
    """The one run worker of ``enginex serve --workers N``: ``enginex worker`` as a child
    process, restarted (after a pause growing to 30 s) when it fails while the server runs.
    A clean exit (status 0: it was stopped by SIGINT/SIGTERM, e.g. Ctrl+C) is not restarted."""

    def __init__(self) -> None:
        import threading

        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._supervise, name="run-worker", daemon=True)

    def start(self) -> None:
        self._process = self._spawn()
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "enginex.cli", "worker"])

    def _supervise(self) -> None:
        pause = 1.0
        while not self._stopping.is_set():
            assert self._process is not None
            code = self._process.wait()
            if code == 0 or self._stopping.wait(pause):
                return
            logging.getLogger("enginex.serve").error(
                "the run worker process exited (status %s); starting it again", code)
            self._process = self._spawn()
            pause = min(pause * 2, 30.0)

    def stop(self) -> None:
        self._stopping.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()  # graceful: the worker finishes its steps' transactions
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._thread.join(timeout=5)


def _serve_processes(args: argparse.Namespace, settings: Settings) -> None:
    """``--workers N``: N uvicorn processes sharing the listening socket, each building its
    app with ``create_app()`` from the environment (ENGINEX_*), none of them running the
    embedded run worker; runs are executed by ONE ``enginex worker`` child process instead
    (none with --no-worker), so a deployment never runs N embedded workers by accident."""
    import uvicorn

    run_worker = _RunWorkerProcess() if settings.embedded_worker else None
    if run_worker is not None:
        run_worker.start()  # inherits the environment as it is, settings included
    os.environ["ENGINEX_EMBEDDED_WORKER"] = "false"  # read by the API processes' create_app
    print(f"EngineX listening on http://{args.host}:{args.port} with {args.workers} API "
          f"processes{' and one run worker process' if run_worker else ''}  (Ctrl+C to stop)",
          flush=True)
    try:
        # A process that starts slowly (a busy host) or stops answering the supervisor for
        # this long is replaced; uvicorn's 5 s default replaced healthy children under load.
        uvicorn.run("enginex.app:create_served_app", factory=True, workers=args.workers,
                    host=args.host, port=args.port, log_level=settings.log_level.lower(),
                    proxy_headers=False, timeout_worker_healthcheck=SERVE_HEALTHCHECK_SECONDS,
                    log_config=None, access_log=False)
    finally:
        if run_worker is not None:
            run_worker.stop()


def cmd_worker(args: argparse.Namespace, settings: Settings) -> None:
    """A standalone worker process (production): claims runs until SIGINT/SIGTERM."""
    import signal

    from enginex.credentials.cli import check_master_key
    from enginex.db import Database, check_connection_budget
    from enginex.kit.crypto import load_master_key
    from enginex.kit.process import protect_process
    from enginex.runs.runtime import build_engine, build_worker

    if args.slots:
        settings = settings.model_copy(update={"worker_slots": args.slots})
    check_master_key(settings)
    protect_process()  # stdio MCP servers must not read this process's environ/memory

    async def main() -> None:
        db = Database(settings)
        try:
            await check_connection_budget(db, settings, what="this worker")
            worker = build_worker(settings, db,
                                  build_engine(settings, db, load_master_key(settings)))
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, worker.stop)
            print(f"worker {worker.name} started ({settings.worker_slots} slots)", flush=True)
            await worker.run()
        finally:
            await db.dispose()

    asyncio.run(main())


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> None:
    from enginex.migrate import UnsafeDatabaseRole, upgrade

    try:
        upgrade(settings)
    except UnsafeDatabaseRole as exc:
        raise CliError(str(exc)) from exc
    print("database is at the latest schema")


def cmd_tenant_create(args: argparse.Namespace, settings: Settings) -> None:
    password = _read_password(args.admin_password_stdin, "--admin-password-stdin")

    async def work(session: AsyncSession) -> dict[str, str]:
        from enginex.orgs import repository as org_repo
        if await org_repo.get_org_by_slug(session, args.slug) is not None:
            raise CliError(f"an organization with slug '{args.slug}' already exists")
        return await create_tenant(session, slug=args.slug, name=args.name,
                                   admin_email=args.admin_email, admin_password=password)

    _validate_slug(args.slug)
    _migrate_embedded(settings)
    result = asyncio.run(_in_transaction(settings, work))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"created organization '{result['slug']}' ({result['org_id']}) with admin "
              f"{args.admin_email}")


def _migrate_embedded(settings: Settings) -> None:
    """The embedded SQLite database migrates itself (PostgreSQL needs ``enginex migrate``)."""
    from enginex.migrate import upgrade

    if not settings.is_postgres:
        upgrade(settings)


def _validate_slug(slug: str) -> None:
    from enginex.kit.schemas import RESERVED_SLUGS, SLUG_PATTERN
    if not re.match(SLUG_PATTERN, slug) or slug in RESERVED_SLUGS:
        raise CliError("--slug must be 1-40 lowercase letters, digits or dashes (not starting "
                       "or ending with a dash) and not a reserved word")


def cmd_admin_create(args: argparse.Namespace, settings: Settings) -> None:
    password = _read_password(args.password_stdin)

    async def work(session: AsyncSession) -> str:
        from enginex.orgs.service import ensure_user
        user, created = await ensure_user(session, email=args.email, password=password,
                                          platform_admin=True)
        user.is_platform_admin = True
        return "created" if created else "promoted existing user to"

    _migrate_embedded(settings)
    verb = asyncio.run(_in_transaction(settings, work))
    print(f"{verb} platform admin {args.email}")


def cmd_demo(args: argparse.Namespace, settings: Settings) -> None:
    from enginex.migrate import upgrade

    _check_demo_target(settings, not_production=args.not_production)
    if not settings.is_postgres:
        upgrade(settings)
    _print_demo(asyncio.run(_seed_demo(settings)), settings)


def cmd_reports_sweep(args: argparse.Namespace, settings: Settings) -> None:
    """Remove orphaned report files once (what every worker does every 10 minutes)."""
    from datetime import timedelta

    from enginex.db import Database
    from enginex.reports.storage import ArtifactStorage
    from enginex.reports.sweeper import sweep_orphans

    if args.older_than_minutes < 1:
        raise CliError("--older-than-minutes must be at least 1: a younger file may belong to "
                       "a step that has not committed yet (default 60)")
    storage = ArtifactStorage(settings.resolved_storage_dir)

    async def work() -> int:
        db = Database(settings)
        try:
            return await sweep_orphans(db.sessions, storage,
                                       older_than=timedelta(minutes=args.older_than_minutes))
        finally:
            await db.dispose()

    removed = asyncio.run(work())
    print(f"removed {removed} orphaned report file(s) older than {args.older_than_minutes} "
          f"minute(s) from {storage.root}")


def cmd_keys_generate(args: argparse.Namespace, settings: Settings) -> None:
    from enginex.kit.crypto import generate_master_key

    print(generate_master_key())


def build_parser() -> argparse.ArgumentParser:
    from enginex.admin.cli import add_user_commands
    from enginex.agents.cli import add_agents_commands
    from enginex.audit.cli import add_audit_commands
    from enginex.client_cli import add_client_commands
    from enginex.credentials.cli import add_keys_commands, add_tenant_commands
    from enginex.lifecycle.cli import add_lifecycle_commands
    from enginex.mail.cli import add_outbox_commands
    from enginex.usage.cli import add_plan_commands

    parser = argparse.ArgumentParser(prog="enginex", description=plain_text(__doc__))
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API and dashboard")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-worker", action="store_true", help="do not run the embedded worker")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="API processes sharing the port (default 1); with N > 1 runs are "
                            "executed by one separate worker process, never N")
    serve.add_argument("--demo", action="store_true", help="seed the demo tenants first")
    serve.set_defaults(func=cmd_serve)

    sub.add_parser("migrate", help="upgrade the database schema").set_defaults(func=cmd_migrate)

    worker = sub.add_parser("worker", help="run a worker process that executes sessions")
    worker.add_argument("--slots", type=int, default=0, help="concurrent steps (default 4)")
    worker.set_defaults(func=cmd_worker)

    tenant = sub.add_parser("tenant", help="manage tenants").add_subparsers(dest="action",
                                                                             required=True)
    create = tenant.add_parser("create", help="create an organization and its first admin")
    create.add_argument("--slug", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--admin-email", required=True)
    create.add_argument("--admin-password-stdin", action="store_true")
    create.add_argument("--json", action="store_true")
    create.set_defaults(func=cmd_tenant_create)
    add_tenant_commands(tenant)
    add_lifecycle_commands(tenant)

    admin = sub.add_parser("admin", help="platform admins").add_subparsers(dest="action",
                                                                            required=True)
    admin_create = admin.add_parser("create", help="create a platform admin")
    admin_create.add_argument("--email", required=True)
    admin_create.add_argument("--password-stdin", action="store_true")
    admin_create.set_defaults(func=cmd_admin_create)

    demo = sub.add_parser("demo", help="seed Acme Corp and Beta Inc (idempotent)")
    demo.add_argument(NOT_PRODUCTION_FLAG, dest="not_production", action="store_true",
                      help="allow seeding a PostgreSQL database (never production: the demo "
                           "passwords are published); no platform admin is created there")
    demo.set_defaults(func=cmd_demo)

    keys = sub.add_parser("keys", help="master keys").add_subparsers(dest="action", required=True)
    keys.add_parser("generate", help="print a new random master key").set_defaults(
        func=cmd_keys_generate)
    add_keys_commands(keys)
    add_agents_commands(sub)
    add_plan_commands(sub)
    client_groups = add_client_commands(sub)
    # `enginex reports` (client_cli) reads through the API; `sweep` works on the server's files.
    sweep = client_groups["reports"].add_parser(
        "sweep", help="on the server: remove report files no report refers to (files of "
        "steps that never committed)")
    sweep.add_argument("--older-than-minutes", type=int, default=60, metavar="N",
                       help="only files last written more than N minutes ago (default 60)")
    sweep.set_defaults(func=cmd_reports_sweep)
    add_audit_commands(sub)
    add_user_commands(sub)
    add_outbox_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    # httpx imports its own command line (click, rich, pygments: ~0.5 s) when those happen to be
    # installed; this process never uses it, and a None entry makes httpx skip it.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    args = build_parser().parse_args(argv)
    from enginex.kit.logs import configure_logging

    configure_logging("INFO", "auto")  # until the settings, which may say otherwise, are read
    from pydantic import ValidationError

    from enginex.config import get_settings

    try:
        settings = get_settings()
    except ValidationError as exc:
        _fail("invalid settings: " + "; ".join(
            f"ENGINEX_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()))
    configure_logging(settings.log_level, settings.log_format)
    try:
        if args.func is not cmd_keys_generate:  # generating a key must work before one is set
            settings.check_safe()
        args.func(args, settings)
    except Exception as exc:
        message = _problem_for_people(exc)
        if message is None:
            raise
        _fail(message)


def _problem_for_people(exc: Exception) -> str | None:
    """The message for an error the user can fix, or None for a bug (shown with its traceback).

    The error classes are looked up in ``sys.modules`` rather than imported: a command that
    never loaded the ORM (every API-client command) cannot have raised one of its errors, and
    importing it only to compare would cost the start-up time the lazy imports saved.
    """
    from enginex.config import UnsafeConfigurationError

    if isinstance(exc, CliError | UnsafeConfigurationError):
        return str(exc)
    crypto, errors, sa_exc = (sys.modules.get(name) for name in
                              ("enginex.kit.crypto", "enginex.kit.errors", "sqlalchemy.exc"))
    if crypto is not None and isinstance(exc, crypto.MasterKeyError):
        return str(exc)
    if errors is not None and isinstance(exc, errors.AppError):
        return exc.message
    if sa_exc is not None and isinstance(exc, sa_exc.DBAPIError):
        problem = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        return (f"database error: {problem}. Check ENGINEX_DATABASE_URL (and "
                "ENGINEX_MIGRATION_DATABASE_URL); if the schema is missing, run "
                f"`{command_name()} migrate`.")
    return None


def _fail(message: str) -> NoReturn:
    print(f"enginex: error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
