"""Path converters whose rule reaches the OpenAPI spec.

`symbol` matches any segment (the view answers a malformed symbol with a 400 naming it) but is
documented with the symbol pattern and lengths. `task_id` never matches the static sibling of
its route (`/api/backtest/run`, `/api/tasks/ping`): without that, werkzeug counted the GET of
`/<task_id>` among the methods of those paths, so OPTIONS advertised GET and a GET was a 404.
"""

from __future__ import annotations

import re
from typing import Any

from werkzeug.routing import BaseConverter, Map

from app.api.fields import SYMBOL_SCHEMA


class SymbolConverter(BaseConverter):
    pass


class TaskIdConverter(BaseConverter):
    """`<task_id("run"):task_id>`: any segment except the words given."""

    def __init__(self, map: Map, *reserved: str) -> None:
        super().__init__(map)
        self.reserved = reserved
        words = "|".join(re.escape(word) for word in reserved)
        self.regex = f"(?!(?:{words})$)[^/]+" if reserved else "[^/]+"


def symbol_schema(_converter: SymbolConverter) -> dict[str, Any]:
    return dict(SYMBOL_SCHEMA)


def task_id_schema(converter: TaskIdConverter) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if converter.reserved:
        schema["not"] = {"enum": list(converter.reserved)}
    return schema


CONVERTERS = {
    "symbol": (SymbolConverter, symbol_schema),
    "task_id": (TaskIdConverter, task_id_schema),
}
