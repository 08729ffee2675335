"""Request and response schemas of the backtest API (unknown fields are rejected)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from app.api.fields import BoundedDate, StrictBoolean, StrictFloat, StrictInteger, Symbol

MAX_DAYS = 10_000


class BacktestRunSchema(Schema):
    symbols = fields.List(Symbol(), validate=validate.Length(min=1, max=200))
    days = StrictInteger(
        validate=validate.Range(min=1, max=MAX_DAYS, error="must be between 1 and 10000")
    )
    start = BoundedDate()
    end = BoundedDate()
    initial_capital = StrictFloat(
        load_default=100_000.0,
        validate=validate.Range(
            min=0, min_inclusive=False, max=1e12, error="must be > 0 and at most 1e12"
        ),
    )
    commission_bps = StrictFloat(validate=validate.Range(min=0, max=1000))
    slippage_bps = StrictFloat(validate=validate.Range(min=0, max=1000))
    retrain_every = StrictInteger(load_default=63, validate=validate.Range(min=1, max=MAX_DAYS))
    model = fields.String(
        load_default="walk_forward",
        validate=validate.OneOf(["walk_forward", "current", "sma_cross", "momentum"]),
    )
    #: model momentum only: lookback and skipped sessions (default 252 / 21), names held
    #: (default RISK_MAX_POSITIONS); skip < lookback is checked by the request.
    momentum_lookback = StrictInteger(validate=validate.Range(min=2, max=MAX_DAYS))
    momentum_skip = StrictInteger(validate=validate.Range(min=0, max=MAX_DAYS))
    momentum_top_k = StrictInteger(validate=validate.Range(min=1, max=500))
    buy_threshold = StrictFloat(validate=validate.Range(min=0, min_inclusive=False, max=1))
    sell_threshold = StrictFloat(validate=validate.Range(min=-1, max=0, max_inclusive=False))
    confidence_threshold = StrictFloat(validate=validate.Range(min=0, max=1))
    #: Walk-forward models trained on shuffled labels: what the same rules earn without skill.
    placebo = StrictBoolean(load_default=False)

    @validates_schema
    def _window(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if "days" in data and ("start" in data or "end" in data):
            raise ValidationError("give either days or start/end, not both", "days")
        if "end" in data and "start" not in data:
            raise ValidationError("end needs a start", "start")
        if "start" in data and "end" in data and data["start"] > data["end"]:
            raise ValidationError("must not be after end", "start")


class BacktestRunStatusSchema(Schema):
    task_id = fields.String(required=True)
    status = fields.String(required=True)
    state = fields.String(allow_none=True)
    progress = fields.Dict(allow_none=True)
    params = fields.Dict(allow_none=True)
    result = fields.Raw(allow_none=True)
    created_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
