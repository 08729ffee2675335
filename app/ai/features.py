"""Features and labels for the return models, from daily bars only.

Why these rules:
- Strictly causal: the feature row at session t uses bars dated <= t only (close_t included: the
  decision is taken after the close). Truncating the data at t never changes the row at t.
- Finite memory: every feature needs at most ``MAX_LOOKBACK`` (120) bars, so a live prediction
  from the last 120 bars equals the backtest's row computed from 17 years of history. That is why
  MACD uses truncated, renormalised EMA kernels and RSI uses simple (Cutler) averages instead of
  Wilder's infinite-memory smoothing.
- The label is what a trade earns under our execution: a decision after the close of t is filled
  at the open of t+1 and held `horizon` (h) sessions, so ``label_t = open_{t+1+h} / open_{t+1} - 1``
  (h = AI_PREDICTION_HORIZON_DAYS; the seed's h = 1). ``label_end`` is the date of that last open:
  the label becomes known when that session opens. The last h+1 rows of every symbol have NaN
  labels. Optionally the label is normalised across the symbols of each date (excess over their
  mean, or their rank), as Qlib does: the model then learns who beats whom, not where the market
  goes; a normalised label's ``label_end`` is the latest of its date's.
- Two feature sets (AI_FEATURE_SET): ``seed`` (FEATURE_COLUMNS, MAX_LOOKBACK) and ``extended``
  (the seed's columns, then app.ai.features_extended's, from EXTENDED_LOOKBACK bars). A model
  records the set it was trained on and is only used with that set (``trained_feature_set``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from itertools import chain

import numpy as np
import numpy.typing as npt
import pandas as pd

from app.ai.features_extended import (
    EXTENDED_BASE_COLUMNS,
    EXTENDED_LOOKBACK,
    EXTENDED_LOOKBACK_CALENDAR_DAYS,
    EXTENDED_RANKED,
    extended_features,
)
from app.ai.panel import BAR_COLUMNS, Array, Panel, rolling, shift
from app.domain import BarFrame

__all__ = [
    "FEATURE_COLUMNS",
    "FEATURE_SETS",
    "LABEL_COLUMN",
    "LABEL_END_COLUMN",
    "LABEL_HORIZON",
    "LABEL_NORMALISATIONS",
    "MAX_LOOKBACK",
    "SEED_FEATURE_SET",
    "SEED_LABEL",
    "build_features",
    "feature_columns",
    "history_calendar_days",
    "label_sessions",
    "latest_features",
    "max_lookback",
    "normalise_labels",
    "trained_feature_set",
    "trained_label",
]

#: Bars (including t) any feature row needs; rows with less history are dropped.
MAX_LOOKBACK = 120
#: Sessions from the decision to the end of the seed's labelled trade (open_{t+2}, h = 1).
LABEL_HORIZON = 2
#: raw: the return itself; excess: minus the date's cross-sectional mean; rank: the date's
#: cross-sectional rank scaled to [-0.5, 0.5].
LABEL_NORMALISATIONS = ("raw", "excess", "rank")
LABEL_COLUMN = "label"
LABEL_END_COLUMN = "label_end"

_RETURN_HORIZONS = (1, 2, 5, 10, 20, 60)
_VOL_WINDOWS = (5, 20, 60)
# Truncated EMA windows: (25/27)^96 and (11/13)^96 leave < 0.1 % weight out; the MACD signal
# EMA on top needs 25 more bars, so MACD uses 96 + 25 - 1 = 120 bars.
_MACD_FAST, _MACD_SLOW, _MACD_SIGNAL = 12, 26, 9
_MACD_WINDOW, _MACD_SIGNAL_WINDOW = 96, 25
#: Features also ranked across symbols per date (pooled models learn relative strength).
_RANKED = ("ret_1", "ret_5", "ret_20", "vol_20", "volume_z_20", "rsi_14")

_BASE_COLUMNS = [
    *(f"ret_{h}" for h in _RETURN_HORIZONS),
    *(f"vol_{w}" for w in _VOL_WINDOWS),
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_pct_b_20",
    "bb_width_20",
    "volume_z_20",
    "gap",
    "intraday",
    "range",
    "dist_high_120",
    "dist_low_120",
    "rel_ret_20_spy",
    "corr_spy_60",
    "beta_spy_60",
]
#: Model inputs, in the order models see them.
FEATURE_COLUMNS: list[str] = [*_BASE_COLUMNS, *(f"cs_rank_{name}" for name in _RANKED)]

#: AI_FEATURE_SET's values; the seed's is what every model saved before it was trained on.
FEATURE_SETS = ("seed", "extended")
SEED_FEATURE_SET = "seed"
_EXTENDED_COLUMNS: list[str] = [
    *FEATURE_COLUMNS,
    *EXTENDED_BASE_COLUMNS,
    *(f"cs_rank_{name}" for name in EXTENDED_RANKED),
]


def _check_feature_set(feature_set: str) -> None:
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"feature set must be one of {FEATURE_SETS}, got {feature_set!r}")


def feature_columns(feature_set: str) -> list[str]:
    """The model inputs of `feature_set`, in the order models see them."""
    _check_feature_set(feature_set)
    return list(FEATURE_COLUMNS if feature_set == SEED_FEATURE_SET else _EXTENDED_COLUMNS)


def history_calendar_days(feature_set: str, seed_days: int) -> int:
    """Calendar days of bars a decision fetches for `feature_set`: the caller's seed window,
    or enough for the extended set's year of memory and sector correlations."""
    _check_feature_set(feature_set)
    if feature_set == SEED_FEATURE_SET:
        return seed_days
    return max(seed_days, EXTENDED_LOOKBACK_CALENDAR_DAYS)


