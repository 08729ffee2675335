"""`model="momentum"` runs the 12-1 rule through the engine, costs and risk limits of every
other model: on a month's first session it buys what 12-1 momentum ranks top (computed here
from the CSVs, independently of MomentumSignals), and a bad option is refused naming it."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from app.backtest.requests import BacktestRequest, run_request
from app.config import load_settings
from app.errors import ValidationError
from app.market.sources import CsvMarketData
from tests.support import SHARED_DATA

SYMBOLS = ("AAPL", "KO", "XOM", "JPM", "MSFT", "PG", "INTC", "T")


def top_by_12_1(symbols: tuple[str, ...], session: date, k: int) -> set[str]:
    """The k best closes 21 sessions back over closes 252 sessions back."""
    scores = {}
    for symbol in symbols:
        close = pd.read_csv(SHARED_DATA / f"{symbol}.csv", index_col=0, parse_dates=True)["close"]
        at = close.index.get_loc(pd.Timestamp(session))
        scores[symbol] = close.iloc[at - 21] / close.iloc[at - 252] - 1.0
    return set(sorted(scores, key=lambda s: -scores[s])[:k])


def test_a_momentum_backtest_buys_what_momentum_ranks_top() -> None:
    request = BacktestRequest(
        symbols=SYMBOLS,
        start=date(2019, 1, 2),
        end=date(2019, 3, 29),
        model="momentum",
        momentum_top_k=3,
    )
    result = run_request(request, load_settings(), CsvMarketData(SHARED_DATA))
    assert result.model["kind"] == "momentum"
    assert (result.model["lookback"], result.model["skip"], result.model["top_k"]) == (252, 21, 3)
    assert result.config.strategy.entry_top_k == 3
    decided = [o for o in result.orders if o.kind == "decision"]
    assert {o.session for o in decided} <= {date(2019, 1, 2), date(2019, 2, 1), date(2019, 3, 1)}
    first = {o.symbol for o in decided if o.session == date(2019, 1, 2) and o.side == "buy"}
    assert first == top_by_12_1(SYMBOLS, date(2019, 1, 2), 3)
    assert all(o.fill_date == date(2019, 1, 3) for o in decided if o.session == date(2019, 1, 2))
    for month_start in (date(2019, 2, 1), date(2019, 3, 1)):
        top = top_by_12_1(SYMBOLS, month_start, 3)
        orders = [o for o in decided if o.session == month_start]
        assert {o.symbol for o in orders if o.side == "buy"} <= top
        assert not {o.symbol for o in orders if o.side == "sell"} & top


def test_top_k_defaults_to_the_position_cap() -> None:
    request = BacktestRequest(
        symbols=SYMBOLS, start=date(2019, 1, 2), end=date(2019, 1, 10), model="momentum"
    )
    settings = load_settings({"RISK_MAX_POSITIONS": 5})
    result = run_request(request, settings, CsvMarketData(SHARED_DATA))
    assert result.model["top_k"] == 5
    buys = {o.symbol for o in result.orders if o.kind == "decision" and o.side == "buy"}
    assert buys == top_by_12_1(SYMBOLS, date(2019, 1, 2), 5)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"momentum_lookback": 1}, "momentum_lookback"),
        ({"momentum_skip": -1}, "momentum_skip"),
        ({"momentum_skip": 252}, "momentum_skip"),
        ({"momentum_lookback": 20}, "momentum_lookback"),  # below the default skip of 21
        ({"momentum_top_k": 0}, "momentum_top_k"),
        ({"model": "sma_cross", "momentum_top_k": 3}, "momentum_top_k"),
    ],
)
def test_bad_momentum_options_are_refused_naming_the_field(
    options: dict[str, object], field: str
) -> None:
    request = BacktestRequest(
        symbols=SYMBOLS,
        start=date(2019, 1, 2),
        end=date(2019, 3, 29),
        **{"model": "momentum", **options},  # type: ignore[arg-type]
    )
    with pytest.raises(ValidationError) as error:
        request.check()
    assert error.value.field == field
    assert field in error.value.message
