"""Credential values never leak through transformed copies (SQLite and PostgreSQL).

Threat model: a builder writes ``{{credentials.NAME.FIELD}}`` into the host of an
``http_request`` URL. The HTTP stack lower-cases and IDNA-encodes the host and the stored error
quotes it ("cannot resolve host 'secret-ünïcode-...'"), so anyone who may read runs -- a viewer
-- reads the secret from the events, without a single request leaving the platform. Or a
target echoes the value it received transformed: lower- or upper-cased, base64, hex, as a
punycode host. Redaction that only knows the exact, URL-encoded and JSON-escaped forms misses
all of these.

So: a placeholder is refused in a URL's scheme and authority (user info, host, port) and in
every http_request argument but the URL's path and query, header values and the body -- when
the package is uploaded and again before a step resolves anything (a version deployed before
the check); an error about a URL that carries a credential never quotes it; and redaction
matches every value ignoring case and in its base64, hex and IDNA forms, in events,
checkpoints, the session, reports, the audit log and the logs.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import secrets
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from enginex.agents import package
from enginex.agents.cli import zip_directory
from enginex.credentials.runtime import redact_text, variants
from enginex.tools.base import ToolContext, ToolError
from enginex.tools.builtin import HttpRequestTool
from tests.conftest import separate_deployment
from tests.factories import Org, Server, make_org, make_platform_admin, wait_for_status
from tests.fake_llm import serve

RULE = ("a credential may only be sent in the URL's path or query (after 'https://host/'), "
        "in a header value or in the body (json, body)")
IN_AUTHORITY = "the scheme or host part of argument 'url' (scheme, user name, host or port)"


def canary() -> str:
    """Mixed case and non-ASCII, so that every transformation changes it."""
    return f"SeCrEt-Ünïcode-Canary-{secrets.token_hex(4)}"


def transformed(value: str) -> list[str]:
    """The copies of ``value`` that must never be stored."""
    data = value.encode()
    forms = [value, value.lower(), value.upper(), value.casefold(), quote(value, safe=""),
             base64.b64encode(data).decode(),
             base64.urlsafe_b64encode(data).decode().rstrip("="), data.hex()]
    try:
        host = httpx.URL(f"http://{value}.invalid/")
    except httpx.InvalidURL:  # "user:pass" is no host name
        return forms
    return [*forms, host.host.removesuffix(".invalid"),
            host.raw_host.decode().removesuffix(".invalid")]


def assert_nowhere(values: list[str], **texts: str) -> None:
    for where, text in texts.items():
        lowered = text.lower()
        for value in values:
            for form in transformed(value):
                for spelled in (form, json.dumps(form)[1:-1]):
                    assert spelled.lower() not in lowered, f"{form!r} in {where}"


def add_credential(org: Org, **body: Any) -> None:
    response = org.admin.client.post(f"/api/v1/orgs/{org.slug}/credentials", json=body)
    assert response.status_code == 201, response.text


def upload(org: Org, tmp_path: Path, agent_id: str, nodes: list[dict[str, Any]],
           edges: list[dict[str, Any]] | None = None,
           inputs: dict[str, Any] | None = None) -> httpx.Response:
    manifest = {"agent": {"id": agent_id, "name": agent_id, "version": "1.0.0"},
                "inputs": inputs or {},
                "graph": {"entry_node": nodes[0]["id"], "terminal_nodes": [nodes[-1]["id"]],
                          "max_steps": 20, "nodes": nodes, "edges": edges or []}}
    directory = tmp_path / f"{agent_id}-{secrets.token_hex(3)}"
    directory.mkdir()
    (directory / "agent.json").write_text(json.dumps(manifest))
    return org.members["builder"].client.post(
        f"/api/v1/orgs/{org.slug}/agents",
        files={"package": ("package.zip", zip_directory(directory), "application/zip")})


def call(node_id: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": node_id, "node_type": "tool", "tool": "http_request",
            "arguments": arguments, "output_key": node_id}


def chain(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Edges running every node in turn, whatever the previous one's outcome."""
    return [{"source": a["id"], "target": b["id"], "condition": "always"}
            for a, b in itertools.pairwise(nodes)]


