"""Request headers the application parses never cause a server error (SQLite and PostgreSQL).

Threat model: any client controls every header byte. The numbers and ids the application
reads from headers and query strings go through ``kit/parsing.py`` (ASCII digits only,
bounded); a malformed value is a 4xx for people, never a 500. ``str.isdigit`` accepted
``Last-Event-ID: ²`` and ``int`` then raised: an unhandled 500 (and the same for a form's
``expires_in_days``).

The fuzz pass sends random values (ASCII, other scripts' digits, UTF-8 and Latin-1 bytes, tabs,
huge values; the control characters HTTP/1.1 forbids cannot be sent) for the headers below to
a representative set of routes as three callers (anonymous, signed-in browser, API key), on
a deployment that trusts 127.0.0.1 as a reverse proxy so that ``X-Forwarded-For`` is parsed
too. Derandomized, with a modest example count: it runs on a 2-core CI machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import separate_deployment
from tests.factories import (
    Org,
    Server,
    api_key_client,
    deploy_agent,
    fuzz_examples,
    make_org,
    make_platform_admin,
    start_session,
)

FUZZED_HEADERS = ["Last-Event-ID", "Authorization", "Cookie", "Origin", "X-Forwarded-For",
                  "Idempotency-Key", "Accept"]
MAX_EXAMPLES = fuzz_examples(200, quick=50)
SETTINGS = hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
                               database=None, print_blob=False,
                               suppress_health_check=list(hypothesis.HealthCheck))
FULLWIDTH_12 = "\uff11\uff12"
NASTY = ["²", "٣", FULLWIDTH_12, "³²¹", "1_0", "+1", "-1", "1e3", "0x10", "9" * 5000, "Bearer ²",
         "Bearer enx_" + "٣" * 32 + "_" + "x" * 30, "bearer", "Bearer", "enginex_session=²",
         "text/event-stream;q=²", "*/*", "text/event-stream", "null", "http://évil.example",
         "1.2.3.4, ²", "[::1]:²", "203.0.113.7:99999999", "unknown, 300.1.1.1"]
# The server reads header bytes as Latin-1: b"\xb2" arrives as "²", b"\xb9" as "¹".
NASTY_BYTES = [b"\xb2", b"1\xb2", b"\xb9\xb2\xb3", b"Bearer \xb2", b"127.0.0.1:\xb2"]


@dataclass(frozen=True)
class Target:
    caller: str  # anonymous | cookie | api_key
    method: str
    path: str
    accept: str | None = None


@dataclass
class Deployment:
    server: Server
    org: Org
    targets: list[Target]
    cookie: str
    csrf: str
    api_key: str


@pytest.fixture(scope="module")
def fuzzed(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with separate_deployment(backend, tmp_path_factory.mktemp(f"headers-{backend}"),
                             trusted_proxies="127.0.0.1", embedded_worker=False) as server:
        org = make_org(server, make_platform_admin(server), "hdr", roles=("admin", "builder",
                                                                        "operator"))
        deploy_agent(org)
        run_id = start_session(org)["id"]
        cancelled = org.admin.client.post(f"/api/v1/orgs/{org.slug}/sessions/{run_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text  # finished: its stream ends
        base = f"/api/v1/orgs/{org.slug}"
        events = f"{base}/sessions/{run_id}/events"
        targets = [
            Target("anonymous", "GET", "/healthz"),
            Target("anonymous", "GET", "/api/v1/me"),
            Target("anonymous", "GET", "/login"),
            Target("anonymous", "GET", events, "text/event-stream"),
            Target("cookie", "GET", f"{base}/sessions?limit=2"),
            Target("cookie", "GET", events, "text/event-stream"),
            Target("cookie", "POST", f"{base}/sessions/{run_id}/cancel"),
            Target("cookie", "GET", f"/o/{org.slug}/sessions"),
            Target("cookie", "GET", f"/o/{org.slug}/audit"),
            Target("api_key", "GET", events),
            Target("api_key", "GET", events, "text/event-stream"),
            Target("api_key", "GET", f"{base}/audit?limit=5"),
        ]
        name = server.settings.session_cookie_name
        admin = org.admin.client
        yield Deployment(server=server, org=org, targets=targets,
                         cookie=f"{name}={admin.cookies.get(name)}",
                         csrf=str(admin.headers["X-CSRF-Token"]), api_key=org.api_keys["admin"])


def _sendable(value: bytes) -> bytes:
    """What HTTP/1.1 lets a client send as a header value: no CR, LF, NUL or other control
    characters but tab, and no leading or trailing whitespace (h11 refuses them)."""
    kept = bytes(b for b in value if b == 0x09 or 0x20 <= b != 0x7F)
    return kept.strip(b" \t")


header_values = st.one_of(
    st.sampled_from(NASTY).map(str.encode),
    st.sampled_from(NASTY_BYTES),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80).map(str.encode),
    st.text(max_size=40).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.binary(max_size=80),
    st.integers(min_value=1, max_value=12_000).map(lambda n: b"9" * n),
).map(_sendable)


def _headers(deployment: Deployment, target: Target) -> dict[str, str]:
    headers: dict[str, str] = {}
    if target.caller == "cookie":
        headers |= {"Cookie": deployment.cookie, "X-CSRF-Token": deployment.csrf}
    elif target.caller == "api_key":
        headers["Authorization"] = f"Bearer {deployment.api_key}"
    if target.accept:
        headers["Accept"] = target.accept
    return headers


def test_fuzzed_headers_never_cause_a_server_error(fuzzed: Deployment) -> None:
    failures: list[str] = []
    with httpx.Client(base_url=fuzzed.server.base_url, timeout=30) as client:

        @SETTINGS
        @given(target=st.sampled_from(fuzzed.targets),
               fuzz=st.dictionaries(st.sampled_from(FUZZED_HEADERS), header_values,
                                    min_size=1, max_size=3))
        def one(target: Target, fuzz: dict[str, bytes]) -> None:
            headers: dict[str, str | bytes] = dict(_headers(fuzzed, target))
            for name, value in fuzz.items():
                headers.pop(name, None)
                headers[name] = value
            try:
                response = client.request(target.method, target.path, headers=headers)
            except httpx.RemoteProtocolError:
                return  # the HTTP layer refused an oversized header block: not the app's
            if response.status_code >= 500:
                failures.append(f"{target.method} {target.path} as {target.caller} with "
                                f"{fuzz!r}: {response.status_code} {response.text[:300]}")
            assert response.status_code < 500, failures[-1]

        one()


def test_known_nasty_values_in_every_header(fuzzed: Deployment) -> None:
    """The values that broke parsers before (other scripts' digits, Latin-1 superscripts,
    signs, underscores, huge numbers), each in each header: on the API-key event stream
    (which reads ``Last-Event-ID`` and ``Accept``) and on one other route in turn. Random
    search alone may miss them."""
    stream = next(t for t in fuzzed.targets if t.caller == "api_key" and t.accept)
    others = [t for t in fuzzed.targets if t is not stream]
    pairs = [(name, value) for name in FUZZED_HEADERS
             for value in [v.encode() for v in NASTY] + NASTY_BYTES]
    failures = []
    with httpx.Client(base_url=fuzzed.server.base_url, timeout=30) as client:
        for i, (name, value) in enumerate(pairs):
            for target in (stream, others[i % len(others)]):
                headers: dict[str, str | bytes] = dict(_headers(fuzzed, target))
                headers[name] = _sendable(value)
                try:
                    response = client.request(target.method, target.path, headers=headers)
                except httpx.RemoteProtocolError:
                    continue
                if response.status_code >= 500:
                    failures.append(f"{target.method} {target.path} as {target.caller}, "
                                    f"{name}: {value[:40]!r} -> {response.status_code}")
    assert not failures, "\n".join(failures)


def test_a_malformed_last_event_id_is_a_400_for_people(fuzzed: Deployment) -> None:
    """``Last-Event-ID`` is an id this server sent (ASCII digits); anything else is a client
    bug and gets 400 with a message, not a 500 and not a silent restart from the start."""
    events = next(t.path for t in fuzzed.targets if t.caller == "api_key")
    with api_key_client(fuzzed.server, fuzzed.api_key) as client:
        # b"\xb2" is "²" as the server reads headers (Latin-1): the value of the report.
        for value in [b"\xb2", "²".encode(), "٣".encode(), FULLWIDTH_12.encode(), b"-1",
                      b"1_0", b"1 2", b"9" * 40]:
            response = client.get(events, headers={"Accept": "text/event-stream",
                                                   "Last-Event-ID": value})
            assert response.status_code == 400, (value, response.status_code, response.text)
            error = response.json()["error"]
            assert error["code"] == "bad_request" and "Last-Event-ID" in error["message"]
            assert error["details"]["field"] == "Last-Event-ID"
        resumed = client.get(events, headers={"Accept": "text/event-stream",
                                              "Last-Event-ID": "1"})
        assert resumed.status_code == 200 and "id: 1\n" not in resumed.text
        assert "event: end" in resumed.text


def test_an_after_beyond_the_sequence_range_is_refused(fuzzed: Deployment) -> None:
    """``?after=`` had no upper bound: a number past 2**63 - 1 reached SQLite (500)."""
    events = next(t.path for t in fuzzed.targets if t.caller == "api_key")
    with api_key_client(fuzzed.server, fuzzed.api_key) as client:
        for accept in ("application/json", "text/event-stream"):
            response = client.get(events, params={"after": "9" * 30},
                                  headers={"Accept": accept})
            assert response.status_code == 422, (accept, response.status_code, response.text)
            assert response.json()["error"]["details"]


def test_a_non_ascii_number_in_a_form_is_refused_not_crashed(fuzzed: Deployment) -> None:
    """The dashboard's API key form read ``expires_in_days`` with ``isdigit``/``int``."""
    org = fuzzed.org
    for value in ["²", "٣", "9" * 40]:
        response = org.admin.client.post(
            f"/o/{org.slug}/settings/api-keys",
            data={"name": "fuzz", "role": "viewer", "expires_in_days": value,
                  "csrf_token": fuzzed.csrf})
        assert response.status_code == 422, (value, response.status_code, response.text[:300])
    for page in ["²", "٣", "-3", "9" * 5000]:
        listing = org.admin.client.get(f"/o/{org.slug}/settings/api-keys",
                                       params={"page": page})
        assert listing.status_code == 200, (page, listing.status_code)
