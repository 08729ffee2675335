"""The symbol rule the API and the CLI share: 1-10 letters, digits or dots, starting with a
letter."""

from __future__ import annotations

import re

from app.errors import ValidationError

SYMBOL = re.compile(r"^[A-Z][A-Z0-9.]{0,9}$")


def parse_symbol(raw: str) -> str:
    symbol = raw.strip().upper()
    if not SYMBOL.match(symbol):
        raise ValidationError(
            "must be 1-10 letters, digits or dots, starting with a letter", field="symbol"
        )
    return symbol
