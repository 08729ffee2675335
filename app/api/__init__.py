"""Blueprint registration and the one rule of the API: everything needs an access token,
except the few public endpoints named here."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, request
from flask_jwt_extended import verify_jwt_in_request

from app.api import (
    account,
    auth,
    backtest,
    dashboard,
    health,
    history,
    market,
    risk,
    tasks,
    trading,
    training,
)
from app.api.errors import error_response
from app.container import services
from app.extensions import api, jwt

PUBLIC_ENDPOINTS = frozenset({"auth.login", "auth.refresh", "health.health", "prometheus_metrics"})


def register_api(app: Flask) -> None:
    blueprints = (
        auth,
        health,
        tasks,
        account,
        market,
        trading,
        training,
        risk,
        history,
        dashboard,
        backtest,
    )
    for module in blueprints:
        api.register_blueprint(module.blp)
    app.before_request(_require_access_token)
    _register_jwt_callbacks()


def _require_access_token() -> None:
    if request.routing_exception is not None or request.method == "OPTIONS":
        return  # let routing answer 404/405 in the JSON shape
    if request.endpoint in PUBLIC_ENDPOINTS:
        return
    verify_jwt_in_request()


def _unauthorized(message: str) -> tuple[Response, int]:
    return error_response(401, message, "unauthorized")


def _register_jwt_callbacks() -> None:
    @jwt.token_in_blocklist_loader
    def _is_revoked(_header: dict[str, Any], payload: dict[str, Any]) -> bool:
        return services().blocklist.is_revoked(payload["jti"])

    @jwt.unauthorized_loader
    def _missing(reason: str) -> tuple[Response, int]:
        return _unauthorized(f"missing access token: {reason}")

    @jwt.invalid_token_loader
    def _invalid(reason: str) -> tuple[Response, int]:
        return _unauthorized(f"invalid token: {reason}")

    @jwt.expired_token_loader
    def _expired(_header: dict[str, Any], _payload: dict[str, Any]) -> tuple[Response, int]:
        return _unauthorized("token has expired")

    @jwt.revoked_token_loader
    def _revoked(_header: dict[str, Any], _payload: dict[str, Any]) -> tuple[Response, int]:
        return _unauthorized("token has been revoked")

    @jwt.needs_fresh_token_loader
    def _not_fresh(_header: dict[str, Any], _payload: dict[str, Any]) -> tuple[Response, int]:
        return _unauthorized("a fresh token is required: log in again")

    @jwt.user_lookup_error_loader
    def _no_user(_header: dict[str, Any], _payload: dict[str, Any]) -> tuple[Response, int]:
        return _unauthorized("user not found")
