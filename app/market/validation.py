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

_counts_lock = threading.Lock()
_rejection_counts: Counter[str] = Counter()
#: The latest rejection reason per (symbol, day), so a cycle can say why a session has no bar.
_recent: OrderedDict[tuple[str, date], str] = OrderedDict()
_RECENT_MAX = 4096


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


def _remember(symbol: str, day: date, reason: str) -> None:
    with _counts_lock:
        _recent[(symbol, day)] = reason
        _recent.move_to_end((symbol, day))
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
    symbol: str,
    frame: pd.DataFrame,
    calendar: NyseCalendar | None = None,
    max_jump: float | None = DEFAULT_MAX_JUMP,
) -> ValidationResult:
    """Drop bars no model should see, and say why for each.

    Dropped (``rejected``): duplicate dates (first kept), NaN/inf values, prices <= 0, negative
    or zero volume (zero = placeholder bar), inconsistent OHLC, dates that are not NYSE
    sessions, unexplained jumps (see `_flag_jumps`; `max_jump=None` turns the rule off). One
    entry per dropped bar; several reasons are joined with "; ". Reported only
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

    if max_jump is not None and n > 1:
        _flag_jumps(symbol, df.index, lo, h, c, codes, reasons, 1.0 + max_jump)

    rejected: list[Rejection] = []
    keep = np.ones(n, dtype=bool)
    for row in range(n):
        if codes[row]:
            keep[row] = False
            day = df.index[row].date()
            reason = "; ".join(reasons[row])
            rejected.append(Rejection(day, reason))
            _remember(symbol.upper(), day, reason)
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


def _flag_jumps(
    symbol: str,
    index: pd.DatetimeIndex,
    low: np.ndarray,
    high: np.ndarray,
    close: np.ndarray,
    codes: list[list[str]],
    reasons: list[list[str]],
    factor: float,
) -> None:
    """Reject a bar whose whole range lies beyond `factor` of the last kept close.

    A split or dividend the history was not adjusted for rescales the whole bar, open to
    close, so the session never trades near the previous close; a real crash or rally day
    (2008, 2020, earnings gaps) trades through or near it. The reference stays the last
    *kept* close, so every bar after an unadjusted split is rejected until the source's
    history is re-adjusted (the cache then re-fetches it), never silently accepted.
    """
    ok = np.flatnonzero([not c for c in codes])
    if len(ok) < 2:
        return
    ref = close[ok[:-1]]
    nxt = ok[1:]
    if not ((low[nxt] > ref * factor) | (high[nxt] * factor < ref)).any():
        return  # the common case: no candidate, no loop
    last = int(ok[0])
    for i in (int(x) for x in ok[1:]):
        prev = close[last]
        if low[i] > prev * factor or high[i] * factor < prev:
            codes[i].append("jump")
            reasons[i].append(
                f"jump: {symbol} {index[i].date()} traded only in {_fmt(low[i])}..{_fmt(high[i])}, "
                f"beyond x{factor:g} of the close {_fmt(prev)} on {index[last].date()} "
                "(an unadjusted split or dividend, or a bad print)"
            )
            continue
        last = i
