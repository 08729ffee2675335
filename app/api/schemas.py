"""Marshmallow schemas shared by the API blueprints; unknown fields are rejected by default.

Request bodies use the strict fields of app/api/fields.py; every answer, errors included, has a
schema here, so the OpenAPI document describes what the API really sends.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from app.api.fields import BoundedDate, StrictBoolean, StrictFloat, StrictInteger, Symbol


class ErrorDetailSchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    field = fields.String()
    field_errors = fields.Dict(
        keys=fields.String(), values=fields.List(fields.String()), data_key="fields"
    )


class ErrorSchema(Schema):
    """The one error shape: {"error": {"code": ..., "message": ..., "field"/"fields": ...}}."""

    error = fields.Nested(ErrorDetailSchema, required=True)


class LoginSchema(Schema):
    username = fields.String(required=True, validate=validate.Length(min=1, max=64))
    password = fields.String(required=True, validate=validate.Length(min=1, max=256))


class LogoutSchema(Schema):
    refresh_token = fields.String(validate=validate.Length(max=4096))


class TokenPairSchema(Schema):
    access_token = fields.String(required=True)
    refresh_token = fields.String(required=True)
    token_type = fields.String(required=True)
    expires_in = fields.Integer(required=True)


class AccessTokenSchema(Schema):
    access_token = fields.String(required=True)
    token_type = fields.String(required=True)
    expires_in = fields.Integer(required=True)


class MessageSchema(Schema):
    message = fields.String(required=True)


class TaskStartedSchema(Schema):
    task_id = fields.String(required=True)
    status_url = fields.String(required=True)


class TaskStatusSchema(Schema):
    task_id = fields.String(required=True)
    name = fields.String(allow_none=True)
    state = fields.String(required=True)
    progress = fields.Dict(allow_none=True)
    result = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)


class TradingFreshnessSchema(Schema):
    status = fields.String(metadata={"enum": ["ok", "stale", "waiting"]})
    last_cycle_at = fields.String(allow_none=True, metadata={"format": "date-time"})
    last_cycle_age_seconds = fields.Float(allow_none=True)
    stale_after_seconds = fields.Float()


class HealthSchema(Schema):
    status = fields.String(
        required=True,
        metadata={"description": '"ok", "degraded" (trading stale) or "unavailable: ..."'},
    )
    checks = fields.Dict(keys=fields.String(), values=fields.String())
    trading_mode = fields.String()
    trading = fields.Nested(TradingFreshnessSchema)


class AccountSchema(Schema):
    broker = fields.String()
    cash = fields.Float()
    equity = fields.Float()
    buying_power = fields.Float()
    last_equity = fields.Float()
    currency = fields.String()
    status = fields.String()


class PositionSchema(Schema):
    symbol = fields.String()
    qty = fields.Float()
    avg_entry_price = fields.Float()
    current_price = fields.Float()
    market_value = fields.Float()
    cost_basis = fields.Float()
    unrealized_pl = fields.Float()
    unrealized_plpc = fields.Float()


class ConnectionSchema(Schema):
    ok = fields.Boolean()
    broker = fields.String()
    account_status = fields.String()
    market_open = fields.Boolean()
    next_open = fields.DateTime()
    next_close = fields.DateTime()
    latency_ms = fields.Float()


class PriceSchema(Schema):
    symbol = fields.String()
    price = fields.Float()
    as_of = fields.String()


class BarsQuerySchema(Schema):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=10_000))
    start = BoundedDate()
    end = BoundedDate()


class BarSchema(Schema):
    date = fields.String()
    open = fields.Float()
    high = fields.Float()
    low = fields.Float()
    close = fields.Float()
    volume = fields.Float()


class BarsSchema(Schema):
    symbol = fields.String()
    bars = fields.List(fields.Nested(BarSchema))


class HistoryQuerySchema(Schema):
    symbol = Symbol()
    start = BoundedDate()
    end = BoundedDate()
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000))
    per_page = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class OrdersQuerySchema(HistoryQuerySchema):
    status = fields.String(
        validate=validate.OneOf(
            ["pending", "new", "partially_filled", "filled", "canceled", "rejected", "expired"]
        )
    )


class HaltSchema(Schema):
    reason = fields.String(load_default="kill switch", validate=validate.Length(min=1, max=200))
    cancel_orders = StrictBoolean(load_default=False)
    flatten = StrictBoolean(load_default=False)
    hours = StrictFloat(validate=validate.Range(min=0.01, max=24 * 365))


class ResumeSchema(Schema):
    reason = fields.String(
        load_default="resumed by an operator", validate=validate.Length(min=1, max=200)
    )


class TrainingSchema(Schema):
    mode = fields.String(validate=validate.OneOf(["pooled", "per-symbol", "per_symbol"]))


class OptimizeSchema(Schema):
    symbols = fields.List(Symbol(), validate=validate.Length(min=1, max=500))
    n_trials = StrictInteger(load_default=20, validate=validate.Range(min=1, max=1000))
    timeout = StrictInteger(load_default=600, validate=validate.Range(min=10, max=86_400))
    mode = fields.String(validate=validate.OneOf(["pooled", "per-symbol", "per_symbol"]))


class SignalSchema(Schema):
    symbol = fields.String(required=True)
    signal = fields.String(required=True)
    predicted_return = fields.Float(required=True)
    confidence = fields.Float(required=True)
    dispersion = fields.Float(allow_none=True)
    model_version = fields.String(allow_none=True)
    as_of = fields.String(required=True)
    warning = fields.String(allow_none=True)


class RiskLimitsSchema(Schema):
    max_positions = fields.Integer()
    max_portfolio_exposure = fields.Float()
    max_position_size = fields.Float()
    stop_loss_pct = fields.Float()
    take_profit_pct = fields.Float()
    max_daily_loss = fields.Float()


class RiskEventSchema(Schema):
    kind = fields.String()
    detail = fields.String(allow_none=True)
    symbol = fields.String(allow_none=True)
    at = fields.String()


class RiskStatusSchema(Schema):
    state = fields.String(required=True)
    halted_until = fields.String(allow_none=True)
    halt_reason = fields.String(allow_none=True)
    limits = fields.Nested(RiskLimitsSchema)
    equity = fields.Float()
    exposure = fields.Float()
    positions = fields.Integer()
    daily_pnl = fields.Float(allow_none=True)
    daily_pnl_pct = fields.Float(allow_none=True)
    recent_events = fields.List(fields.Nested(RiskEventSchema))


class KillReportSchema(Schema):
    cancelled = fields.List(fields.String())
    closed = fields.List(fields.String())
    errors = fields.List(fields.String())


class HaltResultSchema(RiskStatusSchema):
    actions = fields.Nested(KillReportSchema)


class OrderRowSchema(Schema):
    client_order_id = fields.String(allow_none=True)
    broker_order_id = fields.String(allow_none=True)
    symbol = fields.String()
    side = fields.String()
    qty = fields.Float(allow_none=True)
    notional = fields.Float(allow_none=True)
    status = fields.String()
    filled_qty = fields.Float(allow_none=True)
    filled_avg_price = fields.Float(allow_none=True)
    reason = fields.String(allow_none=True)
    reject_reason = fields.String(allow_none=True)
    session_date = fields.String(allow_none=True)
    created_at = fields.String()


class TradeRowSchema(Schema):
    symbol = fields.String()
    side = fields.String()
    qty = fields.Float()
    price = fields.Float()
    commission = fields.Float(allow_none=True)
    client_order_id = fields.String(allow_none=True)
    filled_at = fields.String()


class _PageSchema(Schema):
    page = fields.Integer(required=True)
    per_page = fields.Integer(required=True)
    total = fields.Integer(required=True)


class OrdersPageSchema(_PageSchema):
    items = fields.List(fields.Nested(OrderRowSchema), required=True)


class TradesPageSchema(_PageSchema):
    items = fields.List(fields.Nested(TradeRowSchema), required=True)


class DashboardSchema(Schema):
    """Everything a dashboard shows; nested parts are documented by their own routes."""

    as_of = fields.String(required=True)
    trading_mode = fields.String(required=True)
    account = fields.Dict(required=True)
    positions = fields.List(fields.Dict(), required=True)
    risk = fields.Nested(RiskStatusSchema, required=True)
    recent_signals = fields.List(fields.Dict(), required=True)
    model = fields.Dict(required=True)
    performance = fields.Dict(required=True)
