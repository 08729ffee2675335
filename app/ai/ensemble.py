# ruff: noqa: N803, N806 - X / X_val: the usual name of a feature matrix, as in every ML API
"""Return models: LightGBM/XGBoost members, the calibrated Ensemble, bundles, storage, signals.

Why it is shaped this way:
- Every member has the same ``fit`` / ``predict`` (Qlib-style), so the ensemble, tuning and the
  walk-forward evaluation never care which library sits behind a member.
- The ensemble's mean is the expected next-open-to-next-open return (see ``features``); the
  members' spread says how much they disagree. Disagreement alone is not a probability, so the
  confidence is *calibrated* on held-out validation rows: isotonic regression of the realised
  directional hit (sign correct) on ``|mean| / (dispersion + eps)``. A confidence of 0.55 means
  "the sign was right 55 % of the time for such predictions on data the members never saw".
- Artifacts are LightGBM text models and XGBoost UBJSON, not pickles: loading a model file never
  runs code, both formats are documented and stay loadable across library upgrades, and the
  calibration and metadata live in plain JSON next to them.
- ``ModelStore.save`` is crash-safe: everything is written and fsynced in a temporary directory,
  renamed into place, and only then does the ``current`` pointer switch (temp file + fsync +
  os.replace). A kill at any moment leaves the previous model current and complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import re
import secrets
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd

from app.ai.features import (
    FEATURE_COLUMNS,
    LABEL_COLUMN,
    LABEL_END_COLUMN,
    LABEL_HORIZON,
    build_features,
)
from app.domain import BarFrame, Signal, SignalAction

# OpenMP threads that spin while waiting make training 5-40x slower whenever another process
# holds one of the two cores (measured: 2 s -> 11 s with one busy neighbour). Passive waiting
# costs nothing when the machine is idle. It only takes effect before libgomp is first loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import lightgbm as lgb
import xgboost as xgb

__all__ = [
    "POOLED_KEY",
    "ConfidenceCalibrator",
    "Ensemble",
    "LightGBMMember",
    "Member",
    "ModelBundle",
    "ModelStore",
    "ModelStoreError",
    "Prediction",
    "SignalThresholds",
    "SymbolPrediction",
    "Thresholds",
    "XGBoostMember",
    "daily_ic",
    "make_signal",
    "reliability_table",
    "split_by_date",
    "train",
]

logger = logging.getLogger(__name__)

FloatArray: TypeAlias = npt.NDArray[np.float64]
Mode: TypeAlias = Literal["pooled", "per_symbol"]
MODES: tuple[Mode, ...] = ("pooled", "per_symbol")
#: Ensemble key of the single pooled model inside a bundle.
POOLED_KEY = "pooled"
#: The machine has two cores; more threads only add contention.
MAX_THREADS = 2

#: Small steps, shallow trees, big leaves and L2: daily returns are mostly noise.
DEFAULT_LGBM_PARAMS: dict[str, Any] = {
    "objective": "regression",
    "learning_rate": 0.03,
    "num_leaves": 15,
    "max_depth": 5,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.7,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 10.0,
    "verbose": -1,
    "deterministic": True,
    "force_col_wise": True,
    "num_threads": MAX_THREADS,
    "num_boost_round": 300,
    "early_stopping_rounds": 40,
}
DEFAULT_XGB_PARAMS: dict[str, Any] = {
    "objective": "reg:squarederror",
    "eta": 0.03,
    "max_depth": 4,
    "min_child_weight": 100.0,
    "subsample": 0.8,
    "colsample_bytree": 0.7,
    "lambda": 10.0,
    "tree_method": "hist",
    "nthread": MAX_THREADS,
    "num_boost_round": 300,
    "early_stopping_rounds": 40,
}
#: Ensemble-level knobs: member row subsample (bagging) and label winsorising quantile.
DEFAULT_ENSEMBLE_PARAMS: dict[str, Any] = {"subsample": 0.8, "label_clip_quantile": 0.01}

MIN_SYMBOL_TRAIN_ROWS = 250
MIN_SYMBOL_VAL_ROWS = 50


def _merged_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults overlaid with `params` = {"lightgbm": {...}, "xgboost": {...}, top-level knobs}."""
    given = dict(params or {})
    return {
        **DEFAULT_ENSEMBLE_PARAMS,
        **{k: v for k, v in given.items() if k not in ("lightgbm", "xgboost")},
        "lightgbm": {**DEFAULT_LGBM_PARAMS, **dict(given.get("lightgbm") or {})},
        "xgboost": {**DEFAULT_XGB_PARAMS, **dict(given.get("xgboost") or {})},
    }


