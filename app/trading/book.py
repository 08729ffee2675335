"""Book portfolio construction (STRATEGY_PORTFOLIO=book): hold the names the model ranks best.

The seed's rule ("signals") buys a name when its signal clears the BUY floors and the calibrated
confidence, and sizes it by volatility: on real data that left the book 80 % cash (round 2 of
docs/research.md). The book rule is invested whenever the model has views, within the same caps:

- every session, empty places are filled from the day's `top_k` best-predicted names whose
  predicted (excess) return is above 0, each sized at the per-position cap (RISK_MAX_POSITION_SIZE,
  less the entry gap margin); the model's sign decides, not the calibration, which reads about
  0.52 for a model that knows nothing;
- every `rebalance_every` sessions (counted on the NYSE calendar from REBALANCE_ANCHOR, so live,
  sim and the backtest rebalance on the same dates) a holding that fell out of the best
  2 x `top_k` is sold; its place is refilled as soon as the sale frees the capital (the gate
  never counts an unfilled sale as cash);
- stop-loss and take-profit exits stay as in the seed (and at the broker); SELL signals do not
  close a book position between rebalances.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date
from functools import cache

from app.domain import Position, Signal
from app.market.calendar import NyseCalendar

#: Rebalance sessions are counted from the first session of 2000.
REBALANCE_ANCHOR = date(2000, 1, 3)


@cache
def _anchor_number() -> int:
    return NyseCalendar().session_number(REBALANCE_ANCHOR)


def rebalance_due(session: date, every: int) -> bool:
    """Whether `session` is a rebalance session: every `every`-th NYSE session from the anchor."""
    if every <= 1:
        return True
    return (NyseCalendar().session_number(session) - _anchor_number()) % every == 0


def ranked_by_prediction(signals: Mapping[str, Signal]) -> list[str]:
    """Symbols with a finite predicted return, best first (ties by symbol, so deterministic)."""
    finite = [s for s in signals.values() if math.isfinite(s.predicted_return)]
    return [s.symbol for s in sorted(finite, key=lambda s: (-s.predicted_return, s.symbol))]


def book_candidates(
    signals: Mapping[str, Signal], held: Mapping[str, Position], skip: set[str], top_k: int
) -> list[str]:
    """Names to buy, best first: among the day's `top_k` best predictions (held names use up
    their places), those predicted above 0 that are neither held nor to be skipped."""
    ranked = ranked_by_prediction(signals)
    best = ranked[:top_k] if top_k > 0 else ranked
    return [s for s in best if signals[s].predicted_return > 0 and s not in held and s not in skip]


def book_leavers(
    signals: Mapping[str, Signal], positions: Mapping[str, Position], skip: set[str], top_k: int
) -> list[str]:
    """Holdings to sell at a rebalance: ranked below the best 2 x `top_k` today. A holding
    without a prediction today (no bars, a feature gap) is kept: nothing says it fell."""
    ranked = ranked_by_prediction(signals)
    keep = set(ranked[: 2 * top_k]) if top_k > 0 else set(ranked)
    rank_known = set(ranked)
    return sorted(s for s in positions if s in rank_known and s not in keep and s not in skip)
