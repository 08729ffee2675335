"""A holding whose symbol stopped trading at the broker (delisted, inactive, halted) is reported
once per holding: recorded (risk_events, kind UNTRADABLE_HOLDING) and alerted on Discord.

The decision sends no entry and no exit for it: an exit would first cancel the protective
order at the broker, which could not be put back for an asset the broker refuses, so the
protective exits already in place stay. The backtest closes such a holding at its last price.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import date

from sqlalchemy import func, select

from app.store.database import Database
from app.store.orm import RiskEvent
from app.trading.notifier import Notifier
from app.trading.risk import RiskStateStore

log = logging.getLogger(__name__)

UNTRADABLE_HOLDING = "untradable_holding"


def report_untradable_holdings(
    db: Database,
    risk: RiskStateStore,
    notifier: Notifier,
    symbols: Iterable[str],
    held_since: Mapping[str, date],
) -> list[str]:
    """Record and alert the holdings in `symbols` not reported since they were bought
    (`held_since`; a holding the bot did not buy: not reported ever); returns those."""
    wanted = sorted(set(symbols))
    if not wanted:
        return []
    with db.session() as session:
        last = dict(
            session.execute(
                select(RiskEvent.symbol, func.max(RiskEvent.created_at))
                .where(RiskEvent.kind == UNTRADABLE_HOLDING, RiskEvent.symbol.in_(wanted))
                .group_by(RiskEvent.symbol)
            ).all()
        )
    fresh = [
        s for s in wanted if s not in last or (s in held_since and last[s].date() < held_since[s])
    ]
    for symbol in fresh:
        why = (
            f"{symbol} is held but no longer active or tradable at the broker: no entry or "
            "exit is sent for it; its protective orders at the broker stay"
        )
        risk.record_event(UNTRADABLE_HOLDING, why, symbol)
        notifier.notify(f"Holding {symbol} stopped trading", why, "error")
    return fresh