def _as_matrix(X: pd.DataFrame | FloatArray, columns: Sequence[str] | None) -> FloatArray:
    if isinstance(X, pd.DataFrame):
        frame = X if columns is None else X[list(columns)]
        matrix: FloatArray = frame.to_numpy(dtype=np.float64, na_value=np.nan)
        return matrix
    return np.asarray(X, dtype=np.float64)


def _subsample(
    X: FloatArray, y: FloatArray, fraction: float, seed: int
) -> tuple[FloatArray, FloatArray]:
    """Rows drawn without replacement, kept in time order: the bagging of one member."""
    if fraction >= 1.0:
        return X, y
    n = len(y)
    k = max(1, round(n * fraction))
    idx = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
    return X[idx], y[idx]


# --------------------------------------------------------------------------------------------
# Members
# --------------------------------------------------------------------------------------------


class Member(Protocol):
    """One model of the ensemble; arrays are (rows, features) in the ensemble's column order."""

    def fit(
        self,
        X: FloatArray,
        y: FloatArray,
        X_val: FloatArray | None = None,
        y_val: FloatArray | None = None,
    ) -> None: ...

    def predict(self, X: FloatArray) -> FloatArray: ...


class _BoostedMember:
    """What both members share: library defaults overlaid with `params`, boosting rounds and
    early stopping taken out of the library params, threads capped, a seeded subsample."""

    defaults: ClassVar[Mapping[str, Any]]
    threads_key: ClassVar[str]

    def __init__(
        self, params: Mapping[str, Any] | None = None, seed: int = 0, subsample: float = 0.8
    ) -> None:
        merged = {**self.defaults, **dict(params or {})}
        self.num_boost_round = int(merged.pop("num_boost_round"))
        self.early_stopping_rounds = int(merged.pop("early_stopping_rounds"))
        key = self.threads_key
        merged[key] = min(int(merged.get(key, MAX_THREADS)), MAX_THREADS)
        merged["seed"] = seed
        self.params = merged
        self.seed = seed
        self.subsample = subsample
        self.best_iteration = 0


class LightGBMMember(_BoostedMember):
    """LightGBM booster on a seeded row subsample; early stopping on validation when given."""

    kind: ClassVar[str] = "lightgbm"
    defaults = DEFAULT_LGBM_PARAMS
    threads_key = "num_threads"
    booster: lgb.Booster | None = None

    def fit(
        self,
        X: FloatArray,
        y: FloatArray,
        X_val: FloatArray | None = None,
        y_val: FloatArray | None = None,
    ) -> None:
        Xs, ys = _subsample(X, y, self.subsample, self.seed)
        train_set = lgb.Dataset(Xs, label=ys, params={"verbose": -1})
        valid_sets: list[lgb.Dataset] = []
        callbacks: list[Any] = []
        if X_val is not None and y_val is not None and len(y_val):
            valid_sets.append(lgb.Dataset(X_val, label=y_val, reference=train_set))
            callbacks.append(lgb.early_stopping(self.early_stopping_rounds, verbose=False))
        booster = lgb.train(
            self.params,
            train_set,
            num_boost_round=self.num_boost_round,
            valid_sets=valid_sets or None,
            callbacks=callbacks or None,
        )
        best = booster.best_iteration or booster.current_iteration()
        self.best_iteration = int(best)
        # Keep only the chosen trees, exactly as they will be saved and reloaded.
        self.booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))

    def predict(self, X: FloatArray) -> FloatArray:
        if self.booster is None:
            raise RuntimeError("LightGBMMember.predict before fit")
        return np.asarray(self.booster.predict(X, num_threads=MAX_THREADS), dtype=np.float64)

    def to_bytes(self) -> bytes:
        if self.booster is None:
            raise RuntimeError("LightGBMMember is not fitted")
        return self.booster.model_to_string().encode()

    def load_bytes(self, data: bytes) -> None:
        self.booster = lgb.Booster(model_str=data.decode())
        self.best_iteration = self.booster.current_iteration()


