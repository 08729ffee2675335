"""GET /api/model/health: the realised rank IC of the live model and of recent versions, and
what the nightly champion / challenger gate kept."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields

from app.api.blueprint import Blueprint
from app.container import services
from app.trading.model_health import ModelHealth

blp = Blueprint("model", __name__, url_prefix="/api/model", description="Live model health")


class WindowICSchema(Schema):
    window = fields.Integer(required=True)
    mean = fields.Float(required=True, allow_none=True)
    sessions = fields.Integer(required=True)
    t_stat = fields.Float(required=True, allow_none=True)


class HealthAlertSchema(Schema):
    window = fields.Integer(required=True)
    min_sessions = fields.Integer(required=True)
    negative = fields.Boolean(required=True)


class VersionHealthSchema(Schema):
    model_version = fields.String(required=True)
    first_session = fields.String(required=True)
    last_session = fields.String(required=True)
    windows = fields.List(fields.Nested(WindowICSchema), required=True)


class SessionICSchema(Schema):
    session = fields.String(required=True)
    model_version = fields.String(required=True)
    rank_ic = fields.Float(required=True, allow_none=True)
    n_symbols = fields.Integer(required=True)
    label_end = fields.String(required=True)


class GateDecisionSchema(Schema):
    challenger = fields.String(required=True)
    champion = fields.String(required=True, allow_none=True)
    kept = fields.String(required=True)
    reason = fields.String(required=True)
    challenger_rank_ic = fields.Float(required=True, allow_none=True)
    champion_rank_ic = fields.Float(required=True, allow_none=True)
    sessions = fields.Integer(required=True)
    gated = fields.Boolean(required=True)
    at = fields.String(required=True)


class ModelHealthSchema(Schema):
    horizon_days = fields.Integer(required=True)
    live = fields.List(fields.Nested(WindowICSchema), required=True)
    alert = fields.Nested(HealthAlertSchema, required=True)
    versions = fields.List(fields.Nested(VersionHealthSchema), required=True)
    sessions = fields.List(fields.Nested(SessionICSchema), required=True)
    champion_challenger = fields.List(fields.Nested(GateDecisionSchema), required=True)


@blp.route("/health")
@blp.response(200, ModelHealthSchema)
def health() -> dict[str, Any]:
    """Rolling 20/60-session realised rank IC (live and per version), the last 60 scored
    sessions, and the last champion / challenger decisions."""
    return ModelHealth.of(services()).report()
