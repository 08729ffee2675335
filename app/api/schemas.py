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
