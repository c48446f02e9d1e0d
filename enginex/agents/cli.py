"""``enginex agents push DIR --org SLUG``: deploy a package directory through the HTTP API.

The directory is zipped in memory (deterministically: sorted names, fixed timestamps, so the
same files always give the same archive) and sent with an organization API key. Hidden files
and folders (``.git``, ``.DS_Store``...) are left out; links are refused. The server validates
the package; its problems are printed one per line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import stat
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from enginex.config import Settings

DEFAULT_API_KEY_ENV = "ENGINEX_API_KEY"
URL_ENV = "ENGINEX_URL"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


class PushFailed(Exception):
    """The package could not be pushed; ``problems`` holds the server's per-path errors."""

    def __init__(self, message: str, *, status_code: int | None = None,
                 problems: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.problems = problems or []


def zip_directory(directory: Path) -> bytes:
    """The package directory as .zip bytes. Raises PushFailed for links or special files."""
    root = Path(directory)
    if not root.is_dir():
        raise PushFailed(f"{root} is not a directory")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for current, dirnames, filenames in os.walk(root, followlinks=False):
            base = Path(current)
            for name in sorted(dirnames):
                if name.startswith("."):
                    dirnames.remove(name)
                elif (base / name).is_symlink():
                    raise PushFailed(f"{base / name} is a link; packages cannot contain links")
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                path = base / name
                mode = path.lstat().st_mode
                if not stat.S_ISREG(mode):
                    raise PushFailed(f"{path} is a link or special file; packages hold plain "
                                     "files only")
                info = zipfile.ZipInfo(path.relative_to(root).as_posix(), _FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def push(directory: Path, org: str, base_url: str, api_key: str, *,
         timeout: float = 60.0) -> dict[str, Any]:
    """Zip ``directory`` and deploy it to ``org``'s catalog with ``api_key``.

    Returns the deployed version as the API describes it, plus ``created`` (False when the same
    content was already deployed). Raises PushFailed with the server's message and problems.
    """
    import httpx  # here, not at the top: `enginex --help` must start fast

    data = zip_directory(directory)
    url = f"{base_url.rstrip('/')}/api/v1/orgs/{org}/agents"
    try:
        response = httpx.post(url, files={"package": ("package.zip", data, "application/zip")},
                              headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout)
    except httpx.HTTPError as exc:
        raise PushFailed(f"could not reach {base_url}: {exc}") from exc
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code not in (200, 201):
        error = body.get("error", {}) if isinstance(body, dict) else {}
        message = error.get("message") or f"HTTP {response.status_code}"
        problems = (error.get("details") or {}).get("errors") or []
        raise PushFailed(message, status_code=response.status_code,
                         problems=[p for p in problems if isinstance(p, dict)])
    return {**body, "created": response.status_code == 201}


def cmd_agents_push(args: argparse.Namespace, settings: Settings) -> None:
    from enginex.cli import CliError

    api_key = os.environ.get(args.api_key_env, "")
    if not api_key:
        raise CliError(f"set the environment variable {args.api_key_env} to an API key of the "
                       "organization (role builder or admin)")
    base_url = args.url or os.environ.get(URL_ENV) or settings.base_url
    try:
        result = push(Path(args.directory), args.org, base_url, api_key)
    except PushFailed as exc:
        lines = [exc.message, *(f"  {p.get('path', '?')}: {p.get('message', '')}"
                                for p in exc.problems)]
        raise CliError("\n".join(lines)) from exc
    if args.json:
        print(json.dumps(result, indent=2))
        return
    verb = "deployed" if result["created"] else "already deployed (identical content)"
    print(f"{verb}: {result['agent_key']} {result['version']} to '{args.org}' "
          f"(content hash {result['content_hash'][:12]})")


def add_agents_commands(subparsers: Any) -> None:
    """Register ``enginex agents ...`` on the top-level subparsers of ``enginex``."""
    agents = subparsers.add_parser("agents", help="the agent catalog of an organization")
    actions = agents.add_subparsers(dest="action", required=True)
    push_parser = actions.add_parser(
        "push", help="deploy a package directory through the API",
        description="Zip DIR (hidden files left out) and deploy it as a new version. The API "
                    f"key is read from an environment variable ({DEFAULT_API_KEY_ENV} by "
                    "default), never from the command line.")
    push_parser.add_argument("directory", metavar="DIR", help="the package directory "
                             "(holding agent.json)")
    push_parser.add_argument("--org", required=True, metavar="SLUG",
                             help="the organization to deploy into")
    push_parser.add_argument("--url", default=None,
                             help=f"EngineX base URL (default: ${URL_ENV} or ENGINEX_BASE_URL)")
    push_parser.add_argument("--api-key-env", default=DEFAULT_API_KEY_ENV, metavar="VAR",
                             help="environment variable holding the API key")
    push_parser.add_argument("--json", action="store_true", help="print the result as JSON")
    push_parser.set_defaults(func=cmd_agents_push)
