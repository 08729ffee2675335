"""Signals from the current model: features at the session → ensemble → BUY/SELL/HOLD.

No model yet, or one older than MODEL_MAX_AGE_DAYS, gives no trade: the cycle is told why and
alerts, instead of trading on nothing or on a model that no longer knows the market.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime

from app import metrics
from app.ai.ensemble import ModelStore, SignalThresholds, make_signal
from app.ai.features import latest_features
from app.domain import BarFrame, Signal

NO_MODEL = "no trained model yet: run `flask --app app train` or POST /api/training/start/batch"


class ModelSignalSource:
    def __init__(
        self,
        store: ModelStore,
        thresholds: SignalThresholds,
        max_age_days: int,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self._store = store
        self._thresholds = thresholds
        self._max_age_days = max_age_days
        self._now = now or (lambda: datetime.now(UTC))

    def signals(
        self, bars: Mapping[str, BarFrame], session: date
    ) -> tuple[dict[str, Signal], str | None]:
        bundle = self._store.load_current()
        if bundle is None:
            return {}, NO_MODEL
        stale = self._store.is_stale(self._max_age_days, now=self._now())
        metrics.record_model(self._store.metadata(), self._now())
        features = latest_features(bars, bars.get("SPY"), session)
        predictions = bundle.predict(features)
        version = bundle.version or "unknown"
        signals = {
            symbol: make_signal(symbol, prediction, self._thresholds, version, stale=stale)
            for symbol, prediction in predictions.items()
        }
        problem = (
            f"model {version} is older than {self._max_age_days} days: every signal is HOLD"
            if stale
            else None
        )
        return signals, problem
