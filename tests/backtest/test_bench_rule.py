"""The engine bench's rule through our engine and through backtrader: identical trades.

bench/backtest_vs_backtrader.py claims identical trades on 32 symbols x 18 years; this runs
the same code (its configuration, its backtrader strategy, its comparison) on a few symbols and
years, so a change to the engine, the live decision or the bench that makes the two disagree
(an exit backtrader's rule does not have, another sizing, another fill order) fails here
instead of silently rotting the README's figure.
"""

from __future__ import annotations

import warnings
from datetime import date

import pytest

from app.domain import BarFrame
from app.market.sources import CsvMarketData
from tests.support import SHARED_DATA

with warnings.catch_warnings():
    # backtrader 1.9.78 has invalid escape sequences in docstrings: compiling it (a fresh
    # venv installs without bytecode) warns, and the suite turns warnings into errors.
    warnings.simplefilter("ignore", SyntaxWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    from bench import backtest_vs_backtrader as bench

#: Four names at 1/4 each: the cash rule binds often (an entry must fit twice its value).
SYMBOLS = ("AAPL", "JPM", "KO", "XOM")
START, END = date(2012, 1, 1), date(2016, 12, 31)


@pytest.fixture(scope="module")
def bars() -> dict[str, BarFrame]:
    return CsvMarketData(SHARED_DATA).get_daily_bars(SYMBOLS, START, END)


def test_both_engines_make_the_same_fills(bars: dict[str, BarFrame]) -> None:
    result = bench.ours(bars, SYMBOLS, START, END)
    run = bench.theirs(bars, SYMBOLS)
    c = bench.compare(result, run)

    # Not a vacuous agreement: entries, exits and entries refused for cash on both sides.
    assert len(c.fills_theirs) > 40
    assert {f[1] for f in c.fills_theirs} == {"buy", "sell"}
    assert len(run.skipped) > 10
    assert {r["rule"] for r in result.denied} == {"buying_power"}
    # The same entries refused (ours takes no decision after the last session).
    assert [(r["date"], r["symbol"]) for r in result.denied] == [
        s for s in run.skipped if s[0] < result.sessions[-1]
    ]
    assert run.rejected == 0

    assert [f[:3] for f in c.fills_ours] == [f[:3] for f in c.fills_theirs]
    for ours, theirs in zip(c.fills_ours, c.fills_theirs, strict=True):
        assert ours[3] == pytest.approx(theirs[3], abs=1e-9)  # qty
        assert ours[4] == pytest.approx(theirs[4], rel=1e-12)  # price
        assert ours[5] == pytest.approx(theirs[5], rel=1e-9, abs=1e-12)  # commission
    assert c.trips_ours == c.trips_theirs
    assert set(result.exit_reasons()) <= {"signal_sell", "open"}
    assert c.final_ours == pytest.approx(c.final_theirs, rel=1e-9)
    assert c.identical
