"""Risk status and the kill switch."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from flask_jwt_extended import get_jwt_identity, verify_jwt_in_request

from app.api.blueprint import Blueprint
from app.api.schemas import HaltResultSchema, HaltSchema, ResumeSchema, RiskStatusSchema
from app.container import services
from app.trading import kill_switch as risk_service

blp = Blueprint("risk", __name__, url_prefix="/api/risk", description="Risk state and limits")


@blp.route("/status")
@blp.response(200, RiskStatusSchema)
def status() -> dict[str, Any]:
    return risk_service.status(services())


@blp.route("/halt", methods=["POST"])
@blp.arguments(HaltSchema, required=False)
@blp.response(200, HaltResultSchema)
def halt(body: dict[str, Any]) -> dict[str, Any]:
    """Kill switch: HALTED now; optionally cancel open orders and flatten. Fresh token only."""
    verify_jwt_in_request(fresh=True)
    svc = services()
    reason = f"{body['reason']} (by {get_jwt_identity()})"
    report = risk_service.halt(
        svc,
        reason,
        now=datetime.now(UTC),
        hours=body.get("hours"),
        cancel_orders=body["cancel_orders"],
        flatten=body["flatten"],
    )
    return {**risk_service.status(svc), "actions": asdict(report)}


@blp.route("/resume", methods=["POST"])
@blp.arguments(ResumeSchema, required=False)
@blp.response(200, RiskStatusSchema)
def resume(body: dict[str, Any]) -> dict[str, Any]:
    verify_jwt_in_request(fresh=True)
    svc = services()
    risk_service.resume(svc, f"{body['reason']} (by {get_jwt_identity()})")
    return risk_service.status(svc)
