"""Load and validate an agent package: a directory, a .zip or a .tar.gz.

A package is declarative: ``agent.json`` (required) plus text files -- prompts, skills
(``skills/<name>/SKILL.md``), notes and an optional ``mcp_servers.json``. It never contains
executable code, and it is never written to disk: archives are read in memory, entry by entry,
with every limit enforced while decompressing (the sizes an archive declares are not trusted).

Every problem is collected and raised at once as PackageInvalid, each with its path: a
manifest path such as ``graph.nodes[2].tools[0]``, a file path inside the package such as
``tools/run.py``, or ``package`` for the archive as a whole. Limits that signal an attack or
an accident (total size, file count, decompression bomb) stop reading immediately.

Allowed files: ``agent.json`` at the root (or inside one top-level folder, which is then
stripped), ``*.md``, ``*.txt``, ``*.json`` anywhere, anything textual under ``prompts/``, and
``skills/<name>/SKILL.md``. All must be UTF-8 text. macOS archive noise (``__MACOSX/``,
``.DS_Store``) is skipped. Refused: absolute paths, ``..``, backslashes, links, devices,
duplicate names (case-insensitively), encrypted entries, executable code by extension
(EXECUTABLE_EXTENSIONS) or by content (ELF, PE ``MZ``, Mach-O, Java class, ``#!`` scripts).

Tool names: a tool is known when it is in ``known_tools``. ``mcp.<server>.<tool>`` names are
accepted when ``<server>`` is listed in the package's ``mcp_servers.json``; otherwise they are
accepted only if ``known_mcp_servers`` is None (the default: the server is resolved against the
organization's MCP settings when the run starts) or contains ``<server>``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import unicodedata
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from enginex.agents.manifest import RESERVED_PREFIX, AgentManifest, is_reserved
from enginex.credentials import placeholders
from enginex.kit.expressions import ExpressionError
from enginex.kit.expressions import parse as parse_expression
from enginex.skills.skill_md import NAME_PATTERN as SKILL_NAME_PATTERN
from enginex.skills.skill_md import NAME_RULE as SKILL_NAME_RULE
from enginex.skills.skill_md import SkillMdError, parse_skill_md

MANIFEST_NAME = "agent.json"
MCP_SERVERS_NAME = "mcp_servers.json"
TEXT_EXTENSIONS = frozenset({".md", ".txt", ".json"})
EXECUTABLE_EXTENSIONS = frozenset({
    ".py", ".pyc", ".pyo", ".pyd", ".pyw", ".pyz", ".so", ".dll", ".dylib", ".exe", ".com",
    ".sh", ".bash", ".zsh", ".ksh", ".csh", ".fish", ".bat", ".cmd", ".ps1", ".psm1", ".vbs",
    ".js", ".mjs", ".cjs", ".ts", ".jar", ".class", ".war", ".bin", ".elf", ".o", ".a",
    ".wasm", ".msi", ".app", ".pl", ".rb", ".php", ".lua", ".whl", ".egg",
})
EXECUTABLE_MAGIC = (
    (b"\x7fELF", "an ELF binary"),
    (b"MZ", "a Windows executable"),
    (b"\xfe\xed\xfa\xce", "a Mach-O binary"),
    (b"\xfe\xed\xfa\xcf", "a Mach-O binary"),
    (b"\xce\xfa\xed\xfe", "a Mach-O binary"),
    (b"\xcf\xfa\xed\xfe", "a Mach-O binary"),
    (b"\xca\xfe\xba\xbe", "a Mach-O universal binary or Java class"),
    (b"#!", "a script with a '#!' interpreter line"),
    (b"\x00asm", "a WebAssembly module"),
)
IGNORED_PARTS = frozenset({"__MACOSX", ".DS_Store"})
SKILL_FILE = "SKILL.md"
_SEGMENT = re.compile(r"^[\w.@+-][\w .@+()-]{0,127}$")
_MCP_TOOL = re.compile(r"^mcp\.([A-Za-z0-9_-]{1,64})\.([A-Za-z0-9_.-]{1,128})$")
_MCP_SERVER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ALLOWED_DESCRIPTION = ("agent.json, *.md, *.txt, *.json, prompts/** and "
                       "skills/<name>/SKILL.md")


@dataclass(frozen=True)
class PackageLimits:
    max_compressed_bytes: int = 5 * 1024 * 1024
    max_total_bytes: int = 20 * 1024 * 1024
    max_file_bytes: int = 2 * 1024 * 1024
    max_files: int = 200
    max_path_length: int = 240
    max_depth: int = 8
    # Decompression bomb: refuse once more than ``ratio_floor_bytes`` came out of the archive
    # and the output exceeds ``max_ratio`` times the archive size.
    max_ratio: int = 100
    ratio_floor_bytes: int = 1024 * 1024


DEFAULT_LIMITS = PackageLimits()


@dataclass(frozen=True)
class PackageProblem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class PackageInvalid(Exception):
    """The package was refused; ``errors`` lists every problem found, each with its path."""

    def __init__(self, errors: list[PackageProblem]) -> None:
        self.errors = errors
        summary = "; ".join(str(e) for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"the agent package is not valid: {summary}{more}")


class _Abort(Exception):
    """A limit was hit: stop reading the archive at once."""

    def __init__(self, problem: PackageProblem) -> None:
        self.problem = problem


@dataclass(frozen=True)
class LoadedPackage:
    manifest: AgentManifest
    files: dict[str, str]
    content_hash: str
    size_bytes: int


# --- reading entries ----------------------------------------------------------------------

class _Collector:
    """Accumulates the entries of a package, checking names, counts and sizes as they come."""

    def __init__(self, limits: PackageLimits, compressed_size: int | None) -> None:
        self.limits = limits
        self.compressed_size = compressed_size
        self.entries: dict[str, bytes] = {}
        self.folded: dict[str, str] = {}
        self.problems: list[PackageProblem] = []
        self.count = 0
        self.total = 0
        self.inflated = 0
        # False when the reader counts decompressed bytes itself (tar.gz counts the stream).
        self.count_entry_bytes = True

    def problem(self, path: str, message: str) -> None:
        self.problems.append(PackageProblem(path, message))

    def abort(self, message: str) -> _Abort:
        return _Abort(PackageProblem("package", message))

    def count_entry(self) -> None:
        self.count += 1
        if self.count > self.limits.max_files:
            raise self.abort(f"the package has more than {self.limits.max_files} entries; "
                             "remove files it does not need")

    def account_inflated(self, amount: int) -> None:
        """Bytes produced by decompression (file data and archive headers)."""
        self.inflated += amount
        if self.compressed_size is None:
            return
        limits = self.limits
        if self.inflated > limits.ratio_floor_bytes and \
                self.inflated > limits.max_ratio * max(self.compressed_size, 1):
            raise self.abort(
                f"the archive expands more than {limits.max_ratio} times its size "
                "(a decompression bomb?); upload the files uncompressed or split them")

    def check_name(self, raw: str, kind: str = "file") -> str | None:
        """A safe normalized path, or None (problem recorded) when the name is refused."""
        shown = raw if len(raw) <= 200 else raw[:200] + "..."
        if "\x00" in raw or any(unicodedata.category(c) == "Cc" for c in raw):
            self.problem(shown.replace("\x00", "\\0"), "the name contains control characters")
            return None
        if "\\" in raw:
            self.problem(shown, "the name contains a backslash; use '/' between folders")
            return None
        if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
            self.problem(shown, "absolute paths are not allowed; use paths relative to the "
                         "package root")
            return None
        parts = [p for p in raw.split("/") if p not in ("", ".")]
        if ".." in parts:
            self.problem(shown, "'..' is not allowed in paths inside a package")
            return None
        if not parts:
            return None if kind == "dir" else self._refuse_empty(shown)
        path = "/".join(parts)
        if len(path) > self.limits.max_path_length or len(parts) > self.limits.max_depth:
            self.problem(shown, f"the path is longer than {self.limits.max_path_length} "
                         f"characters or {self.limits.max_depth} folders deep")
            return None
        if kind != "dir" and any(not _SEGMENT.match(p) for p in parts):
            self.problem(shown, "use letters, digits, spaces and . _ - @ + ( ) in file and "
                         "folder names")
            return None
        return path

    def _refuse_empty(self, shown: str) -> None:
        self.problem(shown or "package", "an entry has an empty name")
        return None

    def add(self, path: str, data: bytes) -> None:
        if len(data) > self.limits.max_file_bytes:
            raise self.abort(f"{path} is larger than {self.limits.max_file_bytes} bytes")
        folded = path.casefold()
        if folded in self.folded:
            self.problem(path, f"duplicate name (also '{self.folded[folded]}')")
            return
        self.folded[folded] = path
        self.total += len(data)
        if self.total > self.limits.max_total_bytes:
            raise self.abort(f"the files add up to more than {self.limits.max_total_bytes} "
                             "bytes uncompressed")
        self.entries[path] = data

    def read_stream(self, path: str, stream: io.BufferedIOBase | Any) -> bytes:
        """Read one entry in chunks, enforcing the per-file, total and ratio limits."""
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = stream.read(64 * 1024)
            if not chunk:
                break
            size += len(chunk)
            if size > self.limits.max_file_bytes:
                raise self.abort(f"{path} is larger than {self.limits.max_file_bytes} bytes")
            if self.total + size > self.limits.max_total_bytes:
                raise self.abort(f"the files add up to more than "
                                 f"{self.limits.max_total_bytes} bytes uncompressed")
            if self.count_entry_bytes:
                self.account_inflated(len(chunk))
            chunks.append(chunk)
        return b"".join(chunks)


def _ignored(path: str) -> bool:
    return any(part in IGNORED_PARTS or part.startswith("._") for part in path.split("/"))


def _read_zip(data: bytes, collector: _Collector) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise collector.abort(f"the .zip archive cannot be read ({exc}); create it again") \
            from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > collector.limits.max_files:
            raise collector.abort(f"the package has more than {collector.limits.max_files} "
                                  "entries; remove files it does not need")
        declared = sum(max(info.file_size, 0) for info in infos)
        if declared > collector.limits.max_total_bytes:
            raise collector.abort(f"the files add up to more than "
                                  f"{collector.limits.max_total_bytes} bytes uncompressed")
        for info in infos:
            collector.count_entry()
            mode = (info.external_attr >> 16) & 0xFFFF
            is_dir = info.is_dir()
            path = collector.check_name(info.filename, "dir" if is_dir else "file")
            if path is None or is_dir:
                continue
            if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                kind = "a symbolic link" if stat.S_ISLNK(mode) else "a special file"
                collector.problem(path, f"{kind} is not allowed; include the file itself")
                continue
            if info.flag_bits & 0x1:
                collector.problem(path, "encrypted entries are not supported")
                continue
            if _ignored(path):
                continue
            if info.file_size > collector.limits.max_file_bytes:
                raise collector.abort(f"{path} is larger than "
                                      f"{collector.limits.max_file_bytes} bytes")
            try:
                with archive.open(info) as stream:
                    content = collector.read_stream(path, stream)
            except (zipfile.BadZipFile, zlib.error, NotImplementedError, OSError,
                    EOFError, RuntimeError) as exc:
                collector.problem(path, f"cannot be read from the archive ({exc})")
                continue
            collector.add(path, content)


class _CountingGzip(io.RawIOBase):
    """A decompressing reader that stops once the output breaks a limit."""

    def __init__(self, data: bytes, collector: _Collector) -> None:
        self._gzip = gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb")
        self._collector = collector
        headroom = collector.limits.max_files * 1536 + 64 * 1024  # tar headers and padding
        self._budget = collector.limits.max_total_bytes + headroom

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._gzip.read(min(len(buffer), 64 * 1024))
        self._budget -= len(chunk)
        if self._budget < 0:
            raise self._collector.abort(
                f"the archive holds more than {self._collector.limits.max_total_bytes} bytes "
                "uncompressed")
        self._collector.account_inflated(len(chunk))
        buffer[:len(chunk)] = chunk
        return len(chunk)


def _read_tar_gz(data: bytes, collector: _Collector) -> None:
    # Headers are counted by _CountingGzip; file contents are read through it too, so the
    # ratio check sees every byte; ``read_stream`` only adds the per-file and total checks.
    counting = _CountingGzip(data, collector)
    collector.count_entry_bytes = False
    reader = io.BufferedReader(counting, buffer_size=64 * 1024)
    try:
        with tarfile.open(fileobj=reader, mode="r|") as archive:
            for member in _iter_tar(archive, collector):
                path = collector.check_name(member.name,
                                            "dir" if member.isdir() else "file")
                if path is None or member.isdir():
                    continue
                if member.issym() or member.islnk():
                    collector.problem(path, "links are not allowed; include the file itself")
                    continue
                if not member.isreg():
                    collector.problem(path, "devices, pipes and other special files are not "
                                      "allowed")
                    continue
                if _ignored(path):
                    continue
                if member.size > collector.limits.max_file_bytes:
                    raise collector.abort(f"{path} is larger than "
                                          f"{collector.limits.max_file_bytes} bytes")
                stream = archive.extractfile(member)
                if stream is None:
                    collector.problem(path, "cannot be read from the archive")
                    continue
                collector.add(path, collector.read_stream(path, stream))
    except _Abort:
        raise
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError, OSError,
            UnicodeDecodeError) as exc:
        raise collector.abort(f"the .tar.gz archive cannot be read ({exc}); create it "
                              "again") from exc


def _iter_tar(archive: tarfile.TarFile, collector: _Collector) -> Iterator[tarfile.TarInfo]:
    while True:
        member = archive.next()
        if member is None:
            return
        collector.count_entry()
        yield member


def _read_directory(root: Path, collector: _Collector) -> None:
    if not root.is_dir():
        raise collector.abort(f"{root} is not a directory")
    for current, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        base = Path(current)
        for name in [*dirnames]:
            full = base / name
            if full.is_symlink():
                rel = full.relative_to(root).as_posix()
                collector.count_entry()
                collector.problem(rel, "links are not allowed; include the files themselves")
                dirnames.remove(name)
        for name in sorted(filenames):
            full = base / name
            rel = full.relative_to(root).as_posix()
            collector.count_entry()
            path = collector.check_name(rel)
            if path is None:
                continue
            info = full.lstat()
            if stat.S_ISLNK(info.st_mode):
                collector.problem(path, "links are not allowed; include the file itself")
                continue
            if not stat.S_ISREG(info.st_mode):
                collector.problem(path, "devices, pipes and other special files are not "
                                  "allowed")
                continue
            if _ignored(path):
                continue
            if info.st_size > collector.limits.max_file_bytes:
                raise collector.abort(f"{path} is larger than "
                                      f"{collector.limits.max_file_bytes} bytes")
            with full.open("rb") as stream:
                collector.add(path, collector.read_stream(path, stream))


# --- file rules ---------------------------------------------------------------------------

def _strip_single_folder(entries: dict[str, bytes]) -> dict[str, bytes]:
    if MANIFEST_NAME in entries or not entries:
        return entries
    tops = {path.split("/", 1)[0] for path in entries}
    if len(tops) != 1 or any("/" not in path for path in entries):
        return entries
    top = tops.pop()
    if f"{top}/{MANIFEST_NAME}" not in entries:
        return entries
    return {path[len(top) + 1:]: data for path, data in entries.items()}


def executable_reason(path: str, data: bytes) -> str | None:
    """Why a file counts as executable code, or None."""
    suffix = PurePosixPath(path).suffix.lower()
    if suffix in EXECUTABLE_EXTENSIONS:
        return f"{suffix} files"
    for magic, what in EXECUTABLE_MAGIC:
        if data.startswith(magic):
            return what
    return None


def _allowed(path: str) -> bool:
    parts = path.split("/")
    suffix = PurePosixPath(path).suffix.lower()
    if path == MANIFEST_NAME or parts[0] == "prompts":
        return True
    if parts[0] == "skills" and len(parts) >= 3 and parts[-1] == SKILL_FILE:
        return True
    return suffix in TEXT_EXTENSIONS


def _check_files(entries: dict[str, bytes], problems: list[PackageProblem]
                 ) -> dict[str, str]:
    texts: dict[str, str] = {}
    skill_dirs: dict[str, bool] = {}
    for path, data in sorted(entries.items()):
        reason = executable_reason(path, data)
        if reason:
            problems.append(PackageProblem(
                path, f"executable code is not allowed in agent packages ({reason}); "
                "packages are declarative: describe the work as nodes and tools"))
            continue
        if not _allowed(path):
            problems.append(PackageProblem(
                path, f"this kind of file is not allowed in a package; allowed: "
                f"{ALLOWED_DESCRIPTION}"))
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(PackageProblem(path, "not UTF-8 text; packages hold text files "
                                           "only"))
            continue
        if text.startswith("\ufeff"):
            text = text[1:]
        if "\x00" in text:
            problems.append(PackageProblem(path, "contains NUL bytes; packages hold text "
                                           "files only"))
            continue
        texts[path] = text
        parts = path.split("/")
        if parts[0] == "skills":
            if len(parts) < 3:
                problems.append(PackageProblem(path, "skills live in skills/<name>/SKILL.md"))
                continue
            skill_dirs[parts[1]] = skill_dirs.get(parts[1], False) or (
                parts[-1] == SKILL_FILE and len(parts) == 3)
            if parts[-1] == SKILL_FILE and len(parts) == 3:
                problems.extend(_skill_problems(path, parts[1], text))
    for name, has_skill_file in sorted(skill_dirs.items()):
        if not has_skill_file:
            problems.append(PackageProblem(f"skills/{name}",
                                           f"a skill folder needs a {SKILL_FILE}"))
    if MANIFEST_NAME not in entries:
        problems.append(PackageProblem(
            MANIFEST_NAME, "the package has no agent.json at its root (or inside a single "
            "top-level folder)"))
    return texts


def _skill_problems(path: str, folder: str, text: str) -> list[PackageProblem]:
    """A package skill's folder is its name (agents reference it by that name); its
    SKILL.md front matter must parse, and a ``name`` in it must equal the folder name."""
    if not re.match(SKILL_NAME_PATTERN, folder):
        return [PackageProblem(f"skills/{folder}", f"a skill folder is the skill's name: use "
                               f"{SKILL_NAME_RULE}")]
    try:
        document = parse_skill_md(text)
    except SkillMdError as exc:
        return [PackageProblem(path, f"front matter {exc}")]
    if document.name is not None and document.name != folder:
        return [PackageProblem(path, f"the front matter names the skill '{document.name}' but "
                               f"its folder is '{folder}'; make them the same")]
    return []


def content_hash(entries: dict[str, bytes]) -> str:
    """SHA-256 over the sorted paths and their bytes: the same files give the same hash,
    whatever the archive format, timestamps or entry order."""
    digest = hashlib.sha256()
    for path in sorted(entries):
        data = entries[path]
        digest.update(f"{path}\n{len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()


# --- manifest checks ----------------------------------------------------------------------

def _json_loads(text: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise ValueError(f"duplicate key '{key}'")
            result[key] = value
        return result

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)


def format_path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_NODE_TAGS = frozenset({"llm", "tool", "approval", "report"})


def _clean_loc(loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], bool]:
    """The location without pydantic's union labels, and whether it had any."""
    cleaned: list[Any] = []
    union = False
    for i, part in enumerate(loc):
        if isinstance(part, str):
            if part in _NODE_TAGS and i >= 2 and loc[i - 2] == "nodes" \
                    and isinstance(loc[i - 1], int):
                continue  # the discriminator pydantic inserts for tagged unions
            if "[" in part or part in {"str", "int", "float", "bool", "none", "function-after"}:
                union = True
                continue  # a union member label
        cleaned.append(part)
    return tuple(cleaned), union


