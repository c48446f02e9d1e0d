"""Agent packages: loading from every format, validation with paths, and upload hardening."""

from __future__ import annotations

import copy
import io
import json
import os
import stat
import tarfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest

from enginex.agents.cli import zip_directory
from enginex.agents.package import (
    PackageInvalid,
    PackageLimits,
    load_archive,
    load_directory,
)

FIXTURES = Path(__file__).parent / "fixtures" / "agents"
HOURLY = FIXTURES / "hourly_tracking"
TOOLS = {"http_request", "set_output", "render_report", "tabulate_csv"}


# --- archive builders (shared with tests/test_agents_api.py) -------------------------------

def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_zip(entries: dict[str, bytes | str] | list[tuple[str, bytes | str]], *,
             modes: dict[str, int] | None = None) -> bytes:
    """A .zip with exactly these names (no sanitizing), optional unix modes per name."""
    items = entries.items() if isinstance(entries, dict) else entries
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names on purpose
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in items:
                info = zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                mode = (modes or {}).get(name, stat.S_IFREG | 0o644)
                info.external_attr = mode << 16
                archive.writestr(info, data.encode() if isinstance(data, str) else data)
    return buffer.getvalue()


def tar_member(name: str, data: bytes | str = b"", *, kind: bytes = tarfile.REGTYPE,
               link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    payload = data.encode() if isinstance(data, str) else data
    info.type = kind
    info.linkname = link
    info.mode = 0o644
    if kind == tarfile.REGTYPE:
        info.size = len(payload)
        return info, payload
    return info, None


def make_tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def tar_of(entries: dict[str, bytes], prefix: str = "") -> bytes:
    return make_tar_gz([tar_member(prefix + name, data) for name, data in entries.items()])


def hourly_entries() -> dict[str, bytes]:
    return read_tree(HOURLY)


def hourly_manifest() -> dict[str, Any]:
    return json.loads((HOURLY / "agent.json").read_text())


def with_manifest(manifest: dict[str, Any], extra: dict[str, bytes | str] | None = None
                  ) -> bytes:
    entries: dict[str, bytes | str] = dict(hourly_entries())
    entries["agent.json"] = json.dumps(manifest)
    entries.update(extra or {})
    return make_zip(entries)


def problems_of(data: bytes, **kwargs: Any) -> dict[str, str]:
    with pytest.raises(PackageInvalid) as excinfo:
        load_archive(data, known_tools=TOOLS, **kwargs)
    return {p.path: p.message for p in excinfo.value.errors}


# --- the demo package ------------------------------------------------------------------------

def test_hourly_tracking_fixture_is_valid() -> None:
    package = load_directory(HOURLY, known_tools=TOOLS)
    manifest = package.manifest
    assert manifest.agent.id == "hourly-tracking" and manifest.agent.version == "1.0.0"
    assert manifest.inputs["timesheet"].required and manifest.inputs["timesheet"].multiline
    assert [n.id for n in manifest.graph.nodes] == ["summarise", "manager_approval",
                                                    "write_report", "rejected", "tabulate"]
    assert manifest.graph.entry_node == "tabulate"
    assert manifest.graph.terminal_nodes == ["write_report", "rejected"]
    # The numbers come from the data (the tabulate_csv tool), not from the scripted model.
    tabulate = manifest.graph.node("tabulate")
    assert tabulate.node_type == "tool" and tabulate.tool == "tabulate_csv"
    assert tabulate.arguments["csv"] == "{{ timesheet }}" and tabulate.output_key == "hours"
    approval = manifest.graph.node("manager_approval")
    assert approval.node_type == "approval" and approval.output_key == "approval"
    assert approval.question == ("Approve the hours for this period?\n\n{{ hours.markdown }}"
                                 "\n\n{{ summary }}")
    assert [(e.source, e.target, e.condition, e.expr) for e in manifest.graph.edges] == [
        ("summarise", "manager_approval", "on_success", None),
        ("manager_approval", "write_report", "conditional", "approval.decision == 'approve'"),
        ("manager_approval", "rejected", "conditional", "approval.decision == 'reject'"),
        ("tabulate", "summarise", "on_success", None),
    ]
    turn = manifest.scripted_replies["summarise"][0]
    assert [c["arguments"]["key"] for c in turn["tool_calls"]] == ["summary"]
    assert not any(ch.isdigit() for ch in turn["tool_calls"][0]["arguments"]["value"])
    assert set(package.files) == {"README.md", "prompts/summarise.md", "prompts/report.md"}
    assert "per person and project" in package.files["prompts/summarise.md"]
    assert "{{ approval.decision }}" in package.files["prompts/report.md"]
    assert len(package.content_hash) == 64
    assert package.size_bytes == sum(len(d) for d in hourly_entries().values())


def test_same_files_give_the_same_hash_in_every_format() -> None:
    entries = hourly_entries()
    hashes = {
        "directory": load_directory(HOURLY, known_tools=TOOLS).content_hash,
        "zip": load_archive(make_zip(entries), known_tools=TOOLS).content_hash,
        "zip (cli)": load_archive(zip_directory(HOURLY), known_tools=TOOLS).content_hash,
        "zip in a folder": load_archive(make_zip({f"hourly/{k}": v for k, v in entries.items()}),
                                        known_tools=TOOLS).content_hash,
        "tar.gz": load_archive(tar_of(entries), known_tools=TOOLS).content_hash,
        "tar.gz with ./": load_archive(tar_of(entries, "./"), known_tools=TOOLS).content_hash,
        "reversed order": load_archive(make_zip(list(reversed(entries.items()))),
                                       known_tools=TOOLS).content_hash,
    }
    assert len(set(hashes.values())) == 1, hashes
    changed = dict(entries, **{"prompts/report.md": entries["prompts/report.md"] + b"\n"})
    assert load_archive(make_zip(changed), known_tools=TOOLS).content_hash not in \
        hashes.values()


def test_folders_and_macos_noise_are_handled() -> None:
    entries = hourly_entries()
    noisy = {**{f"pkg/{k}": v for k, v in entries.items()}, "pkg/.DS_Store": b"\x00\x01",
             "__MACOSX/pkg/._agent.json": b"\x00\x05\x16\x07"}
    assert load_archive(make_zip(noisy), known_tools=TOOLS).manifest.agent.id == \
        "hourly-tracking"
    two_folders = {**{f"a/{k}": v for k, v in entries.items()}, "b/notes.md": b"hi"}
    assert problems_of(make_zip(two_folders))["agent.json"].startswith(
        "the package has no agent.json at its root")


# --- every problem at once, with paths ---------------------------------------------------

def test_broken_fixture_reports_every_problem_with_its_path() -> None:
    with pytest.raises(PackageInvalid) as excinfo:
        load_directory(FIXTURES / "broken", known_tools=TOOLS)
    problems = {p.path: p.message for p in excinfo.value.errors}
    assert problems == {
        "agent.version": "invalid value 'one': use a semantic version such as 1.0.0",
        "required_tools[0]": problems["required_tools[0]"],
        "graph.nodes[0].output_keys": "required field is missing",
        "graph.nodes[0].tools[1]": problems["graph.nodes[0].tools[1]"],
        "graph.nodes[1].id": "duplicate node id 'think' (also graph.nodes[0])",
        "graph.nodes[2].colour": "unknown field; remove it",
        "graph.nodes[2].template_file": "file 'prompts/missing.md' is not in the package",
        "graph.entry_node": "no node with id 'start'",
        "graph.edges[0].target": "no node with id 'nowhere'",
        "graph.edges[1].expr": "unexpected token ')' at column 22; expected a value",
        "graph.edges[2].expr": "only conditional edges take an expression; remove it or set "
                               "condition to 'conditional' (it is 'on_success')",
    }
    assert problems["required_tools[0]"].startswith("unknown tool 'teleport'")
    assert problems["graph.nodes[0].tools[1]"].startswith("unknown tool 'x'; known tools: "
                                                          "http_request, render_report")
    assert "graph.nodes[0].tools[1]: unknown tool 'x'" in str(excinfo.value)


def _broken(mutate: Any) -> dict[str, str]:
    manifest = hourly_manifest()
    extra = mutate(manifest)
    return problems_of(with_manifest(manifest, extra))


def test_graph_rules() -> None:
    def conditional_without_expr(m: dict[str, Any]) -> None:
        del m["graph"]["edges"][1]["expr"]
    assert _broken(conditional_without_expr) == {
        "graph.edges[1].expr": "a conditional edge needs an expression, e.g. "
                               "\"approval.decision == 'approve'\""}

    def unreachable(m: dict[str, Any]) -> None:
        m["graph"]["edges"] = [m["graph"]["edges"][3], m["graph"]["edges"][0]]
        m["graph"]["nodes"][1]["id"] = "manager_approval"
        m["graph"]["terminal_nodes"] = ["write_report"]
    problems = _broken(unreachable)
    assert problems["graph"] == "no terminal node can be reached from the entry node " \
                                "'tabulate'"
    assert problems["graph.nodes[1]"].startswith("node 'manager_approval' has no outgoing "
                                                 "edges and is not a terminal node")

    def no_terminals(m: dict[str, Any]) -> None:
        m["graph"]["terminal_nodes"] = []
    assert _broken(no_terminals)["graph.terminal_nodes"].startswith("declare at least one")

    def bad_terminal_and_replies(m: dict[str, Any]) -> None:
        m["graph"]["terminal_nodes"].append("ghost")
        m["scripted_replies"]["manager_approval"] = []
    problems = _broken(bad_terminal_and_replies)
    assert problems == {"graph.terminal_nodes[2]": "no node with id 'ghost'",
                        "scripted_replies.manager_approval": "no llm node with id "
                                                             "'manager_approval'"}

    def bad_node_type(m: dict[str, Any]) -> None:
        m["graph"]["nodes"][3]["node_type"] = "python"
    assert _broken(bad_node_type) == {
        "graph.nodes[3]": "node_type must be one of: llm, tool, approval, report"}

    def duplicate_edge_ids(m: dict[str, Any]) -> None:
        m["graph"]["edges"][2]["id"] = "approved"
    assert _broken(duplicate_edge_ids) == {
        "graph.edges[2].id": "duplicate edge id 'approved' (also graph.edges[1])"}


def test_type_errors_have_paths() -> None:
    def wrong_types(m: dict[str, Any]) -> None:
        m["goal"] = 5
        m["agent"]["id"] = "Hourly Tracking"
        m["inputs"]["bad key"] = {"type": "text"}
        m["graph"]["max_steps"] = "10"
        m["graph"]["nodes"][0]["max_iterations"] = 1.5
    problems = _broken(wrong_types)
    assert problems["goal"] == "Input should be a valid dictionary or a valid string"
    assert problems["agent.id"].startswith("invalid value 'Hourly Tracking': use lowercase")
    assert problems["inputs.bad key"].startswith("invalid value 'bad key'")
    assert problems["inputs.bad key.type"].startswith("Input should be 'string'")
    assert problems["graph.max_steps"] == "Input should be a valid integer"
    assert problems["graph.nodes[0].max_iterations"] == "Input should be a valid integer"
    assert len(problems) == 6


def test_file_references() -> None:
    def dotted(m: dict[str, Any]) -> None:
        m["graph"]["nodes"][0]["system_prompt_file"] = "./prompts/summarise.md"
    assert _broken(dotted) == {"graph.nodes[0].system_prompt_file": "write the path as "
                               "'prompts/summarise.md' (relative to the package root, "
                               "without './')"}

    def both(m: dict[str, Any]) -> None:
        m["graph"]["nodes"][0]["system_prompt"] = "inline"
        m["graph"]["nodes"][2]["template"] = "inline"
    assert set(_broken(both)) == {"graph.nodes[0].system_prompt_file",
                                  "graph.nodes[2].template_file"}

    def outside(m: dict[str, Any]) -> None:
        m["graph"]["nodes"][2]["template_file"] = "../../etc/passwd"
        del m["graph"]["nodes"][3]["template"]
    assert _broken(outside) == {
        "graph.nodes[2].template_file": "file '../../etc/passwd' is not in the package",
        "graph.nodes[3].template": "a report node needs a template or a template_file"}


def test_mcp_tool_names() -> None:
    def uses_mcp(m: dict[str, Any]) -> None:
        m["graph"]["nodes"][0]["tools"].append("mcp.github.create_issue")
        m["required_tools"].append("mcp.mail.send")
    manifest = hourly_manifest()
    uses_mcp(manifest)
    # Left for the organization's MCP settings by default...
    assert load_archive(with_manifest(manifest), known_tools=TOOLS).manifest
    # ...refused when the caller knows the organization's servers and these are not among them.
    problems = problems_of(with_manifest(manifest), known_mcp_servers={"mail"})
    assert problems == {"graph.nodes[0].tools[1]": "unknown MCP server 'github' in tool "
                        "'mcp.github.create_issue'; list it in mcp_servers.json or in the "
                        "organization's MCP settings"}
    # ...and accepted when the package lists the server (plain or "mcpServers" form).
    for servers in ({"github": {"transport": "http", "url": "https://mcp.example.org"}},
                    {"mcpServers": {"github": {"url": "https://mcp.example.org"}}}):
        package = load_archive(with_manifest(manifest, {"mcp_servers.json": json.dumps(servers)}),
                               known_tools=TOOLS, known_mcp_servers={"mail"})
        assert "mcp_servers.json" in package.files

    def malformed(m: dict[str, Any]) -> None:
        m["graph"]["nodes"][0]["tools"] = ["mcp.onlyserver"]
    assert _broken(malformed) == {"graph.nodes[0].tools[0]": "MCP tools are named "
                                  "mcp.<server>.<tool>, not 'mcp.onlyserver'"}
    problems = problems_of(with_manifest(hourly_manifest(), {"mcp_servers.json": "[1]"}))
    assert problems == {"mcp_servers.json": "must be an object mapping server names to their "
                                            "settings"}


def test_manifest_json_problems() -> None:
    entries = hourly_entries()
    for text, message in ((b'{"agent": {}, "agent": {}}', "duplicate key 'agent'"),
                          (b'{"graph": NaN}', "NaN is not valid JSON"),
                          (b"{not json", "not valid JSON"),
                          (b"[1, 2]", "must be a JSON object"),
                          (b"[" * 100_000 + b"]" * 100_000, "not valid JSON")):
        problems = problems_of(make_zip({**entries, "agent.json": text}))
        assert message in problems["agent.json"], (text[:20], problems)


def test_skills() -> None:
    extra = {"skills/timesheets/SKILL.md": "# Reading timesheets",
             "skills/timesheets/examples.md": "...", "skills/orphan/notes.md": "x"}
    problems = problems_of(with_manifest(hourly_manifest(), extra))
    assert problems == {"skills/orphan": "a skill folder needs a SKILL.md"}
    del extra["skills/orphan/notes.md"]
    package = load_archive(with_manifest(hourly_manifest(), extra), known_tools=TOOLS)
    assert package.files["skills/timesheets/SKILL.md"] == "# Reading timesheets"


# --- refused content ---------------------------------------------------------------------

def test_python_fixture_is_refused() -> None:
    with pytest.raises(PackageInvalid) as excinfo:
        load_directory(FIXTURES / "with_code", known_tools=TOOLS)
    assert [(p.path, p.message.split(";")[0]) for p in excinfo.value.errors] == [
        ("tools/helper.py", "executable code is not allowed in agent packages (.py files)")]


@pytest.mark.parametrize(("name", "data", "why"), [
    ("tools/run.sh", b"echo hi", ".sh files"),
    ("lib/native.so", b"\x00", ".so files"),
    ("tool.exe", b"x", ".exe files"),
    ("static/app.js", b"alert(1)", ".js files"),
    ("prompts/cache.pyc", b"\x00", ".pyc files"),
    ("runner.jar", b"PK", ".jar files"),
    ("blob.bin", b"\x00", ".bin files"),
    ("script.bat", b"@echo off", ".bat files"),
    ("prompts/notes.md", b"#!/bin/sh\nrm -rf /\n", "a script with a '#!' interpreter line"),
    ("notes.txt", b"\x7fELF\x02\x01\x01", "an ELF binary"),
    ("guide.md", b"MZ\x90\x00", "a Windows executable"),
    ("prompts/tool", b"\xcf\xfa\xed\xfe\x07", "a Mach-O binary"),
])
def test_executable_code_is_refused(name: str, data: bytes, why: str) -> None:
    problems = problems_of(make_zip({**hourly_entries(), name: data}))
    assert problems == {name: f"executable code is not allowed in agent packages ({why}); "
                              "packages are declarative: describe the work as nodes and tools"}


def test_other_files_must_be_allowed_text() -> None:
    problems = problems_of(make_zip({**hourly_entries(), "data.csv": b"a,b",
                                     "logo.png": b"\x89PNG\r\n", "notes.md": b"\xff\xfe\x00",
                                     "prompts/nul.md": b"a\x00b"}))
    assert problems["data.csv"].startswith("this kind of file is not allowed in a package; "
                                           "allowed: agent.json, *.md")
    assert problems["logo.png"].startswith("this kind of file is not allowed")
    assert problems["notes.md"] == "not UTF-8 text; packages hold text files only"
    assert problems["prompts/nul.md"].startswith("contains NUL bytes")


@pytest.mark.parametrize(("name", "message"), [
    ("../evil.md", "'..' is not allowed in paths inside a package"),
    ("prompts/../../evil.md", "'..' is not allowed in paths inside a package"),
    ("/etc/evil.md", "absolute paths are not allowed; use paths relative to the package root"),
    ("C:/evil.md", "absolute paths are not allowed; use paths relative to the package root"),
    ("prompts\\evil.md", "the name contains a backslash; use '/' between folders"),
    ("prompts/evil\x01.md", "the name contains control characters"),
])
def test_unsafe_paths_are_refused(name: str, message: str) -> None:
    for data in (make_zip({**hourly_entries(), name: b"x"}),
                 make_tar_gz([*(tar_member(k, v) for k, v in hourly_entries().items()),
                              tar_member(name, b"x")])):
        problems = problems_of(data)
        assert message in problems.values(), problems


def test_duplicate_names_are_refused() -> None:
    entries = list(hourly_entries().items())
    problems = problems_of(make_zip([*entries, ("prompts/report.md", b"other")]))
    assert problems == {"prompts/report.md": "duplicate name (also 'prompts/report.md')"}
    problems = problems_of(make_zip([*entries, ("Prompts/Report.md", b"other")]))
    assert problems == {"prompts/report.md": "duplicate name (also 'Prompts/Report.md')"} or \
        problems == {"Prompts/Report.md": "duplicate name (also 'prompts/report.md')"}


def test_links_and_special_files_are_refused(tmp_path: Path) -> None:
    base = [tar_member(k, v) for k, v in hourly_entries().items()]
    cases = {
        "symlink": tar_member("prompts/passwd.md", kind=tarfile.SYMTYPE, link="/etc/passwd"),
        "hardlink": tar_member("prompts/hard.md", kind=tarfile.LNKTYPE, link="agent.json"),
        "device": tar_member("prompts/dev.md", kind=tarfile.CHRTYPE),
        "fifo": tar_member("prompts/fifo.md", kind=tarfile.FIFOTYPE),
    }
    for kind, member in cases.items():
        problems = problems_of(make_tar_gz([*base, member]))
        assert list(problems) == [member[0].name], (kind, problems)
        assert "not allowed" in problems[member[0].name]
    zipped = make_zip({**hourly_entries(), "prompts/passwd.md": "/etc/passwd"},
                      modes={"prompts/passwd.md": stat.S_IFLNK | 0o777})
    assert problems_of(zipped) == {"prompts/passwd.md": "a symbolic link is not allowed; "
                                                        "include the file itself"}
    # A directory with a link in it.
    root = tmp_path / "pkg"
    root.mkdir()
    for name, data in hourly_entries().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    os.symlink("/etc/passwd", root / "prompts" / "passwd.md")
    with pytest.raises(PackageInvalid) as excinfo:
        load_directory(root, known_tools=TOOLS)
    assert [p.path for p in excinfo.value.errors] == ["prompts/passwd.md"]


# --- limits ------------------------------------------------------------------------------

SMALL = PackageLimits(max_compressed_bytes=50_000, max_total_bytes=60_000,
                      max_file_bytes=20_000, max_files=10, max_ratio=20,
                      ratio_floor_bytes=30_000)


def _limit_problem(data: bytes, limits: PackageLimits = SMALL) -> str:
    with pytest.raises(PackageInvalid) as excinfo:
        load_archive(data, known_tools=TOOLS, limits=limits)
    assert len(excinfo.value.errors) == 1
    problem = excinfo.value.errors[0]
    assert problem.path == "package"
    return problem.message


def test_size_and_count_limits() -> None:
    entries = hourly_entries()
    noise = os.urandom(60_000)
    assert "the limit is 50000 bytes" in _limit_problem(make_zip({**entries, "x.md": noise}))
    many = {**entries, **{f"prompts/{i}.md": b"x" for i in range(10)}}
    assert "more than 10 entries" in _limit_problem(make_zip(many))
    assert "more than 10 entries" in _limit_problem(tar_of(many))
    big = {**entries, "prompts/big.md": os.urandom(15_000).hex()[:25_000]}
    assert "prompts/big.md is larger than 20000 bytes" in _limit_problem(make_zip(big))
    assert "prompts/big.md is larger than 20000 bytes" in _limit_problem(tar_of(big))
    total = {**entries, **{f"prompts/{i}.md": os.urandom(8_000).hex()[:15_000]
                           for i in range(4)}}
    assert "add up to more than 60000 bytes" in _limit_problem(
        make_zip(total), PackageLimits(max_total_bytes=60_000, max_ratio=1000))
    assert "not a .zip" not in _limit_problem(b"PK\x03\x04garbage")
    assert _limit_problem(b"just text") == "the upload is neither a .zip nor a .tar.gz archive"
    assert "cannot be read" in _limit_problem(b"\x1f\x8b\x08\x00garbage")


def test_decompression_bombs_are_stopped() -> None:
    entries = hourly_entries()
    zeros = b"0" * 1_500_000  # compresses ~1000:1, under the per-file and total limits
    for data in (make_zip({**entries, "prompts/zeros.md": zeros}),
                 tar_of({**entries, "prompts/zeros.md": zeros})):
        message = _limit_problem(data, PackageLimits())
        assert message.startswith("the archive expands more than 100 times its size")
    # A classic bomb: far beyond every limit, refused without inflating it all.
    huge = make_zip({"agent.json": entries["agent.json"], "prompts/huge.md": b"\0" * 50_000_000})
    assert len(huge) < 100_000
    assert "bytes" in _limit_problem(huge, PackageLimits())


def test_declared_sizes_are_not_trusted() -> None:
    # The central directory claims 10 bytes for a member that inflates to 1.5 MB.
    entries = hourly_entries()
    data = bytearray(make_zip({**entries, "prompts/zeros.md": b"0" * 1_500_000}))
    name = b"prompts/zeros.md"
    central = next(i for i in range(len(data)) if data.startswith(b"PK\x01\x02", i)
                   and data[i + 46:i + 46 + len(name)] == name)
    data[central + 24:central + 28] = (10).to_bytes(4, "little")
    with pytest.raises(PackageInvalid) as excinfo:
        load_archive(bytes(data), known_tools=TOOLS, limits=PackageLimits(max_ratio=10**6))
    problems = {p.path: p.message for p in excinfo.value.errors}
    assert problems["prompts/zeros.md"].startswith("cannot be read from the archive")


def test_valid_manifest_is_not_mutated_by_validation() -> None:
    manifest = hourly_manifest()
    before = copy.deepcopy(manifest)
    load_archive(with_manifest(manifest), known_tools=TOOLS)
    assert manifest == before
