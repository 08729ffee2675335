"""Latest prices and daily bars."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from marshmallow import RAISE

from app.api.blueprint import Blueprint
from app.api.schemas import BarsQuerySchema, BarsSchema, PriceSchema
from app.api.symbols import known_symbol
from app.container import services
from app.errors import ValidationError

blp = Blueprint("market", __name__, url_prefix="/api", description="Market data")


@blp.route("/price/<symbol:symbol>")
@blp.response(200, PriceSchema)
def price(symbol: str) -> dict[str, Any]:
    symbol = known_symbol(symbol)
    svc = services()

    def fetch() -> dict[str, Any]:
        return {
            "symbol": symbol,
            "price": svc.venue.latest_price(symbol),
            "as_of": svc.venue.today().isoformat(),
        }

    result = svc.cache.get_or_compute(f"price:{symbol}", svc.settings.api_cache_seconds, fetch)
    return dict(result)


@blp.route("/market/bars/<symbol:symbol>")
@blp.arguments(BarsQuerySchema, location="query", error_status_code=400, unknown=RAISE)
@blp.response(200, BarsSchema)
def bars(query: dict[str, Any], symbol: str) -> dict[str, Any]:
    symbol = known_symbol(symbol)
    svc = services()
    limit: int = query["limit"]
    end: date = min(query.get("end") or svc.venue.today(), svc.venue.today())
    start: date = query.get("start") or end - timedelta(days=int(limit * 1.5) + 10)
    if start > end:
        raise ValidationError("must not be after end", field="start")

    def fetch() -> dict[str, Any]:
        frame = svc.venue.market.get_daily_bars([symbol], start, end)[symbol].tail(limit)
        rows = [
            {"date": ts.date().isoformat(), **{k: float(v) for k, v in row.items()}}
            for ts, row in frame.iterrows()
        ]
        return {"symbol": symbol, "bars": rows}

    key = f"bars:{symbol}:{start}:{end}:{limit}"
    return dict(svc.cache.get_or_compute(key, svc.settings.api_cache_seconds, fetch))
