"""The 12-1 momentum baseline: top k by the return from 252 to 21 sessions back, monthly."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from app.backtest.momentum import MomentumSignals
from app.domain import SignalAction
from app.market.calendar import NyseCalendar

SESSIONS = NyseCalendar().sessions_index(date(2019, 1, 2), date(2020, 12, 31))


def bars(daily_growth: float, start: int = 0) -> pd.DataFrame:
    close = 100.0 * np.exp(daily_growth * np.arange(len(SESSIONS) - start))
    return pd.DataFrame(
        {"open": close, "high": close, "low": close, "close": close, "volume": 1e6},
        index=SESSIONS[start:],
    )


def test_top_k_by_twelve_minus_one_momentum_on_the_first_session_of_a_month() -> None:
    frames = {"AAA": bars(0.002), "BBB": bars(0.001), "CCC": bars(-0.001), "DDD": bars(0.0005)}
    rule = MomentumSignals(frames, list(frames), top_k=2)
    first_of_june = date(2020, 6, 1)
    signals = rule(frames, first_of_june)
    assert {s for s, sig in signals.items() if sig.action is SignalAction.BUY} == {"AAA", "BBB"}
    assert {s for s, sig in signals.items() if sig.action is SignalAction.SELL} == {"CCC", "DDD"}
    at = SESSIONS.get_loc(pd.Timestamp(first_of_june))
    expected = SESSIONS[at - 21], SESSIONS[at - 252]
    close = frames["AAA"]["close"]
    assert signals["AAA"].predicted_return == pytest.approx(
        close[expected[0]] / close[expected[1]] - 1.0
    )
    assert rule(frames, date(2020, 6, 2)) == {}  # not a rebalance session


def test_a_symbol_without_a_year_of_history_is_not_ranked() -> None:
    frames = {"OLD": bars(0.0), "NEW": bars(0.01, start=len(SESSIONS) - 200)}
    signals = MomentumSignals(frames, list(frames), top_k=2)(frames, date(2020, 12, 1))
    assert set(signals) == {"OLD"}


def test_scores_are_causal_a_later_bar_changes_nothing() -> None:
    frames = {"AAA": bars(0.002), "BBB": bars(0.001)}
    day = date(2020, 3, 2)
    before = MomentumSignals(frames, list(frames), top_k=1)(frames, day)
    shocked = {s: f.copy() for s, f in frames.items()}
    shocked["BBB"].loc[pd.Timestamp(day) + pd.Timedelta(days=1) :, "close"] *= 100
    assert MomentumSignals(shocked, list(shocked), top_k=1)(shocked, day) == before
