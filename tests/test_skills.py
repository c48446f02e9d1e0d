"""Skills of an organization, through real HTTP (SQLite and PostgreSQL), and their use at run
time by a real worker talking to a fake OpenAI-compatible server.

Threat model: only the org's admins write skills, builders read them, operators and viewers
neither; another organization's skill is a 404 identical to a missing one; a run only ever
gets its own organization's skills (a same-named skill of another org is never used), and a
package's own skill wins over the org's. Bad SKILL.md text gets a 422 that names the line and
key; nothing answers 500.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from enginex.agents.cli import zip_directory
from enginex.audit.models import AuditEntry
from enginex.db import set_tenant
from enginex.kit.errors import NOT_FOUND_MESSAGE
from tests.factories import Org, Server, anonymous, api_key_client, run_db, wait_for_status
from tests.fake_llm import FakeLLM, FakeReply

EXPECTED_404 = {"error": {"code": "not_found", "message": NOT_FOUND_MESSAGE, "details": {}}}


def skills_url(org: Org | str) -> str:
    return f"/api/v1/orgs/{org if isinstance(org, str) else org.slug}/skills"


def skill_md(name: str, body: str = "Do the thing carefully.",
             description: str = "What it is for") -> str:
    return f"---\nname: {name}\ndescription: {description}\n---\n\n# {name}\n\n{body}\n"


def create(org: Org, text: str, files: dict[str, str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"skill_md": text}
    if files is not None:
        body["files"] = files
    response = org.admin.client.post(skills_url(org), json=body)
    assert response.status_code == 201, response.text
    return response.json()


def audit(server: Server, org: Org, prefix: str) -> list[AuditEntry]:
    async def work(session: Any) -> list[AuditEntry]:
        await set_tenant(session, uuid.UUID(org.id))
        stmt = select(AuditEntry).where(AuditEntry.action.startswith(prefix)) \
            .order_by(AuditEntry.seq)
        return list((await session.execute(stmt)).scalars())

    return run_db(server, work)


# --- access ------------------------------------------------------------------------------------


def test_access_rules(server: Server, org_a: Org, org_b: Org) -> None:
    victim = create(org_b, skill_md("house-style", f"canary-{org_b.slug}"))
    one = f"{skills_url(org_b)}/{victim['id']}"
    random_one = f"{skills_url(org_b)}/{uuid.uuid4()}"
    new = {"skill_md": skill_md("other")}
    routes = [("GET", "", None), ("POST", "", new), ("GET", "/ID", None),
              ("PUT", "/ID", new), ("DELETE", "/ID", None), ("GET", "/ID/skill.md", None)]

    def target(suffix: str, base: str = one) -> str:
        return skills_url(org_b) if suffix == "" else base + suffix.removeprefix("/ID")

    with anonymous(server) as anon:
        for method, suffix, body in routes:
            response = anon.request(method, target(suffix), json=body)
            assert response.status_code == 401, (method, suffix, response.text)
            assert response.json()["error"]["code"] == "unauthenticated"
    # Another organization's admin (cookie or API key): 404, the same body as a random id.
    key_a = api_key_client(server, org_a.api_keys["admin"])
    for attacker in (org_a.admin.client, key_a):
        for method, suffix, body in routes:
            response = attacker.request(method, target(suffix), json=body)
            baseline = attacker.request(method, target(suffix, random_one), json=body)
            assert response.status_code == 404, (method, suffix, response.text)
            assert response.json() == EXPECTED_404 == baseline.json()
            assert f"canary-{org_b.slug}" not in response.text
    key_a.close()
    # A random id in one's own organization: the same 404.
    assert org_b.admin.client.get(random_one).json() == EXPECTED_404
    # Own members and keys: builders read; operators and viewers nothing; admins write.
    for role in ("builder", "operator", "viewer"):
        key = api_key_client(server, org_b.api_keys[role])
        for actor in (org_b.members[role].client, key):
            for method, suffix, body in routes:
                response = actor.request(method, target(suffix), json=body)
                expected = 200 if role == "builder" and method == "GET" else 403
                assert response.status_code == expected, (role, method, suffix, response.text)
                if expected == 403:
                    assert response.json()["error"]["code"] == "forbidden"
        key.close()
    admin_key = api_key_client(server, org_b.api_keys["admin"])
    assert admin_key.get(one).json()["name"] == "house-style"
    admin_key.close()
    # Nothing of the attempts above was written anywhere.
    assert [s["name"] for s in org_b.admin.client.get(skills_url(org_b)).json()] == \
        ["house-style"]
    assert org_a.admin.client.get(skills_url(org_a)).json() == []


# --- the API -------------------------------------------------------------------------------------


def test_create_read_round_trip_update_delete_and_audit(server: Server, org_a: Org) -> None:
    admin = org_a.admin.client
    text = ("---\nname: timesheet-review\n"
            "description: \"How to review a timesheet: overtime, gaps.\"\n"
            "license: Apache-2.0\n---\n\n# Reviewing timesheets\n\n1. Sum the hours.\n")
    files = {"reference/rules.md": "Overtime starts after 40 hours.\n",
             "examples/week.csv.txt": "date,hours\n2026-11-02,8\n"}
    created = create(org_a, text, files)
    assert created["name"] == "timesheet-review"
    assert created["description"] == "How to review a timesheet: overtime, gaps."
    assert created["instructions"] == "# Reviewing timesheets\n\n1. Sum the hours."
    assert created["files"] == files  # texts kept byte for byte (no whitespace stripping)
    one = f"{skills_url(org_a)}/{created['id']}"

    listed = org_a.members["builder"].client.get(skills_url(org_a)).json()
    assert [(s["name"], s["description"], sorted(s["files"])) for s in listed] == [
        ("timesheet-review", created["description"], sorted(files))]
    assert "instructions" not in listed[0]

    download = org_a.members["builder"].client.get(one + "/skill.md")
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/markdown")
    assert "timesheet-review-SKILL.md" in download.headers["content-disposition"]
    assert download.text == created["skill_md"]
    assert download.text.startswith("---\nname: timesheet-review\n")

    # Round trip: the downloaded SKILL.md, sent back unchanged, changes nothing.
    same = admin.put(one, json={"skill_md": download.text})
    assert same.status_code == 200, same.text
    assert {k: same.json()[k] for k in ("name", "description", "instructions", "files")} == \
        {k: created[k] for k in ("name", "description", "instructions", "files")}

    # Update: new instructions and a rename; files omitted are kept, files given replace.
    renamed = admin.put(one, json={"skill_md": skill_md("timesheets", "New text.")})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "timesheets" and renamed.json()["files"] == files
    assert "New text." in renamed.json()["instructions"]
    emptied = admin.put(one, json={"skill_md": skill_md("timesheets", "New text."),
                                   "files": {}})
    assert emptied.json()["files"] == {}

    # Delete, then the downloaded text creates the same skill again.
    assert admin.delete(one).status_code == 204
    assert admin.get(one).json() == EXPECTED_404
    assert admin.delete(one).json() == EXPECTED_404
    again = create(org_a, download.text, files)
    assert (again["name"], again["description"], again["instructions"]) == \
        (created["name"], created["description"], created["instructions"])

    entries = audit(server, org_a, "skill.")
    assert [e.action for e in entries] == ["skill.created", "skill.updated", "skill.updated",
                                           "skill.updated", "skill.deleted", "skill.created"]
    assert entries[0].details == {"name": "timesheet-review", "files": sorted(files)}
    assert entries[1].details["changed"] == []
    assert entries[2].details["changed"] == ["name", "description", "instructions"]
    assert entries[2].details["previous_name"] == "timesheet-review"
    assert entries[3].details["changed"] == ["files"]
    assert entries[4].details == {"name": "timesheets"}
    assert all(e.actor_id is not None and e.actor_kind == "user" for e in entries)
    assert all(e.target_kind == "skill" for e in entries)
    stored = json.dumps([e.details for e in entries])
    assert "Sum the hours" not in stored and "Overtime starts" not in stored


def test_duplicate_names_conflict_within_an_org_only(server: Server, org_a: Org,
                                                     org_b: Org) -> None:
    first = create(org_a, skill_md("house-style"))
    other = create(org_a, skill_md("checklist"))
    duplicate = org_a.admin.client.post(skills_url(org_a), json={"skill_md": skill_md(
        "house-style", "different")})
    assert duplicate.status_code == 409
    error = duplicate.json()["error"]
    assert error["code"] == "conflict" and "house-style" in error["message"]
    assert error["details"] == {"field": "skill_md", "key": "name"}
    # Renaming onto a taken name: 409 too, and nothing changes.
    clash = org_a.admin.client.put(f"{skills_url(org_a)}/{other['id']}",
                                   json={"skill_md": skill_md("house-style")})
    assert clash.status_code == 409
    assert org_a.admin.client.get(f"{skills_url(org_a)}/{other['id']}").json()["name"] == \
        "checklist"
    # The same name in another organization is fine.
    assert create(org_b, skill_md("house-style"))["id"] != first["id"]


BAD_SKILL_MD: list[tuple[str, str, int | None, str | None, str]] = [
    # (skill_md, what the message says, line, key, description)
    ("---\nname: x\n\n# never closed", "never closed", 1, None, "unclosed front matter"),
    ("---\nname: ok\ndescription x\n---\nbody", "expected 'key: value'", 3, None, "no colon"),
    ("---\nname: Not A Name\n---\nbody", "not a valid skill name", 2, "name", "bad name"),
    ("---\nname: ok\nname: again\n---\nbody", "'name' is given twice", 3, "name", "twice"),
    ("---\nname: ok\ndescription: \"open\n---\nbody", "not closed", 3, "description",
     "open quote"),
    ("---\nname: ok\ndescription: [a, b]\n---\nbody", "put it in quotes", 3, "description",
     "flow list"),
    ("---\nname:\n  - a\n---\nbody", "needs a text value", 2, "name", "nested name"),
    ("---\nname: ok\n\tdescription: tab\n---\nbody", "tabs", 3, None, "tab indent"),
    ("---\ndescription: nameless\n---\nbody", "must name the skill", None, "name", "no name"),
    ("# Just markdown\n\nNo front matter.", "must name the skill", None, "name",
     "no front matter"),
    ("---\nname: ok\n---\n", "no instructions", None, None, "empty body"),
    ("---\nname: ok\ndescription: " + "d" * 1025 + "\n---\nbody", "limit is 1024", 3,
     "description", "long description"),
    ("---\nname: ok\n---\n" + "x" * (100 * 1024 + 1), "limit is 102400 bytes", None, None,
     "instructions too long"),
]


@pytest.mark.parametrize("text,says,line,key", [c[:4] for c in BAD_SKILL_MD],
                         ids=[c[4] for c in BAD_SKILL_MD])
def test_bad_skill_md_gets_a_clear_422(server: Server, org_a: Org, text: str, says: str,
                                       line: int | None, key: str | None) -> None:
    response = org_a.admin.client.post(skills_url(org_a), json={"skill_md": text})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_failed"
    assert error["message"].startswith("skill_md: ") and says in error["message"], error
    assert error["details"].get("field") == "skill_md"
    assert error["details"].get("line") == line and error["details"].get("key") == key
    if line is not None:
        assert f"line {line}: " in error["message"]
    assert org_a.admin.client.get(skills_url(org_a)).json() == []


BAD_FILES: list[tuple[dict[str, str], str, str]] = [
    ({"../secrets.md": "x"}, "'..' is not allowed", "dot-dot"),
    ({"/etc/passwd": "x"}, "absolute paths", "absolute"),
    ({"C:/x.md": "x"}, "absolute paths", "drive letter"),
    ({"a\\b.md": "x"}, "backslash", "backslash"),
    ({"a//b.md": "x"}, "without empty", "empty part"),
    ({"run.py": "print(1)"}, "executable code", "python"),
    ({"tool.txt": "#!/bin/sh\nrm -rf /"}, "executable code", "shebang"),
    ({"SKILL.md": "x"}, "send it as skill_md", "skill file"),
    ({"a.md": "x", "A.md": "y"}, "differ only in case", "case clash"),
    ({"big1.md": "x" * 300_000, "big2.md": "y" * 300_000}, "limit is 524288", "too large"),
]


@pytest.mark.parametrize("files,says", [c[:2] for c in BAD_FILES],
                         ids=[c[2] for c in BAD_FILES])
def test_bad_files_get_a_clear_422(server: Server, org_a: Org, files: dict[str, str],
                                   says: str) -> None:
    response = org_a.admin.client.post(skills_url(org_a), json={
        "skill_md": skill_md("with-files"), "files": files})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["message"].startswith("files: ") and says in error["message"], error
    assert error["details"]["field"] == "files"
    assert org_a.admin.client.get(skills_url(org_a)).json() == []


def test_malformed_bodies_are_refused_without_a_500(server: Server, org_a: Org) -> None:
    admin = org_a.admin.client
    created = create(org_a, skill_md("keep-me"))
    one = f"{skills_url(org_a)}/{created['id']}"
    for body in ({}, {"skill_md": ""}, {"skill_md": 5}, {"skill_md": None},
                 {"name": "x", "instructions": "y"}, {"skill_md": skill_md("a"), "files": []},
                 {"skill_md": skill_md("a"), "files": {"a.md": 1}},
                 {"skill_md": skill_md("a"), "tenant_id": org_a.id},
                 {"skill_md": skill_md("a") + "\x00"},
                 {"skill_md": skill_md("a"), "files": {"a.md": "nul\x00"}},
                 {"skill_md": "x" * 200_001}):
        for response in (admin.post(skills_url(org_a), json=body), admin.put(one, json=body)):
            assert response.status_code == 422, (body, response.text)
            assert response.json()["error"]["code"] == "validation_failed"
    assert admin.post(skills_url(org_a), content=b"{not json",
                      headers={"content-type": "application/json"}).status_code == 422
    assert admin.get(f"{skills_url(org_a)}/not-a-uuid").status_code == 422
    assert admin.put(f"{skills_url(org_a)}/{uuid.uuid4()}",
                     json={"skill_md": skill_md("x")}).json() == EXPECTED_404
    assert [s["name"] for s in admin.get(skills_url(org_a)).json()] == ["keep-me"]


# --- deploy-time checks of package skills -------------------------------------------------------


def write_package(tmp_path: Path, manifest: dict[str, Any],
                  files: dict[str, str] | None = None) -> bytes:
    directory = tmp_path / f"pkg-{secrets.token_hex(4)}"
    directory.mkdir()
    (directory / "agent.json").write_text(json.dumps(manifest))
    for path, text in (files or {}).items():
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return zip_directory(directory)


def deploy(org: Org, data: bytes) -> Any:
    return org.members["builder"].client.post(
        f"/api/v1/orgs/{org.slug}/agents",
        files={"package": ("package.zip", data, "application/zip")})


def llm_agent(agent_id: str, skills: list[str]) -> dict[str, Any]:
    return {"agent": {"id": agent_id, "name": agent_id.title(), "version": "1.0.0"},
            "graph": {"entry_node": "write", "terminal_nodes": ["write"], "nodes": [
                {"id": "write", "node_type": "llm", "output_keys": ["answer"],
                 "system_prompt": "You write short answers.", "skills": skills}]}}


def test_package_skills_are_checked_at_deploy(server: Server, org_a: Org,
                                              tmp_path: Path) -> None:
    data = write_package(tmp_path, llm_agent("checked", ["ok-skill", "Bad Name", "UPPER"]), {
        "skills/ok-skill/SKILL.md": "---\nname: ok-skill\n---\nfine",
        "skills/mismatch/SKILL.md": "---\nname: other-name\n---\nbody",
        "skills/broken/SKILL.md": "---\nname: broken\ndescription: \"open\n---\nbody",
        "skills/Upper_Case/SKILL.md": "body"})
    response = deploy(org_a, data)
    assert response.status_code == 422, response.text
    problems = {p["path"]: p["message"] for p in response.json()["error"]["details"]["errors"]}
    assert "not a skill name" in problems["graph.nodes[0].skills[2]"]
    assert "graph.nodes[0].skills[1]" in problems  # pydantic refuses it as an identifier
    assert "'other-name'" in problems["skills/mismatch/SKILL.md"] and \
        "'mismatch'" in problems["skills/mismatch/SKILL.md"]
    assert problems["skills/broken/SKILL.md"].startswith("front matter line 3: ")
    assert "skill's name" in problems["skills/Upper_Case"]
    assert not any(p.startswith("skills/ok-skill") for p in problems)
    # An organization skill that does not exist yet does not block a deploy.
    fine = deploy(org_a, write_package(tmp_path, llm_agent("later", ["added-later"])))
    assert fine.status_code in (200, 201), fine.text


# --- run time ----------------------------------------------------------------------------------


@contextmanager
def private_network(server: Server) -> Iterator[None]:
    """Let the deployment reach 127.0.0.1 (the fake LLM) for a while."""
    settings = server.app.state.settings
    before = settings.allow_private_network
    settings.allow_private_network = True
    try:
        yield
    finally:
        settings.allow_private_network = before


def use_fake_llm(org: Org, fake: FakeLLM) -> None:
    response = org.admin.client.put(f"/api/v1/orgs/{org.slug}/settings/llm", json={
        "provider": "openai_compatible", "base_url": fake.openai_base_url,
        "default_model": "gpt-fake", "api_key": "sk-test-skills"})
    assert response.status_code == 200, response.text


def start(org: Org, agent: str) -> str:
    response = org.members["operator"].client.post(f"/api/v1/orgs/{org.slug}/sessions",
                                                   json={"agent": agent, "inputs": {}})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def system_prompt(recorded: Any) -> str:
    messages = recorded.body["messages"]
    assert messages[0]["role"] == "system"
    return str(messages[0]["content"])


def test_a_run_gets_its_package_and_org_skills_and_never_another_orgs(
        server: Server, org_a: Org, org_b: Org, tmp_path: Path) -> None:
    a_style = f"A-STYLE-{secrets.token_hex(6)}"
    a_shared = f"A-SHARED-{secrets.token_hex(6)}"
    b_style = f"B-STYLE-{secrets.token_hex(6)}"
    b_checklist = f"B-CHECKLIST-{secrets.token_hex(6)}"
    pkg_checklist = f"PKG-CHECKLIST-{secrets.token_hex(6)}"
    pkg_shared = f"PKG-SHARED-{secrets.token_hex(6)}"
    create(org_a, skill_md("house-style", a_style), files={"reference/tone.md": "calm"})
    create(org_a, skill_md("shared", a_shared))
    create(org_b, skill_md("house-style", b_style))
    create(org_b, skill_md("checklist", b_checklist))
    data = write_package(tmp_path, llm_agent("skilled", ["house-style", "checklist", "shared"]), {
        "skills/checklist/SKILL.md": ("---\nname: checklist\ndescription: package front "
                                      f"matter\n---\n\n{pkg_checklist}\n"),
        "skills/checklist/extra.md": "NOT-INLINED",
        "skills/shared/SKILL.md": pkg_shared})
    assert deploy(org_a, data).status_code in (200, 201)
    with FakeLLM() as fake, private_network(server):
        use_fake_llm(org_a, fake)
        fake.queue(FakeReply(tool_calls=[("set_output", {"key": "answer", "value": "done"})]))
        run = start(org_a, "skilled")
        done = wait_for_status(org_a, run, {"succeeded", "failed"})
        assert done["status"] == "succeeded", done
        prompts = [system_prompt(r) for r in fake.requests
                   if r.path == "/v1/chat/completions"]
    assert len(prompts) == 1
    prompt = prompts[0]
    # In the node's order: the org's house-style (with its file list), then the package's
    # checklist and shared (front matter stripped, other files not inlined).
    assert prompt.index("## Skill: house-style") < prompt.index("## Skill: checklist") \
        < prompt.index("## Skill: shared")
    assert a_style in prompt and "`reference/tone.md`" in prompt and "calm" not in prompt
    assert pkg_checklist in prompt and "package front matter" not in prompt
    assert "NOT-INLINED" not in prompt
    assert pkg_shared in prompt and a_shared not in prompt  # package > org
    assert b_style not in prompt and b_checklist not in prompt  # never another org's


def test_a_run_naming_a_missing_skill_fails_with_the_reason(
        server: Server, org_a: Org, org_b: Org, tmp_path: Path) -> None:
    # org B has the skill; org A does not: A's run must not find B's.
    create(org_b, skill_md("nowhere", "B only"))
    assert deploy(org_a, write_package(tmp_path, llm_agent("lost", ["nowhere"]))) \
        .status_code in (200, 201)
    with FakeLLM() as fake, private_network(server):
        use_fake_llm(org_a, fake)
        run = start(org_a, "lost")
        done = wait_for_status(org_a, run, {"succeeded", "failed"})
        assert not [r for r in fake.requests if r.path == "/v1/chat/completions"]
    assert done["status"] == "failed", done
    assert ("skill 'nowhere' is neither in the agent package (skills/nowhere/SKILL.md) nor "
            "in the organization's skills; add it on the Skills page") in done["error"]


# --- the dashboard's forms (the browser test drives the same pages in Chromium) ---------------


def test_dashboard_forms_create_refuse_edit_and_delete(server: Server, org_a: Org) -> None:
    admin = org_a.admin.client
    page = f"/o/{org_a.slug}/settings/skills"
    empty = admin.get(page)
    assert empty.status_code == 200 and "No skills yet." in empty.text
    created = admin.post(page, data={"skill_md": "\r\n" + skill_md("from-form").replace(
        "\n", "\r\n")})
    assert created.status_code == 303, created.text
    skill_page = created.headers["location"].split("?")[0]
    skill_id = skill_page.rsplit("/", 1)[1]
    shown = admin.get(skill_page)
    assert shown.status_code == 200 and "from-form" in shown.text
    api_copy = admin.get(f"{skills_url(org_a)}/{skill_id}").json()
    assert api_copy["instructions"] == "# from-form\n\nDo the thing carefully."

    # Refused texts re-render with the message (and never a 500): bad front matter, a taken
    # name, NUL characters, and text longer than the form allows.
    for text, status, says in (
            ("---\nname: Bad Name\n---\nbody", 422, "line 2: name &#39;Bad Name&#39;"),
            (skill_md("from-form"), 409, "already exists"),
            (skill_md("nul") + "\x00", 422, "NUL character"),
            ("x" * 200_001, 422, "longer than 200000 characters")):
        response = admin.post(page, data={"skill_md": text})
        assert response.status_code == status, response.text
        assert says in response.text, (says, response.text[:2000])
    # Editing: a bad text re-renders the skill page with the message and the text as typed.
    refused = admin.post(skill_page, data={"skill_md": "---\nname: x\n"})
    assert refused.status_code == 422 and "never closed" in refused.text
    saved = admin.post(skill_page, data={"skill_md": skill_md("from-form", "Edited.")})
    assert saved.status_code == 303
    assert "Edited." in admin.get(f"{skills_url(org_a)}/{skill_id}").json()["instructions"]

    # Builders read the pages without forms; operators get the forbidden page.
    builder = org_a.members["builder"].client
    read_only = builder.get(skill_page)
    assert read_only.status_code == 200 and "Edited." in read_only.text
    assert "Save skill" not in read_only.text and "/delete" not in read_only.text
    assert builder.post(skill_page, data={"skill_md": skill_md("x")}).status_code == 403
    assert org_a.members["operator"].client.get(page).status_code == 403

    deleted = admin.post(f"{skill_page}/delete")
    assert deleted.status_code == 303 and deleted.headers["location"].endswith("notice=deleted")
    assert admin.get(skill_page).status_code == 404
    assert admin.get(skills_url(org_a)).json() == []