def run(org: Org, agent_id: str, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    response = org.members["operator"].client.post(
        f"/api/v1/orgs/{org.slug}/sessions", json={"agent": agent_id, "inputs": inputs or {}})
    assert response.status_code == 201, response.text
    return wait_for_status(org, response.json()["id"], {"succeeded", "failed"}, 60)


def served(org: Org, run_id: str) -> dict[str, str]:
    """Everything the API serves about a run, as a viewer reads it, and the audit log."""
    viewer, base = org.members["viewer"].client, f"/api/v1/orgs/{org.slug}"
    texts = {suffix or "session": viewer.get(f"{base}/sessions/{run_id}{suffix}").text
             for suffix in ("", "/events", "/checkpoints")}
    reports = viewer.get(f"{base}/reports", params={"session": run_id})
    assert reports.status_code == 200, reports.text
    texts["reports"] = reports.text
    for report in reports.json():
        texts[f"report {report['id']}"] = viewer.get(f"{base}/reports/{report['id']}").text
        texts[f"download {report['id']}"] = viewer.get(
            f"{base}/reports/{report['id']}/download").text
    audit = org.admin.client.get(f"{base}/audit", params={"limit": 200})
    assert audit.status_code == 200, audit.text
    texts["audit"] = audit.text
    return texts


def events_of(org: Org, run_id: str) -> list[dict[str, Any]]:
    return list(org.members["viewer"].client.get(
        f"/api/v1/orgs/{org.slug}/sessions/{run_id}/events").json())


def audited(org: Org, action: str, run_id: str) -> list[dict[str, Any]]:
    entries = org.admin.client.get(f"/api/v1/orgs/{org.slug}/audit",
                                   params={"action": action, "limit": 200}).json()["items"]
    return [e["details"] for e in entries if e["details"].get("run_id") == run_id]


# --- placeholders in a URL's scheme or authority ----------------------------------------------

PLACEHOLDER = "{{credentials.canary.value}}"
# (node id, http_request arguments, the argument named by the error)
MISPLACED: list[tuple[str, dict[str, Any], str]] = [
    ("host", {"url": f"https://{PLACEHOLDER}.invalid/x"}, "url"),
    ("port", {"url": f"http://127.0.0.1:{PLACEHOLDER}/x"}, "url"),
    ("userinfo", {"url": f"https://{PLACEHOLDER}@api.invalid/x"}, "url"),
    ("scheme", {"url": f"{PLACEHOLDER}://api.invalid/x"}, "url"),
    ("whole", {"url": PLACEHOLDER}, "url"),
    # The slash could be the second of 'https://' once the input is filled in.
    ("from_input", {"url": "{{ inputs.base }}/" + PLACEHOLDER}, "url"),
    ("credential", {"url": "https://api.invalid/x", "credential": PLACEHOLDER}, "credential"),
    ("header_name", {"url": "https://api.invalid/x", "credential_header": PLACEHOLDER},
     "credential_header"),
]


def message(argument: str) -> str:
    where = IN_AUTHORITY if argument == "url" else f"argument '{argument}'"
    return f"the credential placeholder {PLACEHOLDER} is in {where}; {RULE}"


def test_a_placeholder_outside_path_query_headers_and_body_is_refused_at_upload(
        server: Server, org_a: Org, tmp_path: Path) -> None:
    nodes = [call(node_id, arguments) for node_id, arguments, _ in MISPLACED]
    refused = upload(org_a, tmp_path, "misplaced", nodes, chain(nodes),
                     inputs={"base": {"type": "string"}})
    assert refused.status_code == 422, refused.text
    errors = {e["path"]: e["message"] for e in refused.json()["error"]["details"]["errors"]}
    assert errors == {f"graph.nodes[{i}].arguments.{argument}": message(argument)
                      for i, (_, _, argument) in enumerate(MISPLACED)}

    # Where a credential belongs: the path, the query, header values, the body -- also after
    # a base URL taken from the inputs, once the package's own text has ended the host.
    fine = [call("path", {"url": f"https://api.invalid/v1/{PLACEHOLDER}/items"}),
            call("query", {"url": f"https://api.invalid/x?key={PLACEHOLDER}"}),
            call("base", {"url": "{{ inputs.base }}/v1/" + PLACEHOLDER}),
            call("host_input", {"url": "https://{{ inputs.host }}/" + PLACEHOLDER}),
            call("base_query", {"url": "{{ inputs.base }}?key=" + PLACEHOLDER}),
            call("sent", {"url": "https://api.invalid/x", "method": "POST",
                          "headers": {"X-Key": PLACEHOLDER},
                          "json": {"nested": [f"Bearer {PLACEHOLDER}"]}}),
            call("body", {"url": "https://api.invalid/x", "method": "POST",
                          "body": f"key={PLACEHOLDER}"})]
    accepted = upload(org_a, tmp_path, "well-placed", fine, chain(fine),
                      inputs={"base": {"type": "string"}, "host": {"type": "string"}})
    assert accepted.status_code == 201, accepted.text


def test_a_placeholder_in_an_older_versions_url_host_fails_the_step_without_its_value(
        server: Server, org_a: Org, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # A version deployed before uploads were checked: the run-time check stands alone.
    monkeypatch.setattr(package, "credential_placeholder_problems", lambda raw: [],
                        raising=False)
    value = canary()
    add_credential(org_a, name="canary", type="custom", values={"value": value})
    nodes = [call(node_id, arguments) for node_id, arguments, _ in MISPLACED]
    uploaded = upload(org_a, tmp_path, "old-misplaced", nodes, chain(nodes),
                      inputs={"base": {"type": "string"}})
    assert uploaded.status_code == 201, uploaded.text
    caplog.set_level(logging.DEBUG)

    session = run(org_a, "old-misplaced", {"base": "https:/"})
    assert session["status"] == "failed"
    assert_nowhere([value], **served(org_a, session["id"]), logs=caplog.text)
    errors = {e["node_id"]: e["data"]["message"] for e in events_of(org_a, session["id"])
              if e["kind"] == "error"}
    assert errors == {node_id: f"http_request: {message(argument)}"
                      for node_id, _, argument in MISPLACED}
    # Refused before anything was resolved: the value was never decrypted.
    assert audited(org_a, "credential.used", session["id"]) == []


def test_http_request_errors_never_quote_a_url_holding_a_credential() -> None:
    value = canary()
    tool = HttpRequestTool()
    for url, expected in [
            (f"https://{value}.invalid/x", "http_request refused the URL of argument 'url': "
                                           "the host cannot be resolved"),
            (f"https://api.invalid:{value}/x", "http_request: the URL of argument 'url' is "
                                               "not a valid URL")]:
        ctx = ToolContext(tenant_id=uuid.uuid4(), run_id=uuid.uuid4(), node_id="call",
                          state={}, secrets=[value])
        with pytest.raises(ToolError) as refused:
            asyncio.run(tool.call(ctx, {"url": url}))
        assert str(refused.value) == (f"{expected} (details not shown: the URL carries a "
                                      "credential)")


# --- a target echoing transformed copies ------------------------------------------------------


class Transformer(BaseHTTPRequestHandler):
    """Answers with every transformation of what it received (query, body, Authorization):
    the worst case of a target reflecting the secrets it was sent."""

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        received = [json.loads(self.rfile.read(length))["secret"],
                    parse_qs(urlsplit(self.path).query)["k"][0]]
        scheme, _, basic = (self.headers.get("authorization") or "").partition(" ")
        pair = base64.b64decode(basic).decode()
        received += [pair, *pair.split(":", 1)]
        copies = [copy for value in received for copy in transformed(value)]
        copies += [f"{scheme} {basic}".lower(), f"{scheme} {basic}".upper(),
                   # inside a larger base64 text (a token), at each offset
                   *(base64.b64encode(f'{{"t{"x" * n}":"{received[0]}"}}'.encode()).decode()
                     for n in range(3))]
        data = json.dumps({"copies": copies}, ensure_ascii=False).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Echo", copies[2])  # upper-cased
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def reachable(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A deployment of its own that may reach 127.0.0.1, where the echoing target lives."""
    with separate_deployment(backend, tmp_path_factory.mktemp(f"redaction-{backend}"),
                             allow_private_network=True) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def tenant(reachable: Server) -> Org:
    return make_org(reachable, make_platform_admin(reachable), "rd")


@pytest.fixture(scope="module")
def transformer() -> Iterator[str]:
    with serve(Transformer) as base_url:
        yield base_url


def test_a_target_echoing_transformed_copies_never_gets_them_stored(
        tenant: Org, transformer: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key, user, password = canary(), f"User-Ünï-{secrets.token_hex(3)}", canary()
    add_credential(tenant, name="canary", type="custom", values={"value": key})
    add_credential(tenant, name="login", type="basic_auth",
                   values={"username": user, "password": password})
    nodes = [call("call", {"method": "POST", "url": f"{transformer}/echo?k={PLACEHOLDER}",
                           "json": {"secret": PLACEHOLDER}, "credential": "login"}),
             {"id": "report", "node_type": "report", "title": "Echo",
              "template": "# Echo\n{{ call.body }}\n{{ call.headers }}"}]
    edges = [{"source": "call", "target": "report", "condition": "on_success"}]
    assert upload(tenant, tmp_path, "transformed", nodes, edges).status_code == 201
    caplog.set_level(logging.DEBUG)

    session = run(tenant, "transformed")
    assert session["status"] == "succeeded", session
    texts = served(tenant, session["id"])
    assert "[redacted]" in texts["/checkpoints"] and "[redacted]" in texts[
        next(k for k in texts if k.startswith("report "))]
    assert_nowhere([key, user, password, f"{user}:{password}"], **texts, logs=caplog.text)


def test_redaction_matches_transformed_forms_and_leaves_other_text_alone() -> None:
    value = canary()
    forms = sorted(variants(value), key=len, reverse=True)
    for copy in [*transformed(value), base64.b64encode(f"me:{value}".encode()).decode(),
                 json.dumps(value.lower()), httpx.URL(f"https://a{value}b.invalid/").host,
                 httpx.URL(f"https://a{value}b.invalid/").raw_host.decode()]:
        redacted = redact_text(f"before {copy} after", forms)
        assert redacted.startswith("before ") and redacted.endswith(" after"), redacted
        assert "[redacted]" in redacted and value.lower()[7:] not in redacted.lower(), copy
    assert redact_text("an ordinary sentence", forms) == "an ordinary sentence"
    # A character whose lower case is two characters (İ -> i + combining dot) still matches.
    dotted = f"İstanbul-Key-{secrets.token_hex(4)}"
    dotted_forms = sorted(variants(dotted), key=len, reverse=True)
    for copy in (dotted, dotted.lower(), dotted.upper(), f"{dotted} and {dotted.lower()}"):
        assert "stanbul" not in redact_text(copy, dotted_forms).lower(), copy
    assert variants("abc") == set()  # too short to redact without mangling text
