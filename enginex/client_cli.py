"""API-client commands of ``enginex``: sessions, approvals, reports, and minting an API key.

They talk to a running EngineX over its REST API, never to the database. Every command takes
``--org SLUG``; the organization comes only from that flag, and the server checks that the key
belongs to it (another organization's key gets the same 404 as a missing object).

* The API key is read from an environment variable -- ``ENGINEX_API_KEY`` unless
  ``--api-key-env VAR`` names another -- never from the command line, where other users of the
  machine could read it from the process list.
* The server is ``--url``, else ``$ENGINEX_URL``, else ``$ENGINEX_BASE_URL``
  (default ``http://127.0.0.1:8000``).

Exit status: 0 on success; 2 for any error, printed as ``enginex: error: <the API's message>``
without a traceback. ``sessions watch`` (and ``sessions start --watch``) exit 0 when the session
succeeded, 1 when it failed or was cancelled, and 3 when it stopped because the session waits
for an approval (the approval id and the command to decide it are printed).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import quote

from enginex.cli import CliError, command_name, plain_text

if TYPE_CHECKING:  # httpx (~0.3 s with the click/rich it loads) is imported by the commands
    import httpx

    from enginex.config import Settings

DEFAULT_API_KEY_ENV = "ENGINEX_API_KEY"
URL_ENV = "ENGINEX_URL"
SESSION_STATUSES = ("queued", "running", "waiting_approval", "succeeded", "failed", "cancelled")
APPROVAL_STATUSES = ("pending", "approved", "rejected", "expired", "cancelled")
EXIT_SUCCEEDED, EXIT_FAILED, EXIT_WAITING_APPROVAL, EXIT_INTERRUPTED = 0, 1, 3, 130
TIMEOUT = 30.0  # seconds, for connecting, each read and each write
CREATE_ATTEMPTS = 3
RETRY_STATUSES = frozenset({502, 503, 504})
# The server sends a keep-alive comment every 15 s on an idle stream; a read that waits much
# longer than that means the connection is gone, and the watch reconnects.
STREAM_TIMEOUT, STREAM_READ_TIMEOUT = 30.0, 60.0
MAX_RECONNECTS = 5
LINE_WIDTH = 110


# --- talking to the API ---------------------------------------------------------------------

def base_url_from(args: argparse.Namespace, settings: Settings) -> str:
    return (args.url or os.environ.get(URL_ENV) or settings.base_url).rstrip("/")


def error_message(response: httpx.Response, *, api_key_env: str | None = None) -> str:
    """The API's error message (and per-field problems), for a person."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not error.get("message"):
        return f"HTTP {response.status_code} from {response.request.url}"
    lines = [str(error["message"])]
    details = error.get("details")
    problems = details.get("errors") if isinstance(details, dict) else None
    for problem in problems if isinstance(problems, list) else []:
        if isinstance(problem, dict):
            where = problem.get("field") or problem.get("path") or "?"
            text = f"{where}: {problem.get('message', '')}"
            if text not in lines[0]:  # the message often lists the first problems already
                lines.append(f"  {text}")
    if response.status_code == 401 and api_key_env:
        lines[0] += f" (the API key is read from ${api_key_env})"
    return "\n".join(lines)


