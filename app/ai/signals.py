"""Signals from the current model: features at the session → ensemble → BUY/SELL/HOLD.

No model yet, or one older than MODEL_MAX_AGE_DAYS, gives no trade: the cycle is told why and
alerts, instead of trading on nothing or on a model that no longer knows the market.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Protocol

from app import metrics
from app.ai.ensemble import SymbolPrediction
from app.ai.features import (
    latest_features,
)
from app.ai.store import ModelStore
from app.domain import BarFrame, Signal, SignalAction

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
    """Stand-alone thresholds with the seed's values (backtests, tests)."""

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
    confidence; HOLD otherwise, and always HOLD on a stale model or a non-finite prediction.

    The expected return is the model's label: over AI_PREDICTION_HORIZON_DAYS sessions, raw or
    in excess of the watchlist's mean (AI_LABEL_NORMALISATION); the confidence is the calibrated
    probability that its sign is right. With rank entries (STRATEGY_ENTRY_TOP_K) a BUY is only
    eligible: the strategy buys the day's best-ranked eligible names, so the thresholds act as
    floors under the rank."""
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
