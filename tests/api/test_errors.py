"""One JSON error shape for every error, and bad input that changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.extensions import db
from app.store.orm import RevokedToken, User
from tests.conftest import Auth


def assert_error(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status
    assert response.is_json, response.data[:200]
    error = response.get_json()["error"]
    assert set(error) >= {"code", "message"}
    assert "Traceback" not in error["message"]
    if field:
        assert field in error["message"]
        assert field in error.get("fields", {}) or error.get("field") == field
    return dict(error)


def row_counts() -> tuple[int, int]:
    with db.session() as session:
        users = session.scalar(select(func.count()).select_from(User)) or 0
        revoked = session.scalar(select(func.count()).select_from(RevokedToken)) or 0
    return users, revoked


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"username": "admin"}, 422, "password"),
        ({"password": "password"}, 422, "username"),
        ({"username": 5, "password": "password"}, 422, "username"),
        ({"username": "admin", "password": ["password"]}, 422, "password"),
        ({"username": "admin", "password": "password", "role": "root"}, 422, "role"),
        ({"username": "", "password": "password"}, 422, "username"),
        ([1, 2], 422, "body"),
    ],
)
def test_bad_login_bodies(client: FlaskClient, payload: Any, status: int, field: str) -> None:
    before = row_counts()
    assert_error(client.post("/api/auth/login", json=payload), status, field)
    assert row_counts() == before


def test_malformed_json(client: FlaskClient) -> None:
    response = client.post(
        "/api/auth/login", data='{"username": "admin",', content_type="application/json"
    )
    error = assert_error(response, 400)
    assert "Invalid JSON" in error["message"]


def test_oversized_body_is_413(make_app: Any) -> None:
    client = make_app(MAX_REQUEST_BYTES=2048).test_client()
    response = client.post("/api/auth/login", json={"username": "admin", "password": "x" * 10_000})
    assert_error(response, 413)


def test_logout_with_bad_body_revokes_nothing(client: FlaskClient, auth: Auth) -> None:
    headers = auth.headers()
    before = row_counts()
    response = client.post("/api/auth/logout", headers=headers, json={"refresh_token": 7})
    assert_error(response, 422, "refresh_token")
    assert row_counts() == before
    assert client.get("/api/openapi.json", headers=headers).status_code == 200


def test_unknown_route_and_wrong_method(client: FlaskClient) -> None:
    assert_error(client.get("/api/nowhere"), 404)
    error = assert_error(client.delete("/health"), 405)
    assert error["code"] == "method_not_allowed"


def test_unknown_task_is_404(client: FlaskClient, auth: Auth) -> None:
    error = assert_error(client.get("/api/tasks/nope", headers=auth.headers()), 404, "task_id")
    assert error["code"] == "not_found"


def test_unexpected_exception_is_a_json_500_without_trace(app: Flask) -> None:
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/api/boom-test")
    def boom() -> None:
        raise RuntimeError("secret internals")

    client = app.test_client()
    response = client.get("/api/boom-test", headers=Auth(client).headers())
    error = assert_error(response, 500)
    assert "secret internals" not in error["message"]
