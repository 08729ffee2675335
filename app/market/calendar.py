"""Market data for sim and backtest: NYSE calendar, bar validation, CSV and synthetic sources.

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
import math
import re
import threading
import warnings
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import NamedTuple, TypeAlias

import exchange_calendars as xc
import numpy as np
import pandas as pd

from app.domain import BAR_COLUMNS, BarFrame, MarketClock, TradingSession
from app.errors import NotFoundError, ValidationError

__all__ = [
    "CsvMarketData",
    "NyseCalendar",
    "Rejection",
    "ReplayClock",
    "ReplayFinished",
    "SyntheticMarketData",
    "ValidationResult",
    "WallClock",
    "rejection_counts",
    "reset_rejection_counts",
    "validate_bars",
]

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
        return [
            TradingSession(
                day=s[i].date(),
                open=_py_utc(self._sched.opens[i]),
                close=_py_utc(self._sched.closes[i]),
            )
            for i in range(lo, hi)
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
            idx = idx.normalize().unique().sort_values()
        else:
            idx = pd.DatetimeIndex([_to_day(d) for d in days]).unique().sort_values()
        s = self._sched.sessions
        inside = idx[(idx >= s[0]) & (idx <= s[-1])]
        positions = s.get_indexer(inside)
        keep = positions >= 0
        inside, positions = inside[keep], positions[keep]
        out: list[tuple[date, date, list[date]]] = []
        for i in range(1, len(positions)):
            if positions[i] - positions[i - 1] > 1:
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


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

#: Relative tolerance for OHLC consistency: adjusted real data has 1e-16-sized violations
#: (e.g. high a rounding error below close) that are not defects.
OHLC_REL_TOL = 1e-6

_counts_lock = threading.Lock()
_rejection_counts: Counter[str] = Counter()


def rejection_counts() -> dict[str, int]:
    """Rejections since start (or the last reset) by reason code, for Prometheus to export."""
    with _counts_lock:
        return dict(_rejection_counts)


def reset_rejection_counts() -> None:
    with _counts_lock:
        _rejection_counts.clear()


def _count(code: str, n: int = 1) -> None:
    with _counts_lock:
        _rejection_counts[code] += n


class Rejection(NamedTuple):
    """One problem found: the date and a reason starting with its code (e.g. "zero_volume:")."""

    day: date
    reason: str

    @property
    def code(self) -> str:
        return self.reason.split(":", 1)[0]


@dataclass(frozen=True)
class ValidationResult:
    """What validate_bars kept and why it refused the rest.

    ``rejected`` lists bars that were dropped. ``gaps`` lists missing NYSE sessions between two
    present bars, keyed by the first missing session; gaps are only *reported*, no bar is dropped
    for them, because the bars on both sides are sound and dropping either would just widen the
    hole. Consumers that need contiguous history check ``gaps``.
    """

    symbol: str
    clean_frame: BarFrame
    rejected: list[Rejection] = field(default_factory=list)
    gaps: list[Rejection] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.rejected and not self.gaps


def _normalise_frame(symbol: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Bring an input frame into BarFrame shape (index, dtypes, order) without judging rows."""
    df = frame.copy()
    if "date" in df.columns:
        df = df.set_index("date")
    missing = [c for c in BAR_COLUMNS if c not in df.columns]
    if missing:
        raise ValidationError(f"{symbol}: bar frame lacks columns {missing}", field="columns")
    df = df.loc[:, list(BAR_COLUMNS)]
    try:
        idx = pd.DatetimeIndex(pd.to_datetime(df.index))
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"{symbol}: bar index is not dates: {exc}", field="date") from exc
    if idx.tz is not None:
        idx = idx.tz_convert(_NY_TZ).tz_localize(None)
    df.index = idx.normalize().as_unit("ns").rename("date")
    df = df.apply(pd.to_numeric, errors="coerce").astype("float64")
    # Stable sort keeps duplicates in input order, so "keep first" means first as given.
    return df.sort_index(kind="mergesort")


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def validate_bars(
    symbol: str, frame: pd.DataFrame, calendar: NyseCalendar | None = None
) -> ValidationResult:
    """Drop bars no model should see, and say why for each.

    Dropped (``rejected``): duplicate dates (first kept), NaN/inf values, prices <= 0, negative
    or zero volume (zero = placeholder bar), inconsistent OHLC, dates that are not NYSE
    sessions. One entry per dropped bar; several reasons are joined with "; ". Reported only
    (``gaps``): sessions missing between two present bars. `calendar` defaults to NYSE.
    Each rejection is logged and counted by reason code (see `rejection_counts`).
    Kept bars whose OHLC were inconsistent only within OHLC_REL_TOL get high/low widened to
    cover open and close, so every returned bar satisfies low <= open, close <= high.
    """
    cal = calendar or NyseCalendar()
    df = _normalise_frame(symbol, frame)
    n = len(df)
    reasons: list[list[str]] = [[] for _ in range(n)]
    codes: list[list[str]] = [[] for _ in range(n)]

    def flag(mask: np.ndarray, code: str, message: str | None = None) -> None:
        for i in np.flatnonzero(mask):
            codes[i].append(code)
            reasons[i].append(f"{code}: {message}" if message else code)

    o, h, lo, c, v = (df[col].to_numpy() for col in BAR_COLUMNS)
    dup = df.index.duplicated(keep="first")
    flag(dup, "duplicate_date", "a bar for this date came earlier (kept the first)")

    values = df.to_numpy()
    finite = np.isfinite(values)
    nan_rows = ~finite.all(axis=1)
    for i in np.flatnonzero(nan_rows):
        cols = ", ".join(col for col, ok in zip(BAR_COLUMNS, finite[i], strict=True) if not ok)
        codes[i].append("nan")
        reasons[i].append(f"nan: missing or infinite value in {cols}")

    with np.errstate(invalid="ignore"):
        prices = np.column_stack([o, h, lo, c])
        nonpos = (prices <= 0).any(axis=1)
        for i in np.flatnonzero(nonpos):
            low_cols = [col for col, x in zip(BAR_COLUMNS[:4], prices[i], strict=True) if x <= 0]
            codes[i].append("non_positive_price")
            reasons[i].append(f"non_positive_price: {', '.join(low_cols)} <= 0")
        flag(v < 0, "negative_volume", "volume below zero")
        flag(v == 0, "zero_volume", "volume is 0 (placeholder bar, no trading)")

        top = np.maximum(o, c)
        bottom = np.minimum(o, c)
        high_low = h < lo * (1 - OHLC_REL_TOL)
        high_body = h < top * (1 - OHLC_REL_TOL)
        low_body = lo > bottom * (1 + OHLC_REL_TOL)
        sane = ~nan_rows & ~nonpos
        for i in np.flatnonzero(sane & (high_low | high_body | low_body)):
            parts = []
            if high_low[i]:
                parts.append(f"high {_fmt(h[i])} < low {_fmt(lo[i])}")
            if high_body[i]:
                parts.append(f"high {_fmt(h[i])} < max(open, close) {_fmt(top[i])}")
            if low_body[i]:
                parts.append(f"low {_fmt(lo[i])} > min(open, close) {_fmt(bottom[i])}")
            codes[i].append("inconsistent_ohlc")
            reasons[i].append("inconsistent_ohlc: " + ", ".join(parts))

    s = cal.sessions_index(df.index.min(), df.index.max()) if n else pd.DatetimeIndex([])
    cal_lo, cal_hi = pd.Timestamp(cal.first_session), pd.Timestamp(cal.last_session)
    in_range = (df.index >= cal_lo) & (df.index <= cal_hi)
    not_session = in_range & ~df.index.isin(s)
    flag(not_session, "not_a_session", "not an NYSE trading day")

    rejected: list[Rejection] = []
    keep = np.ones(n, dtype=bool)
    for row in range(n):
        if codes[row]:
            keep[row] = False
            day = df.index[row].date()
            reason = "; ".join(reasons[row])
            rejected.append(Rejection(day, reason))
            logger.warning("rejected bar %s %s: %s", symbol, day, reason)
            for code in codes[row]:
                _count(code)

    # Gaps: judged on every session date given (rejected bars included), because a hole left
    # by a rejected bar is already explained by its rejection.
    gaps: list[Rejection] = []
    present = df.index[~dup & ~not_session]
    for before, after, missing in cal.missing_sessions(present):
        reason = (
            f"gap: {len(missing)} NYSE session(s) missing between {before} and {after} "
            f"(first {missing[0]}, last {missing[-1]})"
        )
        gaps.append(Rejection(missing[0], reason))
        logger.warning("gap in %s bars: %s", symbol, reason)
        _count("gap")

    clean = df[keep].copy()
    if len(clean):
        clean["high"] = clean[["high", "open", "close"]].max(axis=1)
        clean["low"] = clean[["low", "open", "close"]].min(axis=1)
    return ValidationResult(symbol=symbol, clean_frame=clean, rejected=rejected, gaps=gaps)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