def max_lookback(feature_set: str) -> int:
    """Bars (including t) a row of `feature_set` needs: a symbol has rows from its
    max_lookback-th bar on (point-in-time entry into the universe)."""
    _check_feature_set(feature_set)
    return MAX_LOOKBACK if feature_set == SEED_FEATURE_SET else EXTENDED_LOOKBACK


def trained_feature_set(metadata: Mapping[str, object]) -> str:
    """The feature set a model was trained on, from its metadata (before the set was
    configurable: the seed's)."""
    return str(metadata.get("feature_set") or SEED_FEATURE_SET)


def _truncated_ema(values: np.ndarray, span: int, window: int) -> np.ndarray:
    """EMA of each column with its kernel cut at `window` bars and renormalised: finite,
    start-independent."""
    alpha = 2.0 / (span + 1.0)
    weights = (1.0 - alpha) ** np.arange(window)
    weights /= weights.sum()
    out = np.full(values.shape, np.nan)
    if len(values) >= window:
        for j in range(values.shape[1]):
            # convolve flips the kernel, so weights[0] lands on the newest bar of each window.
            out[window - 1 :, j] = np.convolve(values[:, j], weights, mode="valid")
    return out


#: What a model saved before the label became configurable was trained on.
SEED_LABEL = (1, "raw")


def trained_label(metadata: Mapping[str, object]) -> tuple[int, str]:
    """(horizon, normalisation) a model was trained for, from its metadata."""
    horizon, normalisation = metadata.get("horizon"), metadata.get("label_normalisation")
    if horizon is None:
        return SEED_LABEL
    return int(str(horizon)), str(normalisation or "raw")


def label_sessions(horizon: int) -> int:
    """Sessions from the decision (t) to the label's last open (t+1+h)."""
    return horizon + 1


