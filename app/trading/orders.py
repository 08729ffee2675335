"""Placing orders safely and keeping the database in line with the broker.

The order row is written PENDING before anything is sent, so a crash at any point leaves a
trace that reconciliation resolves by asking the broker (the truth) about that client_order_id.
A client_order_id that already has a row is never sent again: it is looked up instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app import metrics
from app.domain import Broker, Order, OrderRequest, OrderStatus, ProtectiveRequest, Side
from app.errors import BrokerUnavailable, OrderRejected
from app.store.database import Database
from app.store.orm import FillRecord, OrderRecord

log = logging.getLogger(__name__)

OPEN_STATUSES = [s.value for s in OrderStatus if s.is_open]
STRATEGY = "alpha"


def client_order_id(session: date, purpose: str, symbol: str, side: Side) -> str:
    """Deterministic per (session, purpose, symbol, side): the same order of the same decision
    always gets the same id, so it is never sent twice."""
    return f"{STRATEGY}-{session:%Y%m%d}-{purpose}-{symbol}-{side.value}"


def purpose_of(reason: str) -> str:
    """entry, signal_sell, rebalance, trim, stop_loss, take_profit... from a decision reason."""
    return reason.split(":", 1)[0].strip().replace("-", "_") or "order"


@dataclass(frozen=True)
class Placement:
    """What became of one order: `order` is the broker's view (None if it is unknown yet)."""

    client_order_id: str
    order: Order | None
    sent: bool
    error: str | None = None
    #: The broker refused it (not an unknown outcome): it will never fill.
    refused: bool = False

    @property
    def accepted(self) -> bool:
        """The broker booked it (whatever happened to it since)."""
        return self.order is not None and self.order.status is not OrderStatus.REJECTED