_SYMBOL_RE = re.compile(r"^[A-Z][A-Z0-9.\-]{0,14}$")


def _norm_symbol(symbol: str) -> str:
    return symbol.strip().upper()


class _FrameSource:
    """Shared as_of clipping and slicing: subclasses only say how to get one symbol's frame."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._as_of: pd.Timestamp | None = None

    @property
    def as_of(self) -> date | None:
        """Nothing after this date is visible; None means everything is."""
        return None if self._as_of is None else self._as_of.date()

    @as_of.setter
    def as_of(self, value: DateLike | None) -> None:
        self._as_of = None if value is None else _to_day(value)

    def set_as_of(self, value: DateLike | None) -> None:
        self.as_of = value

    def available_symbols(self) -> list[str]:
        raise NotImplementedError

    def _frame(self, symbol: str) -> BarFrame:
        raise NotImplementedError

    def get_daily_bars(
        self, symbols: Sequence[str], start: DateLike, end: DateLike
    ) -> dict[str, BarFrame]:
        """Bars in [start, end] (clipped at as_of) per upper-cased symbol; copies, not views."""
        s, e = _to_day(start), _to_day(end)
        if s > e:
            raise ValidationError(f"start {s.date()} is after end {e.date()}", field="start")
        as_of = self._as_of
        if as_of is not None and e > as_of:
            e = as_of
        out: dict[str, BarFrame] = {}
        for raw in symbols:
            sym = _norm_symbol(raw)
            out[sym] = self._frame(sym).loc[s:e].copy()
        return out

    def get_latest_price(self, symbol: str) -> float:
        """The last close on or before as_of (or the last close at all)."""
        sym = _norm_symbol(symbol)
        frame = self._frame(sym)
        as_of = self._as_of
        if as_of is not None:
            frame = frame.loc[:as_of]
        if frame.empty:
            raise NotFoundError(f"no price for {sym} on or before {self.as_of}", field="symbol")
        return float(frame["close"].iloc[-1])


class CsvMarketData(_FrameSource):
    """Bars from a directory of SYMBOL.csv files (date,open,high,low,close,volume).

    Files are read lazily, validated once and cached in memory; `validation(symbol)` keeps what
    validation said so the API and metrics can show it.
    """

    def __init__(self, data_dir: str | Path, calendar: NyseCalendar | None = None) -> None:
        super().__init__()
        self._dir = Path(data_dir)
        if not self._dir.is_dir():
            raise NotFoundError(f"market data directory {self._dir} does not exist")
        self._calendar = calendar or NyseCalendar()
        self._results: dict[str, ValidationResult] = {}

    def available_symbols(self) -> list[str]:
        return sorted(
            p.stem.upper()
            for p in self._dir.glob("*.csv")
            if p.is_file() and _SYMBOL_RE.match(p.stem.upper())
        )

    def _path(self, symbol: str) -> Path:
        if not _SYMBOL_RE.match(symbol):
            raise NotFoundError(f"unknown symbol {symbol!r}", field="symbol")
        for candidate in (self._dir / f"{symbol}.csv", self._dir / f"{symbol.lower()}.csv"):
            if candidate.is_file():
                return candidate
        raise NotFoundError(f"unknown symbol {symbol!r}", field="symbol")

    def validation(self, symbol: str) -> ValidationResult:
        sym = _norm_symbol(symbol)
        with self._lock:
            cached = self._results.get(sym)
            if cached is None:
                raw = pd.read_csv(self._path(sym))
                if "date" not in raw.columns:
                    raise ValidationError(f"{sym}: CSV has no date column", field="date")
                raw["date"] = pd.to_datetime(raw["date"])
                cached = validate_bars(sym, raw, self._calendar)
                self._results[sym] = cached
            return cached

    def _frame(self, symbol: str) -> BarFrame:
        return self.validation(symbol).clean_frame


#: Sector of each watchlist symbol; sector factors are what makes same-sector names co-move.
SECTORS: dict[str, str] = {
    **dict.fromkeys(
        ("AAPL", "MSFT", "NVDA", "AMD", "INTC", "CSCO", "GOOGL", "META", "NFLX", "AMZN", "TSLA"),
        "tech",
    ),
    **dict.fromkeys(("JPM", "V", "MA"), "financials"),
    **dict.fromkeys(("JNJ", "PFE", "MRK", "ABT", "UNH"), "health"),
    **dict.fromkeys(("KO", "PEP", "PG", "WMT"), "staples"),
    **dict.fromkeys(("HD", "NKE", "DIS"), "consumer"),
    **dict.fromkeys(("T", "VZ", "CMCSA"), "telecom"),
    **dict.fromkeys(("XOM", "CAT"), "industrial"),
}
_SECTOR_NAMES = sorted(set(SECTORS.values()))
DEFAULT_SYMBOLS: tuple[str, ...] = ("SPY", *sorted(SECTORS))

_MARKET_VOL = 0.0100  # SPY-like daily vol (sample vol lands near 1 %)
_SECTOR_VOL = 0.008
_T_DF = 4.0


def _rng(seed: int, label: str) -> np.random.Generator:
    """Per-component streams, so adding a symbol never changes another symbol's path."""
    return np.random.default_rng([seed, zlib.crc32(label.encode())])


