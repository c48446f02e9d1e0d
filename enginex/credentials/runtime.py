"""Credentials at run time: resolution for one step, redaction, OAuth2 refresh.

The engine asks ``CredentialRuntime.for_step(ctx, run_id, node_id)`` for a ``StepSecrets``
per step and uses it three ways:

* ``render_arguments``: a tool node's arguments with ``{{credentials.NAME.FIELD}}`` filled in.
  Only placeholders written in the agent package are resolved -- never text that reached the
  arguments from the run's state (inputs, model output), which could otherwise name any
  credential and send it anywhere. In an ``http_request`` call a placeholder is refused,
  before anything is resolved, outside the URL's path and query, header values and the body
  (``placeholders``): a value in a host would be transformed (lower-cased, IDNA) and quoted.
* ``prepare`` + ``resolve``: the ``credential`` argument of a tool call (``http_request``);
  ``prepare`` loads it (async) before the call, the tool's synchronous
  ``ToolContext.resolve_credential`` returns the header value, and
  ``ToolContext.check_credential_host`` (``check_host``) refuses a URL whose host the
  credential may not be sent to (before the request and for every redirect hop).
* ``credential(name, url=...)``: an LLM provider's key (url: its base URL) or an MCP
  server's header (url: the server's URL) or environment variable (url None: not sent to a
  host).
* ``redact``: every value resolved in the step (and what tools add to ``ToolContext.secrets``)
  is replaced by ``[redacted]`` in the events, error and state the step commits, in every form
  ``variants`` lists (case-folded, encoded, base64, hex, IDNA), ignoring case; log records
  created while the step holds secrets are redacted too (see ``install_log_redaction``).

Resolution happens at the moment of use, for the run's own organization only (the session is
bound to ``ctx.org_id``; the credential is looked up by name in that tenant), in its own short
transaction that writes the audit entry ``credential.used`` (run, node) before the value is
used. Plaintext lives only in the ``StepSecrets`` of that step, in memory.

One connection at a time: while the engine prepares a step it holds one read-only session
and hands it to the step's secrets (``StepSecrets.reading_in``). Credentials (and the quick
setup's LLM key) resolved then are read in that session and their audit entries are *owed*
instead of written -- opening a second session there would make a step hold one pooled
connection while waiting for another, and enough steps doing so at once wait on each other
until the pool times out. The engine writes what is owed (``write_owed_audit``) in its own
short transaction right after the prepare session closes and before the step uses any value,
so every use is audited whether or not the step's result is later committed (a step that
lost its lease discards its result, but the credential was decrypted).

Allowed hosts (hosts.py): a credential with a non-empty ``allowed_hosts`` is only handed out
for a destination URL whose host matches one of them. The check runs before the value is
decrypted when the credential is first resolved in the step, and again in memory on every
later use; a refused use raises ToolError naming the credential, the host and the fix, and is
audited as ``credential.use_refused`` (name, run, node, host -- never the value or the URL,
which may carry other secrets). A use with no URL to check (a placeholder in another tool's
arguments) is refused for such a credential; an empty list allows any host.

OAuth2: a credential with a token endpoint and a refresh token is refreshed when its access
token expires within ``refresh_margin``. Refreshes of one credential are serialized: a lock
per credential in this process, and across processes the credential's row lock (PostgreSQL
``SELECT ... FOR UPDATE``) or the single writer (SQLite), held while the token endpoint
answers; whoever gets the lock second finds the fresh token and does not refresh again.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import json
import logging
import re
import secrets
import traceback
import uuid
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from enginex.audit.service import record
from enginex.credentials import hosts, placeholders
from enginex.credentials.models import Credential
from enginex.credentials.oauth2 import TOKEN_TIMEOUT_SECONDS, TokenRefreshFailed, refresh_tokens
from enginex.credentials.repository import CredentialRepository
from enginex.credentials.service import KINDS, CredentialUnusable, open_values, reseal
from enginex.credentials.vault import Keyring
from enginex.db import SessionFactory, set_tenant
from enginex.kit.templates import render_value
from enginex.kit.time import utcnow
from enginex.tenancy.context import TenantContext
from enginex.tools.base import ToolError

log = logging.getLogger("enginex.credentials")

REDACTED = "[redacted]"
MIN_REDACTED_CHARS = 4  # shorter values cannot be redacted without mangling ordinary text
# Encoded forms (base64, hex, IDNA) shorter than this would match ordinary text.
MIN_ENCODED_CHARS = 8
REFRESH_MARGIN = timedelta(seconds=60)
_CLIPPED = re.compile(r"\.\.\. \[\d+ more characters\]$")
T = TypeVar("T")


# --- redaction -----------------------------------------------------------------------------------

_PRINTABLE = "".join(chr(i) for i in range(0x21, 0x7F))
# Characters kept unescaped when a value is percent-encoded: urllib's (none, or '/') and the
# HTTP client's (httpx, after WHATWG) in a path, a query and a fragment.
_URL_SAFE_SETS = ("", "/", *("".join(c for c in _PRINTABLE if c not in excluded)
                             for excluded in ('"#<>?`{}', '"#<>', '"<>`')))
_URLSAFE_BASE64 = str.maketrans("+/", "-_")
# Leading base64 characters that still depend on the bytes before the value, by its offset.
_BASE64_LEAD = (0, 2, 3)


def _text_forms(text: str) -> set[str]:
    """``text`` as is, percent-encoded (each common safe set, and as a form field) and
    JSON-escaped (ASCII-only or not)."""
    forms = {text, quote_plus(text), json.dumps(text)[1:-1],
             json.dumps(text, ensure_ascii=False)[1:-1]}
    forms.update(quote(text, safe=safe) for safe in _URL_SAFE_SETS)
    return forms


def _base64_forms(data: bytes) -> set[str]:
    """``data`` in base64 (standard and URL-safe, padded or not), and the characters of its
    encoding that do not depend on what surrounds it at each offset (a value inside a larger
    encoded text: a JSON web token, ``user:pass``)."""
    whole = base64.b64encode(data).decode()
    forms = {whole, whole.rstrip("=")}
    for offset, lead in enumerate(_BASE64_LEAD):
        encoded = base64.b64encode(bytes(offset) + data).decode().rstrip("=")
        forms.add(encoded[lead:-1] if (offset + len(data)) % 3 else encoded[lead:])
    return forms | {f.translate(_URLSAFE_BASE64) for f in forms}


def _idna_forms(value: str) -> set[str]:
    """The forms a non-ASCII value takes in a host name: the whole value and each of its
    labels IDNA-encoded (as the HTTP client does, and as the resolver's IDNA 2003 codec),
    their punycode, and the ASCII characters of each, which punycode copies first whatever
    else the label holds."""
    if value.isascii():
        return set()  # an ASCII host is only lower-cased: matching ignores case anyway
    lowered = value.lower()
    forms: set[str] = set()
    for piece in {lowered, *lowered.split(".")}:
        if piece.isascii():
            continue
        forms.add("".join(c for c in piece if c.isascii()))
        try:
            forms.add(httpx.URL(f"http://{piece}/").raw_host.decode("ascii"))
        except (httpx.InvalidURL, UnicodeError, ValueError):
            pass
        for codec in ("idna", "punycode"):
            try:
                encoded = piece.encode(codec).decode("ascii")
            except UnicodeError:
                continue
            forms.add(encoded if codec == "idna" else f"xn--{encoded}")
    return forms


def variants(value: str) -> set[str]:
    """The forms a secret may take in stored text, to be matched ignoring case (see
    ``redact_text``): as is, lower-, upper- and case-folded, each percent-encoded and
    JSON-escaped; base64 (standard and URL-safe, padded or not, and at any offset inside a
    larger encoding) and hex of its UTF-8 bytes; IDNA and punycode (``_idna_forms``). Forms
    shorter than MIN_REDACTED_CHARS (encodings: MIN_ENCODED_CHARS) are left out; one form is
    kept per spelling that differs only in case."""
    forms: set[str] = set()
    for text in {value, value.lower(), value.upper(), value.casefold()}:
        forms.update(f for f in _text_forms(text) if len(f) >= MIN_REDACTED_CHARS)
    data = value.encode()
    encoded = _base64_forms(data) | _idna_forms(value) | {data.hex()}
    forms.update(f for f in encoded if len(f) >= MIN_ENCODED_CHARS)
    return set({_lower_in_place(f): f for f in sorted(forms)}.values())


def _lower_in_place(text: str) -> str:
    """``text`` lower-cased character by character, so that every position stays the same
    (``str.lower`` turns a few characters into two)."""
    lowered = text.lower()
    if len(lowered) == len(text):  # lower() never shortens: no character grew
        return lowered
    return "".join(low if len(low := c.lower()) == 1 else c for c in text)


def _needles(secret_values: Iterable[str]) -> list[str]:
    """The forms to search for, lower-cased as the text is, longest first."""
    return sorted({_lower_in_place(s) for s in secret_values if s}, key=len, reverse=True)


def _redact_text(text: str, needles: list[str]) -> str:
    lowered = _lower_in_place(text)
    spans: list[tuple[int, int]] = []
    for needle in needles:
        at = lowered.find(needle)
        while at != -1:
            spans.append((at, at + len(needle)))
            at = lowered.find(needle, at + 1)
    if spans:
        spans.sort()
        pieces: list[str] = []
        done = 0
        start, end = spans[0]
        for s, e in spans[1:]:
            if s < end:  # overlapping matches become one
                end = max(end, e)
                continue
            pieces += [text[done:start], REDACTED]
            done, start, end = end, s, e
        pieces += [text[done:start], REDACTED, text[end:]]
        text = "".join(pieces)
    clipped = _CLIPPED.search(text) if text.endswith(" more characters]") else None
    if clipped:
        head, tail = text[:clipped.start()], text[clipped.start():]
        lowered_head = _lower_in_place(head)
        for needle in needles:
            cut = next((n for n in range(len(needle) - 1, 0, -1)
                        if lowered_head.endswith(needle[:n])), 0)
            if cut:
                head = head[:-cut] + REDACTED
                lowered_head = lowered_head[:-cut] + REDACTED
        text = head + tail
    return text


def redact_text(text: str, secret_values: Iterable[str]) -> str:
    """``text`` with every occurrence of a secret form replaced, ignoring case (a host name
    or a hex digest is lower-cased on the way; a server may echo a value upper-cased). A
    text cut short by the engine (``... [N more characters]``) also loses a secret's
    beginning at the cut."""
    needles = _needles(secret_values)
    return _redact_text(text, needles) if needles else text


def _redact(value: T, needles: list[str]) -> T:
    if isinstance(value, str):
        return _redact_text(value, needles)  # type: ignore[return-value]
    if isinstance(value, Mapping):
        return {_redact(k, needles): _redact(v, needles)  # type: ignore[return-value]
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [_redact(v, needles) for v in value]
        return (tuple(items) if isinstance(value, tuple) else items)  # type: ignore[return-value]
    return value


def redact(value: T, secret_values: Iterable[str]) -> T:
    """A copy of a JSON-like value (dicts, lists, strings) with every secret form replaced
    (``redact_text``)."""
    needles = _needles(secret_values)
    return _redact(value, needles) if needles else value


# Secrets of the steps running in this process, for the log record factory.
_ACTIVE: dict[int, tuple[str, ...]] = {}
_installed = False


def _active_secrets() -> list[str]:
    return sorted(set(itertools.chain.from_iterable(list(_ACTIVE.values()))), key=len,
                  reverse=True)


def _scrub_record(record: logging.LogRecord) -> None:
    needles = _needles(_active_secrets())
    try:
        message = record.getMessage()
    except Exception:  # a malformed log call: leave it to the handler
        return
    redacted = _redact_text(message, needles)
    if redacted != message:
        record.msg, record.args = redacted, None
    if record.exc_info and record.exc_info[1] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        redacted = _redact_text(text, needles)
        if redacted != text:
            record.exc_text = redacted


def install_log_redaction() -> None:
    """Make every log record created while a step holds secrets redact them (message,
    arguments, traceback), whichever logger it goes to (httpx, uvicorn, the engine)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _ACTIVE:
            _scrub_record(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


# --- resolution ----------------------------------------------------------------------------------


class CredentialNotFound(LookupError):
    pass


class CredentialRefused(Exception):
    """A use towards a host the credential may not be sent to; the message is safe to show
    (``hosts.refusal_message``). Already audited as ``credential.use_refused``."""


@dataclass(frozen=True)
class Resolved:
    name: str
    kind: str
    values: dict[str, str]
    # Host patterns it may be sent to (empty: any host), and its id for audit entries.
    allowed_hosts: tuple[str, ...] = ()
    credential_id: uuid.UUID | None = None

    def allows(self, url: str | None) -> bool:
        """Whether the value may be sent to ``url`` (None: no URL to check)."""
        if not self.allowed_hosts:
            return True
        return url is not None and hosts.allows(self.allowed_hosts, url)


def header_value(resolved: Resolved, header: str) -> str:
    """The value of ``header`` for a credential (``http_request``'s ``credential``): a bearer
    token, ``Basic`` credentials, or the key itself in a custom header."""
    values, kind = resolved.values, resolved.kind
    authorization = header.lower() == "authorization"
    if kind == "basic_auth":
        pair = f"{values['username']}:{values['password']}".encode()
        return "Basic " + base64.b64encode(pair).decode()
    if kind in ("api_key", "bearer_token", "oauth2"):
        token = values[{"api_key": "key", "bearer_token": "token",
                        "oauth2": "access_token"}[kind]]
        return f"Bearer {token}" if authorization else token
    field = header.lower().replace("-", "_")
    for candidate in (field, "value"):
        if candidate in values:
            return values[candidate]
    raise ToolError(f"the custom credential '{resolved.name}' has no field '{field}' or "
                    f"'value' to send in the {header} header")


HTTP_REQUEST = placeholders.HTTP_REQUEST


def _request_url(arguments: Any) -> str | None:
    """The ``url`` argument of an ``http_request`` call, if it is a text."""
    url = arguments.get("url") if isinstance(arguments, Mapping) else None
    return url if isinstance(url, str) else None


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _texts(item)


def _refuse_misplaced(rendered: Mapping[str, Any], marker: str,
                      found: Mapping[tuple[str, str], str]) -> None:
    """Raise ToolError if an ``http_request`` call's rendered arguments (placeholders still
    ``marker`` tokens) put a credential anywhere but the URL's path, query or fragment, a
    header value or the body (``placeholders``). Runs before anything is resolved; the
    message names the placeholder and the argument, never the URL."""
    spelled = {token: f"{{{{credentials.{name}.{field}}}}}"
               for (name, field), token in found.items()}

    def refuse(argument: str, text: str, at: int) -> ToolError:
        token = next((t for t in spelled if text.startswith(t, at)), None)
        placeholder = spelled[token] if token else "{{credentials...}}"
        return ToolError("http_request: "
                         + placeholders.misplaced_message(placeholder, argument))

    for argument, value in rendered.items():
        if argument in placeholders.FREE_ARGUMENTS:
            continue
        if argument == placeholders.URL_ARGUMENT and isinstance(value, str):
            at = value.find(marker)
            if at != -1 and not placeholders.rendered_url_allows(value[:at]):
                raise refuse(argument, value, at)
            continue
        for text in _texts(value):
            at = text.find(marker)
            if at != -1:
                raise refuse(argument, text, at)


@dataclass(frozen=True)
class OwedAudit:
    """An audit entry a step owes for a use of a secret (see ``CredentialRuntime.use``);
    ``marks_used``: the credential's ``last_used_at`` is set when it is written."""

    action: str
    target_kind: str
    target_id: uuid.UUID
    details: dict[str, Any]
    marks_used: bool = False

    async def write(self, db: AsyncSession, ctx: TenantContext,
                    credential: Credential | None = None) -> None:
        """Write it in ``db``'s transaction (bound to ``ctx``'s tenant); ``credential``: the
        row, when the caller has it loaded in ``db``."""
        if self.marks_used:
            if credential is None:
                credential = await CredentialRepository(db, ctx).get(self.target_id)
            if credential is not None:
                credential.last_used_at = utcnow()
        await record(db, ctx, self.action, target_kind=self.target_kind,
                     target_id=self.target_id, details=self.details)


def _refusal(credential_id: uuid.UUID, name: str, run_id: uuid.UUID, node_id: str,
             url: str | None) -> OwedAudit:
    target = hosts.destination(url) if url else None
    return OwedAudit("credential.use_refused", "credential", credential_id,
                     {"name": name, "run_id": str(run_id), "node_id": node_id,
                      "host": target.host if target else None,
                      "port": target.port if target else None,
                      "reason": "host not allowed" if target else "no host to check"})


class CredentialRuntime:
    """Process-wide: resolves credentials for run steps (see the module docstring)."""

    def __init__(self, sessions: SessionFactory, keyring: Keyring, *,
                 llm_key_box: Any = None, allow_private_network: bool = False,
                 refresh_margin: timedelta = REFRESH_MARGIN,
                 token_timeout: float = TOKEN_TIMEOUT_SECONDS) -> None:
        self.sessions = sessions
        self.keyring = keyring
        self.llm_key_box = llm_key_box
        self.allow_private_network = allow_private_network
        self.refresh_margin = refresh_margin
        self.token_timeout = token_timeout
        self._refresh_locks: weakref.WeakValueDictionary[tuple[uuid.UUID, uuid.UUID],
                                                          asyncio.Lock] = \
            weakref.WeakValueDictionary()
        install_log_redaction()

    @classmethod
    def for_master(cls, sessions: SessionFactory, master_key: bytes, *,
                   allow_private_network: bool = False) -> CredentialRuntime:
        from enginex.llm.service import LLMKeyBox

        box = LLMKeyBox(master_key)
        return cls(sessions, box.keyring, llm_key_box=box,
                   allow_private_network=allow_private_network)

    def for_step(self, ctx: TenantContext, run_id: uuid.UUID, node_id: str) -> StepSecrets:
        return StepSecrets(self, ctx, run_id, node_id)

    def with_sessions(self, sessions: SessionFactory) -> CredentialRuntime:
        """The same runtime (keyring, refresh locks) opening its sessions from ``sessions``
        (a worker's gated factory, ``db.GatedSessions``)."""
        twin = copy.copy(self)
        twin.sessions = sessions
        return twin

    def refresh_due(self, credential: Credential) -> bool:
        return (credential.kind == "oauth2" and bool(credential.config.get("token_url"))
                and "refresh_token" in credential.fields and credential.expires_at is not None
                and credential.expires_at - utcnow() <= self.refresh_margin)

    async def use(self, ctx: TenantContext, run_id: uuid.UUID, node_id: str,
                  name: str, *, url: str | None = None,
                  host_bound: bool = False, session: AsyncSession | None = None,
                  owed: list[OwedAudit] | None = None) -> Resolved:
        """Decrypt credential ``name`` of ``ctx``'s organization for a step, refreshing an
        OAuth2 token first when due. Audited (``credential.used``: run, node) and committed
        before the value is returned. With ``host_bound`` the value is about to be sent to
        ``url``: if the credential's allowed hosts do not match it, nothing is decrypted, the
        refusal is audited (``credential.use_refused``) and CredentialRefused raised. Raises
        CredentialNotFound or CredentialUnusable otherwise.

        With ``session`` (a session bound to ``ctx``'s tenant that the caller holds, the
        engine's read-only prepare session) the credential is read in it and nothing is
        written or committed: the audit entries (and the ``last_used_at`` mark) are appended
        to ``owed`` for the caller to write before the value is used (``write_owed``). A due
        OAuth2 refresh ends that session's read transaction first (giving its connection
        back) and runs in its own transaction: the caller never holds two connections."""
        assert session is None or owed is not None
        refreshed = False
        while True:
            async with self.session_for(ctx, session) as db:
                credential = await CredentialRepository(db, ctx).get_by_name(name)
                if credential is None:
                    raise CredentialNotFound(name)
                patterns = tuple(credential.allowed_hosts or ())
                if host_bound and patterns and (url is None
                                                or not hosts.allows(patterns, url)):
                    refusal = _refusal(credential.id, name, run_id, node_id, url)
                    if owed is not None and session is not None:
                        owed.append(refusal)
                    else:
                        await refusal.write(db, ctx)
                        await db.commit()
                    raise CredentialRefused(hosts.refusal_message(name, url))
                if not refreshed and self.refresh_due(credential):
                    credential_id, expires_at = credential.id, credential.expires_at
                    if session is None:
                        await db.rollback()
                    else:  # a read transaction: ends without expiring what the caller holds
                        await db.commit()
                    try:
                        await self.refresh(ctx, credential_id, run_id, node_id)
                    except CredentialUnusable:
                        if expires_at is None or expires_at <= utcnow():
                            raise
                        # Not expired yet: this use goes ahead with the current token.
                    refreshed = True
                    continue
                details = {"name": name, "run_id": str(run_id), "node_id": node_id}
                try:
                    values = await open_values(db, credential, self.keyring)
                except CredentialUnusable as exc:
                    failure = OwedAudit("credential.use_failed", "credential", credential.id,
                                        {**details, "reason": "cannot be decrypted"})
                    if owed is not None and session is not None:
                        owed.append(failure)
                    else:
                        await failure.write(db, ctx)
                        await db.commit()
                    raise exc from None
                used = OwedAudit("credential.used", "credential", credential.id, details,
                                 marks_used=True)
                resolved = Resolved(name, credential.kind, values, patterns, credential.id)
                if owed is not None and session is not None:
                    owed.append(used)
                    return resolved
                await used.write(db, ctx, credential)
                await db.commit()
                return resolved

    @asynccontextmanager
    async def session_for(self, ctx: TenantContext,
                       held: AsyncSession | None) -> AsyncIterator[AsyncSession]:
        """``held`` (left open), or a new session bound to ``ctx``'s tenant."""
        if held is not None:
            await set_tenant(held, ctx.org_id)
            yield held
            return
        async with self.sessions() as db:
            await set_tenant(db, ctx.org_id)
            yield db

    async def write_owed(self, ctx: TenantContext, owed: list[OwedAudit]) -> None:
        """Write audit entries owed by a step (see ``use``) in one short transaction of their
        own; the list is emptied once they are committed."""
        if not owed:
            return
        async with self.sessions() as db:
            await set_tenant(db, ctx.org_id)
            for entry in owed:
                await entry.write(db, ctx)
            await db.commit()
        owed.clear()

    async def refuse(self, ctx: TenantContext, run_id: uuid.UUID, node_id: str,
                     resolved: Resolved, url: str | None, *,
                     owed: list[OwedAudit] | None = None) -> CredentialRefused:
        """Audit a refused use of a credential the step already holds (its own transaction,
        or appended to ``owed``) and return the error to raise."""
        if resolved.credential_id is not None:
            refusal = _refusal(resolved.credential_id, resolved.name, run_id, node_id, url)
            if owed is not None:
                owed.append(refusal)
            else:
                async with self.sessions() as db:
                    await set_tenant(db, ctx.org_id)
                    await refusal.write(db, ctx)
                    await db.commit()
        return CredentialRefused(hosts.refusal_message(resolved.name, url))

    async def refresh(self, ctx: TenantContext, credential_id: uuid.UUID, run_id: uuid.UUID,
                      node_id: str) -> None:
        """Refresh an OAuth2 credential's access token if it is (still) due, serialized (see
        the module docstring). Audited as ``credential.refreshed`` or
        ``credential.refresh_failed``; raises CredentialUnusable on failure."""
        key = (ctx.org_id, credential_id)
        lock = self._refresh_locks.get(key)
        if lock is None:
            lock = self._refresh_locks[key] = asyncio.Lock()
        async with lock, self.sessions() as db:
            await set_tenant(db, ctx.org_id)
            credential = await CredentialRepository(db, ctx).get_for_update(credential_id)
            if credential is None or not self.refresh_due(credential):
                await db.commit()  # refreshed meanwhile by another run
                return
            values = await open_values(db, credential, self.keyring)
            config = credential.config
            details: dict[str, Any] = {"name": credential.name, "run_id": str(run_id),
                                       "node_id": node_id}
            try:
                tokens = await refresh_tokens(
                    str(config["token_url"]), refresh_token=values["refresh_token"],
                    client_id=config.get("client_id"), client_secret=values.get("client_secret"),
                    scope=config.get("scope"), allow_private_network=self.allow_private_network,
                    request_timeout=self.token_timeout)
                for token in (tokens.access_token, tokens.refresh_token or ""):
                    if any(c in token for c in "\r\n\x00"):
                        raise TokenRefreshFailed("the token endpoint returned an unusable token")
            except TokenRefreshFailed as exc:
                message = redact_text(str(exc), sorted(variants(values["refresh_token"]),
                                                       key=len, reverse=True))
                await record(db, ctx, "credential.refresh_failed", target_kind="credential",
                             target_id=credential.id, details={**details, "error": message})
                await db.commit()
                raise CredentialUnusable(f"The OAuth2 credential '{credential.name}' could not "
                                         f"be refreshed: {message}.") from None
            values["access_token"] = tokens.access_token
            if tokens.refresh_token:
                values["refresh_token"] = tokens.refresh_token
            now = utcnow()
            credential.value_version += 1
            await reseal(db, credential, values, self.keyring)
            credential.fields = sorted(values)
            credential.expires_at = (now + timedelta(seconds=tokens.expires_in)
                                     if tokens.expires_in else None)
            credential.refreshed_at = credential.updated_at = now
            await record(db, ctx, "credential.refreshed", target_kind="credential",
                         target_id=credential.id,
                         details={**details, "expires_at": credential.expires_at.isoformat()
                                  if credential.expires_at else None})
            await db.commit()


class StepSecrets:
    """The credentials one step of one run resolved, and their redaction."""

    def __init__(self, runtime: CredentialRuntime, ctx: TenantContext, run_id: uuid.UUID,
                 node_id: str) -> None:
        self.runtime = runtime
        self.ctx = ctx
        self.run_id = run_id
        self.node_id = node_id
        # Shared with ToolContext.secrets: tools add what they derive from a value.
        self.values: list[str] = []
        self._resolved: dict[str, Resolved] = {}
        self._failures: dict[str, str] = {}
        # The last refusal (allowed hosts) per credential name, for the synchronous hooks.
        self._refusals: dict[str, str] = {}
        # Forms of each value (computed once per value), and all of them for self.values.
        self._variants: dict[str, set[str]] = {}
        self._forms_of: tuple[str, ...] = ()
        self._forms: list[str] = []
        self._needles: list[str] = []
        # The engine's prepare session while it lends it (``reading_in``), and the audit
        # entries owed for uses resolved in it (``write_owed_audit``).
        self._session: AsyncSession | None = None
        self._owed: list[OwedAudit] = []

    @contextmanager
    def reading_in(self, db: AsyncSession) -> Iterator[None]:
        """While the block runs, resolve in ``db`` (a session bound to the run's tenant that
        the caller holds, possibly read-only) and owe the audit entries instead of writing
        them: the step never asks for a second connection while holding one. The caller
        must ``write_owed_audit`` after closing ``db`` and before any resolved value is
        used."""
        self._session = db
        try:
            yield
        finally:
            self._session = None

    async def write_owed_audit(self) -> None:
        """Write the audit entries owed for uses resolved in a lent session (one short
        transaction of its own; nothing when none are owed). Must not be called while
        holding a session."""
        await self.runtime.write_owed(self.ctx, self._owed)

    def _add_secret(self, value: str) -> None:
        if value not in self.values:
            self.values.append(value)

    def secret_forms(self) -> list[str]:
        """Every form of every value to redact (``variants``), longest first. Computed once
        per value; tools may add values to ``self.values`` (``ToolContext.secrets``)."""
        values = tuple(self.values)
        if values != self._forms_of:
            for value in values:
                if value not in self._variants:
                    self._variants[value] = variants(value)
            forms = set(itertools.chain.from_iterable(self._variants[v] for v in values))
            self._forms_of = values
            self._forms = sorted(forms, key=len, reverse=True)
            self._needles = _needles(self._forms)
            _ACTIVE[id(self)] = tuple(self._forms)
        return self._forms

    async def _get(self, name: str, url: str | None = None, *,
                   host_bound: bool = False) -> Resolved:
        """Credential ``name``, resolved once per step. ``host_bound``: the value is about to
        be sent to ``url`` (None: a destination that cannot be checked); a credential whose
        allowed hosts do not match is refused (audited) with ToolError, every time."""
        resolved = self._resolved.get(name)
        owed = self._owed if self._session is not None else None
        if resolved is not None:
            if host_bound and not resolved.allows(url):
                refused = await self.runtime.refuse(self.ctx, self.run_id, self.node_id,
                                                    resolved, url, owed=owed)
                self._refusals[name] = str(refused)
                raise ToolError(str(refused))
            return resolved
        if name not in self._failures:
            try:
                resolved = await self.runtime.use(self.ctx, self.run_id, self.node_id, name,
                                                  url=url, host_bound=host_bound,
                                                  session=self._session, owed=owed)
            except CredentialNotFound:
                self._failures[name] = f"no credential named '{name}' in this organization"
            except CredentialUnusable as exc:
                self._failures[name] = str(exc)
            except CredentialRefused as exc:
                self._refusals[name] = str(exc)
                raise ToolError(str(exc)) from None
            else:
                self._resolved[name] = resolved
                for value in resolved.values.values():
                    self._add_secret(value)
                if resolved.kind == "basic_auth":  # as sent in an Authorization header
                    values = resolved.values
                    self._add_secret(f"{values.get('username', '')}:"
                                     f"{values.get('password', '')}")
                self.secret_forms()
                return resolved
        raise ToolError(self._failures[name])

    async def render_arguments(self, arguments: dict[str, Any], state: Mapping[str, Any], *,
                               tool: str | None = None) -> dict[str, Any]:
        """``render_value(arguments, state)`` with the package's own
        ``{{credentials.NAME.FIELD}}`` placeholders filled in, for a node calling ``tool``.
        Raises ToolError (safe to store) for an unknown credential or field, and for a
        credential with allowed hosts unless ``tool`` is ``http_request`` and its rendered
        ``url`` has an allowed host (checked before decrypting, and again on the final URL)."""
        found: dict[tuple[str, str], str] = {}
        marker = f"@@enginex-credential-{secrets.token_hex(12)}-"

        def mark(value: Any) -> Any:
            if isinstance(value, str):
                def sub(match: re.Match[str]) -> str:
                    ref = (match.group(1), match.group(2))
                    found.setdefault(ref, f"{marker}{len(found)}@@")
                    return found[ref]
                return placeholders.PLACEHOLDER.sub(sub, value)
            if isinstance(value, Mapping):
                return {k: mark(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [mark(v) for v in value]
            return value

        marked = mark(arguments)
        if not found:
            return render_value(arguments, state)
        rendered = render_value(marked, state)
        if tool == HTTP_REQUEST:
            _refuse_misplaced(rendered, marker, found)
        url = _request_url(rendered) if tool == HTTP_REQUEST else None
        fills: dict[str, str] = {}
        for (name, field), token in found.items():
            resolved = await self._get(name, url, host_bound=True)
            usable = KINDS[resolved.kind].usable
            if field not in resolved.values or (usable is not None and field not in usable):
                names = usable if usable is not None else sorted(resolved.values)
                raise ToolError(f"the credential '{name}' has no field '{field}' a tool may use "
                                f"(use one of: {', '.join(names)})")
            fills[token] = resolved.values[field]

        def fill(value: Any) -> Any:
            if isinstance(value, str):
                for token, secret in fills.items():
                    value = value.replace(token, secret)
                return value
            if isinstance(value, Mapping):
                return {k: fill(v) for k, v in value.items()}
            if isinstance(value, list):
                return [fill(v) for v in value]
            return value

        filled: dict[str, Any] = fill(rendered)
        if url is not None:
            # A value filled into the URL's authority changes the host: check the real one.
            final_url = _request_url(filled)
            for name in dict.fromkeys(name for name, _field in found):
                await self._get(name, final_url, host_bound=True)
        return filled

    async def prepare(self, arguments: Mapping[str, Any]) -> None:
        """Load the credential named by a tool call's ``credential`` argument, if any, so that
        ``resolve`` can answer synchronously, checking its allowed hosts against the call's
        ``url`` (a refusal is audited here). Failures surface from ``check_host`` and
        ``resolve``."""
        name = arguments.get("credential") if isinstance(arguments, Mapping) else None
        if isinstance(name, str) and name:
            try:
                await self._get(name, _request_url(arguments), host_bound=True)
            except ToolError:
                pass

    def check_host(self, name: str, url: str) -> None:
        """``ToolContext.check_credential_host``: raise ToolError unless the credential
        ``prepare`` loaded may be sent to ``url`` (``http_request`` calls it before the
        request and for every redirect hop that keeps the credential). LookupError if it
        was not loaded."""
        if name in self._failures:
            raise ToolError(self._failures[name])
        resolved = self._resolved.get(name)
        if resolved is None:
            if name in self._refusals:
                raise ToolError(self._refusals[name])
            raise LookupError(name)
        if not resolved.allows(url):
            raise ToolError(hosts.refusal_message(name, url))

    def resolve(self, name: str, header: str) -> str:
        """``ToolContext.resolve_credential``: the value of ``header`` for a credential
        ``prepare`` loaded. LookupError if it was not, ToolError if it is unusable or its
        use was refused (allowed hosts)."""
        if name in self._failures:
            raise ToolError(self._failures[name])
        resolved = self._resolved.get(name)
        if resolved is None:
            if name in self._refusals:
                raise ToolError(self._refusals[name])
            raise LookupError(name)
        value = header_value(resolved, header)
        self._add_secret(value)
        self.secret_forms()
        return value

    async def credential(self, name: str, *, url: str | None) -> Resolved:
        """Credential ``name`` of the run's organization for a use other than a tool argument
        (an LLM provider's key, an MCP server's header or environment): resolved once per
        step, audited as ``credential.used`` (run, node) and redacted from everything the
        step stores. ``url``: where the value is sent (the provider's base URL, the MCP
        server's URL), checked against the credential's allowed hosts; None only for a use
        that is not sent to a host (a stdio MCP server's environment). Raises ToolError (safe
        to store) when it is missing, unusable or refused."""
        return await self._get(name, url, host_bound=url is not None)

    async def note_llm_key_use(self) -> None:
        """An LLM step uses the organization's provider key: audit it (``llm_settings.
        key_used``: run, node) and redact the key from what the step stores. Inside
        ``reading_in`` the key is read in the lent session and the entry is owed; otherwise
        both happen in a short transaction of its own."""
        box = self.runtime.llm_key_box
        if box is None:
            return
        from enginex.llm.service import KeyDecryptionError, get_llm_settings

        async with self.runtime.session_for(self.ctx, self._session) as db:
            row = await get_llm_settings(db, self.ctx)
            if row is None or row.provider == "scripted" or row.api_key_ciphertext is None:
                return
            try:
                self._add_secret(await box.open(db, self.ctx.org_id, row.api_key_ciphertext))
            except KeyDecryptionError:
                return  # the provider reports it as the step's error
            self.secret_forms()
            use = OwedAudit("llm_settings.key_used", "llm_settings", self.ctx.org_id,
                            {"run_id": str(self.run_id), "node_id": self.node_id})
            if self._session is not None:
                self._owed.append(use)
                return
            await use.write(db, self.ctx)
            await db.commit()

    def redact(self, value: T) -> T:
        """A copy of ``value`` without any form of the step's secrets (``redact``)."""
        self.secret_forms()
        return _redact(value, self._needles) if self._needles else value

    def close(self) -> None:
        """Forget the step's plaintext (and stop redacting it from logs)."""
        _ACTIVE.pop(id(self), None)
        self._resolved.clear()
        self._refusals.clear()
        self.values.clear()
        self._variants.clear()
        self._forms_of, self._forms, self._needles = (), [], []
