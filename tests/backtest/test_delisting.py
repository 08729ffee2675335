"""A holding whose symbol stops trading is sold at its last close on the next session.

Real bars of ../shared/data/broad: Aetna (AET) stopped trading in November 2018 when CVS bought
it; UNH traded on. Without the close-out the AET holding would sit in the book for ever, valued
at its last mark.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

import pytest

from app.backtest.engine import run_backtest
from app.backtest.results import BacktestConfig, BacktestResult
from app.domain import BarFrame, Signal, SignalAction
from app.market.sources import CsvMarketData
from tests.fakes.broad import BROAD_DATA, HOLD_TILL_BARS_END

START, END = date(2018, 6, 1), date(2019, 3, 29)


@pytest.fixture(scope="module")
def bars() -> dict[str, BarFrame]:
    loaded = CsvMarketData(BROAD_DATA / "daily").get_daily_bars(("AET", "UNH"), START, END)
    assert loaded["AET"].index[-1].date() < date(2018, 12, 31) < loaded["UNH"].index[-1].date()
    return loaded


class Scripted:
    """BUY both names on the first session; SELL the ones listed for a given session."""

    def __init__(self, sells: Mapping[date, tuple[str, ...]] | None = None) -> None:
        self.sells = sells or {}
        self.first: date | None = None

    def __call__(self, bars: Mapping[str, BarFrame], session: date) -> dict[str, Signal]:
        self.first = self.first or session
        if session == self.first:
            return {s: Signal(s, SignalAction.BUY, 0.01, 1.0, 0.0, "test") for s in bars}
        return {
            s: Signal(s, SignalAction.SELL, -0.01, 1.0, 0.0, "test")
            for s in self.sells.get(session, ())
        }


def run(bars: dict[str, BarFrame], signals: Scripted, *, intraday_exits: bool) -> BacktestResult:
    config = BacktestConfig(
        symbols=("AET", "UNH"),
        start=START,
        end=END,
        commission_bps=1.0,
        slippage_bps=5.0,
        limits=HOLD_TILL_BARS_END,
        intraday_exits=intraday_exits,
    )
    return run_backtest(bars, config, signals)


@pytest.mark.parametrize("intraday_exits", [False, True], ids=["decision-exits", "protective"])
def test_a_delisted_holding_is_sold_at_its_last_close_the_next_session(
    bars: dict[str, BarFrame], intraday_exits: bool
) -> None:
    result = run(bars, Scripted(), intraday_exits=intraday_exits)
    last_bar = bars["AET"].index[-1].date()
    last_close = float(bars["AET"]["close"].iloc[-1])
    next_session = result.sessions[result.sessions.index(last_bar) + 1]

    (aet,) = [t for t in result.trades if t.symbol == "AET"]
    assert (aet.exit_reason, aet.exit_date, aet.open) == ("delisted", next_session, False)
    # A market sell at the last close: the slippage and commission of any sale apply.
    assert aet.exit_price == pytest.approx(last_close * (1 - 5 / 1e4), rel=1e-12)
    (sale,) = [o for o in result.orders if o.symbol == "AET" and o.side == "sell"]
    assert (sale.kind, sale.status, sale.fill_date) == ("delisting", "filled", next_session)
    assert sale.commission == pytest.approx(aet.qty * aet.exit_price * 1e-4, rel=1e-12)
    assert str(last_bar) in sale.reason

    # From then on only UNH is held, and the equity is cash plus UNH at its close.
    unh = bars["UNH"]["close"]
    for day in result.days:
        if day.date >= next_session:
            assert day.positions == 1
    (held,) = [t for t in result.trades if t.symbol == "UNH"]
    assert held.open
    assert held.exit_price == pytest.approx(float(unh.iloc[-1]))
    final = result.days[-1]
    assert final.equity == pytest.approx(final.cash + held.qty * float(unh.iloc[-1]), rel=1e-12)


def test_a_sell_decided_on_the_last_bar_cannot_fill_and_the_delisting_still_closes(
    bars: dict[str, BarFrame],
) -> None:
    last_bar = bars["AET"].index[-1].date()
    result = run(bars, Scripted({last_bar: ("AET",)}), intraday_exits=False)

    sells = [o for o in result.orders if o.symbol == "AET" and o.side == "sell"]
    assert [(o.kind, o.status) for o in sells] == [
        ("decision", "rejected"),
        ("delisting", "filled"),
    ]
    assert "no price" in (sells[0].reject_reason or "")
    assert [t.exit_reason for t in result.trades if t.symbol == "AET"] == ["delisted"]


def test_a_symbol_missing_bars_inside_the_window_is_not_delisted(
    bars: dict[str, BarFrame],
) -> None:
    unh = bars["UNH"]
    holed = {"AET": bars["AET"], "UNH": unh.drop(unh.index[60:70])}
    result = run(holed, Scripted(), intraday_exits=False)

    assert [t.exit_reason for t in result.trades if t.symbol == "UNH"] == ["open"]
    assert not [o for o in result.orders if o.symbol == "UNH" and o.side == "sell"]
