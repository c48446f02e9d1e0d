"""The agent catalog over real HTTP: who may deploy and read, isolation, hardening, versions."""

from __future__ import annotations

import argparse
import asyncio
import json
import stat
import tarfile
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from enginex.agents.cli import PushFailed, add_agents_commands, push, zip_directory
from enginex.audit.models import AuditEntry
from enginex.db import set_tenant
from enginex.kit.errors import NOT_FOUND_MESSAGE
from tests.factories import Org, Server, anonymous, api_key_client
from tests.test_packages import (
    FIXTURES,
    HOURLY,
    hourly_entries,
    hourly_manifest,
    make_tar_gz,
    make_zip,
    tar_member,
)

NOT_FOUND = {"error": {"code": "not_found", "message": NOT_FOUND_MESSAGE, "details": {}}}


def upload(client: httpx.Client, org: Org, data: bytes, name: str = "package.zip"
           ) -> httpx.Response:
    return client.post(f"/api/v1/orgs/{org.slug}/agents",
                       files={"package": (name, data, "application/octet-stream")})


def agents_of(org: Org) -> list[dict[str, Any]]:
    response = org.admin.client.get(f"/api/v1/orgs/{org.slug}/agents")
    assert response.status_code == 200, response.text
    return response.json()


def hourly_zip(**overrides: bytes | str) -> bytes:
    return make_zip({**hourly_entries(), **overrides})


def manifest_zip(manifest: dict[str, Any], **files: bytes | str) -> bytes:
    return hourly_zip(**{"agent.json": json.dumps(manifest)}, **files)


def audit_actions(server: Server, org: Org) -> list[tuple[str, dict[str, Any]]]:
    from enginex.cli import _in_transaction

    async def work(session: Any) -> list[tuple[str, dict[str, Any]]]:
        await set_tenant(session, uuid.UUID(org.id))
        rows = (await session.execute(select(AuditEntry).where(
            AuditEntry.action.like("agent.%")).order_by(AuditEntry.at))).scalars()
        return [(r.action, r.details) for r in rows]

    return asyncio.run(_in_transaction(server.settings, work))


def test_builder_deploys_and_every_member_reads(server: Server, org_a: Org) -> None:
    builder = org_a.members["builder"].client
    response = upload(builder, org_a, zip_directory(HOURLY))
    assert response.status_code == 201, response.text
    version = response.json()
    assert version["agent_key"] == "hourly-tracking" and version["version"] == "1.0.0"
    assert version["name"] == "Hourly tracking" and not version["deprecated"]
    assert version["deployed_by"] == org_a.members["builder"].user_id
    assert len(version["content_hash"]) == 64
    assert version["manifest"]["graph"]["entry_node"] == "tabulate"
    assert {f["path"] for f in version["files"]} == {"README.md", "prompts/report.md",
                                                     "prompts/summarise.md"}
    base = f"/api/v1/orgs/{org_a.slug}/agents"
    for role in ("admin", "builder", "operator", "viewer"):
        for client in (org_a.members[role].client,
                       api_key_client(server, org_a.api_keys[role])):
            listed = client.get(base)
            assert listed.status_code == 200, (role, listed.text)
            assert [(a["key"], a["latest_version"], a["deprecated"], a["version_count"])
                    for a in listed.json()] == [("hourly-tracking", "1.0.0", False, 1)]
            detail = client.get(f"{base}/hourly-tracking")
            assert detail.status_code == 200
            assert [v["version"] for v in detail.json()["versions"]] == ["1.0.0"]
            shown = client.get(f"{base}/hourly-tracking/versions/1.0.0")
            assert shown.status_code == 200
            assert shown.json()["content_hash"] == version["content_hash"]
            assert shown.json()["deployed_at"] == version["deployed_at"]
    assert audit_actions(server, org_a) == [("agent.deployed", {
        "agent": "hourly-tracking", "version": "1.0.0", "content_hash": version["content_hash"],
        "size_bytes": version["size_bytes"]})]


