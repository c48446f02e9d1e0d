"""Tenant export and import (docs/DATA_LIFECYCLE.md): the registry covers every tenant table,
an export round-trips into a fresh deployment (same and other database backend) with
identical listings, package hashes, timelines, report files and a verifying audit chain,
download links are single-use and never cross organizations, a bad archive writes nothing,
and an export whose worker is SIGKILLed mid-way is finished by the next worker."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from enginex.db import Base
from enginex.lifecycle.importer import ArchiveRefused, check_archive
from enginex.lifecycle.kinds import EXCLUDED, KINDS
from tests.conftest import IN_CI, _pg_available, separate_deployment
from tests.factories import (
    Org,
    Server,
    deploy_agent,
    make_org,
    make_platform_admin,
    pending_approval,
    run_db,
    sign_in,
    start_session,
    wait_for,
    wait_for_status,
)

ENGINEX = Path(sys.executable).with_name("enginex")
PASSWORD = "correct horse battery staple 42"


def test_every_tenant_table_is_exported_or_excluded_with_a_reason() -> None:
    """A table with tenant_id (found in the models' metadata) must be a kind of the export
    or listed in EXCLUDED with its reason: another feature's new table fails here until its
    author decides."""
    import enginex.models  # noqa: F401  (every model registered)

    tenant_tables = {t.name for t in Base.metadata.tables.values() if "tenant_id" in t.c}
    exported = {k.table for k in KINDS}
    assert exported | set(EXCLUDED) >= tenant_tables, \
        f"neither exported nor excluded: {sorted(tenant_tables - exported - set(EXCLUDED))}"
    assert not exported & set(EXCLUDED)
    assert all(reason.strip() for reason in EXCLUDED.values())
    assert set(EXCLUDED) <= tenant_tables, "EXCLUDED names a table that is not a tenant table"


# --- helpers --------------------------------------------------------------------------------


def seed(org: Org) -> None:
    """Content of every kind: an agent, a finished session with an approval and a report, a
    credential, a skill, an LLM provider with an alias."""
    deploy_agent(org)
    run = start_session(org)
    wait_for_status(org, run["id"], {"waiting_approval"})
    decided = org.members["operator"].client.post(
        f"/api/v1/orgs/{org.slug}/approvals/{pending_approval(org, run['id'])['id']}/decision",
        json={"decision": "approve", "comment": "looks right"})
    assert decided.status_code == 200, decided.text
    wait_for_status(org, run["id"], {"succeeded"})
    admin = org.admin.client
    created = admin.post(f"/api/v1/orgs/{org.slug}/credentials",
                         json={"name": "crm", "type": "api_key",
                               "values": {"key": "sk-" + uuid.uuid4().hex}})
    assert created.status_code == 201, created.text
    skill = admin.post(f"/api/v1/orgs/{org.slug}/skills", json={
        "skill_md": "---\nname: review\ndescription: Review hours\n---\n\nCheck totals.\n",
        "files": {"reference/notes.md": "notes"}})
    assert skill.status_code == 201, skill.text


def export_archive(server: Server, org: Org) -> bytes:
    """Ask for an export through the API, wait for the worker, download it once."""
    client = org.admin.client
    base = f"/api/v1/orgs/{org.slug}/exports"
    asked = client.post(base)
    assert asked.status_code == 202, asked.text
    export_id = asked.json()["id"]
    done = wait_for(lambda: (e := client.get(f"{base}/{export_id}").json())["status"]
                    in {"succeeded", "failed"} and e, what="the export")
    assert done["status"] == "succeeded", done
    assert done["done"] == done["total"] > 0
    link = client.post(f"{base}/{export_id}/link")
    assert link.status_code == 201, link.text
    download = client.get(link.json()["url"])
    assert download.status_code == 200, download.text
    assert download.headers["content-type"] == "application/zip"
    import hashlib
    assert hashlib.sha256(download.content).hexdigest() == done["sha256"]
    again = client.get(link.json()["url"])
    assert again.status_code == 404, "a download link must be single-use"
    return download.content


def cli_env(settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEX_")}
    env.update(ENGINEX_DATA_DIR=str(settings.data_dir), ENGINEX_LOG_LEVEL="WARNING",
               ENGINEX_MASTER_KEY=settings.master_key)
    if settings.is_postgres:
        env.update(ENGINEX_DATABASE_URL=settings.database_url,
                   ENGINEX_MIGRATION_DATABASE_URL=settings.migration_database_url)
    return env


def enginex(settings: Any, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ENGINEX), *args], env={**cli_env(settings), **extra},
                          capture_output=True, text=True, timeout=300, check=False)


def set_password(server: Server, email: str) -> None:
    from enginex.auth import repository as auth_repo
    from enginex.auth.passwords import hash_password

    async def work(session: Any) -> None:
        user = await auth_repo.get_user_by_email(session, email)
        assert user is not None
        user.password_hash = hash_password(PASSWORD)

    run_db(server, work)


def snapshot(client: httpx.Client, slug: str, origin: str | None = None) -> dict[str, Any]:
    """What the API shows of an organization, with user ids replaced by e-mail addresses
    (accounts are per deployment) and the slug (and ``origin``, the slug in the members'
    addresses of a copy) by a placeholder."""
    base = f"/api/v1/orgs/{slug}"
    members = client.get(f"{base}/members").json()
    found: dict[str, Any] = {"members": sorted((m["email"], m["role"]) for m in members)}
    agents = client.get(f"{base}/agents").json()
    found["agents"] = agents
    found["agent_details"] = [client.get(f"{base}/agents/{a['key']}").json() for a in agents]
    sessions = client.get(f"{base}/sessions").json()
    found["sessions"] = sessions
    found["timelines"] = {s["id"]: (client.get(f"{base}/sessions/{s['id']}/events").json(),
                                    client.get(f"{base}/sessions/{s['id']}/checkpoints").json())
                          for s in sessions["items"]}
    reports = client.get(f"{base}/reports").json()
    found["reports"] = reports
    found["report_files"] = {r["id"]: client.get(f"{base}/reports/{r['id']}/download").content
                             .decode() for r in reports}
    found["credentials"] = client.get(f"{base}/credentials").json()
    found["skills"] = client.get(f"{base}/skills").json()
    found["approvals"] = client.get(f"{base}/approvals").json()
    text = json.dumps(found, sort_keys=True)
    for member in members:
        text = text.replace(member["user_id"], f"<user {member['email']}>")
    return json.loads(text.replace(slug, "<slug>").replace(origin or slug, "<slug>"))


# --- round trip -----------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["sqlite", "postgres"])
def test_an_export_imports_into_a_fresh_deployment_identically(
        server: Server, org_a: Org, target: str, tmp_path: Path) -> None:
    if target == "postgres" and (problem := _pg_available()):
        if IN_CI:
            pytest.fail(f"PostgreSQL is not reachable: {problem} (mandatory in CI)")
        pytest.skip(f"PostgreSQL is not reachable: {problem}")
    seed(org_a)
    before = snapshot(org_a.admin.client, org_a.slug)
    verified = org_a.admin.client.get(f"/api/v1/orgs/{org_a.slug}/audit/verify").json()
    assert verified["intact"], verified
    archive = tmp_path / "export.zip"
    archive.write_bytes(export_archive(server, org_a))
    manifest = check_archive(archive, max_bytes=10**9)
    assert manifest.counts["sessions"] == 1 and manifest.counts["reports"] >= 1

    with separate_deployment(target, tmp_path / "target") as fresh:
        imported = enginex(fresh.settings, "tenant", "import", str(archive))
        assert imported.returncode == 0, imported.stderr
        assert "same id" in imported.stdout
        assert "crm" in imported.stdout  # a credential that needs its value again
        set_password(fresh, org_a.admin.email)
        admin = sign_in(fresh, org_a.admin.email, PASSWORD)
        try:
            after = snapshot(admin.client, org_a.slug)
            for key in before:
                assert json.dumps(after[key], sort_keys=True, indent=0) == \
                    json.dumps(before[key], sort_keys=True, indent=0), key
            check = admin.client.get(f"/api/v1/orgs/{org_a.slug}/audit/verify").json()
            assert check["intact"], check
            # The imported chain, then the import as its next entry (then the sign-in).
            entries = admin.client.get(f"/api/v1/orgs/{org_a.slug}/audit",
                                       params={"limit": 10}).json()["items"]
            imported_entry = next(e for e in entries if e["action"] == "org.imported")
            assert imported_entry["seq"] == manifest.counts["audit"] + 1
            assert imported_entry["details"]["origin_tenant_id"] == org_a.id
            original = org_a.admin.client.get(f"/api/v1/orgs/{org_a.slug}/audit", params={
                "limit": 200}).json()["items"]
            copied_chain = admin.client.get(f"/api/v1/orgs/{org_a.slug}/audit", params={
                "limit": 200}).json()["items"]
            by_seq = {e["seq"]: e for e in copied_chain}
            for entry in original:
                if entry["seq"] <= manifest.counts["audit"]:
                    assert by_seq[entry["seq"]]["hash"] == entry["hash"]  # verbatim
        finally:
            admin.close()
        # The same archive again, under another slug: a copy with a new organization id,
        # whose imported chain still verifies.
        copy = enginex(fresh.settings, "tenant", "import", str(archive), "--slug",
                       f"copy-{org_a.slug}"[:40])
        assert copy.returncode == 0, copy.stderr
        assert "new id" in copy.stdout
        admin = sign_in(fresh, org_a.admin.email, PASSWORD)
        try:
            slug = f"copy-{org_a.slug}"[:40]
            check = admin.client.get(f"/api/v1/orgs/{slug}/audit/verify").json()
            assert check["intact"], check
            copied = snapshot(admin.client, slug, origin=org_a.slug)
            for key in ("agent_details", "timelines", "report_files"):
                assert json.dumps(copied[key], sort_keys=True, indent=0) == \
                    json.dumps(before[key], sort_keys=True, indent=0), key
        finally:
            admin.close()


def test_a_download_link_serves_only_its_own_organization(
        server: Server, org_a: Org, org_b: Org) -> None:
    client = org_a.admin.client
    asked = client.post(f"/api/v1/orgs/{org_a.slug}/exports").json()
    wait_for(lambda: client.get(f"/api/v1/orgs/{org_a.slug}/exports/{asked['id']}")
             .json()["status"] == "succeeded", what="the export")
    url = client.post(f"/api/v1/orgs/{org_a.slug}/exports/{asked['id']}/link").json()["url"]
    token = url.rsplit("/", 1)[1]
    # Org B's admin, with org A's token under org B's path: no such link there.
    stolen = org_b.admin.client.get(f"/api/v1/orgs/{org_b.slug}/exports/download/{token}")
    assert stolen.status_code == 404
    # ... and under org A's path: not a member.
    assert org_b.admin.client.get(url).status_code == 404
    # A viewer of org A: no permission, and the link is not used up by the attempt.
    assert org_a.members["viewer"].client.get(url).status_code == 403
    assert client.get(url).status_code == 200
    assert client.get(url).status_code == 404
    # A second export while none is pending is fine; the listing shows both.
    listed = client.get(f"/api/v1/orgs/{org_a.slug}/exports").json()
    assert [e["id"] for e in listed][:1] == [asked["id"]]
    assert listed[0]["downloads"] == 1


def test_a_bad_archive_is_refused_and_nothing_is_written(
        server: Server, org_a: Org, tmp_path: Path) -> None:
    if server.backend != "sqlite":
        pytest.skip("archive checks do not depend on the database")
    seed(org_a)
    good = export_archive(server, org_a)
    assert_lines_match_the_published_schemas(good)
    cases: dict[str, bytes] = {"truncated": good[: len(good) // 2], "not a zip": b"hello"}

    def rewrite(change: Any) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                data = src.read(info.filename)
                dst.writestr(info.filename, change(info.filename, data))
        return out.getvalue()

    cases["tampered event"] = rewrite(lambda name, data: data.replace(b"succeeded", b"failed")
                                      if name == "events.jsonl" else data)
    cases["foreign version"] = rewrite(
        lambda name, data: data.replace(b'"format_version": 1', b'"format_version": 99')
        if name == "manifest.json" else data)
    expected = {"truncated": "not a complete ZIP", "not a zip": "not a complete ZIP",
                "tampered event": "does not match the manifest",
                "foreign version": "format version 99 is not supported"}
    with separate_deployment("sqlite", tmp_path / "target") as fresh:
        for label, data in cases.items():
            path = tmp_path / f"{label.replace(' ', '-')}.zip"
            path.write_bytes(data)
            refused = enginex(fresh.settings, "tenant", "import", str(path))
            assert refused.returncode == 2, (label, refused.stdout, refused.stderr)
            assert "nothing imported" in refused.stderr and expected[label] in refused.stderr, \
                (label, refused.stderr)
        oversized = tmp_path / "good.zip"
        oversized.write_bytes(good)
        too_big = enginex(fresh.settings, "tenant", "import", str(oversized),
                          ENGINEX_IMPORT_MAX_BYTES="1000")
        assert too_big.returncode == 2 and "ENGINEX_IMPORT_MAX_BYTES" in too_big.stderr
        # A chain whose entry was changed and re-hashed in the manifest: the hashes match
        # but the audit chain does not verify.
        forged = tmp_path / "forged.zip"
        forged.write_bytes(_forge_audit(good))
        refused = enginex(fresh.settings, "tenant", "import", str(forged))
        assert refused.returncode == 2 and "audit chain" in refused.stderr, refused.stderr
        # Nothing was written: no organization, no staged file.
        admin = make_platform_admin(fresh)
        try:
            tenants = admin.client.get("/api/v1/admin/tenants").json()
            assert all(t["slug"] != org_a.slug for t in tenants), tenants
        finally:
            admin.close()
        leftovers = [p.name for p in fresh.settings.data_dir.iterdir()
                     if p.name.startswith(".import-")]
        assert leftovers == []
        with pytest.raises(ArchiveRefused):
            check_archive(tmp_path / "truncated.zip", max_bytes=10**9)


def assert_lines_match_the_published_schemas(archive: bytes) -> None:
    import jsonschema

    from enginex.lifecycle.schema import all_schemas

    schemas = all_schemas()
    checked = 0
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        for name in zipped.namelist():
            if name.startswith("files/"):
                continue
            validator = jsonschema.Draft202012Validator(
                schemas[f"{name}.schema.json"],
                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
            if name == "manifest.json":
                body = json.loads(zipped.read(name))
                body["source"] = {}  # checked as org.jsonl
                validator = jsonschema.Draft202012Validator(
                    {**schemas[f"{name}.schema.json"], "properties": {
                        **schemas[f"{name}.schema.json"]["properties"], "source": {}}})
                validator.validate(body)
                continue
            for line in zipped.read(name).splitlines():
                validator.validate(json.loads(line))
                checked += 1
    assert checked > 20


def _forge_audit(good: bytes) -> bytes:
    import hashlib

    with zipfile.ZipFile(io.BytesIO(good)) as src:
        files = {i.filename: src.read(i.filename) for i in src.infolist()}
    lines = files["audit.jsonl"].decode().splitlines()
    entry = json.loads(lines[0])
    entry["details"] = {**entry["details"], "forged": True}
    lines[0] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    files["audit.jsonl"] = ("\n".join(lines) + "\n").encode()
    manifest = json.loads(files["manifest.json"])
    manifest["files"]["audit.jsonl"] = {"sha256": hashlib.sha256(files["audit.jsonl"])
                                        .hexdigest(), "bytes": len(files["audit.jsonl"])}
    files["manifest.json"] = json.dumps(manifest).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for name, data in files.items():
            dst.writestr(name, data)
    return out.getvalue()


# --- a worker killed mid-export -------------------------------------------------------------


def test_an_export_whose_worker_is_killed_is_finished_by_the_next_worker(
        backend: str, tmp_path: Path) -> None:
    """``enginex worker`` is SIGKILLed while it writes the archive (the export is paced at
    a few rows a second so that it is caught mid-way); no archive is served meanwhile; a new
    worker takes the job over when the lease lapses and writes a complete, valid archive."""
    with separate_deployment(backend, tmp_path / "d", embedded_worker=False) as deployment:
        admin = make_platform_admin(deployment)
        org = make_org(deployment, admin, "k", roles=("admin",), with_keys=False)
        client = org.admin.client
        base = f"/api/v1/orgs/{org.slug}/exports"
        export_id = client.post(base).json()["id"]
        env = {"ENGINEX_EXPORT_ROWS_PER_SECOND": "5", "ENGINEX_EXPORT_LEASE_SECONDS": "3",
               "ENGINEX_LIFECYCLE_POLL_SECONDS": "0.2"}
        log = (tmp_path / "worker.log").open("wb")
        first = subprocess.Popen([str(ENGINEX), "worker"], env={**cli_env(deployment.settings),
                                                                 **env},
                                 stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: client.get(f"{base}/{export_id}").json()["done"] >= 3,
                     what="the first worker to be mid-export", timeout=120)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        state = client.get(f"{base}/{export_id}").json()
        assert state["status"] == "running" and state["done"] < state["total"], state
        assert client.post(f"{base}/{export_id}/link").status_code == 409  # nothing served
        storage = deployment.settings.resolved_storage_dir
        assert not list(storage.glob("*/exports/*.zip"))
        second = subprocess.Popen([str(ENGINEX), "worker"],
                                  env={**cli_env(deployment.settings), **env,
                                       "ENGINEX_EXPORT_ROWS_PER_SECOND": "0"},
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            done = wait_for(lambda: (e := client.get(f"{base}/{export_id}").json())["status"]
                            == "succeeded" and e, what="the second worker to finish",
                            timeout=120)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(60)
        assert done["attempts"] == 2, done
        url = client.post(f"{base}/{export_id}/link").json()["url"]
        archive = tmp_path / "after-kill.zip"
        archive.write_bytes(client.get(url).content)
        manifest = check_archive(archive, max_bytes=10**9)
        assert manifest.counts["members"] == 1
        assert not list(storage.glob("*/exports/*.part"))
        actions = [e["action"] for e in client.get(f"/api/v1/orgs/{org.slug}/audit",
                                                   params={"limit": 50}).json()["items"]]
        assert actions.count("export.started") == 2 and "export.completed" in actions


def test_the_cli_exports_an_organization_to_a_file(server: Server, org_a: Org,
                                                    tmp_path: Path) -> None:
    if server.backend != "sqlite":
        pytest.skip("the CLI path is the worker's; the round trip covers both backends")
    out = tmp_path / "cli.zip"
    done = enginex(server.settings, "tenant", "export", "--org", org_a.slug, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert check_archive(out, max_bytes=10**9).counts["members"] == len(org_a.members)
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    again = enginex(server.settings, "tenant", "export", "--org", org_a.slug, "-o", str(out))
    assert again.returncode == 2 and "exists" in again.stderr
