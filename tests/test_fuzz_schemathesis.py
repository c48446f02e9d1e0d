"""Schemathesis against the running app's OpenAPI schema (``{base_url}/openapi.json``).

Every documented operation is fuzzed on both backends with Schemathesis' examples, coverage
(boundary values and type mutations, valid and invalid) and fuzzing phases, positive and
negative data, at most ``MAX_EXAMPLES`` generated examples per operation, derandomized so CI
always sends the same requests.

Two callers, both members of org_a, with ``{org}`` always org_a's slug so that requests get
past the tenant guard into the handlers instead of answering 404:

* ``test_every_operation_as_tenant_api_key``: org_a's admin API key (``Authorization:
  Bearer``, no cookie, so no CSRF) on every operation. Dashboard pages ignore API keys by
  design, so there the check is that they never serve it: 303 to /login, or a 4xx.
* ``test_dashboard_pages_as_signed_in_admin``: the pages again, as org_a's admin signed in
  with a session cookie and the X-CSRF-Token header, so the page handlers run.

Text with a NUL character is valid JSON and valid by the schema, but PostgreSQL cannot store
it: such strings are mixed into generated text, and every ``NUL_EVERY``-th request of an
operation gets a NUL appended to the first string of its body (or query).

Checks on every response:

* ``not_a_server_error``: no 5xx, whatever the input;
* ``negative_data_rejection``: input that violates the documented schema is refused with 4xx
  (a validation gap, such as lax coercion, fails); 413 counts as a refusal: a document that
  breaks a ``maxLength`` (a skill's SKILL.md, say) can exceed the 1 MiB body limit, which
  refuses it before validation with the documented ``payload_too_large`` error;
* ``response_schema_conformance``, ``content_type_conformance``,
  ``response_headers_conformance``: documented responses match their schema;
* ``unsupported_method``, ``allow_header_conformance``, ``missing_required_header``: methods
  an address does not serve get 405 with a complete ``Allow`` header;
* ``error_shape`` (ours): every 4xx of the API is ``{"error": {"code", "message", "details"}}``
  and every 4xx of a page is an HTML page.

Not checked, on purpose:

* ``status_code_conformance``: FastAPI documents only the success status and 422; the 401,
  403, 404 and 409 that tenant routes answer (asserted by ``test_route_isolation``) are not
  listed in the schema, so this check would only report the missing documentation.
* ``positive_data_acceptance``: schema-valid input is often refused for reasons a schema
  cannot express (an id that does not exist, a malformed email, a URL the egress guard
  refuses, bytes that are not a package); those answers are 404/409/422 by design.
* ``negative_data_rejection`` on pages requested with the API key: the page guard sends every
  caller without a session cookie to sign in before it looks at any parameter (the signed-in
  run checks the pages' parameter validation).
* ``content_type_conformance`` and ``response_schema_conformance`` on pages: pages answer
  HTML, their errors included (``error_shape`` checks that), while their schema entries carry
  FastAPI's defaults (``application/json``, a JSON 422).

No operation is excluded. Adjustments, each to keep the run meaningful and on this machine:

* ``{org}`` is org_a's slug, and ``{agent_key}``/``{version}`` name the demo agent deployed in
  setup, so the agent routes answer 200 and their schemas are checked on real data. Every
  other path id is generated, so the destructive routes (revoke an API key, remove a member,
  revoke an invitation, cancel a session) only ever meet ids that do not exist: the API key
  and the admin member in use are never touched.
* A generated URL in a body field named ``*url`` (an LLM ``base_url``, an OAuth2
  ``token_url``) whose host is a name is replaced by a loopback URL of the same length, which
  the egress guard refuses without resolving anything: a generated host name would send DNS
  queries off this machine. Every other value stays as generated.
* ``POST .../settings/llm/test``: the settings are reset to the offline ``scripted`` provider
  before each call, so it never contacts a real model provider.
* Requests come from their own loopback address (127.77.0.1): the fuzzer's failed sign-ins must
  not throttle the address the other tests sign in from.
* Signed in, sign-out (``POST /logout``) is fuzzed last: it ends the session the pages use.
"""

