"""The ``enginex`` command, run as a user runs it: a subprocess on an embedded SQLite data dir.

What is checked is what the user sees (exit status, stdout, stderr without a traceback) and
what ends up in the database file.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from enginex.cli import DEMO_PASSWORD
from enginex.kit.crypto import generate_master_key

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


def test_migrate_creates_a_private_embedded_database(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "fresh")
    assert "latest schema" in cli.ok("migrate")
    assert "latest schema" in cli.ok("migrate")  # idempotent
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
    for weak, policy in (("short-pw", "Use at least 12 characters"),
                         ("password1234", "too common"),
                         ("carol-carol-2024", "email address")):
        error = cli.refused("tenant", "create", "--slug", "weak-co", "--name", "Weak",
                            "--admin-email", "carol@weak.test", "--admin-password-stdin",
                            stdin=weak + "\n")
        assert error.startswith("enginex: error: password: ") and policy in error, error
    assert cli.query("SELECT count(*) FROM organizations WHERE slug = 'weak-co'") == [(0,)]
    assert cli.query("SELECT count(*) FROM users WHERE email = 'carol@weak.test'") == [(0,)]


def test_tenant_create_refuses_bad_input_clearly(cli: Cli) -> None:
    no_password = cli.refused("tenant", "create", "--slug", "nopw", "--name", "N",
                              "--admin-email", "dan@nopw.test")
    assert "--admin-password-stdin" in no_password
    empty = cli.refused("tenant", "create", "--slug", "nopw", "--name", "N", "--admin-email",
                        "dan@nopw.test", "--admin-password-stdin", stdin="\n")
    assert "no password on standard input" in empty
    bad_slug = cli.refused("tenant", "create", "--slug", "Not A Slug", "--name", "N",
                           "--admin-email", "dan@nopw.test", "--admin-password-stdin",
                           stdin=PASSWORD + "\n")
    assert "--slug must be" in bad_slug
    assert cli.query("SELECT count(*) FROM users WHERE email = 'dan@nopw.test'") == [(0,)]


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
    assert "password" in cli.refused("admin", "create", "--email", "x@ops.test",
                                      "--password-stdin", stdin="tiny\n")


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


def test_keys_generate_prints_a_fresh_32_byte_key(cli: Cli) -> None:
    keys = {cli.ok("keys", "generate").strip() for _ in range(2)}
    assert len(keys) == 2
    for key in keys:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", key)
        assert len(base64.urlsafe_b64decode(key + "=")) == 32


def test_postgres_without_a_master_key_is_refused(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "pg")
    pg_url = "postgresql+psycopg://enginex_app@127.0.0.1:5432/enginex"
    for command in (("migrate",), ("serve", "--port", "1"), ("demo",)):
        error = cli.refused(*command, ENGINEX_DATABASE_URL=pg_url)
        assert "ENGINEX_DATABASE_URL points at PostgreSQL but no ENGINEX_MASTER_KEY" in error
        assert "enginex keys generate" in error
    assert not (tmp_path / "pg").exists()  # refused before touching anything


def test_unusable_settings_are_reported_without_a_traceback(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "bad")
    error = cli.refused("keys", "generate", ENGINEX_COOKIE_SECURE="maybe")
    assert "ENGINEX_COOKIE_SECURE" in error
    error = cli.refused("serve", "--port", "1", ENGINEX_MASTER_KEY="not-a-key")
    assert "ENGINEX_MASTER_KEY must decode to 32 bytes" in error
    error = cli.refused("migrate", ENGINEX_BASE_URL="https://enginex.example",
                        ENGINEX_COOKIE_SECURE="false")
    assert "Secure flag" in error
    assert not (tmp_path / "bad").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Cli, subprocess.Popen[bytes], str]]:
    cli = Cli(tmp_path / "served")
    port = _free_port()
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
    deadline = time.monotonic() + 60
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
    assert httpx.get(f"{base_url}/readyz", timeout=5).json() == {"status": "ok",
                                                                 "database": "ok"}
    key_file = cli.data_dir / "master.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(base64.urlsafe_b64decode(key_file.read_text().strip() + "=")) == 32
    assert cli.data_dir.stat().st_mode & 0o777 == 0o700

    process.terminate()
    assert process.wait(30) == 0, (tmp_path / "serve.log").read_text()
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log


def test_the_key_file_is_kept_across_restarts(tmp_path: Path) -> None:
    from enginex.config import Settings
    from enginex.kit.crypto import load_master_key

    settings = Settings(data_dir=tmp_path / "keys")
    first = load_master_key(settings)
    assert load_master_key(settings) == first
    explicit = generate_master_key()
    assert load_master_key(Settings(data_dir=tmp_path / "keys", master_key=explicit)) == \
        base64.urlsafe_b64decode(explicit + "=")
