"""Trading costs a simulated fill pays: commission and slippage, in basis points. SimBroker,
SimExchange and backtests use the same models.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.domain import (
    Side,
)


@dataclass(frozen=True)
class CommissionModel:
    """Fee per fill: ``bps`` of notional plus ``per_share``, never less than ``minimum``."""

    bps: float = 0.0
    per_share: float = 0.0
    minimum: float = 0.0

    def __post_init__(self) -> None:
        if min(self.bps, self.per_share, self.minimum) < 0:
            raise ValueError("commission parameters must be >= 0")

    def cost(self, qty: float, price: float) -> float:
        fee = abs(qty) * price * self.bps / 10_000 + abs(qty) * self.per_share
        return max(fee, self.minimum)


@dataclass(frozen=True)
class SlippageModel:
    """Adverse price move in basis points: buys pay more, sells receive less."""

    bps: float = 0.0

    def __post_init__(self) -> None:
        if self.bps < 0:
            raise ValueError("slippage must be >= 0")

    def apply(self, price: float, side: Side) -> float:
        factor = self.bps / 10_000
        return price * (1 + factor) if side is Side.BUY else price * (1 - factor)


def protective_fill(
    bar_open: float, high: float, low: float, stop: float, target: float
) -> tuple[str, float] | None:
    """(leg, reference price) when a session's range reaches a protective OCO, else None.

    The one rule live (the loopback fake checks it independently), sim and backtest apply:
    an open at or through a level fills at the open (a gap is not a fill at the level);
    otherwise a low at or under the stop fills at the stop and a high at or over the target
    at the target; a bar touching both counts as the stop (we cannot know which came first:
    assume the worse). The stop becomes a market order (slippage applies); the take-profit is
    a limit order (filled at its price or the better open, no slippage).
    """
    if bar_open <= stop:
        return "stop_loss", bar_open
    if bar_open >= target:
        return "take_profit", bar_open
    if low <= stop:
        return "stop_loss", stop
    if high >= target:
        return "take_profit", target
    return None