from __future__ import annotations

import ipaddress
import traceback
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import hypothesis
import pytest
import requests
import schemathesis
from fastapi.routing import APIRoute
from requests.adapters import HTTPAdapter
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
)
from schemathesis.core.result import Ok
from schemathesis.pytest.lazy import get_all_tests

from enginex.tenancy.guards import access_rules, registered_routes
from tests.factories import (
    Org,
    Server,
    deploy_agent,
    fuzz_examples,
    sign_in,
    start_session,
    wait_for_status,
)

MAX_EXAMPLES = fuzz_examples(12, quick=4)
FUZZ_ADDRESS = "127.77.0.1"
LOOPBACK_URL = "http://127.0.0.1:9/"
API_PREFIXES = ("/api/", "/healthz", "/readyz")
ENDS_SESSION = ("POST /logout",)
ERROR_KEYS = {"code", "message", "details"}
# Every route must refuse text with a NUL character with a 4xx (see the module docstring).
NUL_STRINGS = ["\x00", "nul\x00inside"]
NUL_PROBABILITY = 0.1
NUL_EVERY = 3
# Pages answer HTML, errors included; their schema entries carry FastAPI's JSON defaults.
PAGE_EXCLUDED = [content_type_conformance, response_schema_conformance]
SETTINGS = hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
                               database=None, print_blob=False,
                               suppress_health_check=list(hypothesis.HealthCheck))


class _SourceAddressAdapter(HTTPAdapter):
    """Connections from another loopback address (all of 127.0.0.0/8 is local)."""

    def __init__(self, address: str) -> None:
        self._address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self._address, 0)
        super().init_poolmanager(*args, **kwargs)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(item) for item in value)
    return False


def _without_name_lookup(url: str) -> str:
    """``url`` unchanged unless the egress guard would resolve its host name (an http(s) URL
    whose host is not an IP address); then a loopback URL of the same length, which the guard
    refuses without a DNS query (the length keeps a too-long value too long)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return url
    if parts.scheme.lower() not in {"http", "https"} or not host:
        return url
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return LOOPBACK_URL + "x" * max(0, len(url) - len(LOOPBACK_URL))
    return url


def _append_nul(value: Any) -> bool:
    """Append a NUL character to the first string value inside ``value`` (a dict or list,
    depth first); False if it holds none."""
    items = list(value.items()) if isinstance(value, dict) else (
        list(enumerate(value)) if isinstance(value, list) else [])
    for key, item in items:
        if isinstance(item, str):
            value[key] = f"{item}\x00"
            return True
        if _append_nul(item):
            return True
    return False


def _is_page(path: str) -> bool:
    return not path.startswith(API_PREFIXES)


def _content_type(response: schemathesis.Response) -> str:
    return (response.headers.get("content-type") or [""])[0]


def error_shape(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Every 4xx of the API is ``{"error": {"code", "message", "details"}}`` with a message for
    a person; every 4xx of a dashboard page is an HTML page."""
    if not 400 <= response.status_code < 500:
        return
    content_type = _content_type(response)
    if case.operation.path.startswith("/scim/v2/"):
        # SCIM's own error format (RFC 7644, section 3.12), which SCIM clients expect.
        assert content_type.startswith(("application/scim+json", "application/json")), (
            f"{response.status_code} of SCIM answered {content_type!r}, not SCIM JSON")
        body = response.json()
        assert body.get("schemas") == ["urn:ietf:params:scim:api:messages:2.0:Error"], body
        assert body.get("status") == str(response.status_code), body
        assert isinstance(body.get("detail"), str) and len(body["detail"]) > 10, body
        return
    if _is_page(case.operation.path):
        assert content_type.startswith("text/html"), (
            f"{response.status_code} of a page answered {content_type!r}, not HTML")
        return
    assert content_type.startswith("application/json"), (
        f"{response.status_code} of the API answered {content_type!r}, not JSON")
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"not the error shape: {body}"
    error = body["error"]
    assert isinstance(error, dict) and set(error) == ERROR_KEYS, f"not the error shape: {body}"
    assert isinstance(error["code"], str) and error["code"], body
    assert isinstance(error["message"], str) and len(error["message"]) > 10, body
    assert isinstance(error["details"], dict), body


