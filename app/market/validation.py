"""Bar validation: bad bars are rejected with a reason, and the reasons are counted.

Bar frames (``domain.BarFrame``) are pandas DataFrames indexed by a ``DatetimeIndex`` named
``"date"`` holding session dates (normalised to midnight, tz-naive, ascending, unique) with float
columns ``open, high, low, close, volume``.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import date
from typing import NamedTuple

import numpy as np
import pandas as pd

from app.domain import BAR_COLUMNS, BarFrame
from app.errors import ValidationError
from app.market.calendar import _NY_TZ, NyseCalendar

logger = logging.getLogger(__name__)


#: Relative tolerance for OHLC consistency: adjusted real data has 1e-16-sized violations
#: (e.g. high a rounding error below close) that are not defects.
OHLC_REL_TOL = 1e-6

#: Default bound of the jump rule (BAR_MAX_JUMP): a bar whose whole range lies more than this
#: factor beyond the previous close (above 1.6x or below 1/1.6 of it) is rejected. Real
#: 2004-2021 bars of the 32 symbols reach 1.52x at most (NFLX 2004-10-15); a 2:1 split is 2x.
DEFAULT_MAX_JUMP = 0.6

#: A bar whose whole range lies this factor or more beyond the last kept close ends the series:
#: no session of a listed stock moves that far (the broad files' largest real move is FNMA's
#: 3.4x on 2008-09-08), while a reused ticker's other security does (5x to 34 000x there).
BREAK_FACTOR = 5.0

_counts_lock = threading.Lock()
_rejection_counts: Counter[str] = Counter()
#: The latest rejection reason per (symbol, day), so a cycle can say why a session has no bar.
_recent: OrderedDict[tuple[str, date], str] = OrderedDict()
_RECENT_MAX = 4096
_DAY_NS = 86_400_000_000_000


def rejection_counts() -> dict[str, int]:
    """Rejections since start (or the last reset) by reason code, for Prometheus to export."""
    with _counts_lock:
        return dict(_rejection_counts)


def reset_rejection_counts() -> None:
    with _counts_lock:
        _rejection_counts.clear()


def _count(counts: Counter[str]) -> None:
    with _counts_lock:
        _rejection_counts.update(counts)


def _remember(symbol: str, rejected: list[Rejection]) -> None:
    with _counts_lock:
        for day, reason in rejected[-_RECENT_MAX:]:
            _recent.pop((symbol, day), None)  # so it moves to the end, as the newest
            _recent[(symbol, day)] = reason
        while len(_recent) > _RECENT_MAX:
            _recent.popitem(last=False)


def recent_rejection(symbol: str, day: date) -> str | None:
    """Why the bar of `symbol` on `day` was last rejected in this process, if it was."""
    with _counts_lock:
        return _recent.get((symbol.upper(), day))


class Rejection(NamedTuple):
    """One problem found: the date and a reason starting with its code (e.g. "zero_volume:")."""

    day: date
    reason: str

    @property
    def code(self) -> str:
        return self.reason.split(":", 1)[0]

    @property
    def codes(self) -> list[str]:
        """Every reason's code, in order (a bar can fail several checks)."""
        return [part.split(":", 1)[0] for part in self.reason.split("; ")]


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
    """Bring an input frame into BarFrame shape (index, dtypes, order) without judging rows.
    Input already in that shape (a CSV's floats and dates) takes the cheap path of each step."""
    missing = [c for c in BAR_COLUMNS if c not in frame.columns]
    if missing:
        raise ValidationError(f"{symbol}: bar frame lacks columns {missing}", field="columns")
    dates = frame["date"] if "date" in frame.columns else frame.index
    try:
        idx = pd.DatetimeIndex(dates if dates.dtype.kind == "M" else pd.to_datetime(dates))
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"{symbol}: bar index is not dates: {exc}", field="date") from exc
    if idx.tz is not None:
        idx = idx.tz_convert(_NY_TZ).tz_localize(None)
    idx = idx.as_unit("ns")
    if (idx.asi8 % _DAY_NS).any():
        idx = idx.normalize()
    columns = {}
    for name in BAR_COLUMNS:
        column = frame[name]
        if column.dtype.kind not in "fiu":
            column = pd.to_numeric(column, errors="coerce")
        columns[name] = column.to_numpy(dtype="float64")
    df = pd.DataFrame(columns, index=idx.rename("date"))
    if idx.is_monotonic_increasing:
        return df
    # Stable sort keeps duplicates in input order, so "keep first" means first as given.
    return df.sort_index(kind="mergesort")


