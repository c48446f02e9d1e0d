"""The stdio MCP sandbox launcher (enginex/mcp/sandbox.py) and the platform's own process
protection (enginex/kit/process.py), run for real: the launcher starts a Python probe that
tries what a hostile MCP server would -- read the platform's environment, open a connection,
keep root -- and the tests check that it cannot.

Tests run as root in CI (the launcher then drops to ``nobody``); as another user, the parts
that need root are skipped with the reason, never in CI. The end-to-end checks through the
platform (a run whose steps call the probes) are in tests/test_mcp.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp.client.session
import pytest

from enginex.kit.errors import TooManyRequests
from enginex.kit.process import protect_process
from enginex.mcp import client
from enginex.mcp.client import ConnectionSpec, McpSession, McpUnavailable, redact_url, redact_url_in
from enginex.mcp.sandbox import AUTO_IDS, AUTO_USER, REFUSED_EXIT
from enginex.mcp.service import REFRESH_CONCURRENCY, env_name_refused, refresh_slot
from tests.conftest import IN_CI
from tests.mcp_servers import SITE_PACKAGES, STDIO_ACCOUNT, greeting_listener, stdio_python

REPO = Path(__file__).resolve().parent.parent
AS_ROOT = os.geteuid() == 0

PROBE = """
import json, os, socket, sys
port = int(sys.argv[1])
out = {"ids": os.getresuid(), "groups": os.getgroups()}
try:
    with open(f"/proc/{os.getppid()}/environ", "rb") as handle:
        out["environ"] = len(handle.read())
except OSError as exc:
    out["environ"] = exc.strerror
try:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        out["connect"] = sock.recv(20).decode()
except OSError as exc:
    out["connect"] = exc.strerror or str(exc)
for path in sys.argv[2:]:
    try:
        with open(path, "rb") as handle:
            out[path] = "read"
    except OSError as exc:
        out[path] = exc.strerror
print(json.dumps(out))
"""


def needs_root(reason: str) -> None:
    if AS_ROOT:
        return
    if IN_CI:
        pytest.fail(f"CI runs the tests as root: {reason}")
    pytest.skip(f"needs root: {reason}")


@pytest.fixture
def listener() -> Iterator[int]:
    with greeting_listener() as port:
        yield port


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Like the client's: a fresh directory with a private ``home``."""
    with tempfile.TemporaryDirectory(prefix="enginex-mcp-test-") as path:
        (Path(path) / "home").mkdir(mode=0o700)
        yield Path(path)


