"""Strict marshmallow fields for JSON bodies and a bounded date for every date parameter.

marshmallow coerces by default: 5.5 becomes the integer 5, the string "1e5" a number and 0 the
boolean false. A trading API must not guess what a client meant, so JSON bodies take only the
JSON type a field documents.
"""

from __future__ import annotations

import math
from datetime import date
from typing import Any

from marshmallow import fields, validate

#: Outside this window there is no market data, and pandas timestamps end in 1677 and 2262.
EARLIEST_DATE = date(1970, 1, 1)
LATEST_DATE = date(2200, 12, 31)


class StrictInteger(fields.Integer):
    """A JSON integer: not a float (even 5.0), a string or a boolean."""

    default_error_messages = {"invalid": "Not a valid integer: give a JSON integer."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return int(super()._deserialize(value, attr, data, **kwargs))


class StrictFloat(fields.Float):
    """A finite JSON number: not a string or a boolean."""

    default_error_messages = {"invalid": "Not a valid number: give a finite JSON number."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
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


def BoundedDate(**kwargs: Any) -> fields.Date:  # noqa: N802 - reads like a field class
    """A calendar date inside the window any market data can have."""
    return fields.Date(
        validate=validate.Range(
            min=EARLIEST_DATE,
            max=LATEST_DATE,
            error=f"must be between {EARLIEST_DATE} and {LATEST_DATE}",
        ),
        **kwargs,
    )
