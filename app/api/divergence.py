"""The divergence report: what live did differently from the backtest replay of the live period."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields

from app.api.blueprint import Blueprint
from app.container import services
from app.store.divergence import latest_report

blp = Blueprint(
    "divergence",
    __name__,
    url_prefix="/api/divergence",
    description="Live vs backtest divergence (daily report)",
)


class DifferenceSchema(Schema):
    kind = fields.String(metadata={"description": "live_only | backtest_only | qty | fill_price"})
    session = fields.String(metadata={"format": "date"})
    symbol = fields.String()
    side = fields.String()
    purpose = fields.String(metadata={"description": "entry, stop_loss, take_profit, ..."})
    live = fields.Float(allow_none=True)
    modelled = fields.Float(allow_none=True)
    detail = fields.String()


class DivergenceSchema(Schema):
    status = fields.String(
        required=True, metadata={"description": "ok | diverged | no_live_period | no_report"}
    )
    start = fields.String(allow_none=True, metadata={"format": "date"})
    through = fields.String(allow_none=True, metadata={"format": "date"})
    live_orders = fields.Integer()
    modelled_orders = fields.Integer()
    counts = fields.Dict(keys=fields.String(), values=fields.Integer())
    max_fill_bps = fields.Float()
    differences = fields.List(fields.Nested(DifferenceSchema))
    created_at = fields.String(allow_none=True)


@blp.route("")
@blp.response(200, DivergenceSchema)
def latest() -> dict[str, Any]:
    """The latest daily report (status `no_report` before the first one ran)."""
    report = latest_report(services().db)
    return report if report is not None else {"status": "no_report", "differences": []}