def launch(workdir: Path, network: str, command: list[str], *,
           user: str = STDIO_ACCOUNT) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-I", "-m", "enginex.mcp.sandbox", "--memory-mb", "512",
            "--cpu-seconds", "20", "--keep-env", "PATH,HOME", "--user", user,
            "--network", network, "--workdir", str(workdir), "--", *command]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(workdir / "home"),
           "ENGINEX_MASTER_KEY": "must-not-arrive"}
    return subprocess.run(argv, cwd=workdir / "home", env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def probe(workdir: Path, network: str, port: int, *paths: str) -> dict[str, Any]:
    done = launch(workdir, network, [stdio_python(), "-c", PROBE, str(port), *paths])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_without_network_the_server_reaches_nothing_and_cannot_read_its_parent(
        workdir: Path, listener: int) -> None:
    seen = probe(workdir, "none", listener)
    assert seen["connect"] != "hello", seen  # not even 127.0.0.1: a namespace of its own
    assert seen["environ"] == "Permission denied", seen
    if AS_ROOT:
        nobody = pwd.getpwnam(STDIO_ACCOUNT)
        assert seen["ids"] == [nobody.pw_uid] * 3 and seen["groups"] in ([], [nobody.pw_gid])


def test_by_default_each_server_gets_an_account_of_its_own(listener: int) -> None:
    """``auto``: two servers (say of two organizations) never share a uid, so neither can
    write the other's home, read its files or signal it."""
    needs_root("only root can switch the server to another account")
    seen = []
    for _ in range(2):
        with tempfile.TemporaryDirectory(prefix="enginex-mcp-") as path:
            (Path(path) / "home").mkdir(mode=0o700)
            done = launch(Path(path), "none", [stdio_python(), "-c", PROBE, str(listener)],
                          user=AUTO_USER)
            assert done.returncode == 0, done.stderr
            seen.append(json.loads(done.stdout))
            assert (Path(path) / "home").stat().st_uid == seen[-1]["ids"][0]
    for ids in (s["ids"] for s in seen):
        assert len(set(ids)) == 1 and ids[0] in AUTO_IDS, seen
    assert seen[0]["ids"] != seen[1]["ids"], seen
    assert all(s["environ"] == "Permission denied" for s in seen), seen


def test_with_network_the_server_connects_and_still_cannot_read_its_parent(
        workdir: Path, listener: int) -> None:
    seen = probe(workdir, "host", listener)
    assert seen["connect"] == "hello", seen
    assert seen["environ"] == "Permission denied", seen


def test_as_root_the_server_runs_as_the_stdio_account_and_cannot_read_root_files(
        workdir: Path, listener: int) -> None:
    needs_root("only root can switch the server to another account")
    secret = workdir / "master.key"
    secret.write_text("key")
    secret.chmod(0o600)
    seen = probe(workdir, "none", listener, str(secret), "/etc/shadow")
    assert seen["ids"] == [pwd.getpwnam(STDIO_ACCOUNT).pw_uid] * 3, seen
    assert seen[str(secret)] == "Permission denied" and seen["/etc/shadow"] == "Permission denied"
    # Its home is its own; the work directory (with the stderr file) stays root's.
    assert (workdir / "home").stat().st_uid == pwd.getpwnam(STDIO_ACCOUNT).pw_uid
    assert workdir.stat().st_uid == 0 and workdir.stat().st_mode & 0o777 == 0o711


@pytest.mark.parametrize(("user", "reason"), [
    ("no-such-account-enginex", "does not exist on this host"),
    ("root", "is root"),
    ("0", "is root")])
def test_root_refuses_to_start_a_server_it_cannot_drop_privileges_for(
        workdir: Path, user: str, reason: str) -> None:
    needs_root("the drop to another account happens only as root")
    done = launch(workdir, "host", ["/bin/true"], user=user)
    assert done.returncode == REFUSED_EXIT, (done.returncode, done.stderr)
    assert "refusing to start" in done.stderr and reason in done.stderr, done.stderr
    assert "ENGINEX_MCP_STDIO_USER" in done.stderr


def test_the_server_gets_no_new_privileges_and_only_the_kept_environment(
        workdir: Path) -> None:
    code = ("import json, os; status = open('/proc/self/status').read(); "
            "print(json.dumps({'env': sorted(os.environ), "
            "'nnp': status.split('NoNewPrivs:')[1].split()[0]}))")
    done = launch(workdir, "none", [stdio_python(), "-c", code])
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["nnp"] == "1"
    assert "ENGINEX_MASTER_KEY" not in seen["env"]
    assert set(seen["env"]) <= {"PATH", "HOME", "LC_CTYPE"}  # Python may add LC_CTYPE


SLEEPER = """
import sys
sys.path[:0] = [{repo!r}, {site!r}]
from enginex.kit.process import protect_process
if sys.argv[1] == "protect":
    assert protect_process()
print("ready", flush=True)
sys.stdin.read()
"""


def _as_stdio_account() -> dict[str, Any]:
    if not AS_ROOT:
        return {}
    account = pwd.getpwnam(STDIO_ACCOUNT)
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


@pytest.mark.parametrize("mode", ["protect", "plain"])
def test_a_protected_process_hides_its_environment_from_processes_of_its_own_user(
        mode: str) -> None:
    """What the platform does at startup (protect_process): the same account, which is
    what a stdio server is when the platform does not run as root, cannot read it."""
    assert sys.platform.startswith("linux")
    code = SLEEPER.format(repo=str(REPO), site=SITE_PACKAGES)
    same_user = _as_stdio_account()
    target = subprocess.Popen([stdio_python(), "-c", code, mode], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd="/",
                              env={"SECRET_FOR_TEST": uuid.uuid4().hex}, **same_user)
    try:
        assert target.stdout is not None and target.stdout.readline().strip() == "ready"
        reader = subprocess.run(
            [stdio_python(), "-c", f"open('/proc/{target.pid}/environ', 'rb').read()"],
            capture_output=True, text=True, timeout=30, check=False, cwd="/", **same_user)
        if mode == "protect":
            assert reader.returncode != 0 and "Permission denied" in reader.stderr
        else:  # the control: without it, the same account reads it
            assert reader.returncode == 0, reader.stderr
    finally:
        assert target.stdin is not None
        target.stdin.close()
        target.wait(timeout=60)


def test_protect_process_is_idempotent_in_this_process() -> None:
    assert protect_process() is True
    assert protect_process() is True


def _children(command: str) -> list[int]:
    """This process's children running ``command`` (as /proc shows them)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == os.getpid() and argv[0].decode(errors="replace") == command:
            found.append(int(entry.name))
    return found


def test_a_start_that_times_out_stops_the_server_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that never answers the handshake: once the start has given up, the process
    is stopped without waiting for the SDK's own handshake timers or CLOSE_TIMEOUT (made
    endless here, so that waiting for either would hang)."""
    monkeypatch.setattr(mcp.client.session, "DISCOVER_TIMEOUT_SECONDS", 3600.0)
    monkeypatch.setattr(client, "CLOSE_TIMEOUT", 3600.0)
    spec = ConnectionSpec(server="mute", transport="stdio", timeout_seconds=1,
                          start_timeout_seconds=1, command="/bin/sleep", args=("3600",))

    async def scenario() -> None:
        session = McpSession(spec)
        with anyio.fail_after(120):  # the start's 1 s, then the SDK's bounded shutdown
            with pytest.raises(McpUnavailable, match="did not answer within 1 s"):
                await session.start()
            await session.aclose()

    asyncio.run(scenario())
    assert _children("/bin/sleep") == []


# --- pure rules ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "npm_config_registry", "Uv_Index_Url", "pip_index_url", "git_ssh_command", "jdk_java_options",
    "java_home", "openssl_conf", "perllib", "RubyLib", "node_path", "https_proxy", "Http_Proxy",
    "all_proxy", "no_proxy", "ssl_cert_file", "requests_ca_bundle", "curl_ca_bundle",
    "xdg_config_home", "ld_preload", "pythonpath", "path"])
