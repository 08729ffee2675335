"""The symbol in a route's path: well-formed (400 otherwise) and listed by the venue (404)."""

from __future__ import annotations

from app.api.fields import SYMBOL_RULE, is_symbol
from app.container import services
from app.errors import NotFoundError, ValidationError
from app.market.symbols import parse_symbol

#: Listings change rarely; an hour spares the broker one asset lookup per request.
KNOWN_SYMBOL_CACHE_SECONDS = 3600.0


def known_symbol(raw: str) -> str:
    """The normalised symbol, or a 404 naming it when the venue does not list it: a typo
    must not read as "no bars" or "no prediction". Whitespace is refused, as the spec says."""
    if not is_symbol(raw):
        raise ValidationError(SYMBOL_RULE, field="symbol")
    symbol = parse_symbol(raw)
    svc = services()
    listed = svc.cache.get_or_compute(
        f"known-symbol:{svc.venue.name}:{symbol}",
        KNOWN_SYMBOL_CACHE_SECONDS,
        lambda: {"known": svc.venue.knows_symbol(symbol)},
    )
    if not listed["known"]:
        raise NotFoundError(f"unknown symbol {symbol!r}", field="symbol")
    return symbol
