"""The extended feature set (AI_FEATURE_SET=extended): longer memory, sector relative strength,
market regime. Added to the seed's columns, never replacing them.

Why these rules:
- Point in time, as the seed's: the value at session t uses bars dated <= t only, and at most
  ``EXTENDED_LOOKBACK`` (276) bars of each series, so a live row from the last 276 bars equals
  the backtest's row from the whole history.
- Sectors without a sector map (the data has none): a stock's "sector" is the sector SPDR ETF
  whose daily log returns correlated most with its own over the 252 sessions ending at the last
  bar of the previous calendar month. The assignment changes at most monthly and is known
  before the month it serves; 252 + 1 bars for the window and up to 23 sessions of the current
  month make the 276. The correlation asks for 200 valid pairs of the 252, so one rejected ETF
  bar does not drop that ETF for a year.
- What is missing is NaN, never guessed (LightGBM / XGBoost route NaN down a learned branch):
  without any sector ETF loaded (the 32-name watchlist of ../shared/data/daily has none, only
  the broad universe's etf/ folder has them) both sector columns are NaN; without SPY the
  regime's SPY columns and the sector-minus-SPY one are; without TLT, ``tlt_ret_63`` is.
- ETFs, SPY and TLT quantities are computed on their own sessions, then aligned by date.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd

from app.ai.panel import Array, Panel, rolling, shift
from app.domain import BarFrame

__all__ = [
    "CONTEXT_COLUMNS",
    "EXTENDED_BASE_COLUMNS",
    "EXTENDED_LOOKBACK",
    "EXTENDED_LOOKBACK_CALENDAR_DAYS",
    "EXTENDED_RANKED",
    "SECTOR_ETFS",
    "extended_features",
    "sector_assignment",
]

#: The sector SPDR ETFs a stock's sector is chosen among (the broad universe's etf/ folder).
SECTOR_ETFS = ("XLB", "XLE", "XLF", "XLI", "XLK", "XLP", "XLU", "XLV", "XLY")
RATES_ETF = "TLT"
_YEAR, _SKIP, _HALF_YEAR, _QUARTER = 252, 21, 126, 63
#: Most sessions of one calendar month on the NYSE (1995-2021: 23).
_MONTH_SESSIONS = 23
_MIN_CORRELATION_PAIRS = 200
_SMA_SPY, _VOL_SPY = 200, 20
#: Bars (including t) any extended row needs: the sector's correlation window (252 returns,
#: 253 bars) ending up to a month (23 sessions) before t.
EXTENDED_LOOKBACK = _YEAR + 1 + _MONTH_SESSIONS
#: Calendar days that hold EXTENDED_LOOKBACK sessions, with room for holidays.
EXTENDED_LOOKBACK_CALENDAR_DAYS = 420

EXTENDED_BASE_COLUMNS = [
    "ret_126",
    "mom_12_1",
    "dist_high_252",
    "vol_252",
    "sector_rel_ret_63_spy",
    "rel_ret_63_sector",
    "spy_sma_200_gap",
    "spy_vol_20",
    "tlt_ret_63",
]
#: Columns from other series than the symbol's (sector ETFs, SPY, TLT): NaN when not loaded.
CONTEXT_COLUMNS = frozenset(
    ("sector_rel_ret_63_spy", "rel_ret_63_sector", "spy_sma_200_gap", "spy_vol_20", "tlt_ret_63")
)
#: Extended features also ranked across the date's symbols.
EXTENDED_RANKED = ("ret_126", "mom_12_1", "dist_high_252", "vol_252")


def _close(frame: BarFrame | None) -> pd.Series | None:
    """A series' closes by date, or None when it is not loaded."""
    if frame is None or frame.empty:
        return None
    return frame["close"].astype(float).sort_index()


def _aligned_return(panel: Panel, close: pd.Series | None, sessions: int) -> Array:
    """`close`'s return over `sessions` of its own sessions, at each symbol's dates; NaN when
    the series is not loaded."""
    if close is None:
        return np.full(panel.dates.shape, np.nan)
    return panel.aligned(close / close.shift(sessions) - 1.0)


