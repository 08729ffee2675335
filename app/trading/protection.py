"""Protective exits at the broker (freqtrade's stoploss_on_exchange): one OCO sell per holding,
a take-profit limit at entry x (1 + RISK_TAKE_PROFIT_PCT) and a stop-loss stop at
entry x (1 + RISK_STOP_LOSS_PCT), GTC, over every whole share held and not promised to another
sell. They protect the position when no worker runs.

`protective_levels` is the one rounding of those prices (live, sim and backtest call it);
`plan_protection` is the one reconciliation (guard cycles, the sim tick and the backtest call
it): create the order when missing, replace it after the holding changed (a partial fill, a new
average price), cancel it when nothing is left to protect. The decision cycle cancels it before
it sends a signal or rebalancing exit (`exits_to_unblock`), so the exit is not refused for
shares the OCO holds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

from app.domain import Order, Position, ProtectiveRequest, Side
from app.trading.risk import RiskLimits

STRATEGY = "alpha"
PURPOSE = "protect"
_GENERATION = re.compile(rf"^{STRATEGY}-\d{{8}}-{PURPOSE}(\d+)-")


def to_tick(price: float) -> float:
    """Half-up to Alpaca's price increment: the cent from $1, $0.0001 below (Alpaca refuses
    sub-penny prices above $1; below $1 a cent would round a penny stock's stop to zero)."""
    tick = Decimal("0.01") if price >= 1.0 else Decimal("0.0001")
    return float(Decimal(repr(price)).quantize(tick, rounding=ROUND_HALF_UP))


def protective_levels(entry: float, limits: RiskLimits) -> tuple[float, float]:
    """(stop, target) of a holding bought at the average price `entry`, to the tick."""
    return (
        to_tick(entry * (1.0 + limits.stop_loss_pct)),
        to_tick(entry * (1.0 + limits.take_profit_pct)),
    )


def is_bot_order(order: Order) -> bool:
    """Whether the bot sent `order`: its client order ids all start with the strategy's
    prefix. Any other order (placed by hand, or by another tool) is never cancelled or
    replaced by the bot; an open sell among them holds its shares like any sell."""
    return order.client_order_id.startswith(f"{STRATEGY}-")


def _bot_protective(order: Order) -> bool:
    return order.is_protective and order.status.is_open and is_bot_order(order)


def protective_order_id(session: date, generation: int, symbol: str) -> str:
    """Deterministic per (session, purpose, symbol, side); the generation counts the
    replacements placed in the same session."""
    return f"{STRATEGY}-{session:%Y%m%d}-{PURPOSE}{generation}-{symbol}-{Side.SELL.value}"


@dataclass(frozen=True)
class ProtectionPlan:
    cancel: list[Order] = field(default_factory=list)
    place: list[ProtectiveRequest] = field(default_factory=list)


def plan_protection(
    positions: Iterable[Position],
    open_orders: Sequence[Order],
    limits: RiskLimits,
    session: date,
    *,
    known_ids: Iterable[str] = (),
    leave_alone: frozenset[str] = frozenset(),
) -> ProtectionPlan:
    """What to cancel and place so each holding has exactly its protective order.

    `known_ids`: client order ids already used (so a replacement gets a fresh generation);
    `leave_alone`: holdings the bot did not open (MANAGE_EXTERNAL_POSITIONS=false). Only the
    bot's own protective orders are cancelled or replaced (`is_bot_order`); an OCO placed by
    hand stays, and the shares it holds are not protected a second time.
    """
    plan = ProtectionPlan()
    protective = {o.symbol: o for o in open_orders if _bot_protective(o)}
    used = set(known_ids) | {o.client_order_id for o in open_orders}
    held = {p.symbol: p for p in positions if p.qty > 0 and p.symbol not in leave_alone}
    for symbol, order in sorted(protective.items()):
        if symbol not in held:
            plan.cancel.append(order)
    for symbol, position in sorted(held.items()):
        promised = sum(
            (o.qty or 0.0) - o.filled_qty
            for o in open_orders
            if o.symbol == symbol
            and o.side is Side.SELL
            and o.status.is_open
            and not _bot_protective(o)
        )
        qty = float(math.floor(position.qty - promised + 1e-9))
        stop, target = protective_levels(position.avg_entry_price, limits)
        current = protective.get(symbol)
        if current is not None:
            if (current.qty, current.stop_price, current.limit_price) == (qty, stop, target):
                continue
            plan.cancel.append(current)
        if qty < 1 or position.avg_entry_price <= 0:
            continue
        generation = 1 + max(
            (
                int(m.group(1))
                for cid in used
                if (m := _GENERATION.match(cid))
                and cid.endswith(f"-{symbol}-sell")
                and cid.startswith(f"{STRATEGY}-{session:%Y%m%d}-")
            ),
            default=0,
        )
        cid = protective_order_id(session, generation, symbol)
        used.add(cid)
        plan.place.append(ProtectiveRequest(symbol, cid, qty, target, stop))
    return plan


def exits_to_unblock(sells: Iterable[str], open_orders: Sequence[Order]) -> list[Order]:
    """The bot's protective orders to cancel before the decision's sells of `sells` go out."""
    symbols = set(sells)
    return [o for o in open_orders if _bot_protective(o) and o.symbol in symbols]
