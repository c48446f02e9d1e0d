"""Built-in tools and the egress guard: address policy, DNS-pinned connections, http_request
against a real local server (redirects, size cap, credentials), set_output, render_report."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from enginex.tools.base import ToolContext, ToolError
from enginex.tools.builtin import REPORT_OUTPUT_KEY, HttpRequestTool
from enginex.tools.egress import EgressRefused, check_url, check_url_async, guarded_transport
from enginex.tools.registry import builtin_registry, builtin_tool_names
from tests.fake_llm import serve

SECRET = "tok-9f8e7d6c5b4a"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# Held until the test releases it: /slow answers only then (see test_http_request_timeout).
RELEASE_SLOW = threading.Event()


class Handler(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def _handle(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        seen = {"method": self.command, "path": url.path, "body": body,
                "headers": {k.lower(): v for k, v in self.headers.items()}}
        Handler.received.append(seen)
        if url.path == "/hello":
            self._reply(200, b"hello world", {"Content-Type": "text/plain; charset=utf-8",
                                              "Set-Cookie": "session=abc", "X-Custom": "yes"})
        elif url.path == "/echo":
            self._reply(200, json.dumps(seen).encode(), {"Content-Type": "application/json"})
        elif url.path == "/redirect":
            self._reply(int(query.get("code", "302")), b"", {"Location": query["to"]})
        elif url.path == "/chain":
            left = int(query["n"])
            self._reply(302, b"", {"Location": f"/chain?n={left - 1}" if left else "/hello"})
        elif url.path == "/big":
            self._reply(200, b"x" * 2_500_000, {"Content-Type": "text/plain"})
        elif url.path == "/slow":
            # Answers only when the test releases it (or after 30 s): a client that returns
            # before the release gave up on its own timeout, whatever the machine's speed.
            RELEASE_SLOW.wait(30)
            self._reply(200, b"late")
        else:
            self._reply(404, b"no such page")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with serve(Handler) as base_url:
        yield base_url


@pytest.fixture(autouse=True)
def _clear_received() -> None:
    Handler.received.clear()


def ctx(*, allow_private: bool = True, resolver: Any = None) -> ToolContext:
    return ToolContext(tenant_id=uuid.uuid4(), run_id=uuid.uuid4(), node_id="n", state={},
                       allow_private_network=allow_private, resolve_credential=resolver)


def http(context: ToolContext, **arguments: Any) -> dict[str, Any]:
    return run(HttpRequestTool().call(context, arguments))


# --- the address policy ---------------------------------------------------------------------

REFUSED = {
    "http://127.0.0.1/": "loopback",
    "http://127.1/": "loopback",
    "http://2130706433/": "loopback",  # 127.0.0.1 written as one decimal number
    "http://0x7f.1/": "loopback",
    "http://localhost:8000/": "loopback",  # a hostname resolving to 127.0.0.1
    "http://[::1]/": "loopback",
    "http://10.0.0.1/": "private",
    "http://172.16.5.4/": "private",
    "http://192.168.1.1/": "private",
    "http://[fc00::1]/": "private",
    "http://[fd12:3456::1]/": "private",
    "http://169.254.169.254/latest/meta-data/": "cloud metadata",
    "http://169.254.1.1/": "link-local",
    "http://[fe80::1]/": "link-local",
    "http://[fd00:ec2::254]/": "cloud metadata",
    "http://100.64.0.1/": "CGNAT",
    "http://224.0.0.1/": "multicast",
    "http://[ff02::1]/": "multicast",
    "http://0.0.0.0/": "unspecified",
    "http://[::]/": "unspecified",
    "http://240.0.0.1/": "private",
    "http://198.18.0.1/": "benchmarking",
    "http://[::ffff:127.0.0.1]/": "IPv4-mapped loopback",
    "http://[::ffff:10.1.2.3]/": "IPv4-mapped private",
    "http://[::ffff:169.254.169.254]/": "IPv4-mapped cloud metadata",
    "http://[64:ff9b::a00:1]/": "NAT64-embedded private",
    "http://[2002:7f00:1::]/": "6to4-embedded loopback",
    "http://[2001::1]/": "Teredo",
}
ALLOWED = ["http://8.8.8.8/", "https://1.1.1.1:8443/path?q=1", "http://[2606:4700:4700::1111]/",
           "http://[::ffff:8.8.8.8]/", "http://[64:ff9b::808:808]/"]
ALWAYS_REFUSED = {"http://169.254.169.254/": "cloud metadata", "http://[fe80::1]/": "link-local",
                  "http://[::ffff:169.254.169.254]/": "cloud metadata",
                  "http://100.100.100.200/": "cloud metadata", "http://224.0.0.1/": "multicast",
                  "http://0.0.0.0/": "unspecified"}
MALFORMED = {"ftp://8.8.8.8/": "only http", "file:///etc/passwd": "only http",
             "gopher://8.8.8.8/": "only http", "http://user:pw@8.8.8.8/": "user name",
             "http:///nohost": "no host"}


@pytest.mark.parametrize("url", list(REFUSED))
def test_egress_refuses_non_public_addresses(url: str) -> None:
    with pytest.raises(EgressRefused, match=REFUSED[url]):
        check_url(url, allow_private=False)
    with pytest.raises(EgressRefused, match=REFUSED[url]):
        run(check_url_async(url, allow_private=False))


@pytest.mark.parametrize("url", ALLOWED)
def test_egress_allows_public_addresses(url: str) -> None:
    check_url(url, allow_private=False)
    run(check_url_async(url, allow_private=False))


def test_allow_private_admits_local_ranges_but_never_metadata_or_link_local() -> None:
    for url in ("http://127.0.0.1/", "http://localhost/", "http://10.0.0.1/",
                "http://[::1]/", "http://100.64.0.1/"):
        check_url(url, allow_private=True)
    for url, reason in ALWAYS_REFUSED.items():
        with pytest.raises(EgressRefused, match=reason):
            check_url(url, allow_private=True)


@pytest.mark.parametrize("url", list(MALFORMED))
@pytest.mark.parametrize("allow_private", [False, True])
def test_egress_refuses_bad_urls_regardless_of_policy(url: str, allow_private: bool) -> None:
    with pytest.raises(EgressRefused, match=MALFORMED[url]):
        check_url(url, allow_private=allow_private)


def test_unresolvable_host_is_refused() -> None:
    with pytest.raises(EgressRefused, match="cannot resolve host"):
        check_url("http://no-such-host.invalid/", allow_private=False)


# --- connection-time guard (DNS rebinding) -------------------------------------------------


def test_guarded_transport_checks_the_address_it_connects_to(site: str) -> None:
    """No check_url beforehand: the transport itself resolves, refuses, and never connects."""
    port = site.rsplit(":", 1)[1]

    async def fetch(allow_private: bool) -> httpx.Response:
        async with httpx.AsyncClient(
                transport=guarded_transport(allow_private=allow_private)) as client:
            return await client.get(f"http://localhost:{port}/echo")

    with pytest.raises(EgressRefused, match=r"localhost \(.+\) is not a public address"):
        run(fetch(False))
    assert Handler.received == []
    # Allowed: the connection goes to the resolved IP, the Host header keeps the name.
    response = run(fetch(True))
    assert response.status_code == 200
    assert response.json()["headers"]["host"] == f"localhost:{port}"


# --- http_request -------------------------------------------------------------------------


def test_http_request_get_with_private_network_allowed(site: str) -> None:
    result = http(ctx(), url=f"{site}/hello")
    assert result["status"] == 200
    assert result["body"] == "hello world" and result["truncated"] is False
    assert result["url"] == f"{site}/hello"
    assert result["headers"]["x-custom"] == "yes"
    assert "set-cookie" not in {k.lower() for k in result["headers"]}


def test_http_request_is_refused_when_private_network_is_not_allowed(site: str) -> None:
    with pytest.raises(ToolError, match=r"refused: 127\.0\.0\.1 is not a public address"):
        http(ctx(allow_private=False), url=f"{site}/hello")
    assert Handler.received == []


def test_http_request_sends_json_and_methods(site: str) -> None:
    result = http(ctx(), method="PATCH", url=f"{site}/echo", json={"a": [1, 2]},
                  headers={"X-Trace": "t1"})
    seen = json.loads(result["body"])
    assert seen["method"] == "PATCH" and json.loads(seen["body"]) == {"a": [1, 2]}
    assert seen["headers"]["content-type"] == "application/json"
    assert seen["headers"]["x-trace"] == "t1"
    assert seen["headers"]["accept-encoding"] == "identity"


def test_http_request_redirect_to_a_refused_address_is_not_followed(site: str) -> None:
    for target in ("http://169.254.169.254/latest/meta-data/",
                   "http://[::ffff:169.254.169.254]/", "file:///etc/passwd"):
        with pytest.raises(ToolError, match="refused"):
            http(ctx(), url=f"{site}/redirect?to={target}")
    assert [r["path"] for r in Handler.received] == ["/redirect"] * 3


def test_http_request_follows_allowed_redirects_and_drops_credentials_across_origins(
        site: str) -> None:
    port = site.rsplit(":", 1)[1]
    resolver_calls: list[tuple[str, str]] = []

    def resolve(name: str, header: str) -> str:
        resolver_calls.append((name, header))
        return f"Bearer {SECRET}"

    same = http(ctx(resolver=resolve), url=f"{site}/redirect?to=/echo", credential="crm")
    assert json.loads(same["body"])["headers"]["authorization"] == "[redacted]"
    assert SECRET not in same["body"]
    assert same["url"] == f"{site}/echo"
    other = http(ctx(resolver=resolve), method="POST", body="payload",
                 url=f"{site}/redirect?code=303&to=http://localhost:{port}/echo",
                 credential="crm")
    seen = json.loads(other["body"])
    assert "authorization" not in seen["headers"]
    assert seen["method"] == "GET" and seen["body"] == ""
    assert resolver_calls == [("crm", "Authorization"), ("crm", "Authorization")]


def test_http_request_redirect_limit(site: str) -> None:
    assert http(ctx(), url=f"{site}/chain?n=4")["body"] == "hello world"
    with pytest.raises(ToolError, match="more than 5 redirects"):
        http(ctx(), url=f"{site}/chain?n=5")


def test_http_request_caps_the_response_size(site: str) -> None:
    result = http(ctx(), url=f"{site}/big")
    assert result["truncated"] is True
    assert len(result["body"]) == 1_000_000
    small = run(HttpRequestTool(max_response_bytes=10).call(ctx(), {"url": f"{site}/hello"}))
    assert small["body"] == "hello worl" and small["truncated"] is True


def test_http_request_timeout(site: str) -> None:
    RELEASE_SLOW.clear()
    try:
        with pytest.raises(ToolError, match=r"within 0\.3 s"):
            http(ctx(), url=f"{site}/slow", timeout=0.3)
    finally:
        RELEASE_SLOW.set()


def test_http_request_credentials(site: str) -> None:
    with pytest.raises(ToolError, match=r"^credentials are not available$"):
        http(ctx(), url=f"{site}/echo", credential="crm")
    assert Handler.received == []

    def resolve(name: str, header: str) -> str:
        if name != "crm":
            raise KeyError(name)
        return SECRET

    context = ctx(resolver=resolve)
    result = http(context, url=f"{site}/echo", credential="crm", credential_header="X-Api-Key")
    assert Handler.received[-1]["headers"]["x-api-key"] == SECRET
    assert SECRET not in result["body"] and "[redacted]" in result["body"]
    assert context.secrets == [SECRET]
    with pytest.raises(ToolError, match="no usable credential named 'other'"):
        http(context, url=f"{site}/echo", credential="other")
    with pytest.raises(ToolError, match="set from the credential"):
        http(context, url=f"{site}/echo", credential="crm", headers={"authorization": "x"})


@pytest.mark.parametrize(("arguments", "message"), [
    ({"url": "http://x/", "method": "TRACE"}, "method"),
    ({"url": "http://x/", "timeout": 31}, "timeout"),
    ({"url": "http://x/", "surprise": 1}, "unknown argument"),
    ({}, "url"),
    ({"url": "http://x/", "json": {}, "body": "b"}, "either 'json' or 'body'"),
    ({"url": "http://x/", "headers": {"Host": "evil"}}, "'Host' cannot be set"),
])
def test_http_request_rejects_bad_arguments(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ToolError, match=message):
        run(HttpRequestTool().call(ctx(), arguments))


# --- set_output, render_report, registry ---------------------------------------------------


def test_set_output_and_render_report_write_the_context() -> None:
    registry = builtin_registry()
    context = ctx()
    set_output = registry.get("set_output")
    report = registry.get("render_report")
    assert set_output is not None and report is not None
    assert run(set_output.call(context, {"key": "summary", "value": {"alice": 3}})) == {
        "ok": True, "key": "summary"}
    assert run(report.call(context, {"title": "Hours", "markdown": "# Hours\n- alice 3"})) == {
        "ok": True}
    assert context.outputs == {"summary": {"alice": 3}, REPORT_OUTPUT_KEY: {
        "title": "Hours", "markdown": "# Hours\n- alice 3"}}
    with pytest.raises(ToolError, match="reserved"):
        run(set_output.call(context, {"key": "__report__", "value": "forged"}))
    with pytest.raises(ToolError, match="value"):
        run(set_output.call(context, {"key": "summary"}))
    with pytest.raises(ToolError, match="title"):
        run(report.call(context, {"markdown": "x"}))


def test_registry_lists_the_builtin_tools() -> None:
    registry = builtin_registry()
    assert builtin_tool_names() == registry.names() == {"http_request", "set_output",
                                                        "render_report", "tabulate_csv"}
    specs = registry.specs(["http_request", "missing", "set_output"])
    assert [s.name for s in specs] == ["http_request", "set_output"]
    assert specs[0].parameters["required"] == ["url"]
    assert registry is not builtin_registry()
