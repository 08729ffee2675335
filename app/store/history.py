"""Read models for the API: orders, trades (fills), signals, equity and performance."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy import Select, func, select

from app.store.database import Database
from app.store.orm import EquitySnapshot, FillRecord, OrderRecord, SignalRecord


@dataclass(frozen=True)
class Page:
    number: int
    size: int


def _window(query: Select[Any], column: Any, start: date | None, end: date | None) -> Select[Any]:
    if start:
        query = query.where(column >= datetime.combine(start, time.min, UTC))
    if end:
        query = query.where(column <= datetime.combine(end, time.max, UTC))
    return query


def _paginate(db: Database, query: Select[Any], page: Page) -> tuple[list[Any], int]:
    with db.session() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(query.offset((page.number - 1) * page.size).limit(page.size)).all()
    return list(rows), int(total)


def orders(
    db: Database,
    page: Page,
    *,
    symbol: str | None = None,
    status: str | None = None,
    start: date | None = None,
    end: date | None = None,
) -> dict[str, Any]:
    query = select(OrderRecord).order_by(OrderRecord.created_at.desc(), OrderRecord.id.desc())
    if symbol:
        query = query.where(OrderRecord.symbol == symbol)
    if status:
        query = query.where(OrderRecord.status == status)
    rows, total = _paginate(db, _window(query, OrderRecord.created_at, start, end), page)
    return _page_body(
        [
            {
                "client_order_id": r.client_order_id,
                "broker_order_id": r.broker_order_id,
                "symbol": r.symbol,
                "side": r.side,
                "qty": r.qty,
                "notional": r.notional,
                "status": r.status,
                "filled_qty": r.filled_qty,
                "filled_avg_price": r.filled_avg_price,
                "reason": r.reason,
                "reject_reason": r.reject_reason,
                "session_date": r.session_date.isoformat() if r.session_date else None,
                "created_at": r.created_at.isoformat(),
            }
            for r in rows
        ],
        page,
        total,
    )


def trades(
    db: Database,
    page: Page,
    *,
    symbol: str | None = None,
    start: date | None = None,
    end: date | None = None,
) -> dict[str, Any]:
    query = select(FillRecord).order_by(FillRecord.filled_at.desc(), FillRecord.id.desc())
    if symbol:
        query = query.where(FillRecord.symbol == symbol)
    rows, total = _paginate(db, _window(query, FillRecord.filled_at, start, end), page)
    with db.session() as session:
        ids = {r.order_id for r in rows}
        reasons = dict(
            session.execute(
                select(OrderRecord.id, OrderRecord.client_order_id).where(OrderRecord.id.in_(ids))
            ).all()
        )
    return _page_body(
        [
            {
                "symbol": r.symbol,
                "side": r.side,
                "qty": r.qty,
                "price": r.price,
                "commission": r.commission,
                "client_order_id": reasons.get(r.order_id),
                "filled_at": r.filled_at.isoformat(),
            }
            for r in rows
        ],
        page,
        total,
    )


def _page_body(items: list[dict[str, Any]], page: Page, total: int) -> dict[str, Any]:
    return {"items": items, "page": page.number, "per_page": page.size, "total": total}


def recent_signals(db: Database, limit: int = 20) -> list[dict[str, Any]]:
    with db.session() as session:
        rows = session.scalars(
            select(SignalRecord).order_by(SignalRecord.id.desc()).limit(limit)
        ).all()
    return [
        {
            "symbol": r.symbol,
            "action": r.action,
            "predicted_return": r.predicted_return,
            "confidence": r.confidence,
            "dispersion": r.dispersion,
            "model_version": r.model_version,
            "as_of": r.as_of.isoformat() if r.as_of else None,
        }
        for r in rows
    ]


def performance(db: Database, points: int = 200) -> dict[str, Any]:
    with db.session() as session:
        rows = session.scalars(
            select(EquitySnapshot).order_by(EquitySnapshot.id.desc()).limit(points)
        ).all()
        first = session.scalar(select(EquitySnapshot).order_by(EquitySnapshot.id).limit(1))
        fills = session.scalar(select(func.count()).select_from(FillRecord)) or 0
    curve = [
        {"at": r.taken_at.isoformat(), "equity": r.equity, "exposure": r.exposure}
        for r in reversed(rows)
    ]
    total_return = (rows[0].equity / first.equity - 1.0) if rows and first and first.equity else 0.0
    return {"equity_curve": curve, "total_return": total_return, "fills": int(fills)}