def _quiet_http_log() -> None:
    """``enginex`` logs at INFO for the server commands; a client prints no request lines."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


class Api:
    """The tenant routes of one organization, ``/api/v1/orgs/{org}/...``, with an API key."""

    def __init__(self, base_url: str, org: str, api_key: str, *,
                 api_key_env: str | None = None) -> None:
        import httpx

        _quiet_http_log()
        self.base_url = base_url.rstrip("/")
        self.org = org
        self.api_key_env = api_key_env
        self.client = httpx.Client(
            base_url=f"{self.base_url}/api/v1/orgs/{quote(org, safe='')}", timeout=TIMEOUT,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "enginex-cli"})

    @classmethod
    def from_args(cls, args: argparse.Namespace, settings: Settings) -> Api:
        api_key = os.environ.get(args.api_key_env, "").strip()
        if not api_key:
            raise CliError(f"set the environment variable {args.api_key_env} to an API key of "
                           f"the organization '{args.org}' (an org admin creates one with "
                           f"`{command_name()} api-keys create --org {args.org} ...`)")
        return cls(base_url_from(args, settings), args.org, api_key,
                   api_key_env=args.api_key_env)

    def close(self) -> None:
        self.client.close()

    def response(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A successful response; CliError with the API's message otherwise."""
        import httpx

        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"could not reach {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise CliError(error_message(response, api_key_env=self.api_key_env))
        return response

    def create(self, path: str, body: dict[str, Any]) -> Any:
        """POST that creates something, sent with a fresh ``Idempotency-Key`` and retried with
        the same key when the connection fails or a proxy answers 502/503/504: the server
        then answers the first attempt's result instead of creating twice."""
        import httpx

        headers = {"Idempotency-Key": str(uuid.uuid4())}
        for attempt in range(CREATE_ATTEMPTS):
            try:
                response = self.client.post(path, json=body, headers=headers)
            except httpx.TransportError as exc:
                if attempt + 1 == CREATE_ATTEMPTS:
                    raise CliError(f"could not reach {self.base_url}: {exc}") from exc
            else:
                if response.status_code not in RETRY_STATUSES or attempt + 1 == CREATE_ATTEMPTS:
                    break
            time.sleep(0.5 * 2 ** attempt)
        if response.status_code >= 400:
            raise CliError(error_message(response, api_key_env=self.api_key_env))
        return self._json(response, path)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._json(self.response(method, path, **kwargs), path)

    def every(self, path: str, params: dict[str, Any], *,
              keep: Callable[[dict[str, Any]], bool] = lambda item: True,
              at_most: int | None = None) -> list[dict[str, Any]]:
        """The items of a list answered as a JSON array, page after page: follows the
        ``Link: <…>; rel="next"`` header (a path on this server) until the last page, or
        until ``at_most`` items that ``keep`` accepts were collected."""
        items: list[dict[str, Any]] = []
        response = self.response("GET", path, params=params)
        while True:
            items.extend(item for item in self._json(response, path) if keep(item))
            following = response.links.get("next", {}).get("url")
            if not following or (at_most is not None and len(items) >= at_most):
                return items[:at_most]
            response = self.response("GET", f"{self.base_url}{following}")

    def _json(self, response: httpx.Response, path: str) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise CliError(f"{self.base_url} answered {path} with something other than "
                           "JSON; is --url an EngineX server?") from exc

    def event_stream(self, session_id: str, after: int
                     ) -> AbstractContextManager[httpx.Response]:
        import httpx

        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
        return self.client.stream("GET", f"/sessions/{quote(session_id, safe='')}/events",
                                  headers=headers,
                                  timeout=httpx.Timeout(STREAM_TIMEOUT, read=STREAM_READ_TIMEOUT))


def _id(value: str) -> str:
    return quote(value, safe="")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _one_line(value: Any, width: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                           default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _table(headers: list[str], rows: Iterable[list[str]]) -> None:
    rows = list(rows)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())


def _when(value: str | None) -> str:
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


# --- sessions -------------------------------------------------------------------------------

