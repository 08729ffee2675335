"""Strict marshmallow fields for JSON bodies, a bounded date for every date parameter and the
symbol field.

marshmallow coerces by default: 5.5 becomes the integer 5, the string "1e5" a number and 0 the
boolean false. A trading API must not guess what a client meant, so JSON bodies take only the
JSON type a field documents. Dates and symbols carry their rule in the OpenAPI spec as a
pattern and lengths, and the server checks exactly that rule, so the spec and the API agree.
"""

from __future__ import annotations

import math
import re
from datetime import date
from typing import Any

from marshmallow import ValidationError, fields, validate

from app.api.edges import OversizedInteger

#: Outside this window there is no market data, and pandas timestamps end in 1677 and 2262.
EARLIEST_DATE = date(1970, 1, 1)
LATEST_DATE = date(2200, 12, 31)
#: YYYY-MM-DD with a year from 1970 to 2200: OpenAPI 3.0 has no bounds for a date string.
DATE_PATTERN = r"^(19[7-9][0-9]|2[01][0-9]{2}|2200)-[0-9]{2}-[0-9]{2}$"
#: 1-10 letters, digits or dots, starting with a letter (app/market/symbols.py, any case).
SYMBOL_PATTERN = r"^[A-Za-z][A-Za-z0-9.]{0,9}$"
SYMBOL_MAX_LENGTH = 10
SYMBOL_RULE = "must be 1-10 letters, digits or dots, starting with a letter"
#: A symbol in a path, query or body, as the spec documents it.
SYMBOL_SCHEMA = {
    "type": "string",
    "pattern": SYMBOL_PATTERN,
    "minLength": 1,
    "maxLength": SYMBOL_MAX_LENGTH,
}

_TOO_LONG = "Not a valid number: a JSON integer of {digits} digits."


class FullMatch(validate.Regexp):
    """Regexp matching the whole value: `$` alone lets "AAPL\n" through, the spec's `$` not."""

    def __call__(self, value: Any) -> Any:
        if not isinstance(value, str) or re.fullmatch(str(self.regex.pattern), value) is None:
            raise ValidationError(self._format_error(value))
        return value


def is_symbol(value: str) -> bool:
    return re.fullmatch(SYMBOL_PATTERN, value) is not None


def Symbol(**kwargs: Any) -> fields.String:  # noqa: N802 - reads like a field class
    """A ticker symbol, any case; its pattern and lengths reach the spec."""
    return fields.String(
        validate=[
            FullMatch(SYMBOL_PATTERN, error=SYMBOL_RULE),
            validate.Length(min=1, max=SYMBOL_MAX_LENGTH),
        ],
        **kwargs,
    )


class StrictInteger(fields.Integer):
    """A JSON integer: not a float (even 5.0), a string or a boolean."""

    default_error_messages = {
        "invalid": "Not a valid integer: give a JSON integer.",
        "too_long": _TOO_LONG,
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, OversizedInteger):
            raise self.make_error("too_long", digits=value.digits)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return int(super()._deserialize(value, attr, data, **kwargs))


class StrictFloat(fields.Float):
    """A finite JSON number: not a string or a boolean."""

    default_error_messages = {
        "invalid": "Not a valid number: give a finite JSON number.",
        "too_long": _TOO_LONG,
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, OversizedInteger):
            raise self.make_error("too_long", digits=value.digits)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        if not math.isfinite(value):
            raise self.make_error("invalid")
        return float(super()._deserialize(value, attr, data, **kwargs))


class StrictBoolean(fields.Boolean):
    """JSON true or false only: not 0, 1 or "yes"."""

    default_error_messages = {"invalid": "Not a valid boolean: give true or false."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class BoundedDate(fields.Date):
    """A calendar date, YYYY-MM-DD only, inside the window any market data can have.

    Python's `date.fromisoformat` also takes "20200105" and "2020-W01-1", which the spec's
    `format: date` does not: the pattern is checked first, so the API takes what the spec says.
    """

    default_error_messages = {
        "bounds": f"Not a valid date: give YYYY-MM-DD between {EARLIEST_DATE} and {LATEST_DATE}."
    }

    def __init__(self, **kwargs: Any) -> None:
        metadata = {"pattern": DATE_PATTERN, **kwargs.pop("metadata", {})}
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> date:
        if not isinstance(value, str) or re.fullmatch(DATE_PATTERN, value) is None:
            raise self.make_error("bounds")
        return super()._deserialize(value, attr, data, **kwargs)
