"""Every log record of a request and of a run step says which tenant (and which request or
run) it belongs to; production writes one JSON object per line (issue 12)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator

import pytest

from enginex.kit.logs import ContextFilter, JsonFormatter, TextFormatter, log_context
from tests.factories import (
    Org,
    Server,
    deploy_agent,
    start_session,
    wait_for,
    wait_for_status,
)


class _Capture(logging.Handler):
    """A handler as production installs it: the context filter stamps each record."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(ContextFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[_Capture]:
    capture = _Capture()
    root = logging.getLogger()
    loggers = [logging.getLogger(n) for n in ("enginex.request", "enginex.worker")]
    levels = [(lg, lg.level) for lg in (root, *loggers)]
    root.addHandler(capture)
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        for lg, level in levels:
            lg.setLevel(level)


def test_request_lines_carry_tenant_and_request_id(
        server: Server, org_a: Org, captured: _Capture) -> None:
    viewer = org_a.members["viewer"].client
    response = viewer.get(f"/api/v1/orgs/{org_a.slug}/sessions",
                          headers={"X-Request-ID": "trace-123.a"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-123.a"
    # The access line is written once the response is sent: the client may read it first.
    wait_for(lambda: [r for r in captured.records if r.name == "enginex.request"
                      and getattr(r, "request_id", None) == "trace-123.a"],
             what="the request's access line")
    lines = [r for r in captured.records if r.name == "enginex.request"
             and getattr(r, "request_id", None) == "trace-123.a"]
    assert len(lines) == 1, "one access line per request"
    assert lines[0].tenant_id == org_a.id
    assert lines[0].http["status"] == 200 and lines[0].http["path"].endswith("/sessions")

    generated = viewer.get(f"/api/v1/orgs/{org_a.slug}/sessions",
                           headers={"X-Request-ID": "not a token!"})
    request_id = generated.headers["x-request-id"]
    assert request_id != "not a token!" and len(request_id) == 16
    wait_for(lambda: [r for r in captured.records
                      if getattr(r, "request_id", None) == request_id],
             what="the second request's access line")


def test_worker_lines_carry_tenant_and_run_id(
        server: Server, org_a: Org, captured: _Capture) -> None:
    deploy_agent(org_a)
    run = start_session(org_a)
    wait_for_status(org_a, run["id"], {"waiting_approval", "succeeded", "failed"})
    steps = [r for r in captured.records if r.name == "enginex.worker"
             and getattr(r, "run_id", None) == run["id"]]
    assert steps, "the worker logs each step it executes"
    assert {r.tenant_id for r in steps} == {org_a.id}


def _record(message: str) -> logging.LogRecord:
    record = logging.LogRecord("enginex.test", logging.INFO, __file__, 1, message, None, None)
    ContextFilter().filter(record)
    return record


def test_json_lines_and_text_lines() -> None:
    with log_context(tenant_id="t-1", run_id="r-1", request_id=None):
        record = _record("step done")
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "step done" and entry["level"] == "info"
    assert (entry["tenant_id"], entry["run_id"], entry["request_id"]) == ("t-1", "r-1", "-")
    assert TextFormatter().format(record).endswith("step done [tenant_id=t-1 run_id=r-1]")

    outside = _record("no context")
    assert json.loads(JsonFormatter().format(outside))["tenant_id"] == "-"
    assert TextFormatter().format(outside).endswith("no context")

    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("enginex.test", logging.ERROR, __file__, 1, "failed", None,
                                   sys.exc_info())
    ContextFilter().filter(failed)
    line = JsonFormatter().format(failed)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def test_configuring_twice_keeps_one_handler_that_follows_sys_stderr(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A process's handler writes to the stderr of the moment (never to a stream closed since);
    configured again it replaces itself; inside a program that configured logging (pytest) it
    adds nothing, as logging.basicConfig does."""
    import io

    from enginex.kit.logs import configure_logging

    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    configure_logging("INFO", "json")
    assert root.handlers == before, "pytest's handlers are kept and none is added"
    try:
        root.handlers = []  # a process of its own: nothing configured yet
        configure_logging("INFO", "json")
        configure_logging("INFO", "json")
        assert len(root.handlers) == 1
        first, second = io.StringIO(), io.StringIO()
        monkeypatch.setattr(sys, "stderr", first)
        logging.getLogger("enginex.test").warning("to the first")
        first.close()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("enginex.test").warning("to the second")
        assert json.loads(second.getvalue())["message"] == "to the second"
    finally:
        root.handlers = before
        root.setLevel(level)