def test_operators_and_viewers_cannot_deploy_or_deprecate(server: Server, org_a: Org) -> None:
    assert upload(org_a.members["builder"].client, org_a, hourly_zip()).status_code == 201
    changed = hourly_manifest()
    changed["agent"]["version"] = "2.0.0"
    for role in ("operator", "viewer"):
        for client in (org_a.members[role].client,
                       api_key_client(server, org_a.api_keys[role])):
            response = upload(client, org_a, manifest_zip(changed))
            assert response.status_code == 403, response.text
            assert response.json()["error"]["details"]["required_scope"] == "agents:write"
            deprecate = client.post(f"/api/v1/orgs/{org_a.slug}/agents/hourly-tracking/"
                                    "versions/1.0.0/deprecate")
            assert deprecate.status_code == 403
    with anonymous(server) as anon:
        assert upload(anon, org_a, hourly_zip()).status_code == 401
        assert anon.get(f"/api/v1/orgs/{org_a.slug}/agents").status_code == 401
    # The builder's API key deploys (the CLI's path); nothing from the refused attempts exists.
    key = api_key_client(server, org_a.api_keys["builder"])
    assert upload(key, org_a, manifest_zip(changed)).status_code == 201
    assert [(a["latest_version"], a["version_count"]) for a in agents_of(org_a)] == [
        ("2.0.0", 2)]


def test_other_organizations_get_404(server: Server, org_a: Org, org_b: Org) -> None:
    assert upload(org_b.members["builder"].client, org_b, hourly_zip()).status_code == 201
    attacker = org_a.admin.client
    attacker_key = api_key_client(server, org_a.api_keys["admin"])
    paths = ["/agents", "/agents/hourly-tracking", "/agents/hourly-tracking/versions/1.0.0",
             "/agents/hourly-tracking/diff?from=1.0.0&to=1.0.0"]
    for client in (attacker, attacker_key):
        for path in paths:
            response = client.get(f"/api/v1/orgs/{org_b.slug}{path}")
            assert response.status_code == 404 and response.json() == NOT_FOUND, path
        # Under its own org, the other org's agent is indistinguishable from a missing one.
        for path in paths[1:]:
            response = client.get(f"/api/v1/orgs/{org_a.slug}{path}")
            missing = client.get(f"/api/v1/orgs/{org_a.slug}"
                                 f"{path.replace('hourly-tracking', 'no-such-agent')}")
            assert response.status_code == missing.status_code == 404
            assert response.json() == missing.json() == NOT_FOUND
        assert client.post(f"/api/v1/orgs/{org_a.slug}/agents/hourly-tracking/versions/1.0.0/"
                           "deprecate").json() == NOT_FOUND
        assert upload(client, org_b, hourly_zip()).json() == NOT_FOUND
    assert agents_of(org_a) == []
    # The same agent id is independent per organization.
    response = upload(org_a.members["builder"].client, org_a, hourly_zip())
    assert response.status_code == 201
    theirs = org_b.admin.client.get(f"/api/v1/orgs/{org_b.slug}/agents/hourly-tracking")
    assert response.json()["id"] not in {v["id"] for v in theirs.json()["versions"]}


