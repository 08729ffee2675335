"""Blueprint registration and the one rule of the API: everything needs an access token,
except the few public endpoints named here."""

from __future__ import annotations

import hmac
from typing import Any

from flask import Flask, Response, request
from flask_jwt_extended import verify_jwt_in_request

from app.api import (
    account,
    auth,
    backtest,
    dashboard,
    divergence,
    health,
    history,
    market,
    model,
    risk,
    tasks,
    trading,
    training,
)
from app.api.converters import CONVERTERS
from app.api.edges import register_edges
from app.api.errors import error_response
from app.container import services
from app.extensions import api, jwt

METRICS_ENDPOINT = "prometheus_metrics"
PUBLIC_ENDPOINTS = frozenset({"auth.login", "auth.refresh", "health.health", METRICS_ENDPOINT})

for _converter, _schema in CONVERTERS.values():  # once: every app's spec documents them
    api.register_converter(_converter, _schema)


def register_api(app: Flask) -> None:
    blueprints = (
        auth,
        health,
        tasks,
        account,
        market,
        trading,
        training,
        model,
        risk,
        history,
        dashboard,
        backtest,
        divergence,
    )
    for name, (converter, _schema) in CONVERTERS.items():
        app.url_map.converters[name] = converter
    for module in blueprints:
        api.register_blueprint(module.blp)
    app.before_request(_require_access_token)
    register_edges(app)
    _register_jwt_callbacks()


def _require_access_token() -> Any:
    if request.routing_exception is not None or request.method == "OPTIONS":
        return None  # let routing answer 404/405 in the JSON shape
    if request.endpoint == METRICS_ENDPOINT:
        return _check_metrics_token()
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    verify_jwt_in_request()
    return None


def _check_metrics_token() -> tuple[Response, int] | None:
    """/metrics shows equity, cash and positions: with METRICS_TOKEN set, only a scraper that
    sends it as a bearer token gets them."""
    expected = services().settings.metrics_token
    if not expected:
        return None
    sent = request.headers.get("Authorization", "")
    if hmac.compare_digest(sent.encode(), f"Bearer {expected}".encode()):
        return None
    return _unauthorized("/metrics needs Authorization: Bearer <METRICS_TOKEN>")


def _unauthorized(message: str) -> tuple[Response, int]:
    return error_response(401, message, "unauthorized")


#: Claims every token this API issues carries; a token without one was not made here (or was
#: made before logins had a family, `fam`, that logout revokes as a whole).
REQUIRED_CLAIMS = ("sub", "exp", "iat", "jti", "type", "fam")


def _register_jwt_callbacks() -> None:
    @jwt.token_in_blocklist_loader
    def _is_revoked(_header: dict[str, Any], payload: dict[str, Any]) -> bool:
        jti, family = payload.get("jti"), payload.get("fam")
        return bool(jti) and services().blocklist.is_revoked(
            str(jti), str(family) if family else None
        )

    @jwt.token_verification_loader
    def _has_required_claims(_header: dict[str, Any], payload: dict[str, Any]) -> bool:
        """PyJWT checks `exp` only when present; a token without an expiry never expires."""
        return all(payload.get(claim) is not None for claim in REQUIRED_CLAIMS)

    @jwt.token_verification_failed_loader
    def _claims_missing(_header: dict[str, Any], _payload: dict[str, Any]) -> tuple[Response, int]:
        return _unauthorized(f"invalid token: it must carry {', '.join(REQUIRED_CLAIMS)}")

    @jwt.user_lookup_loader
    def _active_user(_header: dict[str, Any], payload: dict[str, Any]) -> object | None:
        """Every request: the token's user must still exist and be active."""
        return services().users.active_user(str(payload["sub"]))

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
