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
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime

import numpy as np
import pandas as pd

from app.domain import BarFrame

__all__ = [
    "FEATURE_COLUMNS",
    "LABEL_COLUMN",
    "LABEL_END_COLUMN",
    "LABEL_HORIZON",
    "LABEL_NORMALISATIONS",
    "MAX_LOOKBACK",
    "SEED_LABEL",
    "build_features",
    "label_sessions",
    "latest_features",
    "normalise_labels",
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


def _truncated_ema(values: np.ndarray, span: int, window: int) -> np.ndarray:
    """EMA with its kernel cut at `window` bars and renormalised: finite, start-independent."""
    alpha = 2.0 / (span + 1.0)
    weights = (1.0 - alpha) ** np.arange(window)
    weights /= weights.sum()
    out = np.full(len(values), np.nan)
    if len(values) >= window:
        # convolve flips the kernel, so weights[0] lands on the newest bar of each window.
        out[window - 1 :] = np.convolve(values, weights, mode="valid")
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


def _symbol_features(bars: BarFrame, spy: BarFrame | None, horizon: int = 1) -> pd.DataFrame:
    """One symbol's feature rows (all bars, warm-up rows included) plus label columns."""
    o = bars["open"].astype(float)
    h = bars["high"].astype(float)
    low = bars["low"].astype(float)
    c = bars["close"].astype(float)
    v = bars["volume"].astype(float)
    out = pd.DataFrame(index=bars.index)

    for n in _RETURN_HORIZONS:
        out[f"ret_{n}"] = c / c.shift(n) - 1.0
    log_ret = np.log(c / c.shift(1))
    for w in _VOL_WINDOWS:
        out[f"vol_{w}"] = log_ret.rolling(w, min_periods=w).std()

    diff = c.diff()
    gain = diff.clip(lower=0.0).rolling(14, min_periods=14).mean()
    loss = (-diff).clip(lower=0.0).rolling(14, min_periods=14).mean()
    total = gain + loss
    out["rsi_14"] = (gain / total.where(total > 0)).fillna(0.5).where(total.notna())

    close_np = c.to_numpy()
    fast = _truncated_ema(close_np, _MACD_FAST, _MACD_WINDOW)
    slow = _truncated_ema(close_np, _MACD_SLOW, _MACD_WINDOW)
    macd = (fast - slow) / close_np
    signal = _truncated_ema(macd, _MACD_SIGNAL, _MACD_SIGNAL_WINDOW)
    out["macd"] = macd
    out["macd_signal"] = signal
    out["macd_hist"] = macd - signal

    ma20 = c.rolling(20, min_periods=20).mean()
    sd20 = c.rolling(20, min_periods=20).std(ddof=0)
    band = (4.0 * sd20).where(sd20 > 0)
    out["bb_pct_b_20"] = (c - (ma20 - 2.0 * sd20)) / band
    out["bb_width_20"] = 4.0 * sd20 / ma20

    log_vol = np.log1p(v.clip(lower=0.0))
    vol_sd = log_vol.rolling(20, min_periods=20).std()
    out["volume_z_20"] = (log_vol - log_vol.rolling(20, min_periods=20).mean()) / vol_sd.where(
        vol_sd > 0
    )

    out["gap"] = o / c.shift(1) - 1.0
    out["intraday"] = c / o - 1.0
    out["range"] = (h - low) / c
    out["dist_high_120"] = c / h.rolling(MAX_LOOKBACK, min_periods=MAX_LOOKBACK).max() - 1.0
    out["dist_low_120"] = c / low.rolling(MAX_LOOKBACK, min_periods=MAX_LOOKBACK).min() - 1.0

    if spy is not None and not spy.empty:
        spy_close = spy["close"].astype(float)
        # SPY quantities are computed on SPY's own sessions, then aligned by date.
        spy_ret20 = (spy_close / spy_close.shift(20) - 1.0).reindex(bars.index)
        spy_log_ret = np.log(spy_close / spy_close.shift(1)).reindex(bars.index)
        out["rel_ret_20_spy"] = out["ret_20"] - spy_ret20
        out["corr_spy_60"] = log_ret.rolling(60, min_periods=60).corr(spy_log_ret)
        spy_var = spy_log_ret.rolling(60, min_periods=60).var()
        cov = log_ret.rolling(60, min_periods=60).cov(spy_log_ret)
        out["beta_spy_60"] = cov / spy_var.where(spy_var > 0)
    else:
        out["rel_ret_20_spy"] = np.nan
        out["corr_spy_60"] = np.nan
        out["beta_spy_60"] = np.nan

    out[LABEL_COLUMN] = o.shift(-label_sessions(horizon)) / o.shift(-1) - 1.0
    index_dates = pd.Series(bars.index, index=bars.index)
    out[LABEL_END_COLUMN] = index_dates.shift(-label_sessions(horizon))
    # Warm-up rows would carry partly-defined features that live prediction never sees.
    return out.iloc[MAX_LOOKBACK - 1 :].replace([np.inf, -np.inf], np.nan)


def _add_cross_sectional_ranks(frame: pd.DataFrame) -> pd.DataFrame:
    """Rank a few features across symbols per date into [0, 1] (0.5 when alone)."""
    grouped = frame.groupby(level="date")
    for name in _RANKED:
        ranks = grouped[name].rank(method="average")
        counts = grouped[name].transform("count")
        scaled = (ranks - 1.0) / (counts - 1.0).where(counts > 1)
        frame[f"cs_rank_{name}"] = scaled.where(counts > 1, 0.5).where(frame[name].notna())
    return frame


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


def _empty_frame() -> pd.DataFrame:
    index = pd.MultiIndex.from_arrays(
        [pd.DatetimeIndex([], name="date"), pd.Index([], dtype=object, name="symbol")]
    )
    frame = pd.DataFrame(index=index, columns=[*FEATURE_COLUMNS, LABEL_COLUMN], dtype=float)
    frame[LABEL_END_COLUMN] = pd.Series(pd.DatetimeIndex([]), index=index)
    return frame


def build_features(
    bars: Mapping[str, BarFrame],
    spy: BarFrame | None,
    *,
    horizon: int = 1,
    normalisation: str = "raw",
) -> pd.DataFrame:
    """Long-format features: MultiIndex (date, symbol), FEATURE_COLUMNS, ``label``, ``label_end``.

    Rows exist from each symbol's MAX_LOOKBACK-th bar on; the last `horizon` + 1 rows per symbol
    have NaN labels (and NaT label_end). `spy` feeds the relative-strength features (NaN when
    None). `normalisation`: see ``normalise_labels``.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1 session, got {horizon}")
    parts: list[pd.DataFrame] = []
    for symbol, frame in bars.items():
        if len(frame) < MAX_LOOKBACK:
            continue
        part = _symbol_features(
            frame.sort_index(), spy.sort_index() if spy is not None else None, horizon
        )
        part.index = pd.MultiIndex.from_arrays(
            [pd.DatetimeIndex(part.index, name="date"), [symbol] * len(part)],
            names=["date", "symbol"],
        )
        parts.append(part)
    if not parts:
        return _empty_frame()
    frame = pd.concat(parts).sort_index()
    frame = normalise_labels(_add_cross_sectional_ranks(frame), normalisation)
    return frame[[*FEATURE_COLUMNS, LABEL_COLUMN, LABEL_END_COLUMN]]


def latest_features(
    bars: Mapping[str, BarFrame], spy: BarFrame | None, as_of: date | datetime | str
) -> pd.DataFrame:
    """Feature rows at `as_of`, indexed by symbol, from the last MAX_LOOKBACK bars <= as_of.

    A symbol without a bar on `as_of` (or with too little history) is left out: a decision on a
    stale bar would be a decision on the wrong day.
    """
    day = pd.Timestamp(as_of).normalize()
    clipped = {sym: frame.loc[:day].tail(MAX_LOOKBACK) for sym, frame in bars.items()}
    spy_clipped = spy.loc[:day].tail(MAX_LOOKBACK) if spy is not None else None
    frame = build_features(clipped, spy_clipped)
    if frame.empty:
        rows = frame.droplevel("date")
    else:
        dates = frame.index.get_level_values("date")
        rows = frame[dates == day].droplevel("date")
    return rows[FEATURE_COLUMNS]
