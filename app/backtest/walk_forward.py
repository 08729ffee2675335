"""Walk-forward prediction: the model is retrained every N sessions on labels known before each
window, so a backtest never sees a model trained on its own future.

The windows are independent work units (walk_forward_window.run_window): a run collects their
predictions in-process or from Celery workers, then the engine reads them through this predictor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any, Protocol

from app.ai.ensemble import ModelBundle, SymbolPrediction
from app.ai.features import trained_feature_set
from app.backtest.feature_source import SourceData
from app.backtest.walk_forward_window import (
    WalkForwardConfig,
    WalkForwardWindow,
    WindowResult,
    plan_windows,
    predict_window,
    run_window,
)
from app.domain import BarFrame
from app.market.calendar import NyseCalendar

__all__ = ["Predictor", "WalkForwardConfig", "WalkForwardPredictor"]


class Predictor(Protocol):
    def predictions(
        self, session: date, bars: Mapping[str, BarFrame]
    ) -> tuple[dict[str, SymbolPrediction], str]: ...

    def describe(self) -> dict[str, Any]: ...


class WalkForwardPredictor:
    """Predictions per session from models that only saw labels known before their window.

    `windows`: the results of the run's windows (plan_windows over the same sessions), however
    they were computed; without them each window is computed here when first asked for.
    Alternatively a saved bundle is used as is for every session (a warning says so when its
    labels reach into the window).
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
        windows: Sequence[WindowResult] | None = None,
    ) -> None:
        if not sessions:
            raise ValueError("no sessions to predict")
        self.config = config or WalkForwardConfig()
        self._data = SourceData(bars)
        self._calendar = calendar or NyseCalendar()
        self._bundle_given = bundle
        self.warnings: list[str] = []
        plan_config = self.config
        if bundle is not None:
            plan_config = WalkForwardConfig(
                retrain_every=len(sessions),
                horizon=self.config.horizon,
                label_normalisation=self.config.label_normalisation,
                # A saved model is fed the inputs it was trained on.
                feature_set=trained_feature_set(bundle.metadata),
                features=self.config.features,
            )
        self.plan = plan_windows(sessions, symbols, plan_config)
        every = plan_config.retrain_every
        self._window_of = {day: i // every for i, day in enumerate(sessions)}
        self._results: dict[int, WindowResult] = {}
        if windows is not None:
            self._take(windows)
        if bundle is not None:
            last = bundle.metadata.get("last_label_end") or bundle.metadata.get("train_end")
            if last is None or date.fromisoformat(str(last)[:10]) >= sessions[0]:
                self.warnings.append(
                    f"saved model {bundle.version or 'unversioned'} learned labels up to {last}, "
                    f"not before the first session {sessions[0]}: possible lookahead"
                )

    def _take(self, windows: Sequence[WindowResult]) -> None:
        found = sorted(w.index for w in windows)
        if found != list(range(len(self.plan))):
            raise ValueError(f"results of windows {found} for a plan of {len(self.plan)}")
        for result in windows:
            window = self.plan[result.index]
            if result.retrain is not None and result.retrain["window_start"] != (
                window.first.isoformat()
            ):
                raise ValueError(f"window {result.index} was computed for another plan")
            self._results[result.index] = result

    def window(self, index: int) -> WindowResult:
        result = self._results.get(index)
        if result is None:
            result = self._compute(self.plan[index])
            self._results[index] = result
        return result

    def _compute(self, window: WalkForwardWindow) -> WindowResult:
        if self._bundle_given is not None:
            return predict_window(self._bundle_given, window, self._data)
        return run_window(window, self._data, calendar=self._calendar)

    @property
    def retrains(self) -> list[dict[str, Any]]:
        """The retrain records of the windows computed so far, in window order."""
        return [r.retrain for _, r in sorted(self._results.items()) if r.retrain is not None]

    def predictions(
        self, session: date, bars: Mapping[str, BarFrame]
    ) -> tuple[dict[str, SymbolPrediction], str]:
        """Predictions for `session` (a session of the backtest) and the model's version."""
        result = self.window(self._window_of[session])
        return result.at(session), result.version

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
        retrains = self.retrains
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
            "retrains": retrains,
            "train_seconds": round(sum(r["seconds"] for r in retrains), 2),
            "warnings": list(self.warnings),
        }
