"""Signal functions a backtest replays: model signals over a predictor, an SMA-cross rule, or any
live SignalSource adapted to the engine's ``signal_fn(bars, session)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from app.ai.signals import SignalThresholds, make_signal
from app.backtest.results import SignalFn
from app.backtest.walk_forward import Predictor
from app.domain import (
    BarFrame,
    Signal,
    SignalAction,
)
from app.trading.cycle import SignalSource

if TYPE_CHECKING:
    pass


class ModelSignals:
    """signal_fn from a predictor: make_signal with the given thresholds, as live does."""

    def __init__(self, predictor: Predictor, thresholds: SignalThresholds) -> None:
        self.predictor = predictor
        self.thresholds = thresholds
        self.counts: Counter[str] = Counter()

    def __call__(self, bars: Mapping[str, BarFrame], session: date) -> dict[str, Signal]:
        predictions, version = self.predictor.predictions(session, bars)
        signals = {
            symbol: make_signal(symbol, prediction, self.thresholds, version)
            for symbol, prediction in predictions.items()
        }
        self.counts.update(s.action.value for s in signals.values())
        return signals

    def describe(self) -> dict[str, Any]:
        t = self.thresholds
        return {
            **self.predictor.describe(),
            "thresholds": {
                "buy": t.ai_signal_buy_threshold,
                "sell": t.ai_signal_sell_threshold,
                "confidence": t.ai_confidence_threshold,
            },
            "signal_counts": {a.value: self.counts.get(a.value, 0) for a in SignalAction},
        }


class SmaCrossSignals:
    """Long-only moving-average crossover: BUY on the close the fast SMA crosses above the slow
    one, SELL on the close it crosses below. A model-free rule for tests and benchmarks.

    Averages are causal (closes <= t), computed once over the whole history.
    """

    def __init__(
        self,
        bars: Mapping[str, BarFrame],
        symbols: Sequence[str],
        fast: int = 20,
        slow: int = 50,
        predicted_return: float = 0.01,
    ) -> None:
        if not 1 <= fast < slow:
            raise ValueError("need 1 <= fast < slow")
        self.fast, self.slow = fast, slow
        self._by_day: dict[date, dict[str, Signal]] = {}
        for symbol in sorted(set(symbols)):
            frame = bars.get(symbol)
            if frame is None or len(frame) <= slow:
                continue
            close = frame["close"].astype(float)
            f = close.rolling(fast, min_periods=fast).mean().to_numpy()
            s = close.rolling(slow, min_periods=slow).mean().to_numpy()
            above = f > s
            not_above_before = np.r_[False, f[:-1] <= s[:-1]]
            below = f < s
            not_below_before = np.r_[False, f[:-1] >= s[:-1]]
            for ts, action in _crossings(
                frame.index, above & not_above_before, below & not_below_before
            ):
                self._by_day.setdefault(ts, {})[symbol] = Signal(
                    symbol,
                    action,
                    predicted_return if action is SignalAction.BUY else -predicted_return,
                    1.0,
                    0.0,
                    f"sma{fast}x{slow}",
                )

    def __call__(self, bars: Mapping[str, BarFrame], session: date) -> dict[str, Signal]:
        return dict(self._by_day.get(session, {}))

    def describe(self) -> dict[str, Any]:
        return {"kind": "sma_cross", "fast": self.fast, "slow": self.slow}


def _crossings(
    index: pd.Index, up: np.ndarray, down: np.ndarray
) -> Iterator[tuple[date, SignalAction]]:
    at = np.flatnonzero(up | down)
    days = pd.DatetimeIndex(index[at]).date  # converted at once, not one Timestamp at a time
    for i, day in zip(at.tolist(), days, strict=True):
        yield day, (SignalAction.BUY if up[i] else SignalAction.SELL)


def from_signal_source(source: SignalSource) -> SignalFn:
    """A live SignalSource (e.g. ModelSignalSource) as a signal_fn; its problems are dropped."""

    def signals(bars: Mapping[str, BarFrame], session: date) -> Mapping[str, Signal]:
        found, _problem = source.signals(bars, session)
        return found

    return signals