class OrderService:
    def __init__(self, db: Database, broker: Broker) -> None:
        self._db = db
        self._broker = broker

    def place(
        self,
        request: OrderRequest,
        *,
        reason: str = "",
        session_date: date | None = None,
        cycle_id: str | None = None,
    ) -> Placement:
        row = OrderRecord(
            client_order_id=request.client_order_id,
            symbol=request.symbol,
            side=str(request.side),
            qty=request.qty,
            notional=request.notional,
            status=OrderStatus.PENDING.value,
            reason=reason[:255] or None,
            session_date=session_date,
            cycle_id=cycle_id,
        )
        return self._write_then_send(row, lambda: self._broker.submit_market_order(request))

    def place_protective(
        self, request: ProtectiveRequest, *, session_date: date, cycle_id: str
    ) -> Placement:
        """A protective OCO exit, with the same write-before-send and lookup-on-doubt rules."""
        row = OrderRecord(
            client_order_id=request.client_order_id,
            symbol=request.symbol,
            side=Side.SELL.value,
            qty=request.qty,
            status=OrderStatus.PENDING.value,
            reason=f"protective: stop {request.stop_loss:.2f} / target {request.take_profit:.2f}",
            session_date=session_date,
            cycle_id=cycle_id,
        )
        return self._write_then_send(row, lambda: self._broker.submit_protective_order(request))

    def _write_then_send(self, row: OrderRecord, send: Callable[[], Order]) -> Placement:
        """The row is written PENDING before the order leaves; an id already written means
        another run owns it, and a doubtful outcome is left for reconciliation, never re-sent."""
        cid, side, reason = row.client_order_id, row.side, row.reason or ""
        try:
            with self._db.session() as session:
                session.add(row)
        except IntegrityError:
            # Another run (overlap, redelivery, restart) already owns this id: never re-send.
            log.info("order %s already recorded; looking it up instead of sending", cid)
            metrics.ORDERS_DUPLICATES_PREVENTED.inc()
            return Placement(cid, self.sync(cid), sent=False)
        try:
            order = send()
        except OrderRejected as exc:
            metrics.record_order_rejected("broker", "rejected")
            self._update(cid, None, rejected=exc.message)
            return Placement(cid, None, sent=True, error=exc.message, refused=True)
        except BrokerUnavailable as exc:
            # Unknown outcome: the row stays PENDING and reconciliation will ask the broker.
            log.warning("order %s: outcome unknown (%s); left PENDING for reconciliation", cid, exc)
            metrics.ORDERS_UNCONFIRMED.inc()
            return Placement(cid, None, sent=True, error=exc.message)
        metrics.record_order_submitted(side, reason)
        if order.status is OrderStatus.REJECTED:
            metrics.record_order_rejected("broker", "rejected")
        self._update(cid, order)
        return Placement(cid, order, sent=True, refused=order.status is OrderStatus.REJECTED)

    def sync(self, client_order_id: str) -> Order | None:
        """Bring one row in line with what the broker says about its client_order_id."""
        order = self._broker.get_order_by_client_id(client_order_id)
        if order is not None:
            self._update(client_order_id, order)
        return order

    def reconcile_open_orders(
        self, *, stale_after_seconds: float = 120.0, now: datetime | None = None
    ) -> list[str]:
        """Resolve every row still open in the database; returns the ids that changed.

        A PENDING row the broker has never heard of, older than `stale_after_seconds` at `now`
        (default: the current time), was never received (the process died before or while
        sending): it is closed as REJECTED. A younger one may still be in flight: left alone.
        """
        with self._db.session() as session:
            rows = session.execute(
                select(
                    OrderRecord.client_order_id, OrderRecord.status, OrderRecord.created_at
                ).where(OrderRecord.status.in_(OPEN_STATUSES))
            ).all()
        changed = []
        now = now or datetime.now(UTC)
        for cid, status, created_at in rows:
            order = self._broker.get_order_by_client_id(cid)
            if order is not None:
                if order.status.value != status:
                    changed.append(cid)
                    metrics.record_reconcile("order_status")
                self._update(cid, order)
                continue
            created = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
            if status == OrderStatus.PENDING.value and (now - created).total_seconds() > (
                stale_after_seconds
            ):
                self._update(cid, None, rejected="never reached the broker")
                changed.append(cid)
                metrics.record_reconcile("never_reached_broker")
                metrics.record_order_rejected("broker", "never_reached_broker")
        return changed

    def _update(self, cid: str, order: Order | None, *, rejected: str | None = None) -> None:
        fill: tuple[str, float, float, bool] | None = None  # counted once committed
        with self._db.session() as session:
            row = session.scalar(
                select(OrderRecord).where(OrderRecord.client_order_id == cid).with_for_update()
            )
            if row is None:  # the broker knows an order we never wrote: record it
                if order is None:
                    return
                row = OrderRecord(
                    client_order_id=cid,
                    symbol=order.symbol,
                    side=str(order.side),
                    qty=order.qty,
                    notional=order.notional,
                    status=order.status.value,
                    reason="recorded from the broker",
                )
                session.add(row)
                session.flush()
            if order is None:
                row.status = OrderStatus.REJECTED.value
                row.reject_reason = (rejected or "rejected")[:255]
                return
            previous_qty = row.filled_qty or 0.0
            previous_price = row.filled_avg_price or 0.0
            row.status = order.status.value
            row.broker_order_id = order.broker_order_id or row.broker_order_id
            row.reject_reason = order.reject_reason
            if order.filled_qty > previous_qty + 1e-12 and order.filled_avg_price:
                delta = order.filled_qty - previous_qty
                price = (
                    order.filled_avg_price * order.filled_qty - previous_price * previous_qty
                ) / delta
                session.add(
                    FillRecord(
                        order_id=row.id,
                        fill_key=f"{order.filled_qty:.9f}",
                        symbol=order.symbol,
                        side=str(order.side),
                        qty=delta,
                        price=price,
                        **({"filled_at": order.filled_at} if order.filled_at else {}),
                    )
                )
                row.filled_qty = order.filled_qty
                row.filled_avg_price = order.filled_avg_price
                fill = (str(order.side), delta, price, order.status is OrderStatus.FILLED)
        if fill is not None:
            side, qty, price, now_filled = fill
            metrics.record_fill(side, qty, price, now_filled=now_filled)
