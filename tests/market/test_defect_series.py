"""Nothing learns from or trades on a reused ticker's other security: the feature rows, the
training pool and a backtest holding TIE, CBE or GDW stop before their series' break."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from app.ai.features import LABEL_COLUMN, LABEL_END_COLUMN, build_features
from app.backtest.engine import run_backtest
from app.backtest.requests import BacktestRequest, run_request
from app.backtest.results import BacktestConfig
from app.backtest.window import load_bars
from app.config import load_settings
from app.domain import BarFrame, Signal, SignalAction
from app.market.calendar import DateLike
from app.market.sources import CsvMarketData
from app.market.universe import resolve_universe
from tests.fakes.broad import BROAD_DATA, HOLD_TILL_BARS_END

#: Where validation ends each series (the data's README names later dates still).
BREAKS = {"CBE": date(2004, 1, 5), "GDW": date(2014, 10, 27), "TIE": date(2010, 2, 22)}


@pytest.fixture(scope="module")
def market() -> CsvMarketData:
    return CsvMarketData(BROAD_DATA)


def test_no_feature_row_or_training_label_reaches_a_break(market: CsvMarketData) -> None:
    bars = load_bars(market, [*BREAKS, "AAPL", "MSFT", "KO"], date(2003, 1, 2), date(2021, 12, 31))
    features = build_features(bars, bars["SPY"], horizon=5, normalisation="excess")
    # The pool a model trained on the close of 2021-12-31 learns from: every known label.
    pool = features[features[LABEL_COLUMN].notna()]
    symbols = features.index.get_level_values("symbol")
    for symbol, brk in BREAKS.items():
        rows = features[symbols == symbol]
        labelled = pool[pool.index.get_level_values("symbol") == symbol]
        assert (rows.index.get_level_values("date") < pd.Timestamp(brk)).all(), symbol
        assert (labelled[LABEL_END_COLUMN] < pd.Timestamp(brk)).all(), symbol
    assert "CBE" not in set(symbols)  # one bar before its break: never a feature row
    assert len(features[symbols == "TIE"]) > 1000  # its real 2004-2010 history is used


class BuyTie:
    """BUY TIE on the first session, nothing after: the holding lives to the end of its bars."""

    def __init__(self) -> None:
        self.first: date | None = None

    def __call__(self, bars: Mapping[str, BarFrame], session: date) -> dict[str, Signal]:
        self.first = self.first or session
        if session != self.first:
            return {}
        return {"TIE": Signal("TIE", SignalAction.BUY, 0.01, 1.0, 0.0, "test")}


def test_a_backtest_holding_a_reused_ticker_never_prices_it_past_the_break(
    market: CsvMarketData,
) -> None:
    bars = load_bars(market, ["TIE", "AAPL"], date(2009, 6, 1), date(2010, 6, 30))
    good = bars["TIE"]
    assert good.index[-1] < pd.Timestamp(BREAKS["TIE"])
    config = BacktestConfig(
        symbols=("TIE", "AAPL"),
        start=date(2009, 9, 1),
        end=date(2010, 6, 30),
        limits=HOLD_TILL_BARS_END,
    )
    result = run_backtest(bars, config, BuyTie())
    fills = [o for o in result.orders if o.symbol == "TIE" and o.fill_price is not None]
    trades = [t for t in result.trades if t.symbol == "TIE"]
    assert fills
    assert trades
    prices = [o.fill_price for o in fills] + [t.exit_price for t in trades]
    top = float(good["high"].max())
    assert all(price is not None and price <= top * 1.01 for price in prices)  # not 22 900
    assert max(d.equity for d in result.days) < 1.5 * config.initial_capital


def test_a_universe_run_trades_its_stocks_and_loads_its_etfs(
    tmp_path: Path, market: CsvMarketData
) -> None:
    seen: list[str] = []

    class Recording(CsvMarketData):
        def get_daily_bars(
            self, symbols: Sequence[str], start: DateLike, end: DateLike
        ) -> dict[str, BarFrame]:
            seen.extend(symbols)
            return super().get_daily_bars(symbols, start, end)

    path = tmp_path / "mine.txt"
    path.write_text("TIE\nAAPL\nMSFT\nXLK\n")
    settings = load_settings({"UNIVERSE": str(path)})
    source = Recording(BROAD_DATA)
    chosen = resolve_universe(settings.universe, settings.watchlist, source)
    request = BacktestRequest(
        symbols=chosen.tradable,
        feature_symbols=chosen.feature_only,
        start=date(2009, 9, 1),
        end=date(2010, 6, 30),
        model="sma_cross",
    )
    result = run_request(request, settings, source)
    assert result.config.symbols == ("TIE", "AAPL", "MSFT")
    assert {"XLK", "SPY"} <= set(seen)
    assert {o.symbol for o in result.orders} <= {"TIE", "AAPL", "MSFT"}
    tie = [o.fill_price for o in result.orders if o.symbol == "TIE" and o.fill_price]
    assert all(price < 100 for price in tie)
