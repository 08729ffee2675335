"""SimBroker's orders, requests and fills as plain JSON-able dicts and back (SimExchange keeps the
book in the database between processes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any

from app.domain import (
    Fill,
    Order,
    OrderRequest,
    OrderStatus,
    Side,
)


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _order_state(order: Order) -> dict[str, Any]:
    data = asdict(order)
    data.update(
        side=str(order.side), status=str(order.status), submitted_at=_ts(order.submitted_at)
    )
    return data


def _order_from(data: Mapping[str, Any]) -> Order:
    return Order(
        **{
            **data,
            "side": Side(data["side"]),
            "status": OrderStatus(data["status"]),
            "submitted_at": _dt(data["submitted_at"]),
        }
    )


def _request_state(request: OrderRequest) -> dict[str, Any]:
    return {**asdict(request), "side": str(request.side)}


def _request_from(data: Mapping[str, Any]) -> OrderRequest:
    return OrderRequest(**{**data, "side": Side(data["side"])})


def _fill_state(fill: Fill) -> dict[str, Any]:
    return {**asdict(fill), "side": str(fill.side), "timestamp": _ts(fill.timestamp)}


def _fill_from(data: Mapping[str, Any]) -> Fill:
    return Fill(**{**data, "side": Side(data["side"]), "timestamp": _dt(data["timestamp"])})
