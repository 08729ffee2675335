"""Orders and trades, paginated and filtered by symbol and date."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE

from app.api.blueprint import Blueprint
from app.api.schemas import (
    HistoryQuerySchema,
    OrdersPageSchema,
    OrdersQuerySchema,
    TradesPageSchema,
)
from app.container import services
from app.errors import ValidationError
from app.store import history as history_service
from app.store.history import Page

blp = Blueprint("history", __name__, url_prefix="/api", description="Orders and trades")


def _filters(query: dict[str, Any]) -> dict[str, Any]:
    if query.get("start") and query.get("end") and query["start"] > query["end"]:
        raise ValidationError("must not be after end", field="start")
    return {
        "symbol": query["symbol"].upper() if query.get("symbol") else None,
        "start": query.get("start"),
        "end": query.get("end"),
    }


@blp.route("/orders")
@blp.arguments(OrdersQuerySchema, location="query", error_status_code=400, unknown=RAISE)
@blp.response(200, OrdersPageSchema)
def orders(query: dict[str, Any]) -> dict[str, Any]:
    page = Page(query["page"], query["per_page"])
    return history_service.orders(
        services().db, page, status=query.get("status"), **_filters(query)
    )


@blp.route("/trades")
@blp.arguments(HistoryQuerySchema, location="query", error_status_code=400, unknown=RAISE)
@blp.response(200, TradesPageSchema)
def trades(query: dict[str, Any]) -> dict[str, Any]:
    page = Page(query["page"], query["per_page"])
    return history_service.trades(services().db, page, **_filters(query))