class XGBoostMember(_BoostedMember):
    """XGBoost booster (hist) on a seeded row subsample; early stopping on validation."""

    kind: ClassVar[str] = "xgboost"
    defaults = DEFAULT_XGB_PARAMS
    threads_key = "nthread"
    booster: xgb.Booster | None = None

    def fit(
        self,
        X: FloatArray,
        y: FloatArray,
        X_val: FloatArray | None = None,
        y_val: FloatArray | None = None,
    ) -> None:
        Xs, ys = _subsample(X, y, self.subsample, self.seed)
        dtrain = xgb.DMatrix(Xs, label=ys, nthread=MAX_THREADS)
        if X_val is not None and y_val is not None and len(y_val):
            dval = xgb.DMatrix(X_val, label=y_val, nthread=MAX_THREADS)
            booster = xgb.train(
                self.params,
                dtrain,
                self.num_boost_round,
                evals=[(dval, "val")],
                early_stopping_rounds=self.early_stopping_rounds,
                verbose_eval=False,
            )
            booster = booster[: booster.best_iteration + 1]
        else:
            booster = xgb.train(self.params, dtrain, self.num_boost_round, verbose_eval=False)
        self.booster = booster
        self.best_iteration = int(booster.num_boosted_rounds())

    def predict(self, X: FloatArray) -> FloatArray:
        if self.booster is None:
            raise RuntimeError("XGBoostMember.predict before fit")
        return np.asarray(self.booster.inplace_predict(X), dtype=np.float64)

    def to_bytes(self) -> bytes:
        if self.booster is None:
            raise RuntimeError("XGBoostMember is not fitted")
        return bytes(self.booster.save_raw(raw_format="ubj"))

    def load_bytes(self, data: bytes) -> None:
        booster = xgb.Booster(params={"nthread": MAX_THREADS})
        booster.load_model(bytearray(data))
        self.booster = booster
        self.best_iteration = int(booster.num_boosted_rounds())


_MEMBER_TYPES: dict[str, type[LightGBMMember] | type[XGBoostMember]] = {
    LightGBMMember.kind: LightGBMMember,
    XGBoostMember.kind: XGBoostMember,
}
_MEMBER_SUFFIX = {LightGBMMember.kind: ".lgb.txt", XGBoostMember.kind: ".xgb.ubj"}


# --------------------------------------------------------------------------------------------
# Calibration and predictions
# --------------------------------------------------------------------------------------------


def _hits(mean: FloatArray, y: FloatArray) -> FloatArray:
    """1 when the predicted sign was right, 0 when wrong, 0.5 when either side is exactly 0."""
    product = np.sign(mean) * np.sign(y)
    return np.where(product > 0, 1.0, np.where(product < 0, 0.0, 0.5))


