"""SimBroker's orders, requests and fills as plain JSON-able dicts and back (SimExchange keeps the
book in the database between processes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

from app.domain import (
    Fill,
    Order,
    OrderRequest,
    OrderStatus,
    ProtectiveRequest,
    Side,
    TimeInForce,
)

#: Share quantities are kept to 9 decimals, as Alpaca does for fractional orders.
QTY_DECIMALS = 9
_QTY_SCALE = 1_000_000_000  # 10 ** QTY_DECIMALS
_QTY_EPS = 1.0 / _QTY_SCALE
#: Float slack when comparing money, so qty = cash / price is not refused over one ulp.
_CASH_EPS = 1e-9


@dataclass
class _Holding:
    qty: float
    avg_price: float


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _order_state(order: Order) -> dict[str, Any]:
    data = asdict(order)
    data.update(
        side=str(order.side),
        status=str(order.status),
        submitted_at=_ts(order.submitted_at),
        filled_at=_ts(order.filled_at),
    )
    return data


def _order_from(data: Mapping[str, Any]) -> Order:
    return Order(
        **{
            **data,
            "side": Side(data["side"]),
            "status": OrderStatus(data["status"]),
            "submitted_at": _dt(data["submitted_at"]),
            "filled_at": _dt(data.get("filled_at")),
        }
    )


def _request_state(request: OrderRequest) -> dict[str, Any]:
    return {
        **asdict(request),
        "side": str(request.side),
        "time_in_force": str(request.time_in_force),
    }


def _request_from(data: Mapping[str, Any]) -> OrderRequest:
    tif = TimeInForce(data.get("time_in_force", TimeInForce.DAY.value))
    return OrderRequest(**{**data, "side": Side(data["side"]), "time_in_force": tif})


def _protective_state(request: ProtectiveRequest) -> dict[str, Any]:
    return asdict(request)


def _protective_from(data: Mapping[str, Any]) -> ProtectiveRequest:
    return ProtectiveRequest(**data)


def _fill_state(fill: Fill) -> dict[str, Any]:
    return {**asdict(fill), "side": str(fill.side), "timestamp": _ts(fill.timestamp)}


def _fill_from(data: Mapping[str, Any]) -> Fill:
    return Fill(**{**data, "side": Side(data["side"]), "timestamp": _dt(data["timestamp"])})


def dump_book(b: Any) -> dict[str, Any]:
    """SimBroker.to_state: the book as JSON-ready data (the caller holds its lock)."""
    return {
        "cash": b._cash,
        "last_equity": b._last_equity,
        "holdings": {s: [h.qty, h.avg_price] for s, h in b._holdings.items()},
        "marks": dict(b._marks),
        "orders": [_order_state(o) for o in b._orders.values()],
        "requests": [_request_state(r) for r in b._requests.values()],
        "pending": list(b._pending),
        "guards": list(b._guards),
        "protective": [_protective_state(r) for r in b._protective.values()],
        "fills": [_fill_state(f) for f in b._fills],
        "realized_pl": b._realized_pl,
        "commission_paid": b._commission_paid,
        "seq": b._seq,
    }


def load_book(b: Any, state: Mapping[str, Any]) -> None:
    """SimBroker.load_state (the caller holds its lock)."""
    b._cash = float(state["cash"])
    b._last_equity = float(state["last_equity"])
    b._holdings = {s: _Holding(q, p) for s, (q, p) in state["holdings"].items()}
    b._marks = {s: float(p) for s, p in state["marks"].items()}
    orders = [_order_from(o) for o in state["orders"]]
    b._orders = {o.client_order_id: o for o in orders}
    requests = [_request_from(r) for r in state["requests"]]
    b._requests = {r.client_order_id: r for r in requests}
    b._pending = list(state["pending"])
    b._guards = list(state.get("guards", []))
    protective = [_protective_from(r) for r in state.get("protective", [])]
    b._protective = {r.client_order_id: r for r in protective}
    b._fills = [_fill_from(f) for f in state["fills"]]
    b._realized_pl = float(state["realized_pl"])
    b._commission_paid = float(state["commission_paid"])
    b._seq = int(state["seq"])


def settle_fill(
    b: Any, cid: str, symbol: str, side: Side, qty: float, price: float, ref: float
) -> Order:
    """SimBroker's fill bookkeeping: cash, holdings at average cost, commission, the fill and
    the order's new state; rejects what no longer fits (the caller holds the lock)."""
    held = b._holdings.get(symbol)
    held_qty = held.qty if held else 0.0
    if side is Side.SELL and qty > held_qty:
        if qty > held_qty + _QTY_EPS * max(1.0, held_qty):
            return _rejected(
                b,
                cid,
                f"insufficient qty: selling {qty:g} {symbol} but only {held_qty:g} "
                "held (no shorting)",
            )
        qty = held_qty  # float dust: sell exactly what is held
    if qty <= 0:
        return _rejected(b, cid, f"order too small: {qty:g} shares at {price:.4f}")

    notional = qty * price
    fee = b._commission.cost(qty, price)
    if side is Side.BUY:
        total = notional + fee
        if total > b._cash + _CASH_EPS * max(1.0, b._cash):
            return _rejected(
                b,
                cid,
                f"insufficient buying power: needs {total:.2f}, cash {b._cash:.2f}",
            )
        b._cash = max(0.0, b._cash - total)
        new_qty = round(held_qty + qty, QTY_DECIMALS)
        cost = (held.avg_price * held_qty if held else 0.0) + notional
        b._holdings[symbol] = _Holding(qty=new_qty, avg_price=cost / new_qty)
    else:
        assert held is not None
        if b._cash + notional - fee < 0:
            return _rejected(
                b, cid, f"insufficient cash for commission {fee:.2f} on a {notional:.2f} sale"
            )
        b._cash = b._cash + notional - fee
        b._realized_pl += (price - held.avg_price) * qty
        remaining = held_qty - qty
        if remaining <= _QTY_EPS:
            del b._holdings[symbol]
        else:
            held.qty = round(remaining, QTY_DECIMALS)
    b._commission_paid += fee
    b._marks[symbol] = ref
    now = b._clock.now()
    b._fills.append(
        Fill(
            client_order_id=cid,
            symbol=symbol,
            side=side,
            qty=qty,
            price=price,
            timestamp=now,
            commission=fee,
        )
    )
    order: Order = replace(
        b._orders[cid],
        status=OrderStatus.FILLED,
        filled_qty=qty,
        filled_avg_price=price,
        filled_at=now,
    )
    b._orders[cid] = order
    return order


def _rejected(b: Any, cid: str, reason: str) -> Order:
    order: Order = b._reject(cid, reason)
    return order
