"""The daily summary alert: equity, the day's P&L, positions and the day's orders."""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from app.store.orm import OrderRecord
from app.trading.risk import RiskStateStore, daily_pnl

if TYPE_CHECKING:
    from app.trading.services import TradingServices


def daily_summary(svc: TradingServices) -> dict[str, Any]:
    broker = svc.venue.broker
    account = broker.get_account()
    positions = broker.get_positions()
    state = RiskStateStore(svc.db).load()
    today = svc.venue.today()
    since = datetime.combine(today, time.min, UTC)
    with svc.db.session() as session:
        orders = dict(
            session.execute(
                select(OrderRecord.status, func.count())
                .where(OrderRecord.created_at >= since)
                .group_by(OrderRecord.status)
            ).all()
        )
    pnl = daily_pnl(state, account)
    summary = {
        "session": today.isoformat(),
        "equity": round(account.equity, 2),
        "cash": round(account.cash, 2),
        "daily_pnl": round(pnl, 2),
        "positions": sorted(p.symbol for p in positions),
        "orders": orders,
        "risk_state": state.state.value,
    }
    held = ", ".join(sorted(p.symbol for p in positions)) or "none"
    svc.notifier.notify(
        f"Daily summary {today}",
        f"Equity {account.equity:,.2f} (P&L {pnl:+,.2f}), cash {account.cash:,.2f}. "
        f"Positions: {held}. Orders today: {orders or 'none'}. Risk: {state.state.value}.",
        "info",
    )
    return summary
