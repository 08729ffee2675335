"""Login, refresh and logout. Login is rate-limited per client address and per account."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from flask import Response, request
from flask_jwt_extended import (
    create_access_token,
    create_refresh_token,
    decode_token,
    get_jwt,
    get_jwt_identity,
    jwt_required,
)
from flask_smorest import Blueprint
from jwt.exceptions import PyJWTError

from app.api.schemas import (
    AccessTokenSchema,
    LoginSchema,
    LogoutSchema,
    MessageSchema,
    TokenPairSchema,
)
from app.container import services
from app.errors import AppError, ValidationError
from app.extensions import limiter

blp = Blueprint("auth", __name__, url_prefix="/api/auth", description="JWT authentication")


class InvalidCredentials(AppError):
    status = 401
    code = "invalid_credentials"


def _login_limit() -> str:
    return services().settings.login_rate_limit


def _account_limit() -> str:
    return services().settings.login_account_rate_limit


def _login_account() -> str:
    """The account a login attempt names, hashed so a key stays short whatever is sent."""
    data = request.get_json(silent=True)
    username = data.get("username") if isinstance(data, dict) else None
    if not isinstance(username, str):
        return "login-account:-"
    return "login-account:" + hashlib.sha256(username.encode()).hexdigest()[:32]


def _failed(response: Response) -> bool:
    return response.status_code == 401


@blp.route("/login", methods=["POST"])
@limiter.limit(_login_limit, methods=["POST"])  # per address: all attempts
@limiter.limit(
    _account_limit,
    key_func=_login_account,
    methods=["POST"],
    deduct_when=_failed,  # per account: only wrong passwords count
    scope="login-account",
)
@blp.arguments(LoginSchema)
@blp.response(200, TokenPairSchema)
def login(body: dict[str, str]) -> dict[str, Any]:
    svc = services()
    user = svc.users.authenticate(body["username"], body["password"])
    if user is None:
        raise InvalidCredentials("wrong username or password")
    return {
        "access_token": create_access_token(identity=user.username, fresh=True),
        "refresh_token": create_refresh_token(identity=user.username),
        "token_type": "Bearer",
        "expires_in": svc.settings.jwt_access_token_minutes * 60,
    }


@blp.route("/refresh", methods=["POST"])
@jwt_required(refresh=True)
@blp.response(200, AccessTokenSchema)
def refresh() -> dict[str, Any]:
    return {
        "access_token": create_access_token(identity=get_jwt_identity(), fresh=False),
        "token_type": "Bearer",
        "expires_in": services().settings.jwt_access_token_minutes * 60,
    }


@blp.route("/logout", methods=["POST"])
@blp.arguments(LogoutSchema, required=False)
@blp.response(200, MessageSchema)
def logout(body: dict[str, str]) -> dict[str, str]:
    """Revoke the access token used, and the refresh token when one is sent: all or nothing,
    so a bad refresh_token revokes neither and the client can try again."""
    blocklist = services().blocklist
    claims = get_jwt()
    revoke = [(claims["jti"], claims["exp"])]
    if "refresh_token" in body:
        refresh_claims = _refresh_claims(body["refresh_token"], claims)
        revoke.append((refresh_claims["jti"], refresh_claims["exp"]))
    for jti, exp in revoke:
        blocklist.revoke(str(jti), datetime.fromtimestamp(int(exp), UTC))
    return {"message": "logged out"}


def _refresh_claims(token: str, access_claims: dict[str, Any]) -> dict[str, Any]:
    try:
        refresh_claims = decode_token(token, allow_expired=True)
    except PyJWTError:
        raise ValidationError("refresh_token is not a valid token", field="refresh_token") from None
    if refresh_claims.get("type") != "refresh" or not refresh_claims.get("jti"):
        raise ValidationError("refresh_token is not a refresh token", field="refresh_token")
    if not isinstance(refresh_claims.get("exp"), int):
        raise ValidationError("refresh_token has no expiry", field="refresh_token")
    if refresh_claims.get("sub") != access_claims.get("sub"):
        raise ValidationError("refresh_token belongs to another user", field="refresh_token")
    return dict(refresh_claims)
