"""Signals from the current model: features at the session → ensemble → BUY/SELL/HOLD.

No model yet, one older than MODEL_MAX_AGE_DAYS, or one trained for another label than the
settings ask (AI_PREDICTION_HORIZON_DAYS, AI_LABEL_NORMALISATION) or on another feature set
(AI_FEATURE_SET) gives no trade: the cycle is told why and alerts, instead of trading on nothing,
on a model that no longer knows the market, or on predictions whose scale the floors (or whose
inputs the research) were not chosen for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Protocol

import pandas as pd

from app import metrics
from app.ai.ensemble import SymbolPrediction
from app.ai.features import (
    SEED_FEATURE_SET,
    feature_columns,
    latest_features,
    max_lookback,
    trained_feature_set,
    trained_label,
)
from app.ai.features_extended import CONTEXT_COLUMNS
from app.ai.store import ModelStore
from app.domain import BarFrame, Signal, SignalAction
from app.market.universe import BENCHMARK
from app.market.validation import recent_rejection

NO_MODEL = "no trained model yet: run `flask --app app train` or POST /api/training/start/batch"


class ModelSignalSource:
    def __init__(
        self,
        store: ModelStore,
        thresholds: SignalThresholds,
        max_age_days: int,
        now: Callable[[], datetime] | None = None,
        label: tuple[int, str] | None = None,
        feature_set: str | None = None,
    ) -> None:
        self._store = store
        self._thresholds = thresholds
        self._max_age_days = max_age_days
        self._now = now or (lambda: datetime.now(UTC))
        #: The label the settings ask for; None: any model's (tests of other parts).
        self._label = label
        #: The feature set the settings ask for (AI_FEATURE_SET); None: any model's.
        self._feature_set = feature_set

    def signals(
        self, bars: Mapping[str, BarFrame], session: date
    ) -> tuple[dict[str, Signal], str | None]:
        bundle = self._store.load_current()
        if bundle is None:
            return {}, NO_MODEL
        stale = self._store.is_stale(self._max_age_days, now=self._now())
        metrics.record_model(self._store.metadata(), self._now())
        trained_set = trained_feature_set(bundle.metadata)
        # The model's own inputs: a refused model still shows what it predicts, as HOLDs.
        features = latest_features(bars, bars.get("SPY"), session, trained_set)
        predictions = bundle.predict(features)
        version = bundle.version or "unknown"
        problem = (
            f"model {version} is older than {self._max_age_days} days: every signal is HOLD"
            if stale
            else None
        )
        label = trained_label(bundle.metadata)
        if self._label is not None and label != self._label:
            problem = (
                f"model {version} was trained for a {label[0]}-session {label[1]} label and the "
                f"settings ask for a {self._label[0]}-session {self._label[1]} one: every signal "
                "is HOLD until a model is trained for it (`flask --app app train`)"
            )
        if self._feature_set is not None and trained_set != self._feature_set:
            refused = (
                f"model {version} was trained on the {trained_set} feature set and the settings "
                f"ask for the {self._feature_set} one (AI_FEATURE_SET): every signal is HOLD "
                "until a model is trained on it (`flask --app app train`)"
            )
            label_refused = self._label is not None and label != self._label
            problem = f"{problem}; {refused}" if label_refused else refused
        signals = {
            symbol: make_signal(
                symbol, prediction, self._thresholds, version, stale=problem is not None
            )
            for symbol, prediction in predictions.items()
        }
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


#: Why a universe symbol got no signal; the code before ":" labels the metric.
MISSING_CODES = (
    "no_bars",
    "no_session_bar",
    "rejected",
    "too_few_bars",
    "feature_nan",
    "no_prediction",
)


def missing_signal_reasons(
    universe: Iterable[str],
    bars: Mapping[str, BarFrame],
    session: date,
    signals: Mapping[str, Signal],
    rejection: Callable[[str, date], str | None] = recent_rejection,
    feature_set: str = SEED_FEATURE_SET,
) -> dict[str, str]:
    """For each universe symbol without a signal, why: "<code>: <detail>" (MISSING_CODES).

    Walks the steps a signal needs (bars, the session's own bar, ``max_lookback(feature_set)``
    bars, finite features, a prediction) on the bars the source saw, so it explains any
    SignalSource. `rejection(symbol, day)` names a bar validation refused (default: this
    process's log). The extended set's market and sector context may be NaN (its ETFs not
    loaded): only the symbol's own features count as feature_nan.
    """
    lookback = max_lookback(feature_set)
    own = [c for c in feature_columns(feature_set) if c not in CONTEXT_COLUMNS]
    day = pd.Timestamp(session).normalize()
    spy = bars.get(BENCHMARK)
    out: dict[str, str] = {}
    for symbol in sorted(set(universe) - set(signals)):
        frame = bars.get(symbol)
        upto = frame.loc[:day] if frame is not None else None
        refused = rejection(symbol, session)
        if upto is None or upto.empty or upto.index[-1] != day:
            if refused:
                out[symbol] = f"rejected: the bar of {session} was rejected ({refused})"
            elif upto is None or upto.empty:
                out[symbol] = f"no_bars: no bars up to {session}"
            else:
                last = upto.index[-1].date()
                out[symbol] = f"no_session_bar: no bar for {session} (the last is {last})"
        elif len(upto) < lookback:
            out[symbol] = f"too_few_bars: {len(upto)} bars, the features need {lookback}"
        else:
            row = latest_features({symbol: upto}, spy, session, feature_set)
            nan = [c for c in own if symbol in row.index and pd.isna(row.at[symbol, c])]
            if nan:
                out[symbol] = f"feature_nan: {', '.join(nan)} not finite on {session}"
            else:
                out[symbol] = "no_prediction: the model gave none (not trained on this symbol?)"
    return out
