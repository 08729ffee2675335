"""The replay's bar window: what each session sees, and the sizing volatility it reads from its
close arrays, which must be `daily_volatility` of the frame the live cycle would fetch, to the bit.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from app.backtest.window import _BarWindow, _ReplaySnapshot, _SymbolIndex, backtest_sessions
from app.market.sources import CsvMarketData
from app.trading.cycle import LOOKBACK_CALENDAR_DAYS
from app.trading.strategy import MarketSnapshot, daily_volatility
from tests.support import SHARED_DATA

#: META lists in 2012: sessions before it see no bars, then a short history.
SYMBOLS = ["AAPL", "META", "NVDA"]


def test_window_closes_and_volatility_equal_the_live_frames() -> None:
    bars = CsvMarketData(SHARED_DATA).get_daily_bars(SYMBOLS, date(2011, 6, 1), date(2013, 6, 28))
    sessions = backtest_sessions(bars, SYMBOLS, date(2011, 9, 1), date(2013, 6, 28))
    stamps = pd.DatetimeIndex(np.array(sessions, dtype="datetime64[D]").astype("M8[s]"))
    index = {s: _SymbolIndex(bars[s], stamps) for s in SYMBOLS}
    sized = 0
    for i, day in enumerate(sessions):
        window = _BarWindow(index, i)
        snapshot = _ReplaySnapshot(bars=window, prices={})
        for symbol in SYMBOLS:
            frame = bars[symbol]
            live = frame[
                (frame.index >= pd.Timestamp(day) - pd.Timedelta(days=LOOKBACK_CALENDAR_DAYS))
                & (frame.index <= pd.Timestamp(day))
            ]
            pd.testing.assert_frame_equal(window[symbol], live)
            closes = window.closes(symbol)
            assert closes is not None
            assert np.array_equal(closes, live["close"].to_numpy(dtype=float))
            for lookback in (5, 20, 60):
                vol = snapshot.volatility(symbol, lookback)
                assert vol == daily_volatility(live, lookback)
                assert vol == MarketSnapshot(bars=window, prices={}).volatility(symbol, lookback)
                sized += vol is not None
        assert window.closes("NOPE") is None
        assert snapshot.volatility("NOPE", 20) is None
    assert sized > len(sessions) * 5