def test_reserved_environment_names_are_refused_in_any_case(name: str) -> None:
    assert env_name_refused(name) and env_name_refused(name.upper())


@pytest.mark.parametrize("name", ["API_TOKEN", "GITHUB_TOKEN", "PROXY_TIMEOUT", "MY_JAVA"])
def test_ordinary_environment_names_are_allowed(name: str) -> None:
    assert not env_name_refused(name)


def test_urls_lose_their_query_string_in_messages() -> None:
    url = "https://mcp.example.com/mcp?token=s3cret&x=1#frag"
    assert redact_url(url) == "https://mcp.example.com/mcp?[redacted]"
    assert redact_url("https://mcp.example.com/mcp") == "https://mcp.example.com/mcp"
    text = f"could not reach {url} (token=s3cret&x=1#frag)"
    assert "s3cret" not in redact_url_in(text, url)


def test_refreshes_are_one_per_organization_and_bounded_per_process() -> None:
    async def scenario() -> None:
        orgs = [uuid.uuid4() for _ in range(REFRESH_CONCURRENCY + 1)]
        release = asyncio.Event()
        entered = [asyncio.Event() for _ in range(REFRESH_CONCURRENCY)]

        async def hold(org: uuid.UUID, inside: asyncio.Event) -> None:
            async with refresh_slot(org):
                inside.set()
                await release.wait()

        holders = [asyncio.create_task(hold(org, inside))
                   for org, inside in zip(orgs, entered, strict=False)]
        await asyncio.gather(*(inside.wait() for inside in entered))
        with pytest.raises(TooManyRequests) as same_org:
            async with refresh_slot(orgs[0]):
                pass
        assert same_org.value.headers["Retry-After"]
        assert "Another refresh" in same_org.value.message
        with pytest.raises(TooManyRequests) as busy:
            async with refresh_slot(orgs[-1], queue_seconds=0.2):
                pass
        assert "try again" in busy.value.message
        release.set()
        await asyncio.gather(*holders)
        async with refresh_slot(orgs[0]), refresh_slot(orgs[-1]):
            pass  # free again

    asyncio.run(scenario())
