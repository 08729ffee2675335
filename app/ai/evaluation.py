"""Walk-forward evaluation of the return models: the only honest way to read their quality.

Every test window gets a model trained only on rows whose label was known before the window
started. ``label_t = open_{t+1+h} / open_{t+1} - 1`` is known once session t+1+h opens, so for a
window starting at session S (first decision after the close of S) the model is trained as of
the close of S-1 on rows with ``label_end <= S-1``: the last h+1 sessions before the window are
dropped. Features are causal (bars <= t), so computing them once over the full
history changes nothing; labels beyond the cut-off are only ever used to score predictions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm import tqdm

from app.ai.calibration import FloatArray, _hits
from app.ai.ensemble import Mode, Prediction, SymbolPrediction, daily_ic
from app.ai.features import LABEL_COLUMN, LABEL_END_COLUMN, build_features
from app.ai.signals import SignalThresholds, Thresholds, make_signal
from app.ai.training import train
from app.domain import BarFrame, SignalAction

__all__ = ["daily_ic", "evaluate", "summarise"]

TRADING_DAYS = 252


def _finite(value: float) -> float | None:
    """JSON has no NaN: undefined figures become null."""
    return float(value) if value is not None and math.isfinite(value) else None


def _ratio(mean: float, std: float) -> float:
    return mean / std if std > 0 and math.isfinite(std) else float("nan")


def _quantile_spread(scored: pd.DataFrame, quantile: float = 0.2) -> pd.Series:
    """Per date: mean label of the top `quantile` of predictions minus the bottom one."""

    def spread(group: pd.DataFrame) -> float:
        if len(group) < 5:
            return float("nan")
        ranked = group["mean"].rank(pct=True, method="first")
        top = group.loc[ranked > 1 - quantile, LABEL_COLUMN].mean()
        bottom = group.loc[ranked <= quantile, LABEL_COLUMN].mean()
        return float(top - bottom)

    rows = scored.dropna(subset=["mean", LABEL_COLUMN])
    if rows.empty:
        return pd.Series(dtype=float)
    return rows.groupby(level="date")[["mean", LABEL_COLUMN]].apply(spread).dropna()


def _t_stat(values: pd.Series) -> float:
    """Mean / standard error: the t-statistic of a mean of (assumed independent) values."""
    if len(values) < 2:
        return float("nan")
    return _ratio(float(values.mean()), float(values.std())) * math.sqrt(len(values))


def summarise(
    scored: pd.DataFrame,
    *,
    reliability_bins: int = 10,
    thresholds: SignalThresholds | None = None,
    horizon: int = 1,
) -> dict[str, Any]:
    """Figures of scored rows: columns mean, dispersion, confidence, label; index (date, symbol).

    Labels of consecutive dates overlap when `horizon` > 1 (their daily ICs are correlated), so
    the rank IC's t-statistic is also given on every `horizon`-th date only (non-overlapping)."""
    thresholds = thresholds or Thresholds()
    rows = scored.dropna(subset=["mean", LABEL_COLUMN])
    ics = daily_ic(rows)
    ic, rank_ic = ics["ic"], ics["rank_ic"]
    mean_np = rows["mean"].to_numpy(dtype=np.float64)
    label_np = rows[LABEL_COLUMN].to_numpy(dtype=np.float64)
    pred = Prediction(
        mean=mean_np,
        dispersion=rows["dispersion"].to_numpy(dtype=np.float64),
        confidence=rows["confidence"].to_numpy(dtype=np.float64),
    )
    product = np.sign(mean_np) * np.sign(label_np)
    hits = np.where(product > 0, 1.0, np.where(product < 0, 0.0, 0.5))
    per_symbol_ts_ic = [
        float(np.corrcoef(g["mean"], g[LABEL_COLUMN])[0, 1])
        for _, g in rows.groupby(level="symbol")
        if len(g) > 20 and g["mean"].std() > 0
    ]
    spread = _quantile_spread(rows)
    actions = [
        make_signal(
            str(sym), SymbolPrediction(float(m), float(d), float(c)), thresholds, "eval"
        ).action
        for sym, m, d, c in zip(
            rows.index.get_level_values("symbol"),
            rows["mean"],
            rows["dispersion"],
            rows["confidence"],
            strict=True,
        )
    ]
    ic_std = float(ic.std()) if len(ic) > 1 else float("nan")
    rank_std = float(rank_ic.std()) if len(rank_ic) > 1 else float("nan")
    icir = _ratio(float(ic.mean()), ic_std) if len(ic) else float("nan")
    rank_icir = _ratio(float(rank_ic.mean()), rank_std) if len(rank_ic) else float("nan")
    return {
        "n_days": len(ics),
        "n_rows": len(rows),
        "n_symbols": int(rows.index.get_level_values("symbol").nunique()),
        "ic_mean": _finite(float(ic.mean())) if len(ic) else None,
        "ic_std": _finite(ic_std),
        "icir": _finite(icir),
        "icir_annualised": _finite(icir * math.sqrt(TRADING_DAYS)),
        "rank_ic_mean": _finite(float(rank_ic.mean())) if len(rank_ic) else None,
        "rank_ic_std": _finite(rank_std),
        "rank_icir": _finite(rank_icir),
        "rank_icir_annualised": _finite(rank_icir * math.sqrt(TRADING_DAYS)),
        "rank_ic_t": _finite(_t_stat(rank_ic)),
        "rank_ic_t_non_overlapping": _finite(_t_stat(rank_ic.iloc[::horizon])),
        "horizon": horizon,
        "ic_positive_days": _finite(float((ic > 0).mean())) if len(ic) else None,
        "hit_rate": _finite(float(hits.mean())) if len(hits) else None,
        "base_rate_up": _finite(float((label_np > 0).mean())) if len(label_np) else None,
        "time_series_ic_mean": _finite(float(np.mean(per_symbol_ts_ic)))
        if per_symbol_ts_ic
        else None,
        "top_minus_bottom_quintile_daily": _finite(float(spread.mean())) if len(spread) else None,
        "top_minus_bottom_quintile_t": _finite(
            float(spread.mean() / spread.std() * math.sqrt(len(spread)))
        )
        if len(spread) > 1 and spread.std() > 0
        else None,
        "prediction_mean": _finite(float(np.mean(mean_np))) if len(mean_np) else None,
        "prediction_std": _finite(float(np.std(mean_np))) if len(mean_np) else None,
        "confidence_mean": _finite(float(np.nanmean(pred.confidence))) if len(pred) else None,
        "confidence_max": _finite(float(np.nanmax(pred.confidence))) if len(pred) else None,
        "signals": {
            "thresholds": {
                "buy": thresholds.ai_signal_buy_threshold,
                "sell": thresholds.ai_signal_sell_threshold,
                "confidence": thresholds.ai_confidence_threshold,
            },
            **{a.value: int(sum(1 for x in actions if x is a)) for a in SignalAction},
        },
        "reliability": reliability_table(pred, label_np, bins=reliability_bins),
    }


