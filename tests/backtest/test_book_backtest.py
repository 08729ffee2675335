"""The book rule through the engine on real bars: invested when the model has views, within
the caps, buying only the day's best-predicted names and selling at rebalances only on due
sessions. The predictions are a plain 20-session return (no model: the rule is under test)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

from app.backtest.engine import run_backtest
from app.backtest.results import BacktestConfig
from app.backtest.window import load_bars
from app.domain import BarFrame, Signal, SignalAction
from app.market.sources import CsvMarketData
from app.trading.book import rebalance_due
from app.trading.risk import RiskLimits
from app.trading.strategy import StrategyConfig
from tests.support import SHARED_DATA

#: The watchlist's stocks: 7 held of 31, so names do fall out of the best 14.
SYMBOLS = tuple(sorted(p.stem for p in SHARED_DATA.glob("*.csv") if p.stem != "SPY"))
START, END = date(2019, 1, 2), date(2019, 12, 31)
EVERY = 5


def predictions(bars: Mapping[str, BarFrame], session: date) -> dict[str, Signal]:
    """The return of the last 20 sessions, as the day's prediction of every symbol."""
    out = {}
    for symbol in SYMBOLS:
        close = bars[symbol]["close"]
        if len(close) > 20:
            predicted = float(close.iloc[-1] / close.iloc[-21] - 1.0)
            out[symbol] = Signal(symbol, SignalAction.HOLD, predicted, 0.5, 0.01, "r20")
    return out


def test_the_book_is_invested_in_the_best_predicted_names_within_the_caps() -> None:
    bars = load_bars(CsvMarketData(SHARED_DATA), SYMBOLS, date(2018, 6, 1), END)
    config = BacktestConfig(
        symbols=SYMBOLS,
        start=START,
        end=END,
        strategy=StrategyConfig(portfolio="book", entry_top_k=7, rebalance_every=EVERY),
    )
    seen: dict[date, dict[str, Signal]] = {}

    def signal_fn(window: Mapping[str, BarFrame], session: date) -> dict[str, Signal]:
        seen[session] = predictions(window, session)
        return seen[session]

    result = run_backtest(bars, config, signal_fn)
    limits = RiskLimits()
    days = result.days
    assert sum(d.exposure for d in days) / len(days) >= 0.5
    assert max(d.positions for d in days) <= limits.max_positions
    assert all(d.planned_exposure is None or d.planned_exposure <= 0.8 + 1e-9 for d in days)
    decided = [o for o in result.orders if o.kind == "decision"]
    buys = [o for o in decided if o.side == "buy"]
    assert buys
    for order in buys:
        day = seen[order.session]
        best = sorted(day, key=lambda s: (-day[s].predicted_return, s))[:7]
        assert order.symbol in best
        assert day[order.symbol].predicted_return > 0
    rebalances = [o for o in decided if o.side == "sell" and o.reason_kind == "rebalance"]
    assert rebalances  # the rule did sell fallen names
    for order in rebalances:
        assert rebalance_due(order.session, EVERY)
        day = seen[order.session]
        best = sorted(day, key=lambda s: (-day[s].predicted_return, s))[:14]
        assert order.symbol not in best
    assert not [o for o in decided if o.side == "sell" and o.reason_kind == "signal_sell"]