def _fmt(x: float) -> str:
    return f"{x:.6g}"


class _Problems:
    """The (code, reason) pairs found per row; only rows with a problem take any memory."""

    def __init__(self) -> None:
        self.rows: dict[int, list[tuple[str, str]]] = {}

    def add(self, row: int, code: str, reason: str) -> None:
        self.rows.setdefault(row, []).append((code, reason))

    def flag(self, mask: np.ndarray, code: str, message: str) -> None:
        for row in np.flatnonzero(mask).tolist():
            self.add(row, code, f"{code}: {message}")


def validate_bars(
    symbol: str,
    frame: pd.DataFrame,
    calendar: NyseCalendar | None = None,
    max_jump: float | None = DEFAULT_MAX_JUMP,
) -> ValidationResult:
    """Drop bars no model should see, and say why for each.

    Dropped (``rejected``): duplicate dates (first kept), NaN/inf values, prices <= 0, negative
    or zero volume (zero = placeholder bar), inconsistent OHLC, dates that are not NYSE
    sessions, unexplained jumps and everything from a series break on (see `_flag_jumps`;
    `max_jump=None` turns both off). One entry per dropped bar; several reasons are joined
    with "; ". Reported only (``gaps``): sessions missing between two present bars. `calendar`
    defaults to NYSE. Rejections are counted by reason code (see `rejection_counts`) and
    logged in one line per call. Kept bars whose OHLC were inconsistent only within
    OHLC_REL_TOL get high/low widened to cover open and close, so every returned bar satisfies
    low <= open, close <= high. Vectorised: only rows with a problem cost Python work.
    """
    cal = calendar or NyseCalendar()
    df = _normalise_frame(symbol, frame)
    n = len(df)
    problems = _Problems()

    o, h, lo, c, v = (df[col].to_numpy() for col in BAR_COLUMNS)
    dup = df.index.duplicated(keep="first")
    problems.flag(dup, "duplicate_date", "a bar for this date came earlier (kept the first)")

    values = df.to_numpy()
    finite = np.isfinite(values)
    nan_rows = ~finite.all(axis=1)
    for i in np.flatnonzero(nan_rows).tolist():
        cols = ", ".join(col for col, ok in zip(BAR_COLUMNS, finite[i], strict=True) if not ok)
        problems.add(i, "nan", f"nan: missing or infinite value in {cols}")

    with np.errstate(invalid="ignore"):
        prices = np.column_stack([o, h, lo, c])
        nonpos = (prices <= 0).any(axis=1)
        for i in np.flatnonzero(nonpos).tolist():
            low_cols = [col for col, x in zip(BAR_COLUMNS[:4], prices[i], strict=True) if x <= 0]
            problems.add(i, "non_positive_price", f"non_positive_price: {', '.join(low_cols)} <= 0")
        problems.flag(v < 0, "negative_volume", "volume below zero")
        problems.flag(v == 0, "zero_volume", "volume is 0 (placeholder bar, no trading)")

        top = np.maximum(o, c)
        bottom = np.minimum(o, c)
        high_low = h < lo * (1 - OHLC_REL_TOL)
        high_body = h < top * (1 - OHLC_REL_TOL)
        low_body = lo > bottom * (1 + OHLC_REL_TOL)
        inconsistent = ~nan_rows & ~nonpos & (high_low | high_body | low_body)
        for i in np.flatnonzero(inconsistent).tolist():
            parts = []
            if high_low[i]:
                parts.append(f"high {_fmt(h[i])} < low {_fmt(lo[i])}")
            if high_body[i]:
                parts.append(f"high {_fmt(h[i])} < max(open, close) {_fmt(top[i])}")
            if low_body[i]:
                parts.append(f"low {_fmt(lo[i])} > min(open, close) {_fmt(bottom[i])}")
            problems.add(i, "inconsistent_ohlc", "inconsistent_ohlc: " + ", ".join(parts))

    s = cal.sessions_index(df.index.min(), df.index.max()) if n else pd.DatetimeIndex([])
    cal_lo, cal_hi = pd.Timestamp(cal.first_session), pd.Timestamp(cal.last_session)
    in_range = (df.index >= cal_lo) & (df.index <= cal_hi)
    not_session = in_range & ~df.index.isin(s)
    problems.flag(not_session, "not_a_session", "not an NYSE trading day")

    if max_jump is not None and n > 1:
        # Prices of a bar are evidence of which security the feed shows even when its volume
        # is 0 (a placeholder at another security's price), so breaks are looked for there too.
        sane = ~(dup | nan_rows | nonpos | inconsistent | not_session)
        eligible = sane & (v > 0)
        _flag_jumps(symbol, df.index, lo, h, c, sane, eligible, 1.0 + max_jump, problems)

    rejected = _record(symbol, df.index, problems)
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
    if gaps:
        logger.warning("gaps in %s bars: %d, first %s", symbol, len(gaps), gaps[0].reason)
        _count(Counter(gap=len(gaps)))

    keep = np.ones(n, dtype=bool)
    keep[list(problems.rows)] = False
    with np.errstate(invalid="ignore"):
        columns = {
            "open": o[keep],
            "high": np.maximum(h, top)[keep],
            "low": np.minimum(lo, bottom)[keep],
            "close": c[keep],
            "volume": v[keep],
        }
    clean = pd.DataFrame(columns, index=df.index[keep])
    return ValidationResult(symbol=symbol, clean_frame=clean, rejected=rejected, gaps=gaps)