def _day(value: date | datetime | str | pd.Timestamp) -> pd.Timestamp:
    return pd.Timestamp(value).normalize()


def evaluate(
    bars: Mapping[str, BarFrame],
    spy: BarFrame | None,
    start: date | datetime | str | pd.Timestamp,
    end: date | datetime | str | pd.Timestamp,
    mode: Mode = "pooled",
    retrain_every: int = 63,
    train_years: float | None = 10.0,
    progress: bool = True,
    *,
    params: Mapping[str, Any] | None = None,
    n_lgbm: int = 3,
    n_xgb: int = 3,
    seed: int = 0,
    val_fraction: float = 0.2,
    shuffle_labels: bool = False,
    features: pd.DataFrame | None = None,
    reliability_bins: int = 10,
    thresholds: SignalThresholds | None = None,
    horizon: int = 1,
    normalisation: str = "raw",
) -> dict[str, Any]:
    """Walk forward over [start, end] in windows of `retrain_every` sessions.

    Each window: train (``app.ai.training.train``) on rows with label_end <= the session before the
    window and date >= window start - `train_years`, then predict every day of the window.
    `shuffle_labels` permutes the training labels (a placebo: its IC must be ~0), each window
    with its own generator (seed, window index), as the backtest's walk-forward windows do.
    Returns settings, per-window records (cut-offs, sizes, timings) and ``summarise`` figures.
    """
    if retrain_every < 1:
        raise ValueError("retrain_every must be >= 1")
    wall0 = time.perf_counter()
    t0 = time.perf_counter()
    feats = (
        features
        if features is not None
        else build_features(bars, spy, horizon=horizon, normalisation=normalisation)
    )
    feature_seconds = time.perf_counter() - t0
    dates = feats.index.get_level_values("date")
    sessions = pd.DatetimeIndex(np.unique(dates))
    test_sessions = sessions[(sessions >= _day(start)) & (sessions <= _day(end))]
    if len(test_sessions) == 0:
        raise ValueError(f"no feature rows between {start} and {end}")
    windows = [
        test_sessions[i : i + retrain_every] for i in range(0, len(test_sessions), retrain_every)
    ]
    records: list[dict[str, Any]] = []
    scored_parts: list[pd.DataFrame] = []
    bar = tqdm(windows, desc=f"evaluate {mode}", unit="window", disable=not progress)
    for index, window in enumerate(bar):
        first, last = window[0], window[-1]
        before = sessions[sessions < first]
        if len(before) == 0:
            raise ValueError(f"no history before {first.date()}")
        cutoff = before[-1]  # the model is trained after this session's close
        train_start = first - pd.DateOffset(years=train_years) if train_years else None
        pool = feats[feats[LABEL_COLUMN].notna() & (feats[LABEL_END_COLUMN] <= cutoff)]
        if train_start is not None:
            pool = pool[pool.index.get_level_values("date") >= train_start]
        if shuffle_labels:
            pool = pool.copy()
            # The window's own generator: windows share no state (each could run anywhere).
            rng = np.random.default_rng([seed, index])
            pool[LABEL_COLUMN] = rng.permutation(pool[LABEL_COLUMN].to_numpy())
        t_train = time.perf_counter()
        bundle = train(
            None,
            None,
            mode,
            cutoff,
            params,
            features=pool,
            n_lgbm=n_lgbm,
            n_xgb=n_xgb,
            seed=seed,
            val_fraction=val_fraction,
            horizon=horizon,
            normalisation=normalisation,
        )
        train_seconds = time.perf_counter() - t_train
        test = feats[(dates >= first) & (dates <= last)]
        t_pred = time.perf_counter()
        scored = bundle.predict_frame(test).join(test[[LABEL_COLUMN]])
        predict_seconds = time.perf_counter() - t_pred
        scored_parts.append(scored)
        meta = bundle.metadata
        window_ic = daily_ic(scored)
        records.append(
            {
                "test_start": first.date().isoformat(),
                "test_end": last.date().isoformat(),
                "test_sessions": len(window),
                "train_cutoff": cutoff.date().isoformat(),
                "train_start": meta["train_start"],
                "train_end": meta["train_end"],
                "val_start": meta["val_start"],
                "val_end": meta["val_end"],
                "last_label_end": meta["last_label_end"],
                "n_train_rows": meta["n_train_rows"],
                "n_val_rows": meta["n_val_rows"],
                "n_models": len(bundle.ensembles),
                "n_test_rows": len(test),
                "validation": {k: _finite(v) for k, v in meta["validation"].items()},
                "test_ic_mean": _finite(float(window_ic["ic"].mean())) if len(window_ic) else None,
                "train_seconds": round(train_seconds, 3),
                "predict_seconds": round(predict_seconds, 3),
            }
        )
        bar.set_postfix(train_s=f"{train_seconds:.1f}", ic=records[-1]["test_ic_mean"])
    scored_all = pd.concat(scored_parts)
    ics = daily_ic(scored_all)
    return {
        "settings": {
            "mode": mode,
            "start": _day(start).date().isoformat(),
            "end": _day(end).date().isoformat(),
            "retrain_every": retrain_every,
            "train_years": train_years,
            "n_lgbm": n_lgbm,
            "n_xgb": n_xgb,
            "seed": seed,
            "val_fraction": val_fraction,
            "shuffle_labels": shuffle_labels,
            "params": dict(params or {}),
            "horizon": horizon,
            "label_normalisation": normalisation,
            "label": f"open[t+{1 + horizon}] / open[t+1] - 1, {normalisation}; training rows need "
            f"label_end <= session before the window (the last {1 + horizon} sessions before "
            "each window are dropped)",
        },
        "metrics": summarise(
            scored_all,
            reliability_bins=reliability_bins,
            thresholds=thresholds,
            horizon=horizon,
        ),
        "windows": records,
        "daily_ic": [
            {"date": day.date().isoformat(), "ic": _finite(ic), "rank_ic": _finite(rank_ic)}
            for day, ic, rank_ic in zip(ics.index, ics["ic"], ics["rank_ic"], strict=True)
        ],
        "timings": {
            "features_seconds": round(feature_seconds, 3),
            "train_seconds": round(sum(r["train_seconds"] for r in records), 3),
            "predict_seconds": round(sum(r["predict_seconds"] for r in records), 3),
            "wall_seconds": round(time.perf_counter() - wall0, 3),
        },
    }