def public_paths(app: Any) -> set[str]:
    """Paths of the routes declared ``Public()`` (sign-in, accepting an invitation, probes)."""
    return {registered.path for registered in registered_routes(app)
            if isinstance(registered.route, APIRoute)
            and {rule.kind for rule in access_rules(registered.route.dependant)} == {"public"}}


def pages_ignore_api_keys(public: set[str]) -> Callable[..., None]:
    def pages_ignore_api_keys(ctx: Any, response: schemathesis.Response,
                              case: schemathesis.Case) -> None:
        """An API key is no browser session: a page that is not public sends its caller to
        sign in, or refuses a malformed request (a form body that does not parse) before
        that; it never serves it."""
        path = case.operation.path
        if not _is_page(path) or path in public or 400 <= response.status_code < 500:
            return
        location = (response.headers.get("location") or [""])[0]
        assert response.status_code == 303 and location.startswith("/login"), (
            f"a page answered an API key with {response.status_code} {location}")

    return pages_ignore_api_keys


def _session(cookies: dict[str, str] | None = None,
             headers: dict[str, str] | None = None) -> requests.Session:
    session = requests.Session()
    session.mount("http://", _SourceAddressAdapter(FUZZ_ADDRESS))
    session.cookies.update(cookies or {})
    session.headers.update(headers or {})
    return session


@pytest.fixture
def key_session(org_a: Org) -> Iterator[requests.Session]:
    session = _session(headers={"Authorization": f"Bearer {org_a.api_keys['admin']}"})
    yield session
    session.close()


def _seed(org: Org) -> dict[str, str]:
    """One deployed agent and one session waiting for its approval, so the list routes return
    real rows. The session waits for a person: nothing runs while the fuzzer works."""
    deployed = deploy_agent(org)
    run = start_session(org)
    wait_for_status(org, run["id"], {"waiting_approval"})
    return {"path.agent_key": deployed["agent_key"], "path.version": deployed["version"]}


def _reset_llm_settings(server: Server, org: Org) -> None:
    with _session(headers={"Authorization": f"Bearer {org.api_keys['admin']}"}) as session:
        response = session.put(f"{server.base_url}/api/v1/orgs/{org.slug}/settings/llm",
                               json={"provider": "scripted"}, timeout=30)
    assert response.status_code == 200, response.text


def _load_schema(server: Server, org: Org, parameters: dict[str, str]) -> Any:
    config = schemathesis.Config.from_dict({
        "base-url": server.base_url,
        "parameters": {"path.org": org.slug, **parameters},
        "dictionaries": {"nul": {"values": NUL_STRINGS}},
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True,
                       "dictionaries": {"string": {"dictionary": "nul",
                                                   "probability": NUL_PROBABILITY}}},
        "checks": {"status_code_conformance": {"enabled": False},
                   "positive_data_acceptance": {"enabled": False},
                   # schemathesis's default refusals, plus 413 (see the module docstring)
                   "negative_data_rejection": {"expected-statuses": [
                       "400", "401", "403", "404", "405", "406", "409", "413", "415", "422",
                       "428", "429", "5xx"]}},
    })
    return schemathesis.openapi.from_url(f"{server.base_url}/openapi.json", config=config,
                                         timeout=30)


