"""The sessions a backtest walks, and the bar windows and clock it replays with."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from app.backtest.results import WARMUP_CALENDAR_DAYS
from app.domain import (
    BarFrame,
    MarketData,
)
from app.errors import ValidationError
from app.market.calendar import NyseCalendar
from app.market.universe import feature_universe
from app.trading.cycle import LOOKBACK_CALENDAR_DAYS
from app.trading.strategy import MarketSnapshot, closes_volatility

if TYPE_CHECKING:
    pass


def load_bars(
    market: MarketData, symbols: Sequence[str], start: date, end: date
) -> dict[str, BarFrame]:
    """The universe plus SPY (features and benchmark) from `start` to `end`; empty frames out."""
    wanted = feature_universe(symbols)
    bars = market.get_daily_bars(wanted, start, end)
    return {s: f for s, f in bars.items() if len(f)}


def history_start(start: date, train_years: float | None) -> date:
    """First date to load so the first walk-forward model has its training window."""
    years = train_years or 0.0
    return start - timedelta(days=int(years * 365.25) + WARMUP_CALENDAR_DAYS)


def backtest_sessions(
    bars: Mapping[str, BarFrame],
    symbols: Sequence[str],
    start: date,
    end: date,
    calendar: NyseCalendar | None = None,
) -> list[date]:
    """NYSE sessions in [start, end] on which at least one universe symbol has a bar."""
    cal = calendar or NyseCalendar()
    stamps = [
        frame.index.to_numpy(dtype="datetime64[ns]")
        for symbol in symbols
        if (frame := bars.get(symbol)) is not None and len(frame)
    ]
    sessions = cal.sessions_index(start, end)
    if not stamps:
        return []
    # One sorted array of every bar date, not a set of pandas Timestamps (100 ms for 32 symbols).
    present = np.isin(sessions.to_numpy(dtype="datetime64[ns]"), np.unique(np.concatenate(stamps)))
    return list(sessions[present].date)


def resolve_window(
    *,
    days: int | None,
    start: date | None,
    end: date | None,
    last_session: date,
    calendar: NyseCalendar | None = None,
) -> tuple[date, date]:
    """(start, end) from either `days` sessions ending at `last_session`, or start/end."""
    cal = calendar or NyseCalendar()
    if days is not None and (start is not None or end is not None):
        raise ValidationError("give either days or start/end, not both", field="days")
    if days is not None:
        if not 1 <= days <= 10_000:
            raise ValidationError("must be between 1 and 10000", field="days")
        sessions = cal.sessions_index(last_session - timedelta(days=days * 2 + 30), last_session)
        if len(sessions) < days:
            raise ValidationError("the calendar does not reach that far back", field="days")
        return sessions[-days].date(), sessions[-1].date()
    if start is None:
        raise ValidationError("give days, or start (and optionally end)", field="start")
    end = end or last_session
    if start > end:
        raise ValidationError(f"start {start} is after end {end}", field="start")
    if start < cal.first_session:
        raise ValidationError(f"must be on or after {cal.first_session}", field="start")
    if end > cal.last_session:
        raise ValidationError(f"must be on or before {cal.last_session}", field="end")
    return start, end


class _SymbolIndex:
    """Per-symbol arrays aligned to the backtest's sessions: which bars each session may see."""

    def __init__(self, frame: BarFrame, sessions: pd.DatetimeIndex) -> None:
        frame = frame.sort_index()
        self.frame = frame
        dates = frame.index.to_numpy(dtype="datetime64[ns]")
        days = sessions.to_numpy(dtype="datetime64[ns]")
        lookback = np.timedelta64(LOOKBACK_CALENDAR_DAYS, "D")
        #: bars [lo[i], hi[i]) are what the live cycle fetches on session i (start..session).
        self.hi = np.searchsorted(dates, days, side="right")
        self.lo = np.searchsorted(dates, days - lookback, side="left")
        last = np.clip(self.hi - 1, 0, max(len(dates) - 1, 0))
        self.today = (self.hi > 0) & (dates[last] == days) if len(dates) else self.hi > 0
        self.open = frame["open"].to_numpy(dtype=float)
        self.high = frame["high"].to_numpy(dtype=float)
        self.low = frame["low"].to_numpy(dtype=float)
        self.close = frame["close"].to_numpy(dtype=float)

    def bar(self, i: int) -> int | None:
        """Row of session i's own bar, or None when the symbol has no bar that day."""
        return int(self.hi[i] - 1) if self.today[i] else None

    def last_close(self, i: int) -> float | None:
        """Close of the last bar in session i's lookback window (the live cycle's price)."""
        return float(self.close[self.hi[i] - 1]) if self.hi[i] > self.lo[i] else None


class _BarWindow(Mapping[str, BarFrame]):
    """The bars the live cycle would fetch on one session, sliced only when asked for."""

    def __init__(self, index: Mapping[str, _SymbolIndex], i: int) -> None:
        self._index = index
        self._i = i
        self._cache: dict[str, BarFrame] = {}

    def __getitem__(self, symbol: str) -> BarFrame:
        cached = self._cache.get(symbol)
        if cached is None:
            ix = self._index[symbol]
            cached = ix.frame.iloc[int(ix.lo[self._i]) : int(ix.hi[self._i])]
            self._cache[symbol] = cached
        return cached

    def closes(self, symbol: str) -> np.ndarray | None:
        """The closes of ``self[symbol]`` without building its frame (None: no such symbol)."""
        ix = self._index.get(symbol)
        return None if ix is None else ix.close[ix.lo[self._i] : ix.hi[self._i]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


@dataclass(frozen=True)
class _ReplaySnapshot(MarketSnapshot):
    """The live MarketSnapshot over a `_BarWindow`: the sizing volatility is read from the
    window's close array, the very closes ``daily_volatility`` would take from its frame
    (one frame slice per entry was the largest cost of a session)."""

    bars: _BarWindow

    def volatility(self, symbol: str, lookback: int) -> float | None:
        closes = self.bars.closes(symbol)
        return None if closes is None else closes_volatility(closes, lookback)


class _SteppedClock:
    """domain.Clock for SimBroker: the backtest sets the instant (an open, then the close)."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at
