"""Walk-forward prediction: the model is retrained every N sessions on labels known before each
window, so a backtest never sees a model trained on its own future.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import pandas as pd

from app.ai.ensemble import Mode, ModelBundle, SymbolPrediction
from app.ai.features import LABEL_COLUMN, LABEL_END_COLUMN, build_features, latest_features
from app.ai.training import train
from app.backtest.results import BENCHMARK_SYMBOL
from app.domain import (
    BarFrame,
)
from app.errors import ValidationError
from app.market.calendar import NyseCalendar

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


class Predictor(Protocol):
    def predictions(
        self, session: date, bars: Mapping[str, BarFrame]
    ) -> tuple[dict[str, SymbolPrediction], str]: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class WalkForwardConfig:
    """How models are retrained during a backtest (app.ai.training.train's knobs)."""

    retrain_every: int = 63
    #: Years of rows each training uses (Settings.train_years); None: all history.
    train_years: float | None = 5.0
    mode: Mode = "pooled"
    params: Mapping[str, Any] | None = None
    #: The last label date the tuning of `params` saw. A window whose training ends before it
    #: trains with the defaults instead: a backtest never uses tuning from its future.
    params_tuned_through: date | None = None
    n_lgbm: int = 3
    n_xgb: int = 3
    seed: int = 0
    val_fraction: float = 0.2
    #: The label: sessions held after the next open, and its normalisation across symbols
    #: (AI_PREDICTION_HORIZON_DAYS, AI_LABEL_NORMALISATION).
    horizon: int = 1
    label_normalisation: str = "raw"
    #: Placebo: permute the training labels (a model that can know nothing; must earn ~0).
    shuffle_labels: bool = False
    #: "precomputed": feature rows computed once over the whole history (features are causal,
    #: so row t is the same as from bars <= t; one pass instead of one per session).
    #: "live": latest_features from the bars the cycle passes, exactly as ModelSignalSource
    #: does (about 0.25 s per session for 32 symbols).
    features: Literal["precomputed", "live"] = "precomputed"

    def __post_init__(self) -> None:
        if self.retrain_every < 1:
            raise ValidationError("must be >= 1", field="retrain_every")


class WalkForwardPredictor:
    """Predictions per session from models that only saw labels known before their window.

    Windows of `retrain_every` sessions start at the first session; the model of a window
    starting at session S is trained with ``train_end`` = the session before S, on rows whose
    label ended by then (``label_end <= train_end``). Alternatively a saved bundle is used as
    is for every session (a warning says so when its labels reach into the window).
    """

    def __init__(
        self,
        bars: Mapping[str, BarFrame],
        sessions: Sequence[date],
        symbols: Sequence[str],
        config: WalkForwardConfig | None = None,
        *,
        bundle: ModelBundle | None = None,
        calendar: NyseCalendar | None = None,
        on_retrain: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not sessions:
            raise ValueError("no sessions to predict")
        self.config = config or WalkForwardConfig()
        self._bars = bars
        self._sessions = list(sessions)
        self._symbols = sorted(set(symbols))
        self._calendar = calendar or NyseCalendar()
        self._bundle_given = bundle
        self._on_retrain = on_retrain
        self._features: pd.DataFrame | None = None
        every = len(self._sessions) if bundle is not None else self.config.retrain_every
        self._window_of = {day: i // every for i, day in enumerate(self._sessions)}
        self._starts = self._sessions[::every]
        self._models: dict[int, ModelBundle] = {}
        self._cache: dict[int, dict[date, dict[str, SymbolPrediction]]] = {}
        self.retrains: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self._rng = np.random.default_rng(self.config.seed)
        if bundle is not None:
            last = bundle.metadata.get("last_label_end") or bundle.metadata.get("train_end")
            if last is None or date.fromisoformat(str(last)[:10]) >= self._sessions[0]:
                self.warnings.append(
                    f"saved model {bundle.version or 'unversioned'} learned labels up to {last}, "
                    f"not before the first session {self._sessions[0]}: possible lookahead"
                )

    @property
    def features(self) -> pd.DataFrame:
        if self._features is None:
            t0 = time.perf_counter()
            spy = self._bars.get(BENCHMARK_SYMBOL)
            self._features = build_features(
                self._bars,
                spy,
                horizon=self.config.horizon,
                normalisation=self.config.label_normalisation,
            )
            log.info("features for the backtest in %.1fs", time.perf_counter() - t0)
        return self._features

    def model_for(self, window: int) -> ModelBundle:
        if self._bundle_given is not None:
            return self._bundle_given
        model = self._models.get(window)
        if model is None:
            model = self._train(window)
            self._models = {window: model}  # one live model at a time, like production
        return model

    def _train(self, window: int) -> ModelBundle:
        first = self._starts[window]
        cutoff = pd.Timestamp(self._calendar.previous_session(first))
        cfg = self.config
        feats = self.features
        pool = feats[feats[LABEL_COLUMN].notna() & (feats[LABEL_END_COLUMN] <= cutoff)]
        if cfg.train_years:
            since = cutoff - pd.DateOffset(days=int(cfg.train_years * 365.25))
            pool = pool[pool.index.get_level_values("date") > since]
        if cfg.shuffle_labels:
            pool = pool.copy()
            pool[LABEL_COLUMN] = self._rng.permutation(pool[LABEL_COLUMN].to_numpy())
        tuned = cfg.params is not None and (
            cfg.params_tuned_through is None or cfg.params_tuned_through <= cutoff.date()
        )
        t0 = time.perf_counter()
        bundle = train(
            None,
            None,
            cfg.mode,
            cutoff,
            cfg.params if tuned else None,
            features=pool,
            n_lgbm=cfg.n_lgbm,
            n_xgb=cfg.n_xgb,
            seed=cfg.seed,
            val_fraction=cfg.val_fraction,
            horizon=cfg.horizon,
            normalisation=cfg.label_normalisation,
        )
        seconds = time.perf_counter() - t0
        meta = bundle.metadata
        last_label = meta.get("last_label_end")
        if last_label is None or date.fromisoformat(last_label) >= first:
            raise RuntimeError(f"lookahead: labels up to {last_label} for a window from {first}")
        bundle.version = f"wf-{cutoff.date().isoformat()}"
        record = {
            "window_start": first.isoformat(),
            "train_end": cutoff.date().isoformat(),
            "train_start": meta.get("train_start"),
            "last_label_end": last_label,
            "n_train_rows": meta.get("n_train_rows"),
            "n_val_rows": meta.get("n_val_rows"),
            "params": "tuned" if tuned else "defaults",
            "validation": meta.get("validation"),
            "seconds": round(seconds, 2),
        }
        self.retrains.append(record)
        log.info("walk-forward model %s trained in %.1fs", bundle.version, seconds)
        if self._on_retrain is not None:
            self._on_retrain(record)
        return bundle

    def predictions(
        self, session: date, bars: Mapping[str, BarFrame]
    ) -> tuple[dict[str, SymbolPrediction], str]:
        """Predictions for `session` (a session of the backtest) and the model's version."""
        window = self._window_of[session]
        model = self.model_for(window)
        version = model.version or "saved"
        if self.config.features == "live":
            rows = latest_features(bars, bars.get(BENCHMARK_SYMBOL), session)
            wanted = set(self._symbols)
            found = model.predict(rows)
            return {s: p for s, p in found.items() if s in wanted}, version
        cached = self._cache.get(window)
        if cached is None:
            cached = self._predict_window(window, model)
            self._cache = {window: cached}
        return cached.get(session, {}), version

    def _predict_window(
        self, window: int, model: ModelBundle
    ) -> dict[date, dict[str, SymbolPrediction]]:
        """Every session of the window at once (rows are independent): far fewer calls."""
        days = [d for d, w in self._window_of.items() if w == window]
        feats = self.features
        dates = feats.index.get_level_values("date")
        symbols = feats.index.get_level_values("symbol")
        mask = (
            (dates >= pd.Timestamp(days[0]))
            & (dates <= pd.Timestamp(days[-1]))
            & symbols.isin(self._symbols)
        )
        rows = feats[mask]
        out: dict[date, dict[str, SymbolPrediction]] = {}
        if rows.empty:
            return out
        scored = model.predict_frame(rows[model.feature_columns]).dropna(subset=["mean"])
        for (day, symbol), mean, disp, conf in zip(
            scored.index,
            scored["mean"].to_numpy(),
            scored["dispersion"].to_numpy(),
            scored["confidence"].to_numpy(),
            strict=True,
        ):
            out.setdefault(pd.Timestamp(day).date(), {})[str(symbol)] = SymbolPrediction(
                float(mean), float(disp), float(conf)
            )
        return out

    def describe(self) -> dict[str, Any]:
        if self._bundle_given is not None:
            return {
                "kind": "saved_model",
                "version": self._bundle_given.version,
                "metadata": {
                    k: self._bundle_given.metadata.get(k)
                    for k in ("mode", "train_start", "train_end", "last_label_end")
                },
                "warnings": list(self.warnings),
            }
        cfg = self.config
        return {
            "kind": "walk_forward",
            "mode": cfg.mode,
            "retrain_every": cfg.retrain_every,
            "train_years": cfg.train_years,
            "members": {"lightgbm": cfg.n_lgbm, "xgboost": cfg.n_xgb},
            "seed": cfg.seed,
            "shuffle_labels": cfg.shuffle_labels,
            "horizon": cfg.horizon,
            "label_normalisation": cfg.label_normalisation,
            "features": cfg.features,
            "params": dict(cfg.params or {}),
            "retrains": list(self.retrains),
            "train_seconds": round(sum(r["seconds"] for r in self.retrains), 2),
            "warnings": list(self.warnings),
        }
