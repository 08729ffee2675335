"""Login, refresh and logout.

Login is rate-limited per client address, and failed logins back off per (account, address)
(app/api/login_backoff.py). Every token of one login (its access and refresh tokens and the
access tokens refreshed from them) carries one family id, `fam`: logout revokes the family.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from flask import request
from flask_jwt_extended import (
    create_access_token,
    create_refresh_token,
    decode_token,
    get_jwt,
    get_jwt_identity,
    jwt_required,
)
from jwt.exceptions import PyJWTError

from app.api.blueprint import Blueprint
from app.api.login_backoff import LoginBackoff
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


#: The claim naming the login a token descends from.
FAMILY_CLAIM = "fam"


def _login_limit() -> str:
    return services().settings.login_rate_limit


def _backoff() -> LoginBackoff:
    settings = services().settings
    return LoginBackoff(
        free=settings.login_backoff_after, first_wait=settings.login_backoff_seconds
    )


@blp.route("/login", methods=["POST"])
@limiter.limit(_login_limit, methods=["POST"])  # per address: all attempts
@blp.arguments(LoginSchema)
@blp.response(200, TokenPairSchema)
def login(body: dict[str, str]) -> dict[str, Any]:
    svc = services()
    username, address = body["username"], request.remote_addr or "-"
    backoff = _backoff()
    backoff.check(username, address)
    user = svc.users.authenticate(username, body["password"])
    if user is None:
        backoff.failed(username, address)
        raise InvalidCredentials("wrong username or password")
    backoff.succeeded(username, address)
    family = {FAMILY_CLAIM: uuid4().hex}
    return {
        "access_token": create_access_token(
            identity=user.username, fresh=True, additional_claims=family
        ),
        "refresh_token": create_refresh_token(identity=user.username, additional_claims=family),
        "token_type": "Bearer",
        "expires_in": svc.settings.jwt_access_token_minutes * 60,
    }


@blp.route("/refresh", methods=["POST"])
@jwt_required(refresh=True)
@blp.response(200, AccessTokenSchema)
def refresh() -> dict[str, Any]:
    family = {FAMILY_CLAIM: get_jwt()[FAMILY_CLAIM]}
    return {
        "access_token": create_access_token(
            identity=get_jwt_identity(), fresh=False, additional_claims=family
        ),
        "token_type": "Bearer",
        "expires_in": services().settings.jwt_access_token_minutes * 60,
    }


@blp.route("/logout", methods=["POST"])
@blp.arguments(LogoutSchema, required=False)
@blp.response(200, MessageSchema)
def logout(body: dict[str, str]) -> dict[str, str]:
    """Revoke every token of the login the access token used comes from (refreshed ones too),
    and the refresh token when one is sent (with its own login): all or nothing, so a bad
    refresh_token revokes nothing and the client can try again."""
    svc = services()
    claims = get_jwt()
    tokens = [claims]
    if "refresh_token" in body:
        tokens.append(_refresh_claims(body["refresh_token"], claims))
    # A family outlives its refresh token by at most one access token refreshed at its end.
    settings = svc.settings
    family_expires = datetime.now(UTC) + timedelta(
        days=settings.jwt_refresh_token_days, minutes=settings.jwt_access_token_minutes
    )
    for token in tokens:
        svc.blocklist.revoke(str(token["jti"]), datetime.fromtimestamp(int(token["exp"]), UTC))
        if token.get(FAMILY_CLAIM):
            svc.blocklist.revoke_family(str(token[FAMILY_CLAIM]), family_expires)
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