def _hardening_cases() -> dict[str, tuple[bytes, str, int]]:
    entries = hourly_entries()
    base_tar = [tar_member(k, v) for k, v in entries.items()]
    return {
        "zip slip": (hourly_zip(**{"../../evil.md": "x"}), "../../evil.md", 422),
        "absolute path": (hourly_zip(**{"/etc/cron.d/evil.md": "x"}), "/etc/cron.d/evil.md",
                          422),
        "symlink in tar": (make_tar_gz([*base_tar, tar_member(
            "prompts/passwd.md", kind=tarfile.SYMTYPE, link="/etc/passwd")]),
            "prompts/passwd.md", 422),
        "hardlink in tar": (make_tar_gz([*base_tar, tar_member(
            "prompts/hard.md", kind=tarfile.LNKTYPE, link="/etc/shadow")]),
            "prompts/hard.md", 422),
        "device in tar": (make_tar_gz([*base_tar, tar_member(
            "prompts/dev.md", kind=tarfile.CHRTYPE)]), "prompts/dev.md", 422),
        "symlink in zip": (make_zip({**entries, "prompts/link.md": "/etc/passwd"},
                                    modes={"prompts/link.md": stat.S_IFLNK | 0o777}),
                           "prompts/link.md", 422),
        "bomb": (hourly_zip(**{"prompts/zeros.md": b"0" * 1_500_000}), "package", 422),
        "huge bomb": (make_zip({"agent.json": entries["agent.json"],
                                "prompts/huge.md": b"\0" * 40_000_000}), "package", 422),
        "python file": (zip_directory(FIXTURES / "with_code"), "tools/helper.py", 422),
        "shebang": (hourly_zip(**{"prompts/run.md": "#!/bin/sh\nid\n"}), "prompts/run.md",
                    422),
        "ELF": (hourly_zip(**{"notes.txt": b"\x7fELF\x02\x01"}), "notes.txt", 422),
        "duplicate names": (make_zip([*entries.items(), ("agent.json", entries["agent.json"])]),
                            "agent.json", 422),
        "not an archive": (b"hello, I am text", "package", 422),
        "corrupt zip": (b"PK\x03\x04" + b"\x00" * 100, "package", 422),
        "too large": (b"PK\x03\x04" + b"\x01" * (5 * 1024 * 1024 + 10), "", 413),
    }


def test_bad_uploads_are_refused_and_nothing_is_stored(server: Server, org_a: Org) -> None:
    builder = org_a.members["builder"].client
    # An invalid package: every problem at once, each with its path.
    response = upload(builder, org_a, zip_directory(FIXTURES / "broken"))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "package_invalid"
    assert "11 problems" in error["message"]
    paths = [e["path"] for e in error["details"]["errors"]]
    assert set(paths) == {
        "agent.version", "required_tools[0]", "graph.nodes[0].output_keys",
        "graph.nodes[0].tools[1]", "graph.nodes[1].id", "graph.nodes[2].colour",
        "graph.nodes[2].template_file", "graph.entry_node", "graph.edges[0].target",
        "graph.edges[1].expr", "graph.edges[2].expr"}
    assert {"path": "graph.nodes[0].tools[1]",
            "message": "unknown tool 'x'; known tools: http_request, render_report, set_output, "
                       "tabulate_csv (or mcp.<server>.<tool>)"} in error["details"]["errors"]
    # Hostile archives.
    for name, (data, path, status) in _hardening_cases().items():
        response = upload(builder, org_a, data)
        assert response.status_code == status, (name, response.text)
        error = response.json()["error"]
        if status == 422:
            assert path in {e["path"] for e in error["details"]["errors"]}, (name, error)
        else:
            assert error["code"] == "payload_too_large"
    # Wrong shapes of upload.
    base = f"/api/v1/orgs/{org_a.slug}/agents"
    wrong_type = builder.post(base, json={"package": "x"})
    assert wrong_type.status_code == 415
    assert "multipart/form-data" in wrong_type.json()["error"]["message"]
    forged = builder.post(base, data={"tenant_id": str(uuid.uuid4()), "org_id": "x"},
                          files={"package": ("p.zip", hourly_zip(), "application/zip")})
    assert forged.status_code == 422
    assert {e["path"] for e in forged.json()["error"]["details"]["errors"]} == {"tenant_id",
                                                                               "org_id"}
    no_file = builder.post(base, files={"nothing": ("a", b"b")})
    assert no_file.status_code == 422
    assert no_file.json()["error"]["details"]["errors"][0]["path"] == "nothing"
    as_text = builder.post(base, files={"package": (None, "not a file")})
    assert as_text.status_code == 422
    assert "no file in the field 'package'" in as_text.json()["error"]["message"]
    url_encoded = builder.post(base, data={"package": "not a file"})
    assert url_encoded.status_code == 415
    empty = builder.post(base, files={"package": ("p.zip", b"", "application/zip")})
    assert empty.status_code == 422
    assert agents_of(org_a) == []
    assert audit_actions(server, org_a) == []
    # A raw application/zip body works too.
    raw = builder.post(base, content=hourly_zip(), headers={"Content-Type": "application/zip"})
    assert raw.status_code == 201, raw.text


