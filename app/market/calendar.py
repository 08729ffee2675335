"""The NYSE calendar and the clocks (wall clock, replay clock) for live, sim and backtest.

Bar frames (``domain.BarFrame``) are pandas DataFrames indexed by a ``DatetimeIndex`` named
``"date"`` holding session dates (normalised to midnight, tz-naive, ascending, unique) with float
columns ``open, high, low, close, volume``. Every source here returns frames in that shape: CSV
bars only after ``validate_bars`` has removed bad ones, synthetic bars valid by construction.

The calendar comes from exchange_calendars ("XNYS") and is never hand-written: holidays, special
closures and early closes (13:00 ET) change over the years and a local list would drift.

Sources honour an optional ``as_of`` date (sim replay sets it): nothing after ``as_of`` is ever
returned, neither by ``get_daily_bars`` nor by ``get_latest_price``, so a replayed decision cannot
see the future.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import NamedTuple, TypeAlias

import exchange_calendars as xc
import numpy as np
import pandas as pd

from app.domain import MarketClock, TradingSession
from app.errors import ValidationError

__all__ = ["NyseCalendar", "ReplayClock", "ReplayFinished", "WallClock"]

logger = logging.getLogger(__name__)

DateLike: TypeAlias = date | datetime | pd.Timestamp | str

_NY_TZ = "America/New_York"

# --------------------------------------------------------------------------------------------
# Calendar
# --------------------------------------------------------------------------------------------

#: Calendar bounds: SPY history starts in 1995; a couple of years ahead covers any live use.
_CAL_START = pd.Timestamp("1990-01-02")


class _Schedule(NamedTuple):
    sessions: pd.DatetimeIndex  # tz-naive midnight
    opens: pd.DatetimeIndex  # UTC
    closes: pd.DatetimeIndex  # UTC


_schedule_lock = threading.Lock()
_schedule_cache: dict[tuple[pd.Timestamp, pd.Timestamp], _Schedule] = {}


def _load_schedule(start: pd.Timestamp, end: pd.Timestamp) -> _Schedule:
    """Build XNYS once per process: construction takes ~0.5 s and the schedule never changes."""
    key = (start, end)
    with _schedule_lock:
        cached = _schedule_cache.get(key)
        if cached is not None:
            return cached
        # exchange_calendars 4.13 calls .values on tz-aware data while building, which pandas
        # 3.1 deprecates (raised from pandas' own frame); silence exactly that, only here.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message=r"(Series|DatetimeIndex)\.values returning an ndarray that drops timezone",
                category=DeprecationWarning,
            )
            cal = xc.get_calendar("XNYS", start=start, end=end)
            schedule = cal.schedule
        sessions = pd.DatetimeIndex(schedule.index).tz_localize(None).normalize().rename("date")
        opens = pd.DatetimeIndex(schedule["open"]).tz_convert("UTC")
        closes = pd.DatetimeIndex(schedule["close"]).tz_convert("UTC")
        result = _Schedule(sessions, opens, closes)
        _schedule_cache[key] = result
        return result


def _to_day(value: DateLike) -> pd.Timestamp:
    """A session-date key: tz-aware instants are read in New York time, then normalised."""
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert(_NY_TZ).tz_localize(None)
    return ts.normalize()


def _to_utc(value: datetime | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _py_utc(ts: pd.Timestamp) -> datetime:
    """A plain datetime in datetime.UTC so callers compare and serialise one tz type."""
    out: datetime = ts.tz_convert("UTC").to_pydatetime().replace(tzinfo=UTC)
    return out


def _as_date(ts: pd.Timestamp) -> date:
    out: date = ts.date()
    return out


class NyseCalendar:
    """NYSE sessions, open/close instants (UTC) and the market clock, from exchange_calendars.

    Instances are cheap: the underlying schedule is built once per process and shared.
    Out-of-range dates (before 1990 or beyond the schedule's end) raise ValueError where an
    answer would otherwise be a guess.
    """

    def __init__(self, start: DateLike = _CAL_START, end: DateLike | None = None) -> None:
        start_ts = _to_day(start)
        end_ts = _to_day(end) if end is not None else pd.Timestamp(date.today().year + 2, 12, 31)
        self._sched = _load_schedule(start_ts, end_ts)

    # -- bounds -------------------------------------------------------------------------------
    @property
    def first_session(self) -> date:
        return _as_date(self._sched.sessions[0])

    @property
    def last_session(self) -> date:
        return _as_date(self._sched.sessions[-1])

    def _in_range(self, day: pd.Timestamp) -> bool:
        return bool(self._sched.sessions[0] <= day <= self._sched.sessions[-1])

    def _position(self, day: DateLike) -> int:
        ts = _to_day(day)
        pos = int(self._sched.sessions.get_indexer([ts])[0])
        if pos < 0:
            raise ValueError(f"{ts.date()} is not an NYSE session")
        return pos

    # -- sessions -----------------------------------------------------------------------------
    def sessions_index(self, start: DateLike, end: DateLike) -> pd.DatetimeIndex:
        """Sessions in [start, end] as a tz-naive DatetimeIndex named "date"."""
        s = self._sched.sessions
        lo = s.searchsorted(_to_day(start), side="left")
        hi = s.searchsorted(_to_day(end), side="right")
        return s[lo:hi]

    def session_number(self, day: DateLike) -> int:
        """How many sessions of the calendar lie on or before `day`, minus one: the index of
        `day` when it is a session (counts between two sessions are exact, holidays included)."""
        return int(self._sched.sessions.searchsorted(_to_day(day), side="right")) - 1

    def sessions(self, start: DateLike, end: DateLike) -> list[date]:
        """Session dates in [start, end], both inclusive."""
        return [ts.date() for ts in self.sessions_index(start, end)]

    def is_session(self, day: DateLike) -> bool:
        ts = _to_day(day)
        if not self._in_range(ts):
            raise ValueError(f"{ts.date()} is outside the calendar's range")
        return bool(self._sched.sessions.get_indexer([ts])[0] >= 0)

    def next_session(self, day: DateLike) -> date:
        """The first session strictly after `day` (a session or not)."""
        s = self._sched.sessions
        pos = s.searchsorted(_to_day(day), side="right")
        if pos >= len(s):
            raise ValueError(f"no session after {_to_day(day).date()} in the calendar")
        return _as_date(s[pos])

    def previous_session(self, day: DateLike) -> date:
        """The last session strictly before `day` (a session or not)."""
        s = self._sched.sessions
        pos = s.searchsorted(_to_day(day), side="left") - 1
        if pos < 0:
            raise ValueError(f"no session before {_to_day(day).date()} in the calendar")
        return _as_date(s[pos])

    def session_on_or_after(self, day: DateLike) -> date:
        s = self._sched.sessions
        pos = s.searchsorted(_to_day(day), side="left")
        if pos >= len(s):
            raise ValueError(f"no session on or after {_to_day(day).date()} in the calendar")
        return _as_date(s[pos])

    def session_on_or_before(self, day: DateLike) -> date:
        s = self._sched.sessions
        pos = s.searchsorted(_to_day(day), side="right") - 1
        if pos < 0:
            raise ValueError(f"no session on or before {_to_day(day).date()} in the calendar")
        return _as_date(s[pos])

    # -- open / close -------------------------------------------------------------------------
    def session_open(self, day: DateLike) -> datetime:
        """Open instant in UTC (14:30 or 13:30 depending on DST)."""
        return _py_utc(self._sched.opens[self._position(day)])

    def session_close(self, day: DateLike) -> datetime:
        """Close instant in UTC; early closes (13:00 ET) show as an earlier close."""
        return _py_utc(self._sched.closes[self._position(day)])

    def is_early_close(self, day: DateLike) -> bool:
        pos = self._position(day)
        close_ny = self._sched.closes[pos].tz_convert(_NY_TZ)
        return bool((close_ny.hour, close_ny.minute) < (16, 0))

    def trading_session(self, day: DateLike) -> TradingSession:
        pos = self._position(day)
        return TradingSession(
            day=self._sched.sessions[pos].date(),
            open=_py_utc(self._sched.opens[pos]),
            close=_py_utc(self._sched.closes[pos]),
        )

    def trading_sessions(self, start: DateLike, end: DateLike) -> list[TradingSession]:
        s = self._sched.sessions
        lo = s.searchsorted(_to_day(start), side="left")
        hi = s.searchsorted(_to_day(end), side="right")
        # Converted a column at a time: one pandas scalar per session cost 15 us each.
        days = s[lo:hi].date
        opens = self._sched.opens[lo:hi].tz_convert("UTC").to_pydatetime()
        closes = self._sched.closes[lo:hi].tz_convert("UTC").to_pydatetime()
        return [
            TradingSession(day=d, open=o.replace(tzinfo=UTC), close=c.replace(tzinfo=UTC))
            for d, o, c in zip(days, opens, closes, strict=True)
        ]

    def clock(self, now: datetime, *, include_close: bool = False) -> MarketClock:
        """Alpaca-style clock at `now` (naive means UTC).

        The market is open on [open, close). With ``include_close`` the close instant itself
        counts as open (the closing auction): a ReplayClock sits exactly on the close, and sim
        mode must still see a tradable market there.
        """
        ts = _to_utc(now)
        closes = self._sched.closes
        pos = int(closes.searchsorted(ts, side="left" if include_close else "right"))
        if pos >= len(closes):
            raise ValueError(f"{ts} is beyond the calendar's range")
        is_open = bool(self._sched.opens[pos] <= ts)
        if is_open:
            if pos + 1 >= len(closes):
                raise ValueError(f"{ts} is too close to the calendar's end")
            next_open = self._sched.opens[pos + 1]
        else:
            next_open = self._sched.opens[pos]
        return MarketClock(
            timestamp=_py_utc(ts),
            is_open=is_open,
            next_open=_py_utc(next_open),
            next_close=_py_utc(closes[pos]),
        )

    def missing_sessions(self, days: Iterable[DateLike]) -> list[tuple[date, date, list[date]]]:
        """For sorted session dates, each (before, after, missing sessions) between neighbours."""
        if isinstance(days, pd.DatetimeIndex):
            idx = days.tz_localize(None) if days.tz is not None else days
            values = idx.to_numpy()
            midnights = bool((values == values.astype("datetime64[D]")).all())
            if not (midnights and idx.is_monotonic_increasing and idx.is_unique):
                idx = idx.normalize().unique().sort_values()
        else:
            idx = pd.DatetimeIndex([_to_day(d) for d in days]).unique().sort_values()
        s = self._sched.sessions
        inside = idx[(idx >= s[0]) & (idx <= s[-1])]
        positions = s.get_indexer(inside)
        keep = positions >= 0
        inside, positions = inside[keep], positions[keep]
        out: list[tuple[date, date, list[date]]] = []
        for i in (np.flatnonzero(np.diff(positions) > 1) + 1).tolist():
            missing = [ts.date() for ts in s[positions[i - 1] + 1 : positions[i]]]
            out.append((inside[i - 1].date(), inside[i].date(), missing))
        return out


class WallClock:
    """domain.Clock for live use: the real time in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ReplayFinished(Exception):
    """ReplayClock.advance() was asked to go past its end date."""


class ReplayClock:
    """domain.Clock that steps through NYSE sessions: one `advance()` is one trading day.

    `now()` is the current session's close in UTC, so a cycle run "now" sees that day's bar
    complete (and SimBroker's clock reports the market open at that instant, see
    NyseCalendar.clock).
    """

    def __init__(
        self,
        start: DateLike,
        end: DateLike | None = None,
        calendar: NyseCalendar | None = None,
    ) -> None:
        self._calendar = calendar or NyseCalendar()
        self._lock = threading.Lock()
        self._session = self._calendar.session_on_or_after(start)
        self._end = _to_day(end).date() if end is not None else None
        if self._end is not None and self._session > self._end:
            raise ValidationError(f"no NYSE session between {start} and {end}")

    @property
    def session(self) -> date:
        """The current session date."""
        with self._lock:
            return self._session

    @property
    def end(self) -> date | None:
        return self._end

    @property
    def can_advance(self) -> bool:
        with self._lock:
            return self._end is None or self._calendar.next_session(self._session) <= self._end

    def now(self) -> datetime:
        with self._lock:
            return self._calendar.session_close(self._session)

    def session_open(self) -> datetime:
        """The current session's open in UTC (where a backtest fills next-open orders)."""
        with self._lock:
            return self._calendar.session_open(self._session)

    def advance(self, sessions: int = 1) -> date:
        """Move forward `sessions` trading days; raise ReplayFinished past the end date."""
        if sessions < 1:
            raise ValueError("sessions must be >= 1")
        with self._lock:
            day = self._session
            for _ in range(sessions):
                day = self._calendar.next_session(day)
            if self._end is not None and day > self._end:
                raise ReplayFinished(f"replay ended at {self._end}")
            self._session = day
            return day
