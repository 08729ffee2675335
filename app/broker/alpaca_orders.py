"""alpaca-py orders as domain orders: Alpaca's states mapped to ours, and an OCO read as one
order whose fill is the leg that filled."""

from __future__ import annotations

from typing import Any

from app import domain
from app.broker.alpaca_client import _enum_value, _f

# Alpaca order states -> ours. Anything still working at the venue counts as NEW (upgraded to
# PARTIALLY_FILLED when it has fills); done_for_day ends a day order, like expiry.
_STATUS = {
    "new": domain.OrderStatus.NEW,
    "accepted": domain.OrderStatus.NEW,
    "pending_new": domain.OrderStatus.NEW,
    "accepted_for_bidding": domain.OrderStatus.NEW,
    "pending_review": domain.OrderStatus.NEW,
    "held": domain.OrderStatus.NEW,
    "calculated": domain.OrderStatus.NEW,
    "stopped": domain.OrderStatus.NEW,
    "suspended": domain.OrderStatus.NEW,
    "pending_cancel": domain.OrderStatus.NEW,
    "pending_replace": domain.OrderStatus.NEW,
    "partially_filled": domain.OrderStatus.PARTIALLY_FILLED,
    "filled": domain.OrderStatus.FILLED,
    "canceled": domain.OrderStatus.CANCELED,
    "replaced": domain.OrderStatus.CANCELED,
    "expired": domain.OrderStatus.EXPIRED,
    "done_for_day": domain.OrderStatus.EXPIRED,
    "rejected": domain.OrderStatus.REJECTED,
}


#: Order classes whose other orders Alpaca shows only in a nested read's `legs`.
MULTI_LEG = frozenset({"bracket", "oco", "oto"})


def _exit_leg(o: Any, default: str) -> str:
    """stop_loss for a stop leg, take_profit for a limit leg; `default` (the leg's place in
    the OCO) when Alpaca leaves the type out."""
    kind = o.type if o.type is not None else o.order_type
    if kind is None:
        return default
    return "take_profit" if _enum_value(kind) == "limit" else "stop_loss"


def to_order(o: Any) -> domain.Order:
    """An alpaca-py Order as a domain.Order. An OCO (a protective exit) is one order: its
    take-profit limit is the parent, its stop the leg (present only in a nested read, see
    `AlpacaBroker._lookup`); whichever leg filled is the fill, and `filled_leg` says which."""
    raw_status = _enum_value(o.status)
    status = _STATUS.get(raw_status, domain.OrderStatus.NEW)
    filled = _f(o.filled_qty) or 0.0
    avg_raw = o.filled_avg_price
    order_class = _enum_value(o.order_class) if o.order_class is not None else "simple"
    stop = _f(o.stop_price)
    filled_at = o.filled_at
    filled_leg = None
    if order_class == domain.OCO:
        filled_leg = _exit_leg(o, "take_profit") if filled > 0 else None
        for leg in o.legs or []:
            stop = _f(leg.stop_price) if leg.stop_price is not None else stop
            leg_filled = _f(leg.filled_qty) or 0.0
            if leg_filled > filled:
                filled, avg_raw, filled_at = leg_filled, leg.filled_avg_price, leg.filled_at
                status = _STATUS.get(_enum_value(leg.status), status)
                filled_leg = _exit_leg(leg, "stop_loss")
    if status is domain.OrderStatus.NEW and filled > 0:
        status = domain.OrderStatus.PARTIALLY_FILLED
    # Alpaca may report filled_avg_price 0 before the first fill: that is "no price yet".
    avg = _f(avg_raw) if filled > 0 else None
    return domain.Order(
        client_order_id=o.client_order_id,
        symbol=o.symbol or "",
        side=domain.Side(_enum_value(o.side)),
        status=status,
        qty=_f(o.qty),
        notional=_f(o.notional),
        filled_qty=filled,
        filled_avg_price=avg,
        broker_order_id=str(o.id),
        submitted_at=o.submitted_at,
        reject_reason=raw_status if status is domain.OrderStatus.REJECTED else None,
        order_class=order_class,
        limit_price=_f(o.limit_price),
        stop_price=stop,
        filled_at=filled_at if filled > 0 else None,
        filled_leg=filled_leg,
    )
