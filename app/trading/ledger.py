"""What the cycles read from and write to the database besides orders: the decision record per
session, held-since dates, rejected entries, open order rows, signals and equity snapshots."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app import metrics
from app.domain import Account, Order, OrderStatus, Position, Side, Signal, SignalAction
from app.store.database import Database
from app.store.orm import DecisionRun, EquitySnapshot, FillRecord, OrderRecord, SignalRecord
from app.trading.orders import OPEN_STATUSES
from app.trading.protection import PURPOSE
from app.trading.risk import RiskState, daily_pnl


class Ledger:
    def __init__(self, db: Database) -> None:
        self._db = db

    def decided(self, session_day: date) -> bool:
        with self._db.session() as session:
            return session.get(DecisionRun, session_day) is not None

    def mark_decided(self, session_day: date, orders: int) -> None:
        """Record the decision for `session_day`; a second record (a race) is harmless."""
        try:
            with self._db.session() as session:
                session.add(DecisionRun(session_date=session_day, orders=orders))
        except IntegrityError:
            pass

    def rejected_entries(self, session_day: date) -> frozenset[str]:
        """Symbols whose buy the broker rejected this session: not re-sent until the next."""
        with self._db.session() as session:
            rows = session.scalars(
                select(OrderRecord.symbol).where(
                    OrderRecord.session_date == session_day,
                    OrderRecord.side == Side.BUY.value,
                    OrderRecord.status == OrderStatus.REJECTED.value,
                )
            )
            return frozenset(rows)

    def open_orders(self) -> list[Order]:
        with self._db.session() as session:
            rows = session.scalars(
                select(OrderRecord).where(OrderRecord.status.in_(OPEN_STATUSES))
            ).all()
        return [
            Order(r.client_order_id, r.symbol, Side(r.side), OrderStatus(r.status), qty=r.qty)
            for r in rows
            if f"-{PURPOSE}" not in r.client_order_id  # the broker's record carries the legs
        ]

    def protective_ids(self, symbols: Iterable[str]) -> list[str]:
        """Client ids of the protective orders ever placed for `symbols` (generations)."""
        with self._db.session() as session:
            return list(
                session.scalars(
                    select(OrderRecord.client_order_id).where(
                        OrderRecord.symbol.in_(list(symbols)),
                        OrderRecord.client_order_id.like(f"%-{PURPOSE}%"),
                    )
                )
            )

    def held_since(self, held: set[str]) -> dict[str, date]:
        """Session of the first buy since each holding was last flat (a partial sell, such as
        a trim, keeps the date; a sell of everything bought clears it)."""
        since: dict[str, date] = {}
        net: dict[str, float] = {}
        with self._db.session() as session:
            rows = session.execute(
                select(
                    OrderRecord.symbol,
                    OrderRecord.side,
                    OrderRecord.session_date,
                    OrderRecord.filled_qty,
                )
                .where(OrderRecord.symbol.in_(held), OrderRecord.filled_qty > 0)
                .order_by(OrderRecord.created_at)
            ).all()
        for symbol, side, day, qty in rows:
            if day is None:
                continue
            if side == Side.SELL.value:
                net[symbol] = net.get(symbol, 0.0) - qty
                if net[symbol] <= 1e-9:
                    since.pop(symbol, None)
                    net.pop(symbol)
            else:
                net[symbol] = net.get(symbol, 0.0) + qty
                since.setdefault(symbol, day)
        return since

    def record(
        self,
        signals: Mapping[str, Signal],
        session_day: date,
        account: Account,
        held: list[Position],
        state: RiskState,
        venue: str,
    ) -> None:
        """Signals, an equity snapshot and the portfolio metrics."""
        with self._db.session() as session:
            session.add_all(
                SignalRecord(
                    symbol=s.symbol,
                    action=s.action.value,
                    predicted_return=s.predicted_return,
                    confidence=s.confidence,
                    dispersion=s.dispersion,
                    model_version=s.model_version,
                    as_of=session_day,
                )
                for s in signals.values()
                if s.action is not SignalAction.HOLD or len(signals) <= 64
            )
            session.add(
                EquitySnapshot(
                    taken_at=datetime.now(UTC),
                    equity=account.equity,
                    cash=account.cash,
                    exposure=sum(abs(p.market_value) for p in held) / account.equity
                    if account.equity > 0
                    else 0.0,
                    positions=len(held),
                    daily_pnl=daily_pnl(state, account),
                )
            )
            rows = session.execute(
                select(
                    FillRecord.symbol, FillRecord.side, FillRecord.qty, FillRecord.price
                ).order_by(FillRecord.id)
            ).all()
            fills = [(symbol, side, qty, price) for symbol, side, qty, price in rows]
            realized = metrics.realized_pnl(fills) - (
                session.scalar(select(func.coalesce(func.sum(FillRecord.commission), 0.0))) or 0.0
            )
        metrics.record_portfolio(
            venue,
            account,
            held,
            state=state.state,
            daily_pnl=daily_pnl(state, account),
            realized_pnl=realized,
        )