def reliability_table(
    pred: Prediction,
    y: FloatArray | pd.Series,
    bins: int = 10,
    strategy: Literal["quantile", "uniform"] = "quantile",
) -> list[dict[str, float]]:
    """Rows (lo, hi, count, mean_confidence, hit_rate) over confidence bins.

    Quantile bins by default: calibrated confidences cluster near the base hit rate, so uniform
    bins over [0, 1] would put nearly every row in one bin. Ties can merge quantile bins.
    """
    conf = np.asarray(pred.confidence, dtype=np.float64)
    mean = np.asarray(pred.mean, dtype=np.float64)
    target = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(conf) & np.isfinite(mean) & np.isfinite(target)
    conf, mean, target = conf[ok], mean[ok], target[ok]
    if len(conf) == 0:
        return []
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, bins + 1)
    else:
        edges = np.unique(np.quantile(conf, np.linspace(0.0, 1.0, bins + 1)))
    which = np.clip(np.searchsorted(edges[1:-1], conf, side="right"), 0, max(len(edges) - 2, 0))
    hits = _hits(mean, target)
    rows: list[dict[str, float]] = []
    for b in range(max(len(edges) - 1, 1)):
        sel = which == b
        count = int(sel.sum())
        if count == 0:
            continue
        rows.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[min(b + 1, len(edges) - 1)]),
                "count": count,
                "mean_confidence": float(conf[sel].mean()),
                "hit_rate": float(hits[sel].mean()),
            }
        )
    return rows
