"""Log records that say where they come from: every record carries ``tenant_id``,
``request_id`` and ``run_id`` (``-`` where unknown), in the API and the worker alike, written as
JSON lines in production and as readable lines on a terminal.

The fields travel in one ContextVar: the request middleware binds ``request_id`` around a
request, the tenant guard binds ``tenant_id`` once it has resolved the organization, and the
worker binds ``tenant_id`` and ``run_id`` around each step it executes. A filter on the one
handler stamps them on every record, whichever logger (ours, uvicorn's, SQLAlchemy's) made it.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal

FIELDS = ("tenant_id", "request_id", "run_id")
LogFormat = Literal["auto", "json", "text"]

_NONE: Mapping[str, str] = MappingProxyType({})
_bound: ContextVar[Mapping[str, str]] = ContextVar("enginex_log_fields", default=_NONE)


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Stamp ``fields`` (those not None) on every record logged inside the block."""
    token = _bound.set({**_bound.get(), **{k: str(v) for k, v in fields.items()
                                          if v is not None}})
    try:
        yield
    finally:
        _bound.reset(token)


def bind_log_fields(**fields: object) -> None:
    """Stamp ``fields`` on every later record of the current task (a request's guard knows the
    tenant only once the route's dependencies have run; the request's context ends with it)."""
    _bound.set({**_bound.get(), **{k: str(v) for k, v in fields.items() if v is not None}})


def log_fields() -> Mapping[str, str]:
    return _bound.get()


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record (a field given in ``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _bound.get()
        for name in FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, bound.get(name, "-"))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context fields, ``http``
    (the access line's method, path, status, duration) and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({name: getattr(record, name, "-") for name in FIELDS})
        http = getattr(record, "http", None)
        if http is not None:
            entry["http"] = http
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger message [tenant_id=… request_id=… run_id=…]``, the known fields only."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        known = [f"{name}={value}" for name in FIELDS
                 if (value := getattr(record, name, "-")) not in (None, "-")]
        if not known:
            return line
        head, _, tail = line.partition("\n")  # keep a traceback below the stamped line
        return f"{head} [{' '.join(known)}]" + (f"\n{tail}" if tail else "")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (a command run inside
    another program, e.g. a test, may have its stderr swapped and closed meanwhile)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always the current sys.stderr


def configure_logging(level: str = "INFO", fmt: LogFormat = "auto") -> None:
    """One handler on the root logger (stderr), stamping and formatting every record;
    ``auto`` writes JSON unless stderr is a terminal. uvicorn's loggers lose their own
    handlers and propagate here (uvicorn is started with ``log_config=None``). Like
    ``logging.basicConfig``, it leaves alone a root logger that another program configured."""
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # noise per command
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per client request
    root = logging.getLogger()
    if any(not isinstance(h, _StderrHandler) for h in root.handlers):
        return  # run inside a program that set up logging itself (a test): as basicConfig does
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = _StderrHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    for existing in list(root.handlers):  # configured again once the settings are read
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
