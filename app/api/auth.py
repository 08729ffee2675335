"""Login, refresh and logout. Login is rate-limited per client."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

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
from app.errors import AppError
from app.extensions import limiter

blp = Blueprint("auth", __name__, url_prefix="/api/auth", description="JWT authentication")


class InvalidCredentials(AppError):
    status = 401
    code = "invalid_credentials"


def _login_limit() -> str:
    return services().settings.login_rate_limit


@blp.route("/login", methods=["POST"])
@limiter.limit(_login_limit, methods=["POST"])
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
    """Revoke the access token used, and the refresh token when one is sent."""
    blocklist = services().blocklist
    claims = get_jwt()
    blocklist.revoke(claims["jti"], datetime.fromtimestamp(claims["exp"], UTC))
    if body.get("refresh_token"):
        try:
            refresh_claims = decode_token(body["refresh_token"], allow_expired=True)
        except PyJWTError:
            raise InvalidCredentials(
                "refresh_token is not a valid token", field="refresh_token"
            ) from None
        if refresh_claims.get("sub") != claims.get("sub"):
            raise InvalidCredentials("refresh_token belongs to another user", field="refresh_token")
        blocklist.revoke(refresh_claims["jti"], datetime.fromtimestamp(refresh_claims["exp"], UTC))
    return {"message": "logged out"}