def _key_value(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise CliError(f"{flag} takes KEY=VALUE, got '{item}'")
    return key, value


def collect_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """--inputs-file JSON first, then --input-file and --input (later flags win)."""
    inputs: dict[str, Any] = {}
    if args.inputs_file:
        try:
            loaded = json.loads(Path(args.inputs_file).read_text(encoding="utf-8"))
        except OSError as exc:
            raise CliError(f"cannot read --inputs-file {args.inputs_file}: "
                           f"{exc.strerror or exc}") from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise CliError(f"--inputs-file {args.inputs_file} is not valid JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise CliError(f"--inputs-file {args.inputs_file} must hold a JSON object "
                           '({"input name": value, ...})')
        inputs.update(loaded)
    for item in args.input_file or []:
        key, path = _key_value(item, "--input-file")
        try:
            inputs[key] = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot read --input-file {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise CliError(f"--input-file {path} is not UTF-8 text") from exc
    for item in args.input or []:
        key, value = _key_value(item, "--input")
        inputs[key] = value
    return inputs


def cmd_sessions_start(args: argparse.Namespace, settings: Settings) -> None:
    inputs = collect_inputs(args)
    api = Api.from_args(args, settings)
    body: dict[str, Any] = {"agent": args.agent, "inputs": inputs}
    if args.version:
        body["version"] = args.version
    session = api.create("/sessions", body)
    if args.json and args.watch:
        print(json.dumps(session, ensure_ascii=False), flush=True)  # JSON Lines, as watch
    elif args.json:
        _print_json(session)
    else:
        print(f"started session {session['id']} ({session['agent']} {session['version']}, "
              f"{session['status']})", flush=True)
        if not args.watch:
            print(f"follow it: enginex sessions watch {session['id']} --org {args.org}")
    if args.watch:
        raise SystemExit(watch_session(api, session["id"], as_json=args.json))


def cmd_sessions_list(args: argparse.Namespace, settings: Settings) -> None:
    api = Api.from_args(args, settings)
    params = {k: v for k, v in {"status": args.status, "agent": args.agent,
                                "cursor": args.cursor, "limit": args.limit}.items() if v}
    page = api.call("GET", "/sessions", params=params)
    if args.json:
        _print_json(page)
        return
    _table(["ID", "STATUS", "AGENT", "VERSION", "CREATED (UTC)", "STEP"],
           ([s["id"], s["status"], s["agent"], s["version"], _when(s["created_at"]),
             str(s["step"])] for s in page["items"]))
    if page.get("next_cursor"):
        print(f"(more: add --cursor {page['next_cursor']})")


def cmd_sessions_show(args: argparse.Namespace, settings: Settings) -> None:
    session = Api.from_args(args, settings).call("GET", f"/sessions/{_id(args.id)}")
    if args.json:
        _print_json(session)
        return
    for key in ("id", "agent", "version", "status", "step", "next_node", "created_at",
                "started_at", "finished_at", "error", "parent_run_id", "prompt_tokens",
                "completion_tokens"):
        value = session.get(key)
        if value is not None:
            print(f"{key + ':':<18} {value}")
    print("inputs:")
    for key, value in session.get("inputs", {}).items():
        print(f"  {key}: {_one_line(value, LINE_WIDTH)}")


def cmd_sessions_cancel(args: argparse.Namespace, settings: Settings) -> None:
    session = Api.from_args(args, settings).call("POST", f"/sessions/{_id(args.id)}/cancel")
    if args.json:
        _print_json(session)
    else:
        print(f"session {session['id']} is {session['status']}")


def cmd_sessions_watch(args: argparse.Namespace, settings: Settings) -> None:
    api = Api.from_args(args, settings)
    raise SystemExit(watch_session(api, args.id, as_json=args.json))


# --- watching a session ---------------------------------------------------------------------

@dataclass
class SseEvent:
    id: str | None
    event: str
    data: str


def parse_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Server-Sent Events from the lines of a stream (comments and ``retry:`` skipped)."""
    event_id: str | None = None
    name, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield SseEvent(event_id, name, "\n".join(data))
            event_id, name, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
        elif field == "id":
            event_id = value


def describe_event(event: dict[str, Any]) -> str:
    """One line for a session event: sequence, time (UTC), kind, node and the gist."""
    data = event.get("data") or {}
    kind = event.get("kind", "?")
    gist: str
    if kind == "queued":
        gist = f"{data.get('agent')} {data.get('version')}"
    elif kind == "node_started":
        gist = f"{data.get('node_type')} node, step {data.get('step')}"
    elif kind == "llm_request":
        gist = f"model {data.get('model')}, {data.get('messages')} messages"
    elif kind == "llm_response":
        calls = ", ".join(data.get("tool_calls") or []) or "none"
        gist = (f"{data.get('prompt_tokens', 0)}+{data.get('completion_tokens', 0)} tokens, "
                f"tool calls: {calls}")
        if data.get("text"):
            gist += f"; {data['text']}"
    elif kind == "tool_call":
        gist = f"{data.get('tool')} {_one_line(data.get('arguments', {}), 60)}"
    elif kind == "tool_result":
        gist = f"{data.get('tool')} -> {_one_line(data.get('result', ''), 60)}"
    elif kind == "approval_requested":
        gist = f"approval {data.get('approval_id')} ({data.get('approver_role')} decides)"
    elif kind == "approval_decided":
        gist = f"{data.get('decision')}" + (f": {data['comment']}" if data.get("comment") else "")
    elif kind == "report_created":
        gist = f"report {data.get('artifact_id')} \"{data.get('title')}\""
    elif kind == "checkpoint":
        gist = f"step {data.get('step')}, next {data.get('next_node') or '-'}, " \
               f"{data.get('status')}"
    elif kind == "node_finished":
        gist = str(data.get("outcome"))
    elif kind == "finished":
        gist = str(data.get("status")) + (f": {data['error']}" if data.get("error") else "")
    elif kind == "error":
        gist = str(data.get("message"))
    else:
        gist = _one_line(data) if data else ""
    line = (f"{event.get('seq', '?'):>4}  {_when(event.get('at'))[11:]}  {kind:<18}  "
            f"{event.get('node_id') or '-':<16}  {_one_line(gist, LINE_WIDTH)}")
    return line.rstrip()


class _Watch:
    """State of one ``sessions watch``: the last event seen and the approvals it requested."""

    def __init__(self, api: Api, session_id: str, *, as_json: bool,
                 out: TextIO, err: TextIO) -> None:
        self.api, self.session_id, self.as_json = api, session_id, as_json
        self.out, self.err = out, err
        self.last_seq = 0
        self.pending: dict[str, dict[str, Any]] = {}
        self.path = f"/sessions/{_id(session_id)}"

    def note(self, message: str) -> None:
        """Status lines: on stdout for people, on stderr when stdout carries JSON lines."""
        print(message, file=self.err if self.as_json else self.out, flush=True)

    def show(self, event: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps(event, ensure_ascii=False), file=self.out, flush=True)
        else:
            print(describe_event(event), file=self.out, flush=True)

    def handle(self, event: dict[str, Any]) -> int | None:
        """Record one event; an exit status once the watch should stop."""
        self.last_seq = max(self.last_seq, int(event.get("seq", 0)))
        self.show(event)
        data = event.get("data") or {}
        if event.get("kind") == "approval_requested" and data.get("approval_id"):
            self.pending[str(data["approval_id"])] = data
        elif event.get("kind") == "approval_decided":
            self.pending.pop(str(data.get("approval_id")), None)
        if self.pending:
            return self.check_waiting()
        return None

    def check_waiting(self) -> int | None:
        """Stop when the session waits for an approval and no newer event exists.

        Events and status change in one transaction, and a run has at most one open approval,
        so a status other than waiting_approval means every approval seen so far was decided
        (or expired). The status is read before the newer events are looked for: if there are
        none, that status describes the end of the log we have printed.
        """
        session = self.api.call("GET", self.path)
        if session["status"] != "waiting_approval":
            self.pending.clear()
            return None
        newer = self.api.call("GET", f"{self.path}/events", params={"after": self.last_seq})
        if newer or not self.report_waiting(session):
            return None
        return EXIT_WAITING_APPROVAL

    def report_waiting(self, session: dict[str, Any]) -> bool:
        """Print each pending approval and how to decide it; False if none is pending any
        more (decided a moment ago: the watch goes on)."""
        org = self.api.org
        reported = False
        for approval_id, requested in self.pending.items():
            try:
                approval = self.api.call("GET", f"/approvals/{_id(approval_id)}")
            except CliError:
                approval = {"id": approval_id, "question": requested.get("question", ""),
                            "options": requested.get("options", []), "status": "pending"}
            if approval.get("status") != "pending":
                continue
            reported = True
            options = approval.get("options") or []
            self.note(f"session {session['id']} is waiting for approval {approval_id}"
                      f" (node {approval.get('node_id', '?')}):")
            for line in str(approval.get("question", "")).splitlines():
                self.note(f"  | {line}".rstrip())
            self.note(f"options: {', '.join(options)}")
            self.note(f"decide:  enginex approvals decide {approval_id} --org {org} "
                      f"--decision {options[0] if options else 'DECISION'} [--comment TEXT]")
            self.note(f"then:    enginex sessions watch {session['id']} --org {org}")
        return reported

    def finish(self) -> int:
        session = self.api.call("GET", self.path)
        status = session["status"]
        suffix = f": {session['error']}" if session.get("error") else ""
        self.note(f"session {session['id']} {status}{suffix}")
        return EXIT_SUCCEEDED if status == "succeeded" else EXIT_FAILED

    def follow(self) -> int | None:
        """Read the stream once from ``last_seq``; an exit status, or None to reconnect."""
        with self.api.event_stream(self.session_id, self.last_seq) as response:
            if response.status_code >= 400:
                response.read()
                raise CliError(error_message(response, api_key_env=self.api.api_key_env))
            for sse in parse_sse(response.iter_lines()):
                if sse.event == "end":
                    return self.finish()
                try:
                    event = json.loads(sse.data)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    code = self.handle(event)
                    if code is not None:
                        return code
        return None


def watch_session(api: Api, session_id: str, *, as_json: bool = False,
                  out: TextIO | None = None, err: TextIO | None = None,
                  sleep: Callable[[float], None] = time.sleep) -> int:
    """Print the session's events (from the first) until it finishes or waits for approval.

    Returns 0 (succeeded), 1 (failed or cancelled), 3 (waiting for an approval) or 130
    (interrupted). A dropped connection is resumed after the last event printed
    (``Last-Event-ID``); CliError after repeated failures without progress.
    """
    import httpx

    watch = _Watch(api, session_id, as_json=as_json, out=out or sys.stdout,
                   err=err or sys.stderr)
    failures = 0
    try:
        while True:
            seen = watch.last_seq
            try:
                code = watch.follow()
                problem = "the server closed the event stream"
            except httpx.HTTPError as exc:
                code, problem = None, f"{type(exc).__name__}: {exc}"
            if code is not None:
                return code
            failures = 0 if watch.last_seq > seen else failures + 1
            if failures > MAX_RECONNECTS:
                raise CliError(f"lost the event stream of session {session_id} ({problem}); "
                               f"run `{command_name()} sessions watch {session_id} "
                               f"--org {api.org}` again")
            sleep(min(2.0 * failures, 10.0))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


# --- approvals ------------------------------------------------------------------------------

def cmd_approvals_list(args: argparse.Namespace, settings: Settings) -> None:
    params = {k: v for k, v in {"status": args.status, "limit": args.limit}.items() if v}
    approvals = Api.from_args(args, settings).every(
        "/approvals", params, at_most=args.limit,
        keep=lambda a: not args.session or a["run_id"] == args.session)
    if args.json:
        _print_json(approvals)
        return
    _table(["ID", "STATUS", "SESSION", "NODE", "DECIDER", "QUESTION"],
           ([a["id"], a["status"], a["run_id"], a["node_id"], a["approver_role"],
             _one_line(a["question"].splitlines()[0] if a["question"] else "", 50)]
            for a in approvals))


def cmd_approvals_show(args: argparse.Namespace, settings: Settings) -> None:
    approval = Api.from_args(args, settings).call("GET", f"/approvals/{_id(args.id)}")
    if args.json:
        _print_json(approval)
        return
    for key in ("id", "status", "run_id", "node_id", "approver_role", "expires_at",
                "decision", "comment", "decided_at"):
        if approval.get(key) not in (None, ""):
            print(f"{key + ':':<15} {approval[key]}")
    print(f"{'options:':<15} {', '.join(approval['options'])}")
    print("question:")
    for line in approval["question"].splitlines():
        print(f"  {line}")


def cmd_approvals_decide(args: argparse.Namespace, settings: Settings) -> None:
    approval = Api.from_args(args, settings).call(
        "POST", f"/approvals/{_id(args.id)}/decision",
        json={"decision": args.decision, "comment": args.comment})
    if args.json:
        _print_json(approval)
        return
    print(f"approval {approval['id']} {approval['status']} ({approval['decision']}); "
          f"session {approval['run_id']} resumes")
    print(f"follow it: enginex sessions watch {approval['run_id']} --org {args.org}")


# --- reports --------------------------------------------------------------------------------

def cmd_reports_list(args: argparse.Namespace, settings: Settings) -> None:
    params = {k: v for k, v in {"session": args.session, "limit": args.limit}.items() if v}
    reports = Api.from_args(args, settings).every("/reports", params, at_most=args.limit)
    if args.json:
        _print_json(reports)
        return
    _table(["ID", "SESSION", "TITLE", "BYTES", "CREATED (UTC)"],
           ([r["id"], r["run_id"], _one_line(r["title"], 50), str(r["size_bytes"]),
             _when(r["created_at"])] for r in reports))


def cmd_reports_show(args: argparse.Namespace, settings: Settings) -> None:
    report = Api.from_args(args, settings).call("GET", f"/reports/{_id(args.id)}")
    if args.json:
        _print_json(report)
        return
    content = report["content"]
    sys.stdout.write(content if content.endswith("\n") else content + "\n")


def cmd_reports_download(args: argparse.Namespace, settings: Settings) -> None:
    response = Api.from_args(args, settings).response(
        "GET", f"/reports/{_id(args.id)}/download")
    if args.output == "-":
        sys.stdout.buffer.write(response.content)
        return
    target = Path(args.output)
    try:
        target.write_bytes(response.content)
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror or exc}") from exc
    print(f"saved report {args.id} to {target} ({len(response.content)} bytes)")


# --- members --------------------------------------------------------------------------------

def cmd_members_list(args: argparse.Namespace, settings: Settings) -> None:
    members = Api.from_args(args, settings).call("GET", "/members")
    if args.json:
        _print_json(members)
        return
    _table(["USER ID", "EMAIL", "ROLE", "STATE"],
           ([m["user_id"], m["email"], m["role"],
             "disabled" if m.get("disabled_at") else "active"] for m in members))


def _set_member_state(args: argparse.Namespace, settings: Settings, action: str) -> None:
    member = Api.from_args(args, settings).call("POST", f"/members/{_id(args.user_id)}/{action}")
    if args.json:
        _print_json(member)
    else:
        print(f"{member['email']} is now {'disabled' if member.get('disabled_at') else 'active'} "
              f"in '{args.org}'")


def cmd_members_disable(args: argparse.Namespace, settings: Settings) -> None:
    """Disable a member: their session, API keys and event streams lose this organization."""
    _set_member_state(args, settings, "disable")


def cmd_members_enable(args: argparse.Namespace, settings: Settings) -> None:
    _set_member_state(args, settings, "enable")


# --- API keys -------------------------------------------------------------------------------

def _read_secret(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.email}: ")
    else:
        raise CliError("pass the password on standard input with --password-stdin")
    if not password:
        raise CliError("no password given")
    return password


def cmd_api_keys_create(args: argparse.Namespace, settings: Settings) -> None:
    """Sign in as an org admin, create an API key, sign out. Prints only the key on stdout."""
    import httpx

    password = _read_secret(args)
    _quiet_http_log()
    base_url = base_url_from(args, settings)
    body: dict[str, Any] = {"name": args.name, "role": args.role}
    if args.expires_in_days:
        body["expires_in_days"] = args.expires_in_days
    with httpx.Client(base_url=f"{base_url}/api/v1", timeout=TIMEOUT,
                      headers={"User-Agent": "enginex-cli"}) as client:
        def call(method: str, path: str, **kwargs: Any) -> Any:
            try:
                response = client.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                raise CliError(f"could not reach {base_url}: {exc}") from exc
            if response.status_code >= 400:
                raise CliError(error_message(response))
            return response.json() if response.content else None

        me = call("POST", "/auth/login", json={"email": args.email, "password": password})
        csrf = {"X-CSRF-Token": me.get("csrf_token") or ""}
        try:
            key = call("POST", f"/orgs/{_id(args.org)}/api-keys", json=body, headers=csrf)
        finally:
            try:
                call("POST", "/auth/logout", headers=csrf)
            except CliError:
                pass  # the sign-in session expires on its own
    print(key["token"])
    print(f"created API key '{key['name']}' (role {key['role']}) in '{args.org}'; it is shown "
          "only now", file=sys.stderr)


# --- parser ---------------------------------------------------------------------------------

def _client_options(parser: argparse.ArgumentParser, *, api_key: bool = True) -> None:
    parser.add_argument("--org", required=True, metavar="SLUG", help="the organization")
    parser.add_argument("--url", default=None,
                        help=f"EngineX base URL (default: ${URL_ENV}, else $ENGINEX_BASE_URL, "
                             "else http://127.0.0.1:8000)")
    if api_key:
        parser.add_argument("--api-key-env", default=DEFAULT_API_KEY_ENV, metavar="VAR",
                            help="environment variable holding the organization API key "
                                 f"(default {DEFAULT_API_KEY_ENV})")


def _command(actions: Any, name: str, func: Callable[[argparse.Namespace, Settings], None],
             help_text: str, *, json_flag: bool = True,
             json_help: str = "print JSON") -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = actions.add_parser(name, help=help_text,
                                                         description=help_text)
    _client_options(parser)
    if json_flag:
        parser.add_argument("--json", action="store_true", help=json_help)
    parser.set_defaults(func=func)
    return parser


def add_client_commands(subparsers: Any) -> dict[str, Any]:
    """Register ``enginex sessions|approvals|reports|api-keys ...`` on ``enginex``. Returns
    each group's subcommand registry by group name (server-side commands join ``reports``)."""
    groups: dict[str, Any] = {}
    sessions = subparsers.add_parser(
        "sessions", help="start, follow and cancel sessions (runs) through the API",
        description=plain_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = sessions.add_subparsers(dest="action", required=True)

    start = _command(actions, "start", cmd_sessions_start, "start a session of an agent",
                     json_help="print the session as JSON (with --watch: then its events, "
                               "one JSON object per line)")
    start.add_argument("agent", metavar="AGENT", help="the agent id, e.g. hourly-tracking")
    start.add_argument("--input", action="append", metavar="KEY=VALUE",
                       help="an input as text (repeatable)")
    start.add_argument("--input-file", action="append", metavar="KEY=PATH",
                       help="an input read from a UTF-8 text file (repeatable)")
    start.add_argument("--inputs-file", metavar="FILE.json",
                       help="inputs as a JSON object (typed values); --input wins per key")
    start.add_argument("--version", help="pin an agent version (default: the latest)")
    start.add_argument("--watch", action="store_true",
                       help="then follow its events, as `sessions watch` does")

    listing = _command(actions, "list", cmd_sessions_list, "list sessions, newest first")
    listing.add_argument("--status", choices=SESSION_STATUSES)
    listing.add_argument("--agent", help="only sessions of this agent id")
    listing.add_argument("--limit", type=int, default=None, help="at most this many (1-200)")
    listing.add_argument("--cursor", help="the next page, as printed by the previous one")

    show = _command(actions, "show", cmd_sessions_show, "show one session")
    show.add_argument("id", metavar="ID")

    watch = _command(actions, "watch", cmd_sessions_watch,
                     "print a session's events until it finishes (exit 0 succeeded, 1 failed "
                     "or cancelled) or waits for an approval (exit 3)",
                     json_help="print one JSON object per event (status lines go to stderr)")
    watch.add_argument("id", metavar="ID")

    cancel = _command(actions, "cancel", cmd_sessions_cancel, "cancel a session")
    cancel.add_argument("id", metavar="ID")

    approvals = subparsers.add_parser("approvals", help="the approval inbox through the API")
    actions = approvals.add_subparsers(dest="action", required=True)
    listing = _command(actions, "list", cmd_approvals_list, "list approvals, newest first")
    listing.add_argument("--status", choices=APPROVAL_STATUSES)
    listing.add_argument("--session", metavar="ID", help="only approvals of this session")
    listing.add_argument("--limit", type=int, default=None, help="at most this many (1-500)")
    show = _command(actions, "show", cmd_approvals_show, "show one approval and its question")
    show.add_argument("id", metavar="ID")
    decide = _command(actions, "decide", cmd_approvals_decide,
                      "decide a pending approval (once); its session resumes")
    decide.add_argument("id", metavar="ID")
    decide.add_argument("--decision", required=True, help="one of the approval's options")
    decide.add_argument("--comment", default="", help="recorded with the decision")

    reports = subparsers.add_parser("reports", help="reports of sessions through the API")
    actions = groups["reports"] = reports.add_subparsers(dest="action", required=True)
    listing = _command(actions, "list", cmd_reports_list, "list reports, newest first")
    listing.add_argument("--session", metavar="ID", help="only reports of this session")
    listing.add_argument("--limit", type=int, default=None, help="at most this many (1-500)")
    show = _command(actions, "show", cmd_reports_show, "print a report's Markdown")
    show.add_argument("id", metavar="ID")
    download = _command(actions, "download", cmd_reports_download,
                        "save a report's file", json_flag=False)
    download.add_argument("id", metavar="ID")
    download.add_argument("-o", "--output", required=True, metavar="FILE",
                          help="where to write it ('-' for standard output)")

    members = subparsers.add_parser("members", help="members of an organization through the API "
                                                    "(an admin's API key)")
    actions = members.add_subparsers(dest="action", required=True)
    groups["members"] = actions
    _command(actions, "list", cmd_members_list, "list members with role and state")
    for name, func, text in (
            ("disable", cmd_members_disable,
             "disable a member: their session, API keys and event streams lose this "
             "organization within seconds (they stay a member; enable undoes it)"),
            ("enable", cmd_members_enable, "re-enable a disabled member")):
        parser = _command(actions, name, func, text)
        parser.add_argument("user_id", help="the member's user id (see `members list`)")

    keys = subparsers.add_parser("api-keys", help="organization API keys through the API")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser(
        "create", help="sign in as an org admin and create an API key",
        description="Sign in with an org admin's email and password, create an API key, sign "
                    "out. Only the key is printed on standard output, so "
                    "`export ENGINEX_API_KEY=$(enginex api-keys create ...)` works.")
    _client_options(create, api_key=False)
    create.add_argument("--email", required=True, help="an admin of the organization")
    create.add_argument("--password-stdin", action="store_true",
                        help="read the password from standard input (else it is prompted)")
    create.add_argument("--role", default="operator",
                        choices=("viewer", "operator", "builder", "admin"))
    create.add_argument("--name", default="enginex cli", help="a label for the key")
    create.add_argument("--expires-in-days", type=int, default=None,
                        help="default: the server's (90 days)")
    create.set_defaults(func=cmd_api_keys_create)
    return groups