def _panel_features(panel: Panel, spy: BarFrame | None) -> Iterator[tuple[str, Array]]:
    """Each base feature as a (bar position, symbol) array, one at a time (memory)."""
    o, h, low, c, v = (panel.bars[name] for name in BAR_COLUMNS)
    returns = {n: c / shift(c, n) - 1.0 for n in _RETURN_HORIZONS}
    yield from ((f"ret_{n}", ret) for n, ret in returns.items())
    log_ret = np.log(c / shift(c, 1))
    for w in _VOL_WINDOWS:
        yield f"vol_{w}", rolling(log_ret, w).std().to_numpy()

    diff = c - shift(c, 1)
    gain = rolling(np.maximum(diff, 0.0), 14).mean().to_numpy()
    loss = rolling(np.maximum(-diff, 0.0), 14).mean().to_numpy()
    total = gain + loss
    yield "rsi_14", np.where(np.isnan(total), np.nan, np.where(total > 0, gain / total, 0.5))

    fast = _truncated_ema(c, _MACD_FAST, _MACD_WINDOW)
    slow = _truncated_ema(c, _MACD_SLOW, _MACD_WINDOW)
    macd = (fast - slow) / c
    signal = _truncated_ema(macd, _MACD_SIGNAL, _MACD_SIGNAL_WINDOW)
    yield "macd", macd
    yield "macd_signal", signal
    yield "macd_hist", macd - signal

    ma20 = rolling(c, 20).mean().to_numpy()
    sd20 = rolling(c, 20).std(ddof=0).to_numpy()
    yield "bb_pct_b_20", (c - (ma20 - 2.0 * sd20)) / np.where(sd20 > 0, 4.0 * sd20, np.nan)
    yield "bb_width_20", 4.0 * sd20 / ma20

    log_vol = np.log1p(np.maximum(v, 0.0))
    vol_sd = rolling(log_vol, 20).std().to_numpy()
    vol_mean = rolling(log_vol, 20).mean().to_numpy()
    yield "volume_z_20", (log_vol - vol_mean) / np.where(vol_sd > 0, vol_sd, np.nan)

    yield "gap", o / shift(c, 1) - 1.0
    yield "intraday", c / o - 1.0
    yield "range", (h - low) / c
    yield "dist_high_120", c / rolling(h, MAX_LOOKBACK).max().to_numpy() - 1.0
    yield "dist_low_120", c / rolling(low, MAX_LOOKBACK).min().to_numpy() - 1.0

    if spy is None or spy.empty:
        for name in ("rel_ret_20_spy", "corr_spy_60", "beta_spy_60"):
            yield name, np.full(c.shape, np.nan)
        return
    spy_close = spy["close"].astype(float)
    # SPY quantities are computed on SPY's own sessions, then aligned by date.
    yield "rel_ret_20_spy", returns[20] - panel.aligned(spy_close / spy_close.shift(20) - 1.0)
    spy_log_ret = pd.DataFrame(panel.aligned(np.log(spy_close / spy_close.shift(1))), copy=False)
    window = rolling(log_ret, 60)
    yield "corr_spy_60", window.corr(spy_log_ret, pairwise=False).to_numpy()
    spy_var = spy_log_ret.rolling(60, min_periods=60).var().to_numpy()
    cov = window.cov(spy_log_ret, pairwise=False).to_numpy()
    yield "beta_spy_60", cov / np.where(spy_var > 0, spy_var, np.nan)


