"""One JSON error shape for every error: {"error": {"code": ..., "message": ...}}.

Never an HTML page, never a stack trace: unexpected exceptions are logged with their trace
and answered with a generic 500.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from app.errors import AppError

log = logging.getLogger(__name__)

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}


def error_response(
    status: int, message: str, code: str | None = None, **extra: Any
) -> tuple[Response, int]:
    body: dict[str, Any] = {"code": code or CODES.get(status, "error"), "message": message}
    body.update({k: v for k, v in extra.items() if v is not None})
    return jsonify(error=body), status


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(AppError, _app_error)
    app.register_error_handler(Exception, _unexpected_error)


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    status = exc.code or 500
    data = getattr(exc, "data", None) or {}
    messages = data.get("messages")
    if messages:
        fields = _flatten(messages)
        summary = "; ".join(f"{name}: {' '.join(errs)}" for name, errs in fields.items())
        response, status = error_response(
            status,
            f"invalid request: {summary}",
            "bad_request" if status == 400 else "validation_error",
            fields=fields,
        )
    else:
        message = data.get("message") or exc.description or CODES.get(status, "error")
        response, status = error_response(status, str(message))
    for key, value in (exc.get_response().headers if status in (405, 429) else {}).items():
        if key.lower() in {"allow", "retry-after"} or key.lower().startswith("x-ratelimit"):
            response.headers[key] = value
    return response, status


def _app_error(exc: AppError) -> tuple[Response, int]:
    if exc.status >= 500:
        log.warning("%s: %s", exc.code, exc.message)
    message = exc.message
    if exc.field and not message.startswith(exc.field):
        message = f"{exc.field}: {message}"
    return error_response(exc.status, message, exc.code, field=exc.field)


def _unexpected_error(exc: Exception) -> tuple[Response, int]:
    log.exception("unhandled error")
    return error_response(500, "internal server error")


def _flatten(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """webargs nests errors by location and field: {"json": {"qty": ["Not a number."]}}.

    Locations (json, query, ...) are dropped so the keys are the field names a client sent.
    """
    out: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = str(key)
            if not prefix and name in {"json", "query", "form", "headers", "files", "path"}:
                nested = _flatten(value, "")
                if not nested:
                    continue
                out.update(nested)
                continue
            name = prefix or "body" if name == "_schema" else f"{prefix}.{name}" if prefix else name
            out.update(_flatten(value, name) if isinstance(value, dict) else {name: _strs(value)})
    else:
        out[prefix or "body"] = _strs(messages)
    return out


def _strs(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [str(value)]