def _record(symbol: str, index: pd.DatetimeIndex, problems: _Problems) -> list[Rejection]:
    """The rejections in date order, remembered and counted, and one log line for them all
    (a broad universe's defect files reject thousands of bars each)."""
    rejected: list[Rejection] = []
    codes: Counter[str] = Counter()
    name = symbol.upper()
    rows = sorted(problems.rows)
    for row, day in zip(rows, index[rows].date, strict=True):
        found = problems.rows[row]
        rejected.append(Rejection(day, "; ".join(text for _, text in found)))
        codes.update(code for code, _ in found)
    _remember(name, rejected)
    _count(codes)
    if rejected:
        stop = next((r for r in rejected if "break" in r.codes), None)
        logger.warning(
            "rejected %d bar(s) of %s (%s); first %s%s",
            len(rejected),
            symbol,
            ", ".join(f"{code}={count}" for code, count in sorted(codes.items())),
            rejected[0].reason,
            f"; {stop.reason}" if stop is not None and stop is not rejected[0] else "",
        )
    return rejected


def _flag_jumps(
    symbol: str,
    index: pd.DatetimeIndex,
    low: np.ndarray,
    high: np.ndarray,
    close: np.ndarray,
    sane: np.ndarray,
    eligible: np.ndarray,
    factor: float,
    problems: _Problems,
) -> None:
    """Reject a bar whose whole range lies beyond `factor` of the last kept close (a jump),
    and end the series at one beyond BREAK_FACTOR (a break).

    A split or dividend the history was not adjusted for rescales the whole bar, open to close,
    so the session never trades near the previous close; a real crash or rally day (2008, 2020,
    earnings gaps) trades through or near it. A jump is dropped; the next bar tells what it was:
    back near the last kept close, a bad print; near the jump's own close, a new level (a real
    crash, spin-off or takeover, or a split the history does not show yet, which the bar cache
    re-adjusts once the source does), kept from that bar on. A break ends the series: every
    later bar is rejected, even one that wanders back near the old close, because the feed now
    shows another security under a reused ticker. Each decision uses bars up to its own only.

    `sane` rows take part (a zero-volume one can break the series); only `eligible` ones (no
    other problem) can be kept. Work is done per jump, not per bar.
    """
    rows = np.flatnonzero(sane)
    kept_rows = np.flatnonzero(eligible)
    if len(rows) < 2 or not len(kept_rows):
        return
    # Each sane row against the close of the eligible row before it: the last kept close for as
    # long as no jump is pending, which is all the vectorised pass has to cover.
    before = np.searchsorted(kept_rows, rows, side="left") - 1
    has_ref = before >= 0
    ref = np.where(has_ref, close[kept_rows[np.maximum(before, 0)]], np.nan)
    with np.errstate(invalid="ignore"):
        lo, hi = low[rows], high[rows]
        jump = eligible[rows] & ((lo > ref * factor) | (hi * factor < ref))
        brk = (lo > ref * BREAK_FACTOR) | (hi * BREAK_FACTOR < ref)
    candidates = np.flatnonzero(has_ref & (jump | brk))
    if not len(candidates):
        return  # the common case: no candidate, no loop

    closes: list[float] = close.tolist()
    lows: list[float] = low.tolist()
    highs: list[float] = high.tolist()

    def beyond(row: int, reference: float, bound: float) -> bool:
        return lows[row] > reference * bound or highs[row] * bound < reference

    p = int(candidates[0])
    last = int(kept_rows[before[p]])
    pending: float | None = None
    while True:
        row = int(rows[p])
        if eligible[row] and pending is not None and not beyond(row, pending, factor):
            last, pending = row, None  # the jump's level holds: a new level
        elif beyond(row, closes[last], BREAK_FACTOR):
            _stop(symbol, index, row, last, lows, highs, closes, problems)
            return
        elif not eligible[row]:
            pass
        elif beyond(row, closes[last], factor):
            problems.add(
                row,
                "jump",
                f"jump: {symbol} {index[row].date()} traded only in "
                f"{_fmt(lows[row])}..{_fmt(highs[row])}, beyond x{factor:g} of the close "
                f"{_fmt(closes[last])} on {index[last].date()} (an unadjusted split or "
                "dividend, a bad print, or a new level the next bar confirms)",
            )
            pending = closes[row]
        else:
            last, pending = row, None
        if pending is None:  # caught up: on to the next candidate of the vectorised pass
            at = int(np.searchsorted(candidates, p, side="right"))
            if at == len(candidates):
                return
            p = int(candidates[at])
            last = int(kept_rows[before[p]])
        else:
            p += 1
            if p == len(rows):
                return


def _stop(
    symbol: str,
    index: pd.DatetimeIndex,
    row: int,
    last: int,
    lows: list[float],
    highs: list[float],
    closes: list[float],
    problems: _Problems,
) -> None:
    """Reject the break bar and every bar after it."""
    day = index[row].date()
    move = max(lows[row] / closes[last], closes[last] / highs[row])
    problems.add(
        row,
        "break",
        f"break: {symbol} {day} traded only in {_fmt(lows[row])}..{_fmt(highs[row])}, "
        f"x{move:.3g} away from the close {_fmt(closes[last])} on {index[last].date()}: no "
        "session moves a stock that far (another security under a reused ticker, or a split "
        "the history does not show), so the series ends at that close",
    )
    after = f"after_break: {symbol} ended at the break on {day}"
    for later in range(row + 1, len(index)):
        problems.add(later, "after_break", after)