@dataclass(frozen=True)
class _Rows:
    """The output rows: each symbol's bars from its `lookback`-th on (warm-up rows would carry
    partly-defined features that live prediction never sees), ordered by (date, symbol).
    `source`: a row's cell in the panel; `cells`: its cell in a (date, symbol) grid."""

    source: npt.NDArray[np.intp]
    cells: npt.NDArray[np.intp]
    grid_shape: tuple[int, int]
    index: pd.MultiIndex

    @classmethod
    def of(cls, panel: Panel, lookback: int) -> _Rows:
        n = len(panel.symbols)
        position = np.arange(len(panel.dates))[:, None]
        keep = (position >= lookback - 1) & (position < panel.lengths[None, :])
        source = np.flatnonzero(keep)
        days, day_codes = np.unique(panel.dates.ravel()[source], return_inverse=True)
        cells = day_codes * n + source % n
        order = np.argsort(cells)
        source, cells = source[order], cells[order]
        index = pd.MultiIndex(
            levels=[pd.DatetimeIndex(days, name="date"), pd.Index(panel.symbols, name="symbol")],
            codes=[cells // n, cells % n],
            names=["date", "symbol"],
        )
        return cls(source, cells, (len(days), n), index)

    def take(self, values: Array) -> Array:
        """A panel array's values at the rows; infinities become NaN."""
        out = values.ravel()[self.source]
        out[np.isinf(out)] = np.nan
        return out

    def rank(self, values: Array) -> Array:
        """Each row's value ranked among its date's rows into [0, 1] (0.5 when alone); NaN
        stays NaN. Average ranks for ties."""
        grid = np.full(self.grid_shape, np.nan)
        grid.ravel()[self.cells] = values
        ranks = pd.DataFrame(grid, copy=False).rank(axis=1, method="average").to_numpy()
        counts = np.broadcast_to(np.isfinite(grid).sum(axis=1, keepdims=True), grid.shape)
        scaled = np.where(counts > 1, (ranks - 1.0) / np.maximum(counts - 1.0, 1.0), 0.5)
        out = scaled.ravel()[self.cells]
        out[np.isnan(values)] = np.nan
        return out


def normalise_labels(frame: pd.DataFrame, how: str) -> pd.DataFrame:
    """Labels made relative to the other symbols of the same date (`how` in
    LABEL_NORMALISATIONS). A date with one known label gets NaN: nothing to compare with. The
    date's ``label_end`` becomes its latest, since the normalised label needs every label of it."""
    if how not in LABEL_NORMALISATIONS:
        raise ValueError(f"label normalisation must be one of {LABEL_NORMALISATIONS}, got {how!r}")
    if how == "raw" or frame.empty:
        return frame
    grouped = frame.groupby(level="date")[LABEL_COLUMN]
    counts = grouped.transform("count")
    if how == "excess":
        normalised = frame[LABEL_COLUMN] - grouped.transform("mean")
    else:
        ranks = grouped.rank(method="average")
        normalised = (ranks - 1.0) / (counts - 1.0).where(counts > 1) - 0.5
    frame[LABEL_COLUMN] = normalised.where(counts > 1)
    known = frame[LABEL_COLUMN].notna()
    latest = frame[LABEL_END_COLUMN].where(known).groupby(level="date").transform("max")
    frame[LABEL_END_COLUMN] = latest.where(known)
    return frame


def _empty_frame(columns: list[str]) -> pd.DataFrame:
    index = pd.MultiIndex.from_arrays(
        [pd.DatetimeIndex([], name="date"), pd.Index([], dtype=object, name="symbol")]
    )
    frame = pd.DataFrame(index=index, columns=columns, dtype=np.float32)
    frame[LABEL_COLUMN] = pd.Series(index=index, dtype=np.float64)
    frame[LABEL_END_COLUMN] = pd.Series(pd.DatetimeIndex([]), index=index)
    return frame


def build_features(
    bars: Mapping[str, BarFrame],
    spy: BarFrame | None,
    *,
    horizon: int = 1,
    normalisation: str = "raw",
    feature_set: str = SEED_FEATURE_SET,
) -> pd.DataFrame:
    """Long-format features: MultiIndex (date, symbol), ``feature_columns(feature_set)``
    (float32), ``label`` (float64), ``label_end``.

    Rows exist from each symbol's ``max_lookback(feature_set)``-th bar on; the last `horizon` + 1
    rows per symbol have NaN labels (and NaT label_end). `spy` feeds the relative-strength
    features (NaN when None); the extended set also looks up the sector ETFs and TLT in `bars`.
    `normalisation`: see ``normalise_labels``. Features are computed in float64 and stored as
    float32, what the models read (half the memory of a broad universe).
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1 session, got {horizon}")
    columns, lookback = feature_columns(feature_set), max_lookback(feature_set)
    panel = Panel.of(bars, lookback)
    if not panel.symbols:
        return _empty_frame(columns)
    rows = _Rows.of(panel, lookback)
    # Filled one contiguous column at a time; the frame's block is this array, not a copy.
    values = np.empty((len(columns), len(rows.source)), dtype=np.float32)
    position = {name: i for i, name in enumerate(columns)}
    spy = spy.sort_index() if spy is not None else None
    computed = _panel_features(panel, spy)
    ranked = set(_RANKED)
    if feature_set != SEED_FEATURE_SET:
        computed = chain(computed, extended_features(panel, bars, spy))
        ranked |= set(EXTENDED_RANKED)
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, panel_values in computed:
            column = rows.take(panel_values)
            values[position[name]] = column
            if name in ranked:
                values[position[f"cs_rank_{name}"]] = rows.rank(column)
        k = label_sessions(horizon)
        opens = panel.bars["open"]
        label = rows.take(shift(opens, -k) / shift(opens, -1) - 1.0)
    ends = np.full(panel.dates.shape, np.datetime64("NaT"), dtype="datetime64[ns]")
    ends[:-k] = panel.dates[k:]
    frame = pd.DataFrame(values.T, index=rows.index, columns=columns, copy=False)
    frame[LABEL_COLUMN] = label
    frame[LABEL_END_COLUMN] = ends.ravel()[rows.source]
    return normalise_labels(frame, normalisation)


def latest_features(
    bars: Mapping[str, BarFrame],
    spy: BarFrame | None,
    as_of: date | datetime | str,
    feature_set: str = SEED_FEATURE_SET,
) -> pd.DataFrame:
    """Feature rows at `as_of`, indexed by symbol, from the last ``max_lookback(feature_set)``
    bars <= as_of.

    A symbol without a bar on `as_of` (or with too little history) is left out: a decision on a
    stale bar would be a decision on the wrong day.
    """
    day = pd.Timestamp(as_of).normalize()
    lookback = max_lookback(feature_set)
    clipped = {sym: frame.loc[:day].tail(lookback) for sym, frame in bars.items()}
    spy_clipped = spy.loc[:day].tail(lookback) if spy is not None else None
    frame = build_features(clipped, spy_clipped, feature_set=feature_set)
    if frame.empty:
        rows = frame.droplevel("date")
    else:
        dates = frame.index.get_level_values("date")
        rows = frame[dates == day].droplevel("date")
    return rows[feature_columns(feature_set)]
