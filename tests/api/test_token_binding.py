"""Tokens bound to live users, a secret of our own, all-or-nothing logout, per-account login
limits and a /metrics that can require a token (issue 15, items 5 to 7)."""

from __future__ import annotations

import stat
import time
from collections.abc import Callable
from pathlib import Path

import jwt as pyjwt
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from app.extensions import db
from app.store.orm import User
from tests.conftest import Auth

#: The constant the code shipped with before issue 15; sim tokens signed with it must fail.
OLD_PUBLIC_SECRET = "insecure-dev-secret-for-sim-mode-only-change-me"


def forge(app: Flask, **claims: object) -> str:
    """A token signed with the app's own key: only the claims can be wrong."""
    now = int(time.time())
    payload = {"sub": "admin", "type": "access", "fresh": True, "jti": "j1", "iat": now}
    payload |= {"fam": "f1"}
    payload |= {"exp": now + 600} | claims
    payload = {k: v for k, v in payload.items() if v is not None}
    return pyjwt.encode(payload, app.config["JWT_SECRET_KEY"], algorithm="HS256")


def get(client: FlaskClient, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    return client.get("/api/risk/status", headers=headers).status_code


def test_token_for_a_user_that_does_not_exist_is_refused(app: Flask, client: FlaskClient) -> None:
    assert get(client, forge(app)) == 200
    assert get(client, forge(app, sub="ghost")) == 401


def test_token_of_a_deactivated_user_stops_working_at_once(
    app: Flask, client: FlaskClient, auth: Auth
) -> None:
    token = auth.login()["access_token"]
    assert get(client, token) == 200
    with db.session() as session:
        session.execute(update(User).where(User.username == "admin").values(is_active=False))
    response = client.get("/api/risk/status", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("claim", ["exp", "jti", "iat", "fam"])
def test_token_without_a_required_claim_is_refused(
    app: Flask, client: FlaskClient, claim: str
) -> None:
    response = client.get(
        "/api/risk/status", headers={"Authorization": f"Bearer {forge(app, **{claim: None})}"}
    )
    assert response.status_code == 401
    assert claim in response.get_json()["error"]["message"]


def test_sim_secret_is_random_per_installation_and_kept(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    first = make_app(DATABASE_DIR=str(tmp_path / "a"))
    again = make_app(DATABASE_DIR=str(tmp_path / "a"))
    other = make_app(DATABASE_DIR=str(tmp_path / "b"))
    secret = first.config["JWT_SECRET_KEY"]
    assert len(secret) >= 32
    assert secret != OLD_PUBLIC_SECRET
    assert again.config["JWT_SECRET_KEY"] == secret  # kept across restarts
    assert other.config["JWT_SECRET_KEY"] != secret  # never shared between installations
    path = tmp_path / "a" / "secret_key"
    assert path.read_text().strip() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    forged = pyjwt.encode(
        {"sub": "admin", "type": "access", "jti": "x", "iat": 1, "exp": 2**31},
        OLD_PUBLIC_SECRET,
        algorithm="HS256",
    )
    assert get(first.test_client(), forged) == 401


def test_logout_with_a_bad_refresh_token_revokes_nothing(client: FlaskClient, auth: Auth) -> None:
    tokens = auth.login()
    access = {"Authorization": f"Bearer {tokens['access_token']}"}
    for bad in ("not-a-jwt", tokens["access_token"]):  # garbage; an access token
        response = client.post("/api/auth/logout", headers=access, json={"refresh_token": bad})
        assert response.status_code == 400
        assert response.get_json()["error"]["field"] == "refresh_token"
    assert client.get("/api/risk/status", headers=access).status_code == 200
    refresh = {"Authorization": f"Bearer {tokens['refresh_token']}"}
    assert client.post("/api/auth/refresh", headers=refresh).status_code == 200
    # and the good request still revokes both
    good = client.post(
        "/api/auth/logout", headers=access, json={"refresh_token": tokens["refresh_token"]}
    )
    assert good.status_code == 200
    assert client.get("/api/risk/status", headers=access).status_code == 401
    assert client.post("/api/auth/refresh", headers=refresh).status_code == 401


def login(client: FlaskClient, username: str, password: str) -> int:
    body = {"username": username, "password": password}
    return client.post("/api/auth/login", json=body).status_code


def test_login_backoff_slows_that_account_from_that_address_only(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(
        LOGIN_RATE_LIMIT="100 per minute", LOGIN_BACKOFF_AFTER=3, LOGIN_BACKOFF_SECONDS=60
    )
    app.test_cli_runner().invoke(args=["create-user", "alice", "--password", "alice-pass-1"])
    client = app.test_client()
    assert [login(client, "admin", "wrong") for _ in range(4)] == [401, 401, 401, 429]
    assert login(client, "admin", "password") == 429  # this address waits for this account
    assert login(client, "alice", "alice-pass-1") == 200  # others, same address, do not
    # successful logins do not use up the account's allowance
    assert {login(client, "alice", "alice-pass-1") for _ in range(5)} == {200}


def test_login_limit_per_address_covers_every_account(make_app: Callable[..., Flask]) -> None:
    """One address cannot try a few passwords on every account."""
    client = make_app(LOGIN_RATE_LIMIT="5 per minute", LOGIN_BACKOFF_AFTER=3).test_client()
    codes = [login(client, f"user{i}", "guess") for i in range(7)]
    assert codes == [401] * 5 + [429] * 2


def test_metrics_can_require_a_bearer_token(make_app: Callable[..., Flask]) -> None:
    client = make_app(METRICS_TOKEN="m" * 40).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = client.get("/metrics", headers={"Authorization": "Bearer " + "m" * 40})
    assert response.status_code == 200
    assert b"flask_http_request" in response.data
