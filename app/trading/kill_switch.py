"""What the risk API shows and the kill switch does, over the durable risk state."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from app.domain import OrderRequest, OrderStatus, Position, Side
from app.errors import AppError
from app.trading.orders import OrderService
from app.trading.risk import RiskLimits, RiskStateStore, daily_pnl

if TYPE_CHECKING:
    from app.trading.services import TradingServices

log = logging.getLogger(__name__)
NEW_YORK = ZoneInfo("America/New_York")


@dataclass
class KillReport:
    cancelled: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def status(svc: TradingServices) -> dict[str, Any]:
    store = RiskStateStore(svc.db)
    state = store.load()
    broker = svc.venue.broker
    account = broker.get_account()
    positions = broker.get_positions()
    exposure = sum(abs(p.market_value) for p in positions)
    limits = RiskLimits.from_settings(svc.settings)
    start = state.start_of_day_equity or account.last_equity
    return {
        "state": state.state.value,
        "halted_until": state.halted_until.isoformat() if state.halted_until else None,
        "halt_reason": state.halt_reason,
        "limits": {
            "max_positions": limits.max_positions,
            "max_portfolio_exposure": limits.max_exposure,
            "max_position_size": limits.max_position_size,
            "stop_loss_pct": limits.stop_loss_pct,
            "take_profit_pct": limits.take_profit_pct,
            "max_daily_loss": limits.max_daily_loss,
        },
        "equity": account.equity,
        "exposure": exposure / account.equity if account.equity > 0 else 0.0,
        "positions": len(positions),
        "daily_pnl": daily_pnl(state, account),
        "daily_pnl_pct": (account.equity / start - 1.0) if start else 0.0,
        "recent_events": store.recent_events(10),
    }


#: How long the kill switch waits for a running cycle to finish before halting anyway (the
#: cycle re-reads the risk state before each send, so a halt it did not wait for still holds).
KILL_LOCK_WAIT_SECONDS = 30.0


def halt(
    svc: TradingServices,
    reason: str,
    *,
    now: datetime,
    hours: float | None,
    cancel_orders: bool,
    flatten: bool,
    lock_wait: float = KILL_LOCK_WAIT_SECONDS,
) -> KillReport:
    """HALTED now; optionally cancel open orders and flatten through OrderService (a PENDING
    row, a fill record, reconciled like any bot order). Takes the cycle lock so no cycle
    decides or sends in between."""
    store = RiskStateStore(svc.db)
    report = KillReport()
    with svc.cycle_lock.hold(wait=lock_wait) as owned:
        if not owned:
            log.warning("kill switch: a cycle still holds the lock; halting without it")
        store.halt(reason, now, hours)
        svc.notifier.notify("Trading HALTED", reason, "error")
        broker = svc.venue.broker
        if cancel_orders or flatten:
            for order in broker.get_open_orders():
                try:
                    broker.cancel_order(order.client_order_id)
                    report.cancelled.append(order.client_order_id)
                except AppError as exc:
                    report.errors.append(f"cancel {order.client_order_id}: {exc.message}")
        if flatten:
            _flatten(OrderService(svc.db, broker), broker.get_positions(), now, report)
    if report.cancelled or report.closed:
        store.record_event(
            "kill_switch", f"cancelled {len(report.cancelled)}, closed {report.closed}"
        )
    return report


def _flatten(
    orders: OrderService, positions: list[Position], now: datetime, report: KillReport
) -> None:
    stamp = now.astimezone(UTC).strftime("%Y%m%d%H%M")
    for position in positions:
        if position.qty == 0:
            continue
        side = Side.SELL if position.qty > 0 else Side.BUY
        request = OrderRequest(
            symbol=position.symbol,
            side=side,
            client_order_id=f"alpha-kill-{stamp}-{position.symbol}",
            qty=abs(position.qty),
        )
        placed = orders.place(
            request, reason="kill_switch: flatten", session_date=now.astimezone(NEW_YORK).date()
        )
        if placed.order is None or placed.order.status is OrderStatus.REJECTED:
            report.errors.append(f"close {position.symbol}: {placed.error or 'rejected'}")
        else:
            report.closed.append(position.symbol)


def resume(svc: TradingServices, reason: str) -> None:
    RiskStateStore(svc.db).resume(reason)
    svc.notifier.notify("Trading resumed", reason, "success")
