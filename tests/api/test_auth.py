"""Login, refresh, logout, users and the login rate limit."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.extensions import db
from app.store.orm import User
from tests.conftest import Auth


def test_login_returns_access_and_refresh_tokens(client: FlaskClient) -> None:
    response = client.post("/api/auth/login", json={"username": "admin", "password": "password"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["access_token"] != body["refresh_token"]


def test_protected_route_answers_with_token_and_refuses_without(
    client: FlaskClient, auth: Auth
) -> None:
    assert client.get("/api/openapi.json").status_code == 401
    response = client.get("/api/openapi.json", headers=auth.headers())
    assert response.status_code == 200
    assert "/api/auth/login" in response.get_json()["paths"]


def test_wrong_password_and_unknown_user_get_the_same_401(client: FlaskClient) -> None:
    wrong = client.post("/api/auth/login", json={"username": "admin", "password": "nope"})
    unknown = client.post("/api/auth/login", json={"username": "ghost", "password": "nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.get_json() == unknown.get_json()
    assert wrong.get_json()["error"]["code"] == "invalid_credentials"


def test_refresh_gives_a_new_access_token(client: FlaskClient, auth: Auth) -> None:
    tokens = auth.login()
    response = client.post(
        "/api/auth/refresh", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}
    )
    assert response.status_code == 200
    new_access = response.get_json()["access_token"]
    assert client.get("/api/openapi.json", headers=auth.headers(new_access)).status_code == 200


def test_access_token_cannot_refresh(client: FlaskClient, auth: Auth) -> None:
    tokens = auth.login()
    response = client.post(
        "/api/auth/refresh", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert response.status_code == 401


def test_logout_revokes_access_and_refresh_tokens(client: FlaskClient, auth: Auth) -> None:
    tokens = auth.login()
    headers = auth.headers(tokens["access_token"])
    response = client.post(
        "/api/auth/logout", headers=headers, json={"refresh_token": tokens["refresh_token"]}
    )
    assert response.status_code == 200
    revoked = client.get("/api/openapi.json", headers=headers)
    assert revoked.status_code == 401
    assert revoked.get_json()["error"]["message"] == "token has been revoked"
    refresh = client.post(
        "/api/auth/refresh", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}
    )
    assert refresh.status_code == 401
    # Another session of the same user is unaffected.
    assert client.get("/api/openapi.json", headers=auth.headers()).status_code == 200


def test_passwords_are_stored_as_scrypt_hashes(app: Flask) -> None:
    with db.session() as session:
        user = session.scalar(select(User).where(User.username == "admin"))
    assert user is not None
    assert user.password_hash.startswith("scrypt:")
    assert "password" not in user.password_hash


def test_create_user_command(app: Flask, client: FlaskClient, auth: Auth) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(args=["create-user", "alice", "--password", "correct-horse"])
    assert result.exit_code == 0, result.output
    assert auth.login("alice", "correct-horse")["access_token"]
    again = runner.invoke(args=["create-user", "alice", "--password", "correct-horse"])
    assert again.exit_code != 0
    assert "already exists" in again.output
    short = runner.invoke(args=["create-user", "bob", "--password", "short"])
    assert short.exit_code != 0
    assert "at least 8" in short.output
    reset = runner.invoke(args=["create-user", "alice", "--reset", "--password", "battery-staple"])
    assert reset.exit_code == 0
    assert auth.login("alice", "battery-staple")


def test_admin_is_created_once(make_app: Callable[..., Flask]) -> None:
    make_app()
    make_app()
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(User)) == 1


def test_configured_admin_password_replaces_the_demo_one(make_app: Callable[..., Flask]) -> None:
    app = make_app(ADMIN_USERNAME="boss", ADMIN_PASSWORD="a-long-secret-pass")
    client = app.test_client()
    ok = client.post("/api/auth/login", json={"username": "boss", "password": "a-long-secret-pass"})
    assert ok.status_code == 200
    demo = client.post("/api/auth/login", json={"username": "boss", "password": "password"})
    assert demo.status_code == 401


def test_login_is_rate_limited(make_app: Callable[..., Flask]) -> None:
    app = make_app(LOGIN_RATE_LIMIT="3 per minute")
    client = app.test_client()
    codes = [
        client.post("/api/auth/login", json={"username": "admin", "password": "x"}).status_code
        for _ in range(5)
    ]
    assert codes == [401, 401, 401, 429, 429]
    limited = client.post("/api/auth/login", json={"username": "admin", "password": "password"})
    assert limited.status_code == 429
    body = limited.get_json()
    assert body["error"]["code"] == "rate_limited"
    assert "Retry-After" in limited.headers
