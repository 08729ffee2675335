"""Logging: plain lines by default, one JSON object per line with LOG_JSON=true.

A filter masks anything that looks like a secret, so a careless log call cannot leak a key.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

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


def configure_logging(level: str, *, json_format: bool) -> None:
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_alpha", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._alpha = True  # type: ignore[attr-defined]
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
    handler.setFormatter(
        JsonFormatter()
        if json_format
        else logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s")
    )
    root.setLevel(level)
