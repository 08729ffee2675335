"""What the risk API shows and the kill switch does, over the durable risk state."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from app.errors import AppError
from app.trading.risk import RiskLimits, RiskStateStore, daily_pnl

if TYPE_CHECKING:
    from app.trading.services import TradingServices

log = logging.getLogger(__name__)


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


def halt(
    svc: TradingServices,
    reason: str,
    *,
    now: datetime,
    hours: float | None,
    cancel_orders: bool,
    flatten: bool,
) -> KillReport:
    store = RiskStateStore(svc.db)
    store.halt(reason, now, hours)
    svc.notifier.notify("Trading HALTED", reason, "error")
    report = KillReport()
    broker = svc.venue.broker
    if cancel_orders or flatten:
        for order in broker.get_open_orders():
            try:
                broker.cancel_order(order.client_order_id)
                report.cancelled.append(order.client_order_id)
            except AppError as exc:
                report.errors.append(f"cancel {order.client_order_id}: {exc.message}")
    if flatten:
        stamp = now.strftime("%Y%m%d%H%M")
        for position in broker.get_positions():
            try:
                broker.close_position(position.symbol, f"alpha-kill-{stamp}-{position.symbol}")
                report.closed.append(position.symbol)
            except AppError as exc:
                report.errors.append(f"close {position.symbol}: {exc.message}")
    if report.cancelled or report.closed:
        store.record_event(
            "kill_switch", f"cancelled {len(report.cancelled)}, closed {report.closed}"
        )
    return report


def resume(svc: TradingServices, reason: str) -> None:
    RiskStateStore(svc.db).resume(reason)
    svc.notifier.notify("Trading resumed", reason, "success")
