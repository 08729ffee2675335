"""Logging: plain lines by default, one JSON object per line with LOG_JSON=true.

A filter masks anything that looks like a secret, so a careless log call cannot leak a key.
Another stamps every record with the id of the trading cycle it was logged in (a contextvar
set by `cycle_context`), so one cycle's lines can be found among the workers' output.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

PLAIN_FORMAT = "%(asctime)s %(levelname)s [%(name)s]%(cycle)s %(message)s"

_cycle_id: ContextVar[str | None] = ContextVar("cycle_id", default=None)

_SECRET_PATTERNS = (
    (re.compile(r"(?i)(authorization:\s*bearer\s+)[A-Za-z0-9._\-]+"), r"\1***"),
    (
        re.compile(r"(?i)((?:api[_-]?key|secret|password|token)[\"']?\s*[=:]\s*[\"']?)[^\s\"',&]+"),
        r"\1***",
    ),
    (re.compile(r"(https://discord(?:app)?\.com/api/webhooks/)[^\s\"']+"), r"\1***"),
    (re.compile(r"(://[^:/\s]+:)[^@/\s]+@"), r"\1***@"),
)


def redact(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def current_cycle_id() -> str | None:
    return _cycle_id.get()


@contextmanager
def cycle_context(cycle_id: str | None = None) -> Iterator[str]:
    """Tag every record logged inside the block (this thread or task) with a cycle id."""
    value = cycle_id or uuid.uuid4().hex[:12]
    token = _cycle_id.set(value)
    try:
        yield value
    finally:
        _cycle_id.reset(token)


class CycleIdFilter(logging.Filter):
    """Sets `record.cycle_id` (JSON field) and `record.cycle` (" [cycle=...]" or "")."""

    def filter(self, record: logging.LogRecord) -> bool:
        cycle_id = getattr(record, "cycle_id", None) or _cycle_id.get()
        record.cycle_id = cycle_id
        record.cycle = f" [cycle={cycle_id}]" if cycle_id else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        cycle_id = getattr(record, "cycle_id", None)
        if cycle_id:
            entry["cycle_id"] = cycle_id
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry)


class PlainFormatter(logging.Formatter):
    """The plain line format; tracebacks are redacted too (the filter sees only the message)."""

    def __init__(self) -> None:
        super().__init__(PLAIN_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "cycle"):  # a record that skipped the handler's filters
            record.cycle = ""
        return redact(super().format(record))


def configure_logging(level: str | int, *, json_format: bool) -> None:
    root = logging.getLogger()
    handler = app_handler()
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._alpha = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for kind in (RedactingFilter, CycleIdFilter):
        if not any(isinstance(f, kind) for f in handler.filters):
            handler.addFilter(kind())
    handler.setFormatter(JsonFormatter() if json_format else PlainFormatter())
    root.setLevel(level)


def app_handler() -> logging.Handler | None:
    """The root handler configure_logging installed, if any."""
    return next((h for h in logging.getLogger().handlers if getattr(h, "_alpha", False)), None)
