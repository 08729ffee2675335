"""A plain cross-sectional momentum rule, the factor baseline an ML strategy must beat.

12-1 month momentum (Jegadeesh and Titman; the return from 252 to 21 sessions before the
decision, skipping the last month's short-term reversal), top k, rebalanced on the first
session of each month. It runs through the same engine, costs and risk limits as the model
(exits, caps, volatility sizing): on a rebalance session the top k names get BUY signals scored
by their momentum, held names outside the top k get SELL; other sessions send no signal, so
holdings stay until the next rebalance or a protective exit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from app.domain import BarFrame, Signal, SignalAction

#: Sessions in the lookback (about 12 months) and in the skipped last month.
LOOKBACK, SKIP = 252, 21


class MomentumSignals:
    """signal_fn of the 12-1 momentum rule; scores are causal (closes <= the decision's)."""

    def __init__(
        self,
        bars: Mapping[str, BarFrame],
        symbols: Sequence[str],
        top_k: int = 7,
        lookback: int = LOOKBACK,
        skip: int = SKIP,
    ) -> None:
        if not 0 <= skip < lookback or top_k < 1:
            raise ValueError("need 0 <= skip < lookback and top_k >= 1")
        self.top_k, self.lookback, self.skip = top_k, lookback, skip
        closes = {s: bars[s]["close"].astype(float) for s in sorted(set(symbols)) if s in bars}
        self._scores = pd.DataFrame(
            {s: c.shift(skip) / c.shift(lookback) - 1.0 for s, c in closes.items()}
        )
        #: Each symbol's own bar dates: a score counts only on a session the symbol traded.
        self._traded = pd.DataFrame({s: pd.Series(True, index=c.index) for s, c in closes.items()})

    def __call__(self, bars: Mapping[str, BarFrame], session: date) -> dict[str, Signal]:
        day = pd.Timestamp(session)
        if day not in self._scores.index or not self._first_of_month(day):
            return {}
        row = self._scores.loc[day]
        traded = self._traded.loc[day].fillna(False).astype(bool)
        row = row[traded & np.isfinite(row)]
        ranked = row.sort_values(ascending=False, kind="mergesort")
        top = set(ranked.index[: self.top_k])
        return {
            str(symbol): Signal(
                str(symbol),
                SignalAction.BUY if symbol in top else SignalAction.SELL,
                float(value),
                1.0,
                0.0,
                "momentum_12_1",
            )
            for symbol, value in ranked.items()
        }

    def _first_of_month(self, day: pd.Timestamp) -> bool:
        """True on the first session of a month present in the scores' dates."""
        at = self._scores.index.get_loc(day)
        return bool(at == 0 or self._scores.index[at - 1].month != day.month)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "momentum",
            "lookback": self.lookback,
            "skip": self.skip,
            "top_k": self.top_k,
            "rebalance": "first session of each month",
        }
