"""The ``enginex`` command, run as a user runs it: a subprocess on an embedded SQLite data dir.

What is checked is what the user sees (exit status, stdout, stderr without a traceback) and
what ends up in the database file.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from enginex.cli import DEMO_PASSWORD, NOT_PRODUCTION_FLAG, main
from enginex.config import Settings, get_settings
from enginex.kit.crypto import generate_master_key, load_master_key
from tests.factories import free_port

ENGINEX = Path(sys.executable).with_name("enginex")
PASSWORD = "plum-orbit-lantern-42"


@dataclass
class Cli:
    """The enginex command with its own data directory and a clean ENGINEX_* environment."""

    data_dir: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEX_")}
        env["ENGINEX_DATA_DIR"] = str(self.data_dir)
        env.update(extra)
        return env

    def run(self, *args: str, stdin: str | None = None,
            **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ENGINEX), *args], input=stdin, capture_output=True,
                              text=True, env=self.env(**extra), timeout=120, check=False)

    def ok(self, *args: str, stdin: str | None = None, **extra: str) -> str:
        done = self.run(*args, stdin=stdin, **extra)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        return done.stdout

    def refused(self, *args: str, stdin: str | None = None, **extra: str) -> str:
        """Run a command that must fail as a user error: status 2, one clear line."""
        done = self.run(*args, stdin=stdin, **extra)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("enginex: ")]
        assert len(errors) == 1, done.stderr
        return errors[0]

    def query(self, sql: str, *params: object) -> list[tuple]:
        with sqlite3.connect(self.data_dir / "enginex.db") as conn:
            return conn.execute(sql, params).fetchall()


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """One migrated data directory shared by this module (tests use distinct slugs/emails)."""
    cli = Cli(tmp_path_factory.mktemp("cli") / "data")
    cli.ok("migrate")
    return cli


def tenant_create(cli: Cli, slug: str, email: str, password: str = PASSWORD,
                  name: str = "Acme Corp") -> subprocess.CompletedProcess[str]:
    return cli.run("tenant", "create", "--slug", slug, "--name", name, "--admin-email", email,
                   "--admin-password-stdin", "--json", stdin=password + "\n")


def test_migrate_creates_a_private_embedded_database(cli: Cli) -> None:
    # the module fixture ran `enginex migrate` on a fresh directory; again is a no-op
    assert cli.ok("migrate").strip() == "database is at the latest schema"
    assert (cli.data_dir / "enginex.db").is_file()
    assert cli.data_dir.stat().st_mode & 0o777 == 0o700
    tables = {r[0] for r in cli.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"organizations", "users", "memberships", "api_keys", "alembic_version"} <= tables


def test_tenant_create_prints_the_new_ids_as_json(cli: Cli) -> None:
    done = tenant_create(cli, "acme", "alice@acme.test")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == {"org_id", "slug", "user_id"} and result["slug"] == "acme"
    org_id, user_id = uuid.UUID(result["org_id"]), uuid.UUID(result["user_id"])
    assert cli.query("SELECT name, status FROM organizations WHERE id = ?",
                     org_id.hex) == [("Acme Corp", "active")]
    assert cli.query("SELECT tenant_id, role FROM memberships WHERE user_id = ?",
                     user_id.hex) == [(org_id.hex, "admin")]
    assert cli.query("SELECT email, is_platform_admin FROM users WHERE id = ?",
                     user_id.hex) == [("alice@acme.test", 0)]

    # the same slug again: a clear refusal, nothing changed
    error = cli.refused("tenant", "create", "--slug", "acme", "--name", "Other",
                        "--admin-email", "mallory@acme.test", "--admin-password-stdin",
                        stdin=PASSWORD + "\n")
    assert error == "enginex: error: an organization with slug 'acme' already exists"
    assert cli.query("SELECT count(*) FROM users WHERE email = 'mallory@acme.test'") == [(0,)]


def test_an_existing_user_becomes_admin_of_a_second_tenant_with_one_account(cli: Cli) -> None:
    first = json.loads(tenant_create(cli, "first-co", "bob@multi.test").stdout)
    done = tenant_create(cli, "second-co", "BOB@multi.test", password="ignored-for-existing-1")
    assert done.returncode == 0, done.stderr
    second = json.loads(done.stdout)
    assert second["user_id"] == first["user_id"]
    assert second["org_id"] != first["org_id"]
    memberships = cli.query("SELECT tenant_id, role FROM memberships WHERE user_id = ?",
                            uuid.UUID(first["user_id"]).hex)
    assert sorted(memberships) == sorted([(uuid.UUID(first["org_id"]).hex, "admin"),
                                          (uuid.UUID(second["org_id"]).hex, "admin")])
    assert cli.query("SELECT count(*) FROM users WHERE lower(email) = 'bob@multi.test'") == [(1,)]


def test_a_weak_password_is_refused_with_the_policy_and_creates_nothing(cli: Cli) -> None:
    error = cli.refused("tenant", "create", "--slug", "weak-co", "--name", "Weak",
                        "--admin-email", "carol@weak.test", "--admin-password-stdin",
                        stdin="short-pw\n")
    assert error == ("enginex: error: password: Use at least 12 characters (a passphrase of a "
                     "few words works well).")
    assert cli.query("SELECT count(*) FROM organizations WHERE slug = 'weak-co'") == [(0,)]
    assert cli.query("SELECT count(*) FROM users WHERE email = 'carol@weak.test'") == [(0,)]


# --- the same entry point in-process, for the many small refusals (saves a process each) ----


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
             data_dir: Path, *argv: str, stdin: str = "", **env: str) -> tuple[int, str, str]:
    """``enginex.cli.main(argv)`` with a clean ENGINEX_* environment: (status, out, err)."""
    for name in [k for k in os.environ if k.startswith("ENGINEX_")]:
        monkeypatch.delenv(name)
    for name, value in {"ENGINEX_DATA_DIR": str(data_dir), **env}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    get_settings.cache_clear()
    try:
        main(list(argv))
        status = 0
    except SystemExit as exc:
        status = int(exc.code or 0)
    finally:
        get_settings.cache_clear()
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


@pytest.mark.parametrize(("argv", "stdin", "message"), [
    (("--slug", "nopw"), "", "pass the password on standard input with --admin-password-stdin"),
    (("--slug", "nopw", "--admin-password-stdin"), "\n", "no password on standard input"),
    (("--slug", "Not A Slug", "--admin-password-stdin"), PASSWORD, "--slug must be"),
    (("--slug", "nopw", "--admin-password-stdin"), "password1234", "too common"),
    (("--slug", "nopw", "--admin-password-stdin"), "daniel-rocks-2024", "email address"),
])
def test_tenant_create_refuses_bad_input_clearly(
        cli: Cli, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: tuple[str, ...], stdin: str, message: str) -> None:
    status, out, err = run_main(monkeypatch, capsys, cli.data_dir, "tenant", "create", *argv,
                                "--name", "N", "--admin-email", "daniel@nopw.test", stdin=stdin)
    assert (status, out) == (2, "")
    assert err.startswith("enginex: error: ") and message in err, err
    assert cli.query("SELECT count(*) FROM users WHERE email = 'daniel@nopw.test'") == [(0,)]
    assert cli.query("SELECT count(*) FROM organizations WHERE slug = 'nopw'") == [(0,)]


def test_admin_create_makes_or_promotes_a_platform_admin(cli: Cli) -> None:
    out = cli.ok("admin", "create", "--email", "root@ops.test", "--password-stdin",
                 stdin=PASSWORD + "\n")
    assert out.strip() == "created platform admin root@ops.test"
    assert cli.query("SELECT is_platform_admin FROM users WHERE email = 'root@ops.test'") == [
        (1,)]
    member = json.loads(tenant_create(cli, "promo-co", "erin@promo.test").stdout)
    out = cli.ok("admin", "create", "--email", "erin@promo.test", "--password-stdin",
                 stdin="whatever-is-ignored-9\n")
    assert out.strip() == "promoted existing user to platform admin erin@promo.test"
    assert cli.query("SELECT id, is_platform_admin FROM users WHERE email = 'erin@promo.test'"
                     ) == [(uuid.UUID(member["user_id"]).hex, 1)]


def test_admin_create_refuses_a_weak_password(cli: Cli, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_main(monkeypatch, capsys, cli.data_dir, "admin", "create",
                                "--email", "weak@ops.test", "--password-stdin", stdin="tiny\n")
    assert (status, out) == (2, "")
    assert err.startswith("enginex: error: password: Use at least 12 characters")
    assert cli.query("SELECT count(*) FROM users WHERE email = 'weak@ops.test'") == [(0,)]


def test_demo_is_idempotent_and_prints_the_logins(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "demo")
    first = cli.ok("demo")  # migrates the fresh embedded database itself
    users = cli.query("SELECT id, email, password_hash FROM users ORDER BY email")
    memberships = cli.query("SELECT tenant_id, user_id, role FROM memberships ORDER BY 1, 2")
    second = cli.ok("demo")
    assert first == second
    assert cli.query("SELECT id, email, password_hash FROM users ORDER BY email") == users
    assert cli.query("SELECT tenant_id, user_id, role FROM memberships ORDER BY 1, 2"
                     ) == memberships

    assert DEMO_PASSWORD in first
    for slug, org in (("acme", "Acme Corp"), ("beta", "Beta Inc")):
        for role in ("admin", "builder", "operator", "viewer"):
            assert re.search(rf"{role}@{slug}\.test\s+{org}\s+{role}", first), (slug, role)
    assert "platform@enginex.test" in first
    assert len(users) == 9 and len(memberships) == 8
    assert cli.query("SELECT slug, name FROM organizations ORDER BY slug") == [
        ("acme", "Acme Corp"), ("beta", "Beta Inc")]
    # Each demo organization has the example skill once, however often the demo is seeded.
    assert cli.query("SELECT o.slug, s.name FROM skills s JOIN organizations o "
                     "ON o.id = s.tenant_id ORDER BY o.slug") == [
        ("acme", "timesheet-conventions"), ("beta", "timesheet-conventions")]


@pytest.fixture
def pg_cli(tmp_path: Path) -> Iterator[tuple[Cli, dict[str, str], Any]]:
    """A Cli on a fresh, migrated PostgreSQL database: (cli, its environment, the database)."""
    from tests.conftest import APP_ROLE, IN_CI, OWNER_ROLE, PgDatabase, _pg_available

    problem = _pg_available()
    if problem:
        if IN_CI:
            pytest.fail(f"PostgreSQL is mandatory in CI: {problem}")
        pytest.skip(f"PostgreSQL is not reachable: {problem}")
    pg = PgDatabase()
    try:
        cli = Cli(tmp_path / "pg-data")
        env = {"ENGINEX_DATABASE_URL": pg.url(APP_ROLE),
               "ENGINEX_MIGRATION_DATABASE_URL": pg.url(OWNER_ROLE),
               "ENGINEX_MASTER_KEY": generate_master_key()}
        cli.ok("migrate", **env)
        yield cli, env, pg
    finally:
        pg.drop()


def pg_users(pg: Any) -> dict[str, bool]:
    from tests.conftest import OWNER_ROLE

    with psycopg.connect(pg.dsn(OWNER_ROLE)) as conn:
        return {row[0]: row[1] for row in conn.execute(
            "SELECT email, is_platform_admin FROM users")}


def test_demo_on_postgres_is_refused_without_the_not_production_flag(
        pg_cli: tuple[Cli, dict[str, str], Any]) -> None:
    """Threat: `enginex demo` run against a production PostgreSQL database would create a
    platform admin (and tenant admins) whose password is published in the README."""
    cli, env, pg = pg_cli
    for argv in (("demo",), ("serve", "--port", "1", "--demo")):
        error = cli.refused(*argv, **env)
        assert error.startswith("enginex: error: ") and "PostgreSQL" in error, error
    assert NOT_PRODUCTION_FLAG in cli.refused("demo", **env)
    assert pg_users(pg) == {}  # refused before anything was written


def test_demo_on_a_non_production_postgres_never_creates_the_published_platform_admin(
        pg_cli: tuple[Cli, dict[str, str], Any]) -> None:
    cli, env, pg = pg_cli
    out = cli.ok("demo", NOT_PRODUCTION_FLAG, **env)
    assert "admin@acme.test" in out and "No platform admin" in out
    assert cli.ok("demo", NOT_PRODUCTION_FLAG, **env) == out  # still idempotent
    users = pg_users(pg)
    assert "platform@enginex.test" not in users and not any(users.values())
    assert len(users) == 8


def test_keys_generate_prints_a_fresh_32_byte_key(cli: Cli) -> None:
    keys = {cli.ok("keys", "generate").strip(), generate_master_key()}
    assert len(keys) == 2
    for key in keys:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", key)
        assert len(base64.urlsafe_b64decode(key + "=")) == 32


PG_URL = "postgresql+psycopg://enginex_app@127.0.0.1:5432/enginex"
UNSAFE_PG = "ENGINEX_DATABASE_URL points at PostgreSQL but no ENGINEX_MASTER_KEY is set"


def test_serve_on_postgres_without_a_master_key_is_refused(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "pg")
    error = cli.refused("serve", "--port", "1", ENGINEX_DATABASE_URL=PG_URL)
    assert error.startswith(f"enginex: error: {UNSAFE_PG}") and "keys generate" in error
    assert not cli.data_dir.exists()  # refused before touching anything


@pytest.mark.parametrize(("argv", "env", "message"), [
    (("migrate",), {"ENGINEX_DATABASE_URL": PG_URL}, UNSAFE_PG),
    (("demo",), {"ENGINEX_DATABASE_URL": PG_URL}, UNSAFE_PG),
    (("keys", "generate"), {"ENGINEX_COOKIE_SECURE": "maybe"},
     "invalid settings: ENGINEX_COOKIE_SECURE: Input should be a valid boolean"),
    (("migrate",), {"ENGINEX_SESSION_IDLE_MINUTES": "soon"},
     "invalid settings: ENGINEX_SESSION_IDLE_MINUTES"),
    (("serve", "--port", "1"), {"ENGINEX_MASTER_KEY": "c2hvcnQ"},
     "ENGINEX_MASTER_KEY must decode to 32 bytes"),
    (("serve", "--port", "1"), {"ENGINEX_MASTER_KEY": "not base64!"},
     "ENGINEX_MASTER_KEY is not base64url text"),
    (("migrate",), {"ENGINEX_BASE_URL": "https://enginex.example",
                    "ENGINEX_COOKIE_SECURE": "false"}, "without the Secure flag"),
])
def test_unusable_settings_are_refused_before_anything_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: tuple[str, ...], env: dict[str, str], message: str) -> None:
    status, out, err = run_main(monkeypatch, capsys, tmp_path / "bad", *argv, **env)
    assert (status, out) == (2, "")
    assert err.startswith("enginex: error: ") and message in err, err
    assert not (tmp_path / "bad").exists()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Cli, subprocess.Popen[bytes], str]]:
    cli = Cli(tmp_path / "served")
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen([str(ENGINEX), "serve", "--port", str(port)], env=cli.env(),
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        yield cli, process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()


def test_serve_answers_healthz_and_creates_the_key_file_0600(
        served: tuple[Cli, subprocess.Popen[bytes], str], tmp_path: Path) -> None:
    cli, process, base_url = served
    deadline = time.monotonic() + 180  # start-up (imports, migrations) on a loaded 2-core machine
    health = None
    while time.monotonic() < deadline:
        assert process.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            health = httpx.get(f"{base_url}/healthz", timeout=2)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    assert health is not None and health.status_code == 200, "serve did not come up"
    assert health.json() == {"status": "ok"}
    assert httpx.get(f"{base_url}/readyz", timeout=30).json() == {"status": "ok",
                                                                 "database": "ok"}
    assert httpx.get(f"{base_url}/healthz", headers={"X-Request-ID": "cli-probe-1"},
                     timeout=30).headers["x-request-id"] == "cli-probe-1"
    key_file = cli.data_dir / "master.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(base64.urlsafe_b64decode(key_file.read_text().strip() + "=")) == 32
    assert cli.data_dir.stat().st_mode & 0o777 == 0o700

    process.terminate()  # a graceful stop (uvicorn re-raises SIGTERM once it is done)
    assert process.wait(30) in (0, -signal.SIGTERM)
    log = (tmp_path / "serve.log").read_text()
    assert "Application shutdown complete" in log and "Traceback" not in log
    # Not a terminal: one JSON object per line, and one access line per request (ours).
    probe = [json.loads(line) for line in log.splitlines() if "cli-probe-1" in line]
    assert len(probe) == 1, log
    assert probe[0]["logger"] == "enginex.request" and probe[0]["http"]["status"] == 200


def test_the_key_file_is_kept_across_restarts(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "keys")
    first = load_master_key(settings)
    assert load_master_key(settings) == first
    explicit = generate_master_key()
    assert load_master_key(Settings(data_dir=tmp_path / "keys", master_key=explicit)) == \
        base64.urlsafe_b64decode(explicit + "=")
