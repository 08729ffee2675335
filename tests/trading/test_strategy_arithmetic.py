"""The decision's small arithmetic, written for speed, equals the library it replaced.

`weekdays_between` was numpy's busday_count and `daily_volatility` pandas'
pct_change().dropna().std(); both run for every holding or entry of every backtest session.
They must give the same numbers to the bit, or a backtest would change with the rewrite.
"""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from app.market.sources import CsvMarketData
from app.trading.strategy import daily_volatility, weekdays_between
from tests.support import SHARED_DATA

DAYS = st.dates(min_value=date(1990, 1, 1), max_value=date(2040, 12, 31))


@given(DAYS, DAYS)
def test_weekdays_between_is_numpys_busday_count(start: date, end: date) -> None:
    assert weekdays_between(start, end) == int(np.busday_count(start, end))


def test_weekdays_between_every_pair_of_a_few_weeks() -> None:
    days = [date(2021, 11, 22) + timedelta(d) for d in range(50)]  # Thanksgiving week on
    for start in days:
        for end in days:
            assert weekdays_between(start, end) == int(np.busday_count(start, end))


def pandas_volatility(bars: pd.DataFrame, lookback: int) -> float | None:
    if len(bars) < lookback + 1:
        return None
    with np.errstate(all="ignore"):  # a zero close makes an infinite return
        vol = float(bars["close"].iloc[-(lookback + 1) :].pct_change().dropna().std())
    return vol if math.isfinite(vol) and vol > 0 else None


def test_daily_volatility_is_pandas_to_the_bit_on_real_bars() -> None:
    market = CsvMarketData(SHARED_DATA)
    frame = market.get_daily_bars(["NVDA"], date(2015, 1, 1), date(2017, 12, 31))["NVDA"]
    checked = 0
    for end in range(0, len(frame), 3):
        window = frame.iloc[max(0, end - 80) : end]
        for lookback in (5, 20, 60):
            assert daily_volatility(window, lookback) == pandas_volatility(window, lookback)
            checked += daily_volatility(window, lookback) is not None
    assert checked > 500


@given(
    st.lists(
        st.one_of(st.floats(0.01, 1e4), st.just(math.nan), st.just(0.0)), min_size=0, max_size=30
    ),
    st.integers(1, 25),
)
def test_daily_volatility_is_pandas_with_gaps_zeros_and_flat_runs(
    closes: list[float], lookback: int
) -> None:
    bars = pd.DataFrame({"close": closes}, dtype=float)
    assert daily_volatility(bars, lookback) == pandas_volatility(bars, lookback)