def _pydantic_message(error: Any) -> str:
    kind = error.get("type")
    if kind == "extra_forbidden":
        return "unknown field; remove it"
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        return "node_type must be one of: llm, tool, approval, report"
    if kind == "string_pattern_mismatch":
        return f"invalid value {error.get('input')!r}: {_pattern_hint(error)}"
    return str(error.get("msg", "invalid value"))


def _pattern_hint(error: Any) -> str:
    pattern = str((error.get("ctx") or {}).get("pattern", ""))
    if pattern.startswith("^\\d+"):
        return "use a semantic version such as 1.0.0"
    if pattern.startswith("^[a-z0-9]"):
        return "use lowercase letters, digits, '-' and '_' (at most 63 characters)"
    if pattern.startswith("^[A-Za-z_]"):
        return "use letters, digits, '-' and '_', starting with a letter or '_' (at most 64)"
    return f"must match {pattern}"


def _pydantic_problems(exc: ValidationError) -> list[PackageProblem]:
    """One problem per path: the alternatives of a union are joined into one message."""
    alternatives: dict[str, list[str]] = {}
    problems: list[PackageProblem] = []
    for error in exc.errors():
        loc, union = _clean_loc(tuple(error.get("loc", ())))
        path = format_path(loc) or MANIFEST_NAME
        message = _pydantic_message(error)
        if not union:
            problems.append(PackageProblem(path, message))
        elif path not in alternatives:
            alternatives[path] = [message]
            problems.append(PackageProblem(path, message))
        elif message not in alternatives[path]:
            alternatives[path].append(message)
    prefix = "Input should be "
    for i, problem in enumerate(problems):
        found = alternatives.get(problem.path)
        if found and len(found) > 1 and problem.message == found[0]:
            rest = [m.removeprefix(prefix) for m in found[1:]]
            problems[i] = PackageProblem(problem.path, " or ".join([found[0], *rest]))
    return problems


