"""``enginex --help`` and the API-client commands start without loading the server.

Importing the web framework, the ORM and the LLM/MCP clients took ~2.9 s, so every command,
even ``--help``, took seconds. These tests check which modules are loaded, never wall-clock
time (the measured figures are in docs/ARCHITECTURE.md, "Client CLI").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENGINEX = Path(sys.executable).with_name("enginex")
HEAVY = ["fastapi", "starlette", "sqlalchemy", "openai", "anthropic", "mcp", "uvicorn",
         "alembic", "cryptography"]

# Build the whole parser (every command registers its arguments), parse the arguments of a
# client command, then list the heavy modules that got imported along the way.
PROBE = """
import json, sys
import enginex.cli
parser = enginex.cli.build_parser()
parser.parse_args(sys.argv[1:])
print(json.dumps(sorted(m for m in {heavy} if m in sys.modules)))
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ENGINEX_")}


def _heavy_modules_after(*argv: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv],
                          capture_output=True, text=True, env=_env(), timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_building_the_parser_imports_no_server_module() -> None:
    assert _heavy_modules_after("sessions", "list", "--org", "acme") == []


@pytest.mark.parametrize("argv", [["--help"], ["sessions", "--help"], ["reports", "--help"],
                                  ["keys", "--help"], ["tenant", "--help"]])
def test_help_imports_no_server_module_and_shows_no_markup(argv: list[str]) -> None:
    # -X importtime lists every module the command imported, on stderr.
    done = subprocess.run([sys.executable, "-X", "importtime", str(ENGINEX), *argv],
                          capture_output=True, text=True, env=_env(), timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert sorted(m for m in HEAVY if m in imported) == []
    # Help reads no settings: pydantic alone costs ~0.4 s of start-up (a command module that
    # imported enginex.config at its top did that to every --help).
    assert "pydantic" not in imported
    assert "usage: enginex" in done.stdout
    assert "``" not in done.stdout  # reStructuredText literals, not for a terminal


def test_client_command_imports_no_server_module(tmp_path: Path) -> None:
    """A client command talks HTTP only: with no server listening it fails with a message,
    without having loaded the ORM or the web framework."""
    env = _env() | {"ENGINEX_DATA_DIR": str(tmp_path), "ENGINEX_API_KEY": "ek_nothing",
                    "ENGINEX_URL": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-X", "importtime", str(ENGINEX), "sessions", "list",
                           "--org", "acme"], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 2
    assert "enginex: error:" in done.stderr
    assert "Traceback" not in done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert sorted(m for m in HEAVY if m in imported) == []


def test_hints_name_the_command_the_user_can_run(tmp_path: Path) -> None:
    """After `make start` the virtualenv is not activated: `enginex` alone is not found, so a
    hint names the script the user ran (`.venv/bin/enginex`), relative to where they are."""
    project = ENGINEX.parent.parent.parent
    env = _env() | {"ENGINEX_DATA_DIR": str(tmp_path),
                    "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                            if Path(p) != ENGINEX.parent)}
    env.pop("UV", None)  # set when the tests run under `uv run`: the hint would say so
    done = subprocess.run([os.path.relpath(ENGINEX, project), "sessions", "list", "--org",
                           "acme"], cwd=project, capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert f"`{os.path.relpath(ENGINEX, project)} api-keys create --org acme" in done.stderr
    under_uv = subprocess.run([os.path.relpath(ENGINEX, project), "sessions", "list", "--org",
                               "acme"], cwd=project, capture_output=True, text=True,
                              env=env | {"UV": "/usr/local/bin/uv"}, timeout=120, check=False)
    assert "`uv run enginex api-keys create --org acme" in under_uv.stderr
