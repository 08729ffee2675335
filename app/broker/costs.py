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
