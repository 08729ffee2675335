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


def test_an_unadjusted_split_is_rejected_with_symbol_and_date() -> None:
    result = validate_bars("NVDA", frame([700.0, 704.0, 70.5, 71.0, 70.0]))
    assert [r.day for r in result.rejected] == [
        date(2021, 6, 9),
        date(2021, 6, 10),
        date(2021, 6, 11),
    ]
    first = result.rejected[0]
    assert first.code == "jump"
    assert first.reason.startswith("jump: NVDA 2021-06-09 traded only in")
    assert "the close 704 on 2021-06-08" in first.reason
    assert recent_rejection("nvda", date(2021, 6, 9)) == first.reason
    assert list(result.clean_frame["close"]) == [700.0, 704.0]


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
