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

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, TypeAlias

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pandas as pd
import xgboost as xgb

from app.ai.calibration import ConfidenceCalibrator, FloatArray, _hits
from app.ai.features import (
    LABEL_COLUMN,
)

__all__ = [
    "POOLED_KEY",
    "ConfidenceCalibrator",
    "Ensemble",
    "LightGBMMember",
    "Member",
    "ModelBundle",
    "Prediction",
    "SymbolPrediction",
    "XGBoostMember",
    "daily_ic",
]

logger = logging.getLogger(__name__)

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
        X_cal: pd.DataFrame | None = None,
        y_cal: FloatArray | pd.Series | None = None,
    ) -> None:
        """Members early-stop on (X_val, y_val); the calibrator and `validation` are fitted on
        (X_cal, y_cal), rows no member saw. Without them, the later half of the validation
        rows (in the order given: pass them by date) is kept out of early stopping for it."""
        self.feature_names = [str(c) for c in X.columns]
        Xm = _as_matrix(X, self.feature_names)
        ym = np.asarray(y, dtype=np.float64)
        q = float(self.params["label_clip_quantile"])
        lo, hi = (float(v) for v in np.quantile(ym, [q, 1.0 - q]))
        self.label_clip = (lo, hi)
        Xv = yv = Xc = yc = None
        if X_val is not None and y_val is not None and len(X_val) > 0:
            Xv = _as_matrix(X_val, self.feature_names)
            yv = np.asarray(y_val, dtype=np.float64)
        if X_cal is not None and y_cal is not None and len(X_cal) > 0:
            Xc = _as_matrix(X_cal, self.feature_names)
            yc = np.asarray(y_cal, dtype=np.float64)
        elif Xv is not None and yv is not None and len(yv) >= 2:
            half = len(yv) // 2
            Xv, Xc, yv, yc = Xv[:half], Xv[half:], yv[:half], yv[half:]
        yv_clipped = np.clip(yv, lo, hi) if yv is not None else None
        for member in self.members:
            member.fit(Xm, np.clip(ym, lo, hi), Xv, yv_clipped)
        if Xc is not None and yc is not None:
            raw = self.member_predictions(Xc)
            mean, disp = raw.mean(axis=0), raw.std(axis=0)
            self.calibrator = ConfidenceCalibrator.fit(mean, disp, yc)
            self.validation = {
                "n": float(len(yc)),
                "hit_rate": float(_hits(mean, yc).mean()),
                "mse": float(np.mean((mean - yc) ** 2)),
                "corr": _safe_corr(mean, yc),
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
