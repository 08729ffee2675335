"""Every symbol's bars side by side as (bar position, symbol) arrays, and the column-wise
shift and rolling window the features are computed with (app.ai.features and
app.ai.features_extended share them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.api.typing import Rolling

from app.domain import BarFrame

Array: TypeAlias = npt.NDArray[np.float64]
BAR_COLUMNS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class Panel:
    """Every symbol's bars side by side, as (bar position, symbol) arrays: each column starts at
    its symbol's own first bar and is padded with NaN after its last. A column is that symbol's
    series alone, so all symbols are computed at once and exactly as each would be alone (same
    start, same arithmetic; the padding only trails)."""

    symbols: list[str]
    lengths: npt.NDArray[np.int64]
    dates: npt.NDArray[np.datetime64]  # NaT after a symbol's last bar
    bars: dict[str, Array]

    @classmethod
    def of(cls, bars: Mapping[str, BarFrame], lookback: int) -> Panel:
        """The symbols with at least `lookback` bars (fewer give no feature row)."""
        symbols = [s for s in sorted(bars) if len(bars[s]) >= lookback]
        frames = [bars[s].sort_index() for s in symbols]
        length = max((len(f) for f in frames), default=0)
        values = np.full((len(BAR_COLUMNS), length, len(symbols)), np.nan)
        dates = np.full((length, len(symbols)), np.datetime64("NaT"), dtype="datetime64[ns]")
        for j, frame in enumerate(frames):
            values[:, : len(frame), j] = frame[list(BAR_COLUMNS)].to_numpy(dtype=np.float64).T
            dates[: len(frame), j] = frame.index.to_numpy(dtype="datetime64[ns]")
        lengths = np.array([len(f) for f in frames], dtype=np.int64)
        return cls(symbols, lengths, dates, dict(zip(BAR_COLUMNS, values, strict=True)))

    def aligned(self, series: pd.Series) -> Array:
        """`series` (indexed by date) at each symbol's own dates."""
        found = series.reindex(pd.DatetimeIndex(self.dates.ravel())).to_numpy(dtype=np.float64)
        aligned: Array = found.reshape(self.dates.shape)
        return aligned


def shift(values: Array, n: int) -> Array:
    """Each column moved `n` bars later (earlier when negative); NaN where nothing moved in."""
    out = np.full(values.shape, np.nan)
    if n > 0:
        out[n:] = values[:-n]
    else:
        out[:n] = values[-n:]
    return out


def rolling(values: Array, window: int) -> Rolling:
    """Each column's rolling window over its own bars, every bar of the window required."""
    return pd.DataFrame(values, copy=False).rolling(window, min_periods=window)
