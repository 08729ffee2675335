"""The jump rule: an unadjusted split is rejected with a reason, a real crash day is not."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from app.market.calendar import NyseCalendar
from app.market.validation import recent_rejection, validate_bars
from tests.support import SHARED_DATA


def frame(closes: list[float], start: str = "2021-06-07") -> pd.DataFrame:
    days = NyseCalendar().sessions_index(start, "2021-12-31")[: len(closes)]
    c = pd.Series(closes, index=days, dtype=float)
    return pd.DataFrame(
        {"open": c, "high": c * 1.01, "low": c * 0.99, "close": c, "volume": 1e6}, index=days
    )


def test_an_unadjusted_10_to_1_split_ends_the_series_with_symbol_and_date() -> None:
    result = validate_bars("NVDA", frame([700.0, 704.0, 70.5, 71.0, 70.0]))
    assert [(r.day, r.code) for r in result.rejected] == [
        (date(2021, 6, 9), "break"),
        (date(2021, 6, 10), "after_break"),
        (date(2021, 6, 11), "after_break"),
    ]
    first = result.rejected[0]
    assert first.reason.startswith("break: NVDA 2021-06-09 traded only in")
    assert "the close 704 on 2021-06-08" in first.reason
    assert recent_rejection("nvda", date(2021, 6, 9)) == first.reason
    assert result.rejected[1].reason == "after_break: NVDA ended at the break on 2021-06-09"
    assert list(result.clean_frame["close"]) == [700.0, 704.0]


def test_a_jump_the_next_bar_undoes_is_a_bad_print() -> None:
    result = validate_bars("X", frame([100.0, 101.0, 250.0, 102.0, 103.0]))
    assert [(r.day, r.code) for r in result.rejected] == [(date(2021, 6, 9), "jump")]
    assert "the close 101 on 2021-06-08" in result.rejected[0].reason
    assert list(result.clean_frame["close"]) == [100.0, 101.0, 102.0, 103.0]


def test_a_level_the_next_bar_confirms_is_kept_from_that_bar() -> None:
    # FNMA on 2008-09-08: 7.04 to a range of 0.65..2.05, and it stayed there. Only the jump
    # day is dropped (a decision that day could not tell it from a bad print).
    result = validate_bars("X", frame([7.0, 7.04, 2.0, 1.9, 1.95, 1.7]))
    assert [(r.day, r.code) for r in result.rejected] == [(date(2021, 6, 9), "jump")]
    assert list(result.clean_frame["close"]) == [7.0, 7.04, 1.9, 1.95, 1.7]


def test_a_break_ends_the_series_even_when_prices_come_back() -> None:
    # CBE: a penny stock's bars under the ticker, then prices near the old close again.
    result = validate_bars("CBE", frame([79.0, 79.35, 0.075, 0.07, 80.0, 79.5]))
    assert [r.code for r in result.rejected] == [
        "break",
        "after_break",
        "after_break",
        "after_break",
    ]
    assert list(result.clean_frame["close"]) == [79.0, 79.35]


def test_a_zero_volume_bar_at_another_price_breaks_the_series() -> None:
    bars = frame([0.005, 0.005, 40.0, 0.005, 0.006])  # GDW on 2014-10-27, volume 0
    bars.loc[bars.index[2], "volume"] = 0.0
    result = validate_bars("GDW", bars)
    assert result.rejected[0].code == "zero_volume"
    assert result.rejected[0].reason.split("; ")[1].startswith("break: GDW 2021-06-09")
    assert len(result.clean_frame) == 2


def test_each_bar_is_judged_on_the_bars_before_it_only() -> None:
    """Validating the history up to any day keeps exactly the bars the whole history keeps up
    to that day: a backtest sees what the live cycle saw."""
    # bad print, new level, bad print, new level, break, then prices back near the old level
    closes = [10.0, 10.2, 30.0, 10.1, 25.0, 24.0, 25.5, 12.0, 26.0, 11.0, 10.5, 2.0, 10.4, 10.6]
    whole = validate_bars("X", frame(closes))
    assert [r.code for r in whole.rejected] == [
        "jump",
        "jump",
        "jump",
        "jump",
        "break",
        "after_break",
        "after_break",
    ]
    for cut in range(1, len(closes) + 1):
        bars = frame(closes[:cut])
        part = validate_bars("X", bars).clean_frame
        expected = whole.clean_frame.loc[: bars.index[-1]]
        pd.testing.assert_frame_equal(part, expected, check_freq=False)


def test_the_bound_is_configurable_and_can_be_off() -> None:
    bars = frame([100.0, 100.0, 45.0])  # a -55 % day that never traded near 100
    assert [r.code for r in validate_bars("X", bars).rejected] == ["jump"]
    assert validate_bars("X", bars, max_jump=1.5).rejected == []
    assert validate_bars("X", bars, max_jump=None).rejected == []


def test_a_crash_day_that_trades_through_the_previous_close_is_kept() -> None:
    bars = frame([100.0, 100.0, 40.0])
    bars.loc[bars.index[2], "high"] = 99.0  # opened near the close, then fell 60 %
    bars.loc[bars.index[2], "open"] = 98.0
    assert validate_bars("X", bars).rejected == []


@pytest.mark.parametrize("symbol", sorted(p.stem for p in SHARED_DATA.glob("*.csv")))
def test_real_bars_2004_to_2021_have_no_jump(symbol: str) -> None:
    raw = pd.read_csv(SHARED_DATA / f"{symbol}.csv", parse_dates=["date"], index_col="date")
    result = validate_bars(symbol, raw.loc["2004-01-01":])
    assert [r for r in result.rejected if "jump" in r.reason] == []