def _mcp_servers(files: dict[str, str], problems: list[PackageProblem]) -> set[str]:
    text = files.get(MCP_SERVERS_NAME)
    if text is None:
        return set()
    try:
        data = _json_loads(text)
    except (ValueError, RecursionError) as exc:
        problems.append(PackageProblem(MCP_SERVERS_NAME, f"not valid JSON: {exc}"))
        return set()
    if isinstance(data, dict) and set(data) <= {"mcpServers", "servers"} and len(data) == 1:
        data = next(iter(data.values()))
    if not isinstance(data, dict):
        problems.append(PackageProblem(MCP_SERVERS_NAME, "must be an object mapping server "
                                       "names to their settings"))
        return set()
    names: set[str] = set()
    for name, config in data.items():
        if not _MCP_SERVER.match(name):
            problems.append(PackageProblem(f"{MCP_SERVERS_NAME}.{name}", "server names use "
                                           "letters, digits, '-' and '_'"))
        elif not isinstance(config, dict):
            problems.append(PackageProblem(f"{MCP_SERVERS_NAME}.{name}",
                                           "server settings must be an object"))
        else:
            names.add(name)
    return names


class _Checker:
    """Semantic checks over the raw manifest, defensive so they run even when pydantic
    reports problems: the author sees every error in one go."""

    def __init__(self, raw: dict[str, Any], files: dict[str, str], known_tools: set[str],
                 package_servers: set[str], known_mcp_servers: set[str] | None) -> None:
        self.raw = raw
        self.files = files
        self.known_tools = known_tools
        self.package_servers = package_servers
        self.known_mcp_servers = known_mcp_servers
        self.problems: list[PackageProblem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(PackageProblem(path, message))

    def tool(self, path: str, name: Any) -> None:
        if not isinstance(name, str) or name in self.known_tools:
            return
        match = _MCP_TOOL.match(name)
        if match:
            server = match.group(1)
            if server in self.package_servers or self.known_mcp_servers is None or \
                    server in self.known_mcp_servers:
                return
            self.add(path, f"unknown MCP server '{server}' in tool '{name}'; list it in "
                     f"{MCP_SERVERS_NAME} or in the organization's MCP settings")
            return
        if name.startswith("mcp."):
            self.add(path, f"MCP tools are named mcp.<server>.<tool>, not '{name}'")
            return
        known = ", ".join(sorted(self.known_tools)) or "none"
        self.add(path, f"unknown tool '{name}'; known tools: {known} (or mcp.<server>.<tool>)")

    def file_ref(self, path: str, name: Any) -> None:
        if not isinstance(name, str):
            return
        if name in self.files:
            return
        normalized = "/".join(p for p in name.split("/") if p not in ("", "."))
        if normalized in self.files and not name.startswith("/") and ".." not in name:
            self.add(path, f"write the path as '{normalized}' (relative to the package root, "
                     "without './')")
        elif name == MANIFEST_NAME:
            self.add(path, f"'{MANIFEST_NAME}' cannot be used as a prompt or template")
        else:
            self.add(path, f"file '{name}' is not in the package")

    def run(self) -> list[PackageProblem]:
        raw = self.raw
        for i, name in enumerate(_list(raw.get("required_tools"))):
            self.tool(f"required_tools[{i}]", name)
        graph = raw.get("graph")
        if not isinstance(graph, dict):
            return self.problems
        nodes = _list(graph.get("nodes"))
        ids: dict[str, int] = {}
        kinds: dict[str, str] = {}
        for i, node in enumerate(nodes):
            if not isinstance(node, dict):
                continue
            node_id = node.get("id")
            if isinstance(node_id, str):
                if node_id in ids:
                    self.add(f"graph.nodes[{i}].id", f"duplicate node id '{node_id}' (also "
                             f"graph.nodes[{ids[node_id]}])")
                else:
                    ids[node_id] = i
                    kinds[node_id] = str(node.get("node_type"))
            self.node(f"graph.nodes[{i}]", node)
        entry = graph.get("entry_node")
        if isinstance(entry, str) and entry not in ids:
            self.add("graph.entry_node", f"no node with id '{entry}'")
        terminals = _list(graph.get("terminal_nodes"))
        if graph.get("terminal_nodes", []) == []:
            self.add("graph.terminal_nodes", "declare at least one terminal node (where a "
                     "run ends)")
        for i, terminal in enumerate(terminals):
            if isinstance(terminal, str) and terminal not in ids:
                self.add(f"graph.terminal_nodes[{i}]", f"no node with id '{terminal}'")
        adjacency = self.edges(_list(graph.get("edges")), ids)
        terminal_set = {t for t in terminals if isinstance(t, str)}
        for node_id, index in ids.items():
            if node_id not in terminal_set and not adjacency.get(node_id):
                self.add(f"graph.nodes[{index}]", f"node '{node_id}' has no outgoing edges "
                         "and is not a terminal node: a run would stop there")
        if isinstance(entry, str) and entry in ids and terminal_set & set(ids):
            if not _reachable(entry, adjacency) & terminal_set:
                self.add("graph", f"no terminal node can be reached from the entry node "
                         f"'{entry}'")
        replies = raw.get("scripted_replies")
        if isinstance(replies, dict):
            for key in replies:
                if key not in ids or kinds.get(key) != "llm":
                    self.add(f"scripted_replies.{key}", f"no llm node with id '{key}'")
        return self.problems

    def node(self, path: str, node: dict[str, Any]) -> None:
        kind = node.get("node_type")
        if kind == "llm":
            for j, name in enumerate(_list(node.get("tools"))):
                self.tool(f"{path}.tools[{j}]", name)
            if node.get("system_prompt") and node.get("system_prompt_file"):
                self.add(f"{path}.system_prompt_file", "set system_prompt or "
                         "system_prompt_file, not both")
            if node.get("system_prompt_file") is not None:
                self.file_ref(f"{path}.system_prompt_file", node.get("system_prompt_file"))
            # Skills are found in the package (skills/<name>/SKILL.md) or, at run time, in
            # the organization's skills: org skills may be added after the deploy.
            for j, name in enumerate(_list(node.get("skills"))):
                if isinstance(name, str) and not re.match(SKILL_NAME_PATTERN, name):
                    self.add(f"{path}.skills[{j}]", f"'{name[:80]}' is not a skill name: use "
                             f"{SKILL_NAME_RULE}")
        elif kind == "tool":
            if "tool" in node:
                self.tool(f"{path}.tool", node.get("tool"))
        elif kind == "report":
            if node.get("template") and node.get("template_file"):
                self.add(f"{path}.template_file", "set template or template_file, not both")
            if node.get("template_file") is not None:
                self.file_ref(f"{path}.template_file", node.get("template_file"))
            elif not node.get("template"):
                self.add(f"{path}.template", "a report node needs a template or a "
                         "template_file")

    def edges(self, edges: list[Any], ids: dict[str, int]) -> dict[str, set[str]]:
        adjacency: dict[str, set[str]] = {}
        edge_ids: dict[str, int] = {}
        for i, edge in enumerate(edges):
            if not isinstance(edge, dict):
                continue
            path = f"graph.edges[{i}]"
            edge_id = edge.get("id")
            if isinstance(edge_id, str) and edge_id:
                if edge_id in edge_ids:
                    self.add(f"{path}.id", f"duplicate edge id '{edge_id}' (also "
                             f"graph.edges[{edge_ids[edge_id]}])")
                else:
                    edge_ids[edge_id] = i
            source, target = edge.get("source"), edge.get("target")
            for key, value in (("source", source), ("target", target)):
                if isinstance(value, str) and value not in ids:
                    self.add(f"{path}.{key}", f"no node with id '{value}'")
            condition = edge.get("condition", "on_success")
            expr = edge.get("expr")
            if condition == "conditional":
                if expr is None or (isinstance(expr, str) and not expr.strip()):
                    self.add(f"{path}.expr", "a conditional edge needs an expression, e.g. "
                             "\"approval.decision == 'approve'\"")
                elif isinstance(expr, str):
                    try:
                        parse_expression(expr)
                    except ExpressionError as exc:
                        self.add(f"{path}.expr", exc.message)
            elif expr is not None and isinstance(condition, str):
                self.add(f"{path}.expr", f"only conditional edges take an expression; remove "
                         f"it or set condition to 'conditional' (it is '{condition}')")
            if isinstance(source, str) and isinstance(target, str):
                adjacency.setdefault(source, set()).add(target)
        return adjacency


_RESERVED_RULE = f"names starting with '{RESERVED_PREFIX}' are reserved for the engine; rename it"


def reserved_name_problems(raw: dict[str, Any]) -> list[PackageProblem]:
    """One problem per input or output name starting with ``__`` (see
    ``manifest.RESERVED_PREFIX``): input names, llm ``input_keys`` and ``output_keys``, the
    ``output_key`` of tool, approval and report nodes, and node ids (a node's id names its
    output when it has no ``output_key``). Defensive over the raw manifest, like _Checker."""
    problems: list[PackageProblem] = []

    def check(path: str, name: Any, why: str = "") -> None:
        if isinstance(name, str) and is_reserved(name):
            problems.append(PackageProblem(path, f"'{name[:80]}': {_RESERVED_RULE}{why}"))

    inputs = raw.get("inputs")
    for name in inputs if isinstance(inputs, dict) else ():
        check(f"inputs.{name}", name)
    graph = raw.get("graph")
    nodes = _list(graph.get("nodes")) if isinstance(graph, dict) else []
    for i, node in enumerate(nodes):
        if not isinstance(node, dict):
            continue
        path = f"graph.nodes[{i}]"
        check(f"{path}.id", node.get("id"), " (a node's id names its output when it has no "
                                              "output_key)")
        for key in ("input_keys", "output_keys"):
            for j, name in enumerate(_list(node.get(key))):
                check(f"{path}.{key}[{j}]", name)
        check(f"{path}.output_key", node.get("output_key"))
    return problems


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _reachable(start: str, adjacency: dict[str, set[str]]) -> set[str]:
    seen = {start}
    queue = deque([start])
    while queue:
        for target in adjacency.get(queue.popleft(), ()):
            if target not in seen:
                seen.add(target)
                queue.append(target)
    return seen


def credential_placeholder_problems(raw: dict[str, Any]) -> list[PackageProblem]:
    """``{{credentials.NAME.FIELD}}`` placeholders an ``http_request`` tool node may not hold
    (``credentials/placeholders.py``): in the URL's scheme or authority (user info, host,
    port), a header name, or an argument other than the URL, ``headers``, ``json`` and
    ``body``. The run-time check (``StepSecrets.render_arguments``) repeats it on the
    rendered URL, for versions deployed before this one existed."""
    graph = raw.get("graph")
    nodes = _list(graph.get("nodes")) if isinstance(graph, dict) else []
    problems: list[PackageProblem] = []
    for i, node in enumerate(nodes):
        if not (isinstance(node, dict) and node.get("node_type") == "tool"
                and node.get("tool") == placeholders.HTTP_REQUEST
                and isinstance(node.get("arguments"), dict)):
            continue
        path = f"graph.nodes[{i}].arguments"
        for name, value in node["arguments"].items():
            if name == "headers" and isinstance(value, dict):
                for header in value:
                    found = placeholders.PLACEHOLDER.search(str(header))
                    if found:
                        problems.append(PackageProblem(
                            f"{path}.headers", f"the header name '{header}' holds the "
                            f"credential placeholder {found.group(0)}; "
                            f"{placeholders.RULE}"))
                continue
            texts = [value] if isinstance(value, str) else \
                [t for t in _json_texts(value) if placeholders.PLACEHOLDER.search(t)]
            for text in texts[:1]:
                message = placeholders.template_placement_problem(str(name), text)
                if message is not None:
                    problems.append(PackageProblem(f"{path}.{name}", message))
    return problems


def _json_texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _json_texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _json_texts(item)


def validate_entries(entries: dict[str, bytes], *, known_tools: set[str],
                     known_mcp_servers: set[str] | None = None,
                     problems: list[PackageProblem] | None = None) -> LoadedPackage:
    """Validate the files of a package (paths already checked). Raises PackageInvalid."""
    problems = list(problems or [])
    entries = _strip_single_folder(entries)
    texts = _check_files(entries, problems)
    manifest_text = texts.pop(MANIFEST_NAME, None)
    raw: Any = None
    if manifest_text is not None:
        try:
            raw = _json_loads(manifest_text)
        except (ValueError, RecursionError) as exc:
            problems.append(PackageProblem(MANIFEST_NAME, f"not valid JSON: {exc}"))
        else:
            if not isinstance(raw, dict):
                problems.append(PackageProblem(MANIFEST_NAME, "must be a JSON object"))
                raw = None
    manifest: AgentManifest | None = None
    if raw is not None:
        try:
            manifest = AgentManifest.model_validate(raw)
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc))
        servers = _mcp_servers(texts, problems)
        checker = _Checker(raw, texts, known_tools, servers, known_mcp_servers)
        known = {(p.path, p.message) for p in problems}
        problems.extend(p for p in [*checker.run(), *reserved_name_problems(raw)]
                        if (p.path, p.message) not in known)
        problems.extend(credential_placeholder_problems(raw))
    if problems or manifest is None:
        raise PackageInvalid(problems or [PackageProblem(MANIFEST_NAME, "not valid")])
    return LoadedPackage(manifest=manifest, files=texts, content_hash=content_hash(entries),
                         size_bytes=sum(len(d) for d in entries.values()))