def _fuzz(server: Server, org: Org, schema: Any, session: requests.Session, *,
          include: Callable[[str], bool], additional_checks: list[Any],
          excluded_checks: Callable[[str], list[Any]]) -> tuple[int, int, int]:
    """Run every included operation's Hypothesis test; fail listing every failing operation.
    Returns the number of operations, of requests, and of requests with a NUL character."""
    sent: dict[str, int] = {}
    with_nul: list[str] = []

    def check_case(case: schemathesis.Case) -> None:
        label = case.operation.label
        sent[label] = sent.get(label, 0) + 1
        if sent[label] % NUL_EVERY == 0 and not _append_nul(case.body):
            _append_nul(case.query)
        if _has_nul((case.path_parameters, case.query, case.body)):
            with_nul.append(label)
        if label.endswith("/settings/llm/test"):
            _reset_llm_settings(server, org)
        if isinstance(case.body, dict):
            for key, value in case.body.items():
                if key.endswith("url") and isinstance(value, str):
                    case.body[key] = _without_name_lookup(value)
        case.call_and_validate(session=session, additional_checks=additional_checks,
                               excluded_checks=excluded_checks(case.operation.path),
                               timeout=30, allow_redirects=False)

    # get_all_tests builds the same per-operation Hypothesis tests (examples, coverage,
    # fuzzing) as schemathesis.pytest.from_fixture, which fails under pytest 9.2 (it sets
    # Function._nodeid, gone there); the loop below runs them and collects every failure.
    tests = []
    for result in get_all_tests(schema=schema, test_func=check_case, settings=SETTINGS,
                                given_kwargs=None):
        assert isinstance(result, Ok), f"the schema has an invalid operation: {result.err()}"
        operation, test = result.ok()
        if include(operation.path):
            tests.append((operation.label, test))
    tests.sort(key=lambda item: item[0] in ENDS_SESSION)
    failures: dict[str, str] = {}
    for label, test in tests:
        try:
            test()
        except (Exception, BaseExceptionGroup) as exc:
            text = "".join(traceback.format_exception_only(exc))
            if isinstance(exc, BaseExceptionGroup):
                text += "".join("".join(traceback.format_exception_only(inner))
                                for inner in exc.exceptions)
            failures[label] = text
    _reset_llm_settings(server, org)
    unsent = [label for label, _ in tests if not sent.get(label)]
    assert not unsent, f"no request was sent for {unsent}"
    report = "\n\n".join(f"== {label}\n{text}" for label, text in failures.items())
    assert not failures, f"{len(failures)} of {len(tests)} operations failed:\n{report}"
    return len(tests), sum(sent.values()), len(with_nul)


def test_every_operation_as_tenant_api_key(server: Server, org_a: Org,
                                           key_session: requests.Session) -> None:
    schema = _load_schema(server, org_a, _seed(org_a))
    operations, sent, with_nul = _fuzz(
        server, org_a, schema, key_session, include=lambda path: True,
        additional_checks=[error_shape, pages_ignore_api_keys(public_paths(server.app))],
        excluded_checks=lambda path: [*PAGE_EXCLUDED, negative_data_rejection]
        if _is_page(path) else [])
    print(f"\nschemathesis (API key): {operations} operations, {sent} requests "
          f"({with_nul} with a NUL character), 0 failures")
    assert operations >= 40, f"only {operations} operations in the schema"
    assert with_nul >= operations // 4, f"only {with_nul} requests carried a NUL character"


def test_dashboard_pages_as_signed_in_admin(server: Server, org_a: Org) -> None:
    admin = sign_in(server, org_a.admin.email)
    try:
        cookies = dict(admin.client.cookies.items())
        csrf = admin.client.headers["X-CSRF-Token"]
    finally:
        admin.close()
    assert server.settings.session_cookie_name in cookies
    schema = _load_schema(server, org_a, {})
    with _session(cookies=cookies, headers={"X-CSRF-Token": csrf}) as session:
        operations, sent, _ = _fuzz(server, org_a, schema, session, include=_is_page,
                                 additional_checks=[error_shape],
                                 excluded_checks=lambda path: PAGE_EXCLUDED)
    print(f"\nschemathesis (signed in): {operations} pages, {sent} requests, 0 failures")
    assert operations >= 3, (f"only {operations} dashboard pages in /openapi.json: if pages "
                             "left the schema on purpose, fuzz them another way")