def test_versions_repush_conflict_diff_and_deprecate(server: Server, org_a: Org) -> None:
    builder = org_a.members["builder"].client
    base = f"/api/v1/orgs/{org_a.slug}/agents/hourly-tracking"
    first = upload(builder, org_a, zip_directory(HOURLY))
    assert first.status_code == 201
    # Identical content, in another archive format: the same version, 200, nothing new.
    from tests.test_packages import tar_of
    again = upload(builder, org_a, tar_of(hourly_entries(), "hourly/"), "p.tar.gz")
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    # Same version, different content: refused.
    conflict = upload(builder, org_a, hourly_zip(**{"prompts/report.md": "# Changed"}))
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "version_exists"
    assert "bump agent.version" in conflict.json()["error"]["message"]
    # A new version with graph changes.
    manifest = hourly_manifest()
    manifest["agent"]["version"] = "1.1.0"
    manifest["agent"]["description"] = "Now with a notification."
    manifest["inputs"]["period"] = {"type": "string", "description": "e.g. 2024-W19"}
    manifest["inputs"]["timesheet"]["description"] = "CSV"
    manifest["graph"]["nodes"][1]["question"] = "OK?\n\n{{ summary }}"
    manifest["graph"]["nodes"] = [n for n in manifest["graph"]["nodes"] if n["id"] != "rejected"]
    manifest["graph"]["nodes"].append({"id": "notify", "node_type": "tool",
                                       "tool": "http_request",
                                       "arguments": {"url": "https://example.org/hook"}})
    manifest["graph"]["terminal_nodes"] = ["write_report", "notify"]
    manifest["graph"]["edges"][2]["target"] = "notify"
    second = upload(builder, org_a, manifest_zip(manifest, **{"prompts/extra.md": "more"}))
    assert second.status_code == 201, second.text
    [agent] = agents_of(org_a)
    assert (agent["latest_version"], agent["version_count"]) == ("1.1.0", 2)
    assert agent["description"] == "Now with a notification."

    diff = builder.get(f"{base}/diff", params={"from": "1.0.0", "to": "1.1.0"})
    assert diff.status_code == 200, diff.text
    body = diff.json()
    assert body["identical"] is False
    assert {f["field"]: (f["from"], f["to"]) for f in body["fields"]}["agent.version"] == \
        ("1.0.0", "1.1.0")
    assert {f["field"] for f in body["fields"]} >= {"agent.description",
                                                   "graph.terminal_nodes", "content_hash"}
    assert body["nodes"] == {"added": ["notify"], "removed": ["rejected"],
                             "changed": [{"id": "manager_approval", "fields": ["question"]}]}
    assert body["edges"] == {
        "added": ["manager_approval -> notify (conditional)"],
        "removed": ["manager_approval -> rejected (conditional)"], "changed": []}
    assert body["inputs"] == {"added": ["period"], "removed": [],
                              "changed": [{"id": "timesheet", "fields": ["description"]}]}
    assert body["files"]["added"] == ["prompts/extra.md"]
    same = builder.get(f"{base}/diff", params={"from": "1.0.0", "to": "1.0.0"}).json()
    assert same["identical"] is True and same["fields"] == [] and same["nodes"]["added"] == []
    assert builder.get(f"{base}/diff", params={"from": "1.0.0", "to": "9.9.9"}).status_code \
        == 404
    assert builder.get(f"{base}/diff", params={"from": "1.0.0"}).status_code == 422

    # Deprecating the newest version makes the previous one the latest again.
    deprecated = builder.post(f"{base}/versions/1.1.0/deprecate")
    assert deprecated.status_code == 200, deprecated.text
    assert deprecated.json()["deprecated"] is True and deprecated.json()["deprecated_at"]
    again = builder.post(f"{base}/versions/1.1.0/deprecate")
    assert again.json()["deprecated_at"] == deprecated.json()["deprecated_at"]
    [agent] = agents_of(org_a)
    assert (agent["latest_version"], agent["deprecated"]) == ("1.0.0", False)
    assert builder.post(f"{base}/versions/1.0.0/deprecate").status_code == 200
    [agent] = agents_of(org_a)
    assert (agent["latest_version"], agent["deprecated"]) == ("1.1.0", True)
    assert builder.post(f"{base}/versions/3.0.0/deprecate").status_code == 404
    versions = builder.get(base).json()["versions"]
    assert [(v["version"], v["deprecated"]) for v in versions] == [("1.0.0", True),
                                                                  ("1.1.0", True)]
    assert [a for a, _ in audit_actions(server, org_a)] == [
        "agent.deployed", "agent.deployed", "agent.version_deprecated",
        "agent.version_deprecated"]


