"""Marshmallow schemas shared by the API blueprints; unknown fields are rejected by default."""

from __future__ import annotations

from marshmallow import Schema, fields, validate


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


class HealthSchema(Schema):
    status = fields.String(required=True)
    checks = fields.Dict(keys=fields.String(), values=fields.String())
    trading_mode = fields.String()


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
    start = fields.Date()
    end = fields.Date()


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
    symbol = fields.String(validate=validate.Regexp(r"^[A-Za-z][A-Za-z0-9.]{0,9}$"))
    start = fields.Date()
    end = fields.Date()
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
    cancel_orders = fields.Boolean(load_default=False)
    flatten = fields.Boolean(load_default=False)
    hours = fields.Float(validate=validate.Range(min=0.01, max=24 * 365))


class ResumeSchema(Schema):
    reason = fields.String(
        load_default="resumed by an operator", validate=validate.Length(min=1, max=200)
    )


class TrainingSchema(Schema):
    mode = fields.String(validate=validate.OneOf(["pooled", "per-symbol", "per_symbol"]))


class OptimizeSchema(Schema):
    symbols = fields.List(
        fields.String(validate=validate.Regexp(r"^[A-Za-z][A-Za-z0-9.]{0,9}$")),
        validate=validate.Length(min=1, max=500),
    )
    n_trials = fields.Integer(load_default=20, validate=validate.Range(min=1, max=1000))
    timeout = fields.Integer(load_default=600, validate=validate.Range(min=10, max=86_400))
    mode = fields.String(validate=validate.OneOf(["pooled", "per-symbol", "per_symbol"]))
