"""The API's edges: what a request body must be before any view sees it, and the headers every
answer carries.

Bodies are JSON or nothing: a body of another type is refused (415) instead of being ignored in
favour of defaults, an empty body where one is required is a 400, a chunked body over
MAX_CONTENT_LENGTH is a 413 like a sized one, and JSON nested deeper than MAX_JSON_DEPTH is a
400 before anything recurses into it.

Every reader of a body (Flask's `request.get_json`, the webargs parser of app/api/blueprint.py)
goes through `loads`, where no JSON text can make a 500: an integer longer than Python converts
becomes an `OversizedInteger` the field it was sent for refuses by name, and a lone surrogate
(which no database or log can encode) becomes U+FFFD.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, Response, current_app, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from app.errors import ValidationError
from app.store.text import storable

#: No request of this API nests deeper than 4; 32 leaves room and stops stack exhaustion.
MAX_JSON_DEPTH = 32
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class OversizedInteger:
    """A JSON integer with more digits than Python converts to an int (4300 by default)."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<integer of {self.digits} digits>"


def _parse_int(text: str) -> int | OversizedInteger:
    try:
        return int(text)
    except ValueError:
        return OversizedInteger(len(text.lstrip("-")))


def _encodable(value: Any) -> Any:
    """Lone surrogates (valid JSON escapes, invalid Unicode) replaced by U+FFFD."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list):
        return [_encodable(item) for item in value]
    if isinstance(value, dict):
        return {_encodable(key): _encodable(item) for key, item in value.items()}
    return value


def loads(text: str | bytes) -> Any:
    """JSON as every reader of a request body gets it; malformed or hostile JSON raises
    ValueError (json.JSONDecodeError when it is not JSON)."""
    try:
        return _encodable(json.loads(text, parse_int=_parse_int))
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None


class SafeJSONProvider(DefaultJSONProvider):
    """Flask's JSON, read through `loads`."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s)


def register_edges(app: Flask) -> None:
    app.json = SafeJSONProvider(app)
    app.before_request(check_body)
    app.after_request(add_headers)


def check_body() -> None:
    if request.method not in BODY_METHODS or request.routing_exception is not None:
        return
    data = _read_body()
    if not data:
        if _requires_json_body():
            raise ValidationError("a JSON body is required", field="body")
        return
    if not request.is_json:
        raise UnsupportedMediaType(
            f"the body must be JSON with Content-Type: application/json, "
            f"not {request.mimetype or 'none'!r}"
        )
    try:
        parsed = json.loads(data, parse_int=_parse_int)
    except RecursionError:
        raise ValidationError(
            f"JSON nested deeper than {MAX_JSON_DEPTH} levels", field="body"
        ) from None
    except ValueError:
        return  # webargs answers malformed JSON in the one error shape
    if json_depth(parsed) > MAX_JSON_DEPTH:
        raise ValidationError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", field="body")


def _read_body() -> bytes:
    """The body, read once and cached; a chunked one is cut off at the limit with a 413."""
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if request.content_length is None and limit is not None:
        # werkzeug's stream raises 413 when a read goes past the limit; read it all here so
        # that no later reader (webargs) turns the 413 into "invalid JSON".
        raw = request.stream.read()
        if len(raw) >= limit:
            raise RequestEntityTooLarge()
        request._cached_data = raw  # get_data(cache=True) returns it from here
        return raw
    return request.get_data(cache=True)


def json_depth(value: Any) -> int:
    """Nesting depth without recursion (the point is to survive hostile input)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                return depth
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _requires_json_body() -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    doc = getattr(view, "_apidoc", {}).get("arguments", {})
    return any(
        p.get("in") == "json" and p.get("required")
        for p in doc.get("parameters", [])
        if isinstance(p, dict)
    )


def add_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/api/"):
        # tokens and account data must not be kept by browsers or proxies
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
    if request.method == "OPTIONS" and response.status_code == 200 and not response.get_data():
        response.status_code = 204  # Flask's default answer: just the Allow header
        del response.headers["Content-Type"]
    return response