def _garch_t(
    rng: np.random.Generator,
    n: int,
    vol: float,
    *,
    alpha: float = 0.06,
    beta: float = 0.90,
    cap: float = 3.5,
) -> np.ndarray:
    """GARCH(1,1) returns with unit-variance Student-t(4) shocks: fat tails plus clustering."""
    z = rng.standard_t(_T_DF, size=n) / math.sqrt(_T_DF / (_T_DF - 2))
    target = vol * vol
    omega = target * (1 - alpha - beta)
    ceiling = (cap * vol) ** 2
    out = np.empty(n)
    var = target
    for t in range(n):
        r = math.sqrt(var) * z[t]
        out[t] = r
        var = min(omega + alpha * r * r + beta * var, ceiling)
    return out


class SyntheticMarketData(_FrameSource):
    """A seeded fake market over NYSE sessions, for sim mode and tests without real data.

    Daily log return of symbol i: drift + beta_i * market + gamma_i * sector + idiosyncratic,
    each component a GARCH(1,1) series with Student-t(4) shocks. SPY is the market factor plus
    a sliver of noise (~1 % daily vol); stocks land at 1 to 3 %. The same seed, symbols and dates
    give identical frames; each symbol's path depends only on the seed, its name and the dates.

    The idiosyncratic part mean-reverts day to day (AR(1) with coefficient `reversal`, a
    short-term reversal much stronger than real markets show): the demo market has something
    a model can learn, so sim mode trades with the default thresholds. Real data gives the
    honest figures (README).
    """

    def __init__(
        self,
        symbols: Sequence[str] = DEFAULT_SYMBOLS,
        start: DateLike = date(2018, 1, 2),
        end: DateLike = date(2021, 12, 31),
        seed: int = 42,
        calendar: NyseCalendar | None = None,
        reversal: float = -0.6,
    ) -> None:
        super().__init__()
        if not -1 < reversal < 1:
            raise ValidationError("reversal must be inside (-1, 1)", field="reversal")
        self._reversal = reversal
        self._calendar = calendar or NyseCalendar()
        syms = [_norm_symbol(s) for s in symbols]
        self._symbols = list(dict.fromkeys(["SPY", *syms]))
        self._seed = int(seed)
        self._index = self._calendar.sessions_index(start, end)
        if len(self._index) < 2:
            raise ValidationError("synthetic market needs at least two sessions", field="end")
        n = len(self._index)
        self._market = _garch_t(_rng(self._seed, "market"), n, _MARKET_VOL)
        self._sectors = {
            name: _garch_t(_rng(self._seed, f"sector:{name}"), n, _SECTOR_VOL)
            for name in _SECTOR_NAMES
        }
        self._frames: dict[str, BarFrame] = {}

    def available_symbols(self) -> list[str]:
        return sorted(self._symbols)

    def _frame(self, symbol: str) -> BarFrame:
        if symbol not in self._symbols:
            raise NotFoundError(f"unknown symbol {symbol!r}", field="symbol")
        with self._lock:
            frame = self._frames.get(symbol)
            if frame is None:
                frame = self._generate(symbol)
                self._frames[symbol] = frame
            return frame

    def _generate(self, symbol: str) -> BarFrame:
        rng = _rng(self._seed, f"symbol:{symbol}")
        n = len(self._index)
        if symbol == "SPY":
            beta, gamma, idio_vol = 1.0, 0.0, 0.001
            sector = np.zeros(n)
            drift = 0.07 / 252
            price0 = rng.uniform(180.0, 260.0)
            base_volume = 8e7
        else:
            beta = rng.uniform(0.8, 1.3)
            gamma = rng.uniform(0.6, 1.0)
            idio_vol = rng.uniform(0.007, 0.020)
            name = (
                SECTORS.get(symbol)
                or _SECTOR_NAMES[zlib.crc32(symbol.encode()) % len(_SECTOR_NAMES)]
            )
            sector = self._sectors[name]
            drift = rng.uniform(0.02, 0.12) / 252
            price0 = rng.uniform(20.0, 300.0)
            base_volume = rng.uniform(2e6, 6e7)
        sigma = math.sqrt((beta * _MARKET_VOL) ** 2 + (gamma * _SECTOR_VOL) ** 2 + idio_vol**2)
        shocks = _garch_t(rng, n, idio_vol * math.sqrt(1 - self._reversal**2))
        idio = np.empty(n)
        previous = 0.0
        for t in range(n):
            previous = self._reversal * previous + shocks[t]
            idio[t] = previous
        r = drift + beta * self._market + gamma * sector + idio

        # Split each day's return into overnight gap and intraday move; close-to-close stays r.
        gap = 0.35 * r + rng.normal(0.0, 0.25 * sigma, n)
        log_close = math.log(price0) + np.cumsum(r)
        close = np.exp(log_close)
        prev_close = np.exp(np.concatenate([[math.log(price0)], log_close[:-1]]))
        open_ = prev_close * np.exp(gap)
        high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.4 * sigma, n)))
        low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.4 * sigma, n)))
        volume = np.maximum(
            1.0,
            np.round(base_volume * np.exp(0.8 * np.abs(r) / sigma - 0.5 + rng.normal(0, 0.25, n))),
        )
        frame = pd.DataFrame(
            {"open": open_, "high": high, "low": low, "close": close, "volume": volume},
            index=self._index.copy(),
        ).astype("float64")
        frame.index.name = "date"
        return frame