def _load(reader: Callable[[_Collector], None], collector: _Collector, *,
          known_tools: set[str], known_mcp_servers: set[str] | None) -> LoadedPackage:
    try:
        reader(collector)
    except _Abort as exc:
        raise PackageInvalid([exc.problem]) from None
    return validate_entries(collector.entries, known_tools=known_tools,
                            known_mcp_servers=known_mcp_servers, problems=collector.problems)


def archive_kind(data: bytes) -> str | None:
    """'zip', 'tar.gz' or None, from the first bytes (the file name is not trusted)."""
    if data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if data.startswith(b"\x1f\x8b"):
        return "tar.gz"
    return None


def load_archive(data: bytes, *, known_tools: set[str],
                 known_mcp_servers: set[str] | None = None,
                 limits: PackageLimits = DEFAULT_LIMITS) -> LoadedPackage:
    """Load a package from the bytes of a .zip or .tar.gz. Raises PackageInvalid."""
    if len(data) > limits.max_compressed_bytes:
        raise PackageInvalid([PackageProblem(
            "package", f"the archive is {len(data)} bytes; the limit is "
            f"{limits.max_compressed_bytes} bytes")])
    kind = archive_kind(data)
    if kind is None:
        raise PackageInvalid([PackageProblem(
            "package", "the upload is neither a .zip nor a .tar.gz archive")])
    collector = _Collector(limits, compressed_size=len(data))
    reader = (lambda c: _read_zip(data, c)) if kind == "zip" else \
        (lambda c: _read_tar_gz(data, c))
    return _load(reader, collector, known_tools=known_tools,
                 known_mcp_servers=known_mcp_servers)


def load_directory(root: Path, *, known_tools: set[str],
                   known_mcp_servers: set[str] | None = None,
                   limits: PackageLimits = DEFAULT_LIMITS) -> LoadedPackage:
    """Load a package from a directory on disk (links refused, not followed)."""
    collector = _Collector(limits, compressed_size=None)
    return _load(lambda c: _read_directory(root, c), collector, known_tools=known_tools,
                 known_mcp_servers=known_mcp_servers)