def _previous_month_end(panel: Panel) -> np.ndarray:
    """For each (bar position, symbol), the position of the symbol's last bar of the previous
    calendar month (-1 when its series starts this month)."""
    months = panel.dates.astype("datetime64[M]")
    position = np.broadcast_to(np.arange(len(months))[:, None], months.shape)
    starts = np.ones(months.shape, dtype=bool)
    starts[1:] = months[1:] != months[:-1]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=0)
    anchor: np.ndarray = first - 1
    return anchor


def _sector_closes(bars: Mapping[str, BarFrame]) -> dict[str, pd.Series]:
    """The closes of the sector ETFs that are loaded."""
    found = {etf: _close(bars.get(etf)) for etf in SECTOR_ETFS}
    return {etf: close for etf, close in found.items() if close is not None}


def sector_assignment(panel: Panel, log_ret: Array, closes: Mapping[str, pd.Series]) -> Array:
    """The index (in `closes`) of each cell's sector ETF, NaN when none: the ETF whose log
    returns correlated most with the symbol's over the 252 sessions ending at the symbol's last
    bar of the previous month."""
    best = np.full(log_ret.shape, -np.inf)
    chosen = np.full(log_ret.shape, np.nan)
    window = pd.DataFrame(log_ret, copy=False).rolling(_YEAR, min_periods=_MIN_CORRELATION_PAIRS)
    for k, close in enumerate(closes.values()):
        etf_ret = pd.DataFrame(panel.aligned(np.log(close / close.shift(1))), copy=False)
        corr = window.corr(etf_ret, pairwise=False).to_numpy()
        better = np.isfinite(corr) & (corr > best)
        best[better] = corr[better]
        chosen[better] = k
    anchor = _previous_month_end(panel)
    column = np.broadcast_to(np.arange(log_ret.shape[1])[None, :], anchor.shape)
    assigned: Array = np.where(anchor >= 0, chosen[np.maximum(anchor, 0), column], np.nan)
    return assigned


def _sector_features(
    panel: Panel, log_ret: Array, ret_63: Array, bars: Mapping[str, BarFrame], spy_ret_63: Array
) -> Iterator[tuple[str, Array]]:
    closes = _sector_closes(bars)
    assigned = sector_assignment(panel, log_ret, closes)
    sector_ret = np.full(ret_63.shape, np.nan)
    for k, close in enumerate(closes.values()):
        mine = assigned == k
        sector_ret[mine] = _aligned_return(panel, close, _QUARTER)[mine]
    yield "sector_rel_ret_63_spy", sector_ret - spy_ret_63
    yield "rel_ret_63_sector", ret_63 - sector_ret


def extended_features(
    panel: Panel, bars: Mapping[str, BarFrame], spy: BarFrame | None
) -> Iterator[tuple[str, Array]]:
    """Each extended base feature as a (bar position, symbol) array, one at a time. `bars` is
    every loaded series (the sector ETFs and TLT are looked up in it); `spy` the benchmark."""
    h, c = panel.bars["high"], panel.bars["close"]
    yield "ret_126", c / shift(c, _HALF_YEAR) - 1.0
    yield "mom_12_1", shift(c, _SKIP) / shift(c, _YEAR) - 1.0
    yield "dist_high_252", c / rolling(h, _YEAR).max().to_numpy() - 1.0
    log_ret = np.log(c / shift(c, 1))
    yield "vol_252", rolling(log_ret, _YEAR).std().to_numpy()

    nan = np.full(c.shape, np.nan)
    spy_close = _close(spy)
    spy_ret_63 = _aligned_return(panel, spy_close, _QUARTER)
    yield from _sector_features(panel, log_ret, c / shift(c, _QUARTER) - 1.0, bars, spy_ret_63)

    if spy_close is None:
        yield "spy_sma_200_gap", nan
        yield "spy_vol_20", nan
    else:
        sma = spy_close.rolling(_SMA_SPY, min_periods=_SMA_SPY).mean()
        yield "spy_sma_200_gap", panel.aligned(spy_close / sma - 1.0)
        spy_log = np.log(spy_close / spy_close.shift(1))
        yield "spy_vol_20", panel.aligned(spy_log.rolling(_VOL_SPY, min_periods=_VOL_SPY).std())
    yield "tlt_ret_63", _aligned_return(panel, _close(bars.get(RATES_ETF)), _QUARTER)