def test_cli_push(server: Server, org_a: Org, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> None:
    builder_key = org_a.api_keys["builder"]
    result = push(HOURLY, org_a.slug, server.base_url, builder_key)
    assert result["created"] is True and result["version"] == "1.0.0"
    assert push(HOURLY, org_a.slug, server.base_url, builder_key)["created"] is False
    with pytest.raises(PushFailed) as excinfo:
        push(HOURLY, org_a.slug, server.base_url, org_a.api_keys["viewer"])
    assert excinfo.value.status_code == 403
    with pytest.raises(PushFailed) as excinfo:
        push(FIXTURES / "broken", org_a.slug, server.base_url, builder_key)
    assert excinfo.value.status_code == 422
    assert {"path": "graph.entry_node", "message": "no node with id 'start'"} in \
        excinfo.value.problems
    # Hidden files are left out; links are refused before anything is sent.
    copy = tmp_path / "pkg"
    for name, data in hourly_entries().items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(data)
    (copy / ".git").mkdir()
    (copy / ".git" / "config").write_text("[core]")
    (copy / ".DS_Store").write_bytes(b"\x00")
    assert push(copy, org_a.slug, server.base_url, builder_key)["created"] is False
    (copy / "prompts" / "link.md").symlink_to(copy / "README.md")
    with pytest.raises(PushFailed, match="link"):
        push(copy, org_a.slug, server.base_url, builder_key)

    # The command line: `enginex agents push DIR --org SLUG --url URL`.
    from enginex.cli import CliError

    parser = argparse.ArgumentParser(prog="enginex")
    add_agents_commands(parser.add_subparsers(dest="command", required=True))
    monkeypatch.setenv("EX_TEST_KEY", builder_key)
    args = parser.parse_args(["agents", "push", str(HOURLY), "--org", org_a.slug, "--url",
                              server.base_url, "--api-key-env", "EX_TEST_KEY"])
    args.func(args, server.settings)
    assert "already deployed (identical content): hourly-tracking 1.0.0" in \
        capsys.readouterr().out
    args = parser.parse_args(["agents", "push", str(FIXTURES / "broken"), "--org", org_a.slug,
                              "--url", server.base_url, "--api-key-env", "EX_TEST_KEY"])
    with pytest.raises(CliError) as cli_error:
        args.func(args, server.settings)
    assert "  graph.edges[0].target: no node with id 'nowhere'" in str(cli_error.value)
    monkeypatch.delenv("EX_TEST_KEY")
    args = parser.parse_args(["agents", "push", str(HOURLY), "--org", org_a.slug,
                              "--api-key-env", "EX_TEST_KEY"])
    with pytest.raises(CliError, match="EX_TEST_KEY"):
        args.func(args, server.settings)