def _isotonic(values: FloatArray, weights: FloatArray) -> FloatArray:
    """Weighted pool-adjacent-violators: the non-decreasing fit closest to `values`."""
    blocks: list[list[float]] = []  # [value, weight, count]
    for value, weight in zip(values, weights, strict=True):
        blocks.append([float(value), float(weight), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, c2 = blocks.pop()
            v1, w1, c1 = blocks.pop()
            w = w1 + w2
            blocks.append([(v1 * w1 + v2 * w2) / w if w > 0 else (v1 + v2) / 2, w, c1 + c2])
    out = [value for value, _, count in blocks for _ in range(int(count))]
    return np.asarray(out, dtype=np.float64)


@dataclass(frozen=True)
class ConfidenceCalibrator:
    """Maps (mean, dispersion) to P(sign correct), fitted on held-out rows.

    score = |mean| / (dispersion + eps): large when members agree on a large move. Rows are cut
    into equal-count score bins (>= 50 rows each, at most 20 bins), the bins' hit rates are made
    non-decreasing in score (isotonic), and scores in between are interpolated linearly.
    """

    eps: float
    knots_score: tuple[float, ...]
    knots_confidence: tuple[float, ...]

    MIN_ROWS_PER_BIN: ClassVar[int] = 50
    MAX_BINS: ClassVar[int] = 20

    @classmethod
    def uninformative(cls) -> ConfidenceCalibrator:
        """Without validation data there is no evidence either way: 0.5 everywhere."""
        return cls(eps=1e-12, knots_score=(0.0,), knots_confidence=(0.5,))

    @classmethod
    def fit(cls, mean: FloatArray, dispersion: FloatArray, y: FloatArray) -> ConfidenceCalibrator:
        ok = np.isfinite(mean) & np.isfinite(dispersion) & np.isfinite(y)
        mean, dispersion, y = mean[ok], dispersion[ok], y[ok]
        if len(y) == 0:
            return cls.uninformative()
        eps = max(0.5 * float(np.median(dispersion)), 1e-12)
        score = np.abs(mean) / (dispersion + eps)
        hits = _hits(mean, y)
        order = np.argsort(score, kind="stable")
        n_bins = int(min(cls.MAX_BINS, max(1, len(y) // cls.MIN_ROWS_PER_BIN)))
        chunks = [c for c in np.array_split(order, n_bins) if len(c)]
        x = np.array([score[c].mean() for c in chunks])
        rate = np.array([hits[c].mean() for c in chunks])
        weight = np.array([float(len(c)) for c in chunks])
        fitted = np.clip(_isotonic(rate, weight), 0.0, 1.0)
        return cls(eps=eps, knots_score=tuple(map(float, x)), knots_confidence=tuple(fitted))

    def score(self, mean: FloatArray, dispersion: FloatArray) -> FloatArray:
        return np.abs(mean) / (dispersion + self.eps)

    def __call__(self, mean: FloatArray, dispersion: FloatArray) -> FloatArray:
        conf = np.interp(self.score(mean, dispersion), self.knots_score, self.knots_confidence)
        return np.where(np.isfinite(mean), np.clip(conf, 0.0, 1.0), np.nan)

    def to_dict(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "knots_score": list(self.knots_score),
            "knots_confidence": list(self.knots_confidence),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConfidenceCalibrator:
        return cls(
            eps=float(data["eps"]),
            knots_score=tuple(float(v) for v in data["knots_score"]),
            knots_confidence=tuple(float(v) for v in data["knots_confidence"]),
        )


@dataclass(frozen=True, eq=False)
class Prediction:
    """Per-row ensemble output: expected return, member spread, calibrated P(sign correct)."""

    mean: FloatArray
    dispersion: FloatArray
    confidence: FloatArray

    def __len__(self) -> int:
        return len(self.mean)


@dataclass(frozen=True)
class SymbolPrediction:
    """One symbol's prediction at one date (what signals are made from)."""

    mean: float
    dispersion: float
    confidence: float


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


# --------------------------------------------------------------------------------------------
# Ensemble
# --------------------------------------------------------------------------------------------


class Ensemble:
    """Bagged LightGBM + XGBoost members; mean = expected return, std = disagreement.

    Training targets are winsorised at the `label_clip_quantile` tails of the training labels:
    a few ±20 % days would otherwise dominate the squared loss. Calibration uses raw labels.
    """

    def __init__(
        self,
        n_lgbm: int = 3,
        n_xgb: int = 3,
        params: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        if n_lgbm + n_xgb < 1:
            raise ValueError("an ensemble needs at least one member")
        self.params = _merged_params(params)
        subsample = float(self.params["subsample"])
        self.members: list[Member] = [
            *(LightGBMMember(self.params["lightgbm"], seed + i, subsample) for i in range(n_lgbm)),
            *(
                XGBoostMember(self.params["xgboost"], seed + 1000 + i, subsample)
                for i in range(n_xgb)
            ),
        ]
        self.seed = seed
        self.feature_names: list[str] = []
        self.calibrator = ConfidenceCalibrator.uninformative()
        self.label_clip: tuple[float, float] | None = None
        self.validation: dict[str, float] = {}

    def fit(
        self,
        X: pd.DataFrame,
        y: FloatArray | pd.Series,
        X_val: pd.DataFrame | None = None,
        y_val: FloatArray | pd.Series | None = None,
    ) -> None:
        self.feature_names = [str(c) for c in X.columns]
        Xm = _as_matrix(X, self.feature_names)
        ym = np.asarray(y, dtype=np.float64)
        q = float(self.params["label_clip_quantile"])
        lo, hi = (float(v) for v in np.quantile(ym, [q, 1.0 - q]))
        self.label_clip = (lo, hi)
        has_val = X_val is not None and y_val is not None and len(X_val) > 0
        Xv = _as_matrix(X_val, self.feature_names) if has_val and X_val is not None else None
        yv = np.asarray(y_val, dtype=np.float64) if has_val else None
        yv_clipped = np.clip(yv, lo, hi) if yv is not None else None
        for member in self.members:
            member.fit(Xm, np.clip(ym, lo, hi), Xv, yv_clipped)
        if Xv is not None and yv is not None:
            raw = self.member_predictions(Xv)
            mean, disp = raw.mean(axis=0), raw.std(axis=0)
            self.calibrator = ConfidenceCalibrator.fit(mean, disp, yv)
            self.validation = {
                "n": float(len(yv)),
                "hit_rate": float(_hits(mean, yv).mean()),
                "mse": float(np.mean((mean - yv) ** 2)),
                "corr": _safe_corr(mean, yv),
            }
        else:
            self.calibrator = ConfidenceCalibrator.uninformative()
            self.validation = {}

    def member_predictions(self, X: pd.DataFrame | FloatArray) -> FloatArray:
        """(members, rows) raw predictions."""
        Xm = _as_matrix(X, self.feature_names or None)
        return np.vstack([member.predict(Xm) for member in self.members])

    def predict(self, X: pd.DataFrame | FloatArray) -> Prediction:
        raw = self.member_predictions(X)
        mean = raw.mean(axis=0)
        dispersion = raw.std(axis=0)
        return Prediction(
            mean=mean, dispersion=dispersion, confidence=self.calibrator(mean, dispersion)
        )


def _safe_corr(a: FloatArray, b: FloatArray) -> float:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def daily_ic(frame: pd.DataFrame, pred: str = "mean", label: str = LABEL_COLUMN) -> pd.DataFrame:
    """Per-date cross-sectional Pearson IC and Spearman rank IC (dates with >= 3 usable rows)."""
    rows = frame[[pred, label]].dropna()
    out: dict[pd.Timestamp, tuple[float, float]] = {}
    for day, group in rows.groupby(level="date"):
        p = group[pred].to_numpy(dtype=np.float64)
        y = group[label].to_numpy(dtype=np.float64)
        if len(p) < 3 or np.ptp(p) == 0 or np.ptp(y) == 0:
            continue
        pr = pd.Series(p).rank().to_numpy()
        yr = pd.Series(y).rank().to_numpy()
        out[pd.Timestamp(str(day))] = (_safe_corr(p, y), _safe_corr(pr, yr))
    result = pd.DataFrame.from_dict(out, orient="index", columns=["ic", "rank_ic"])
    result.index.name = "date"
    return result


# --------------------------------------------------------------------------------------------
# Bundles and training
# --------------------------------------------------------------------------------------------


@dataclass
class ModelBundle:
    """What the trading cycle loads: one pooled ensemble, or one ensemble per symbol."""

    mode: Mode
    feature_columns: list[str]
    ensembles: dict[str, Ensemble]
    metadata: dict[str, Any] = field(default_factory=dict)
    version: str | None = None

    def predict_frame(self, features: pd.DataFrame) -> pd.DataFrame:
        """mean / dispersion / confidence per row of `features` (NaN where no model applies)."""
        out = pd.DataFrame(
            np.nan, index=features.index, columns=["mean", "dispersion", "confidence"]
        )
        if features.empty:
            return out
        if self.mode == "pooled":
            targets = [(POOLED_KEY, np.ones(len(features), dtype=bool))]
        else:
            symbols = _symbols_of(features)
            targets = [(s, symbols == s) for s in np.unique(symbols) if s in self.ensembles]
        for key, mask in targets:
            pred = self.ensembles[key].predict(features.loc[mask, self.feature_columns])
            out.loc[mask, "mean"] = pred.mean
            out.loc[mask, "dispersion"] = pred.dispersion
            out.loc[mask, "confidence"] = pred.confidence
        return out

    def predict(self, features_at_date: pd.DataFrame) -> dict[str, SymbolPrediction]:
        """Predictions for one date's rows (indexed by symbol, or (date, symbol) of one date)."""
        frame = features_at_date
        if isinstance(frame.index, pd.MultiIndex):
            if frame.index.get_level_values("date").nunique() > 1:
                raise ValueError("predict takes the rows of one date; use predict_frame")
            frame = frame.droplevel("date")
        if frame.index.has_duplicates:
            raise ValueError("one row per symbol expected")
        result = self.predict_frame(frame).dropna(subset=["mean"])
        return {
            str(sym): SymbolPrediction(
                mean=float(row["mean"]),
                dispersion=float(row["dispersion"]),
                confidence=float(row["confidence"]),
            )
            for sym, row in result.iterrows()
        }


def _symbols_of(frame: pd.DataFrame) -> npt.NDArray[Any]:
    index = frame.index
    if isinstance(index, pd.MultiIndex):
        return np.asarray(index.get_level_values("symbol"))
    return np.asarray(index)


def split_by_date(
    dates: pd.DatetimeIndex | npt.NDArray[Any] | pd.Index,
    val_fraction: float = 0.2,
    gap: int = LABEL_HORIZON,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(train, validation) masks: the last `val_fraction` of distinct dates validate, and the
    `gap` dates before them are dropped so no training label overlaps the validation period."""
    values = np.asarray(dates)
    unique = np.unique(values)
    n_val = round(len(unique) * val_fraction) if val_fraction > 0 else 0
    if n_val == 0:
        return np.ones(len(values), dtype=bool), np.zeros(len(values), dtype=bool)
    val_dates = unique[len(unique) - n_val :]
    train_dates = unique[: max(len(unique) - n_val - gap, 0)]
    return np.isin(values, train_dates), np.isin(values, val_dates)


def _data_sha256(rows: pd.DataFrame) -> str:
    hashed = pd.util.hash_pandas_object(rows[[*FEATURE_COLUMNS, LABEL_COLUMN]], index=True)
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()


def _day(value: date | datetime | str | pd.Timestamp) -> pd.Timestamp:
    return pd.Timestamp(value).normalize()


def _iso(value: Any) -> str | None:
    return None if value is None or pd.isna(value) else pd.Timestamp(value).date().isoformat()


def train(
    bars: Mapping[str, BarFrame] | None,
    spy: BarFrame | None,
    mode: Mode,
    train_end: date | datetime | str | pd.Timestamp,
    params: Mapping[str, Any] | None = None,
    *,
    features: pd.DataFrame | None = None,
    train_start: date | datetime | str | pd.Timestamp | None = None,
    n_lgbm: int = 3,
    n_xgb: int = 3,
    seed: int = 0,
    val_fraction: float = 0.2,
) -> ModelBundle:
    """Train on every row whose label is known by the close of `train_end`.

    Rows qualify when ``label_end <= train_end`` (the trade's closing open has happened). The
    last `val_fraction` of dates, after a 2-session gap, validate early stopping and calibrate
    confidence; nothing is shuffled. `features` (from ``build_features``) skips recomputation.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    end = _day(train_end)
    if features is None:
        if bars is None:
            raise ValueError("train needs bars or features")
        clipped = {sym: frame.loc[:end] for sym, frame in bars.items()}
        features = build_features(clipped, spy.loc[:end] if spy is not None else None)
    rows = features[features[LABEL_COLUMN].notna() & (features[LABEL_END_COLUMN] <= end)]
    if train_start is not None:
        rows = rows[rows.index.get_level_values("date") >= _day(train_start)]
    if rows.empty:
        raise ValueError(f"no labelled rows to train on up to {end.date()}")
    dates = rows.index.get_level_values("date")
    train_mask, val_mask = split_by_date(dates, val_fraction)
    X, y = rows[FEATURE_COLUMNS], rows[LABEL_COLUMN]

    ensembles: dict[str, Ensemble] = {}
    if mode == "pooled":
        ens = Ensemble(n_lgbm, n_xgb, params, seed)
        ens.fit(X[train_mask], y[train_mask], X[val_mask], y[val_mask])
        ensembles[POOLED_KEY] = ens
    else:
        symbols = _symbols_of(rows)
        for sym in np.unique(symbols):
            tm, vm = train_mask & (symbols == sym), val_mask & (symbols == sym)
            if tm.sum() < MIN_SYMBOL_TRAIN_ROWS or vm.sum() < MIN_SYMBOL_VAL_ROWS:
                logger.info("per-symbol model for %s skipped: too few rows", sym)
                continue
            ens = Ensemble(n_lgbm, n_xgb, params, seed)
            ens.fit(X[tm], y[tm], X[vm], y[vm])
            ensembles[str(sym)] = ens
    if not ensembles:
        raise ValueError("no ensemble could be trained (too few rows)")

    bundle = ModelBundle(mode=mode, feature_columns=list(FEATURE_COLUMNS), ensembles=ensembles)
    val_rows = rows[val_mask]
    val_metrics: dict[str, float] = {}
    if not val_rows.empty:
        scored = bundle.predict_frame(val_rows).join(val_rows[[LABEL_COLUMN]])
        ics = daily_ic(scored)
        usable = scored.dropna(subset=["mean"])
        val_metrics = {
            "n_rows": float(len(usable)),
            "ic_mean": float(ics["ic"].mean()) if len(ics) else float("nan"),
            "rank_ic_mean": float(ics["rank_ic"].mean()) if len(ics) else float("nan"),
            "hit_rate": float(
                _hits(usable["mean"].to_numpy(), usable[LABEL_COLUMN].to_numpy()).mean()
            )
            if len(usable)
            else float("nan"),
        }
    train_dates = dates[train_mask]
    val_dates = dates[val_mask]
    bundle.metadata = {
        "mode": mode,
        "features": list(FEATURE_COLUMNS),
        "label": "open[t+2] / open[t+1] - 1",
        "train_start": _iso(train_dates.min()) if len(train_dates) else None,
        "train_end": _iso(train_dates.max()) if len(train_dates) else None,
        "val_start": _iso(val_dates.min()) if len(val_dates) else None,
        "val_end": _iso(val_dates.max()) if len(val_dates) else None,
        "labels_known_by": end.date().isoformat(),
        # The latest open any training label used: must precede the first decision it serves.
        "last_label_end": _iso(rows.loc[train_mask | val_mask, LABEL_END_COLUMN].max()),
        "n_train_rows": int(train_mask.sum()),
        "n_val_rows": int(val_mask.sum()),
        "symbols": sorted(str(s) for s in np.unique(_symbols_of(rows))),
        "validation": val_metrics,
        "params": _merged_params(params),
        "members": {"lightgbm": n_lgbm, "xgboost": n_xgb},
        "seed": seed,
        "training_data_sha256": _data_sha256(rows),
    }
    return bundle


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------


class ModelStoreError(RuntimeError):
    """The store's files are missing or inconsistent."""


_VERSION_RE = re.compile(r"^\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}$")
_POINTER = "current"
_TEMP_PREFIXES = (".tmp-", ".current-", ".trash-")
#: Temporary leftovers older than this belong to a dead writer and may be removed.
_STALE_TEMP_SECONDS = 3600.0

_CACHE: dict[str, tuple[str, ModelBundle]] = {}
_CACHE_LOCK = threading.Lock()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (pd.Timestamp, datetime, date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True, default=_json_default).encode()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _library_versions() -> dict[str, str]:
    return {
        "lightgbm": lgb.__version__,
        "xgboost": xgb.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "python": platform.python_version(),
    }


def _serialise(bundle: ModelBundle) -> dict[str, bytes]:
    """Every file of a version except meta.json, by relative path."""
    files: dict[str, bytes] = {}
    manifest: dict[str, Any] = {
        "mode": bundle.mode,
        "feature_columns": bundle.feature_columns,
        "ensembles": {},
    }
    for index, (key, ens) in enumerate(sorted(bundle.ensembles.items())):
        folder = f"ensembles/e{index:03d}"
        members = []
        for m_index, member in enumerate(ens.members):
            if not isinstance(member, (LightGBMMember, XGBoostMember)):
                raise TypeError(f"cannot store member type {type(member).__name__}")
            name = f"{folder}/m{m_index:02d}{_MEMBER_SUFFIX[member.kind]}"
            files[name] = member.to_bytes()
            members.append(
                {
                    "kind": member.kind,
                    "file": name,
                    "seed": member.seed,
                    "subsample": member.subsample,
                    "best_iteration": member.best_iteration,
                }
            )
        manifest["ensembles"][key] = {
            "members": members,
            "feature_names": ens.feature_names,
            "calibrator": ens.calibrator.to_dict(),
            "label_clip": list(ens.label_clip) if ens.label_clip else None,
            "validation": ens.validation,
            "params": ens.params,
            "seed": ens.seed,
        }
    files["bundle.json"] = _json_bytes(manifest)
    return files


def _deserialise(root: Path) -> ModelBundle:
    manifest = json.loads((root / "bundle.json").read_text())
    meta = json.loads((root / "meta.json").read_text())
    ensembles: dict[str, Ensemble] = {}
    for key, spec in manifest["ensembles"].items():
        ens = Ensemble(n_lgbm=1, n_xgb=0, params=spec["params"], seed=int(spec["seed"]))
        members: list[Member] = []
        for m in spec["members"]:
            cls = _MEMBER_TYPES[m["kind"]]
            section = spec["params"].get(m["kind"], {})
            member = cls(section, seed=int(m["seed"]), subsample=float(m["subsample"]))
            member.load_bytes((root / m["file"]).read_bytes())
            members.append(member)
        ens.members = members
        ens.feature_names = list(spec["feature_names"])
        ens.calibrator = ConfidenceCalibrator.from_dict(spec["calibrator"])
        clip = spec.get("label_clip")
        ens.label_clip = (float(clip[0]), float(clip[1])) if clip else None
        ens.validation = dict(spec.get("validation") or {})
        ensembles[key] = ens
    return ModelBundle(
        mode=manifest["mode"],
        feature_columns=list(manifest["feature_columns"]),
        ensembles=ensembles,
        metadata=meta,
        version=meta.get("version"),
    )


class ModelStore:
    """Versioned model artifacts under `models_dir` with an atomically switched `current`.

    Layout: ``<models_dir>/<version>/{meta.json, bundle.json, ensembles/eNNN/mNN.*}`` and a
    ``current`` file holding the live version. version = UTC timestamp + 8 hex of the content
    hash, so names sort by age. The newest `keep` versions (and always the current one) are kept.
    """

    def __init__(self, models_dir: str | Path, keep: int = 5) -> None:
        if keep < 2:
            raise ValueError("keep must be >= 2 so a reader of the previous version is safe")
        self.models_dir = Path(models_dir)
        self.keep = keep

    # --- writing ---
    def save(self, bundle: ModelBundle, extra_metadata: Mapping[str, Any] | None = None) -> str:
        """Write `bundle` as a new version and make it current; returns the version."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temps()
        files = _serialise(bundle)
        digest = hashlib.sha256()
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + files[name])
        content_sha = digest.hexdigest()
        created = datetime.now(UTC)
        version = f"{created:%Y%m%dT%H%M%S.%fZ}-{content_sha[:8]}"
        meta = {
            **bundle.metadata,
            **dict(extra_metadata or {}),
            "version": version,
            "created_at": created.isoformat(),
            "mode": bundle.mode,
            "features": bundle.feature_columns,
            "content_sha256": content_sha,
            "libraries": _library_versions(),
            "format": {"lightgbm": "text model", "xgboost": "UBJSON", "calibration": "JSON"},
        }
        files["meta.json"] = _json_bytes(meta)

        tmp = self.models_dir / f".tmp-{version}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            dirs = {tmp}
            for name, data in files.items():
                path = tmp / name
                path.parent.mkdir(parents=True, exist_ok=True)
                dirs.update(p for p in path.parents if tmp in (p, *p.parents))
                _write_durable(path, data)
            for folder in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
                _fsync_dir(folder)
            os.rename(tmp, self.models_dir / version)
            _fsync_dir(self.models_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._switch_current(version)
        self._prune()
        bundle.version = version
        bundle.metadata = meta
        logger.info("model %s saved (%s, %d ensembles)", version, bundle.mode, len(files))
        return version

    def _switch_current(self, version: str) -> None:
        tmp = self.models_dir / f".current-{secrets.token_hex(6)}"
        _write_durable(tmp, f"{version}\n".encode())
        os.replace(tmp, self.models_dir / _POINTER)
        _fsync_dir(self.models_dir)

    def _prune(self) -> None:
        current = self.current_version()
        for version in self.versions()[: -self.keep]:
            if version == current:
                continue
            # Rename first so a half-deleted directory never looks like a version.
            trash = self.models_dir / f".trash-{version}-{secrets.token_hex(4)}"
            os.rename(self.models_dir / version, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def _remove_stale_temps(self) -> None:
        now = time.time()
        for path in self.models_dir.iterdir():
            if not path.name.startswith(_TEMP_PREFIXES):
                continue
            try:
                if now - path.stat().st_mtime < _STALE_TEMP_SECONDS:
                    continue
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                continue

    # --- reading ---
    def versions(self) -> list[str]:
        """Complete versions, oldest first."""
        if not self.models_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.models_dir.iterdir()
            if _VERSION_RE.match(p.name) and (p / "meta.json").is_file()
        )

    def current_version(self) -> str | None:
        try:
            text = (self.models_dir / _POINTER).read_text().strip()
        except FileNotFoundError:
            return None
        if not _VERSION_RE.match(text):
            raise ModelStoreError(f"malformed model pointer {text!r} in {self.models_dir}")
        return text

    def metadata(self, version: str | None = None) -> dict[str, Any] | None:
        version = version or self.current_version()
        if version is None:
            return None
        path = self.models_dir / version / "meta.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ModelStoreError(f"model version {version} is missing") from exc
        return data

    def load(self, version: str) -> ModelBundle:
        if not _VERSION_RE.match(version):
            raise ModelStoreError(f"malformed model version {version!r}")
        root = self.models_dir / version
        if not (root / "meta.json").is_file():
            raise ModelStoreError(f"model version {version} is missing")
        return _deserialise(root)

    def load_current(self) -> ModelBundle | None:
        """The current bundle, loaded once per process and reloaded when the pointer moves."""
        version = self.current_version()
        if version is None:
            return None
        key = str(self.models_dir.resolve())
        with _CACHE_LOCK:
            cached = _CACHE.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        bundle = self.load(version)
        with _CACHE_LOCK:
            _CACHE[key] = (version, bundle)
        return bundle

    def is_stale(self, max_age_days: int, now: datetime | None = None) -> bool:
        """True when there is no current model or it was created more than `max_age_days` ago."""
        meta = self.metadata()
        if meta is None:
            return True
        created = datetime.fromisoformat(str(meta["created_at"]))
        return (now or datetime.now(UTC)) - created > timedelta(days=max_age_days)


# --------------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------------


class SignalThresholds(Protocol):
    """The three settings a signal needs (``app.config.Settings`` satisfies it)."""

    @property
    def ai_signal_buy_threshold(self) -> float: ...

    @property
    def ai_signal_sell_threshold(self) -> float: ...

    @property
    def ai_confidence_threshold(self) -> float: ...


@dataclass(frozen=True)
class Thresholds:
    """Stand-alone thresholds with the settings' defaults (backtests, tests)."""

    ai_signal_buy_threshold: float = 0.005
    ai_signal_sell_threshold: float = -0.005
    ai_confidence_threshold: float = 0.7


def make_signal(
    symbol: str,
    prediction: SymbolPrediction,
    thresholds: SignalThresholds,
    model_version: str,
    *,
    stale: bool = False,
) -> Signal:
    """BUY / SELL when the expected return crosses its threshold (inclusive) with enough
    confidence; HOLD otherwise, and always HOLD on a stale model or a non-finite prediction."""
    mean, conf = prediction.mean, prediction.confidence
    action = SignalAction.HOLD
    if not stale and math.isfinite(mean) and math.isfinite(conf):
        confident = conf >= thresholds.ai_confidence_threshold
        if confident and mean >= thresholds.ai_signal_buy_threshold:
            action = SignalAction.BUY
        elif confident and mean <= thresholds.ai_signal_sell_threshold:
            action = SignalAction.SELL
    return Signal(
        symbol=symbol,
        action=action,
        predicted_return=float(mean),
        confidence=float(conf),
        dispersion=float(prediction.dispersion),
        model_version=model_version,
    )
