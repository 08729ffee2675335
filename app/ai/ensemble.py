# ruff: noqa: N803, N806 - X / X_val: the usual name of a feature matrix, as in every ML API
"""Return models: LightGBM/XGBoost members, the calibrated Ensemble, bundles, storage, signals.

Why it is shaped this way:
- Every member has the same ``fit`` / ``predict`` (Qlib-style, in ``members``), so the ensemble,
  tuning and the walk-forward evaluation never care which library sits behind a member; the
  members of one ensemble share one ``TrainingSet``, its rows converted and binned once.
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
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd

from app.ai.calibration import ConfidenceCalibrator, FloatArray, _hits
from app.ai.features import LABEL_COLUMN
from app.ai.members import (
    DEFAULT_LGBM_PARAMS,
    DEFAULT_XGB_PARAMS,
    FeatureMatrix,
    LightGBMMember,
    Member,
    TrainingSet,
    XGBoostMember,
    as_matrix,
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
#: Ensemble-level knobs: member row subsample (bagging), the most rows one member draws (None:
#: no cap; see app.ai.members) and the label winsorising quantile.
DEFAULT_ENSEMBLE_PARAMS: dict[str, Any] = {
    "subsample": 0.8,
    "max_member_rows": None,
    "label_clip_quantile": 0.01,
}

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
        cap = self.params["max_member_rows"]
        max_rows = None if cap is None else int(cap)
        lgbm, xgbp = self.params["lightgbm"], self.params["xgboost"]
        self.members: list[Member] = [
            *(LightGBMMember(lgbm, seed + i, subsample, max_rows) for i in range(n_lgbm)),
            *(XGBoostMember(xgbp, seed + 1000 + i, subsample, max_rows) for i in range(n_xgb)),
        ]
        self.seed = seed
        self.feature_names: list[str] = []
        self.calibrator = ConfidenceCalibrator.uninformative()
        self.label_clip: tuple[float, float] | None = None
        self.validation: dict[str, float] = {}

    def fit(
        self,
        X: pd.DataFrame | FeatureMatrix,
        y: FloatArray | pd.Series,
        X_val: pd.DataFrame | FeatureMatrix | None = None,
        y_val: FloatArray | pd.Series | None = None,
        X_cal: pd.DataFrame | FeatureMatrix | None = None,
        y_cal: FloatArray | pd.Series | None = None,
        *,
        feature_names: Sequence[str] | None = None,
    ) -> None:
        """Members early-stop on (X_val, y_val); the calibrator and `validation` are fitted on
        (X_cal, y_cal), rows no member saw. Without them, the later half of the validation
        rows (in the order given: pass them by date) is kept out of early stopping for it.
        Matrices (rather than frames) need `feature_names`, their columns' names."""
        if isinstance(X, pd.DataFrame):
            self.feature_names = [str(c) for c in X.columns]
        elif feature_names is not None:
            self.feature_names = [str(c) for c in feature_names]
        else:
            raise ValueError("a feature matrix needs its feature_names")
        Xm = as_matrix(X, self.feature_names)
        ym = np.asarray(y, dtype=np.float64)
        q = float(self.params["label_clip_quantile"])
        lo, hi = (float(v) for v in np.quantile(ym, [q, 1.0 - q]))
        self.label_clip = (lo, hi)
        Xv = yv = Xc = yc = None
        if X_val is not None and y_val is not None and len(X_val) > 0:
            Xv = as_matrix(X_val, self.feature_names)
            yv = np.asarray(y_val, dtype=np.float64)
        if X_cal is not None and y_cal is not None and len(X_cal) > 0:
            Xc = as_matrix(X_cal, self.feature_names)
            yc = np.asarray(y_cal, dtype=np.float64)
        elif Xv is not None and yv is not None and len(yv) >= 2:
            half = len(yv) // 2
            Xv, Xc, yv, yc = Xv[:half], Xv[half:], yv[:half], yv[half:]
        yv_clipped = np.clip(yv, lo, hi) if yv is not None else None
        data = TrainingSet(Xm, np.clip(ym, lo, hi), Xv, yv_clipped)
        for member in self.members:
            member.fit(data)
        del data  # the binned matrices: freed before calibration predicts
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

    def member_predictions(self, X: pd.DataFrame | FeatureMatrix) -> FloatArray:
        """(members, rows) raw predictions."""
        Xm = as_matrix(X, self.feature_names or None)
        return np.vstack([member.predict(Xm) for member in self.members])

    def predict(self, X: pd.DataFrame | FeatureMatrix) -> Prediction:
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
