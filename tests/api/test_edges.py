"""The API's edges (issue 15): hostile bodies, non-JSON bodies, loose types, the spec, headers.

Each test here failed on the code before issue 15; each checks that bad input is a 4xx JSON
error naming the field and changes nothing.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.extensions import api, db
from app.store.orm import BacktestRun, TaskRun
from tests.api.test_errors import assert_error
from tests.conftest import Auth

DEEP = "[" * 1000 + "]" * 1000


def task_rows() -> tuple[int, int]:
    with db.session() as session:
        tasks = session.scalar(select(func.count()).select_from(TaskRun)) or 0
        runs = session.scalar(select(func.count()).select_from(BacktestRun)) or 0
    return tasks, runs


# --------------------------------------------------------------------------- item 2: no 500s


@pytest.mark.parametrize(
    "path", ["/api/auth/login", "/api/backtest/run", "/api/hyperparameter/optimize/"]
)
def test_deeply_nested_json_is_a_400(client: FlaskClient, auth: Auth, path: str) -> None:
    headers = auth.headers() if "login" not in path else {}
    before = task_rows()
    response = client.post(path, data=DEEP, content_type="application/json", headers=headers)
    assert_error(response, 400, "body")
    assert task_rows() == before


@pytest.mark.parametrize(
    "query",
    ["start=0001-01-01", "start=1677-09-20", "end=0001-01-01", "start=9999-12-31"],
)
def test_bars_far_outside_any_market_data_are_a_400(
    client: FlaskClient, auth: Auth, query: str
) -> None:
    response = client.get(f"/api/market/bars/AAPL?{query}", headers=auth.headers())
    assert_error(response, 400, query.split("=")[0])


@pytest.mark.parametrize("path", ["/api/orders", "/api/trades"])
def test_history_dates_are_bounded(client: FlaskClient, auth: Auth, path: str) -> None:
    response = client.get(f"{path}?start=0001-01-01", headers=auth.headers())
    assert_error(response, 400, "start")


# ------------------------------------------------------------- item 3: bodies must be JSON


def test_text_plain_body_is_415_and_starts_nothing(client: FlaskClient, auth: Auth) -> None:
    before = task_rows()
    response = client.post(
        "/api/backtest/run", data='{"days": 5}', content_type="text/plain", headers=auth.headers()
    )
    error = assert_error(response, 415)
    assert "application/json" in error["message"]
    assert task_rows() == before


def test_empty_body_where_one_is_required_is_400(client: FlaskClient, auth: Auth) -> None:
    before = task_rows()
    assert_error(client.post("/api/backtest/run", headers=auth.headers()), 400, "body")
    assert task_rows() == before
    assert_error(client.post("/api/auth/login"), 400, "body")


def test_form_body_on_an_optional_body_route_is_415(client: FlaskClient, auth: Auth) -> None:
    before = task_rows()
    response = client.post(
        "/api/training/start/batch", data={"mode": "pooled"}, headers=auth.headers()
    )
    assert_error(response, 415)
    assert task_rows() == before


# ------------------------------------------------------------------ item 8: strict types


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/backtest/run", {"days": 5.5}, "days"),
        ("/api/backtest/run", {"days": 5.0}, "days"),
        ("/api/backtest/run", {"days": "5"}, "days"),
        ("/api/backtest/run", {"days": True}, "days"),
        ("/api/backtest/run", {"days": 5, "initial_capital": "1e5"}, "initial_capital"),
        ("/api/backtest/run", {"days": 5, "initial_capital": True}, "initial_capital"),
        ("/api/backtest/run", {"days": 5, "commission_bps": "1"}, "commission_bps"),
        ("/api/backtest/run", {"days": 5, "retrain_every": 2.5}, "retrain_every"),
        ("/api/hyperparameter/optimize/", {"n_trials": 2.5}, "n_trials"),
        ("/api/hyperparameter/optimize/", {"timeout": "600"}, "timeout"),
        ("/api/risk/halt", {"flatten": 0}, "flatten"),
        ("/api/risk/halt", {"cancel_orders": "true"}, "cancel_orders"),
        ("/api/risk/halt", {"hours": "1"}, "hours"),
    ],
)
def test_loose_types_are_refused(
    client: FlaskClient, auth: Auth, path: str, body: dict[str, Any], field: str
) -> None:
    before = task_rows()
    response = client.post(path, json=body, headers=auth.headers())
    assert_error(response, 400 if "backtest" in path else 422, field)  # each route's own code
    assert task_rows() == before
    risk = client.get("/api/risk/status", headers=auth.headers()).get_json()
    assert risk["state"] != "HALTED"


def test_chunked_body_over_the_limit_is_413(make_app: Any) -> None:
    client = make_app(MAX_REQUEST_BYTES=2048).test_client()
    body = b'{"username": "admin", "password": "' + b"x" * 10_000 + b'"}'
    response = client.post(
        "/api/auth/login",
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert_error(response, 413)


def test_small_chunked_body_is_read(client: FlaskClient) -> None:
    response = client.post(
        "/api/auth/login",
        input_stream=io.BytesIO(b'{"username": "admin", "password": "password"}'),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 200


# ------------------------------------------------------------ item 4: the spec and routing


def test_get_tasks_ping_is_405_not_a_task_lookup(client: FlaskClient, auth: Auth) -> None:
    response = client.get("/api/tasks/ping", headers=auth.headers())
    error = assert_error(response, 405)
    assert error["code"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}


def test_options_is_204_without_a_body(client: FlaskClient) -> None:
    response = client.options("/api/auth/login")
    assert response.status_code == 204
    assert response.data == b""
    assert "Content-Type" not in response.headers
    assert set(response.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}


def test_spec_error_schema_is_the_shape_the_api_sends(app: Flask) -> None:
    spec = api.spec.to_dict()
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    detail = error["properties"]["error"]
    detail = spec["components"]["schemas"][detail["$ref"].rsplit("/", 1)[1]]
    assert set(detail["required"]) == {"code", "message"}
    assert {"field", "fields"} <= set(detail["properties"])


def test_every_operation_documents_its_success_body_and_errors(app: Flask) -> None:
    spec = api.spec.to_dict()
    missing = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            success = [code for code in responses if code.startswith("2")]
            if not success or any("content" not in responses[code] for code in success):
                missing.append((method, path, "success body"))
            if "default" not in responses:
                missing.append((method, path, "errors"))
    assert missing == []


# ------------------------------------------------------------------- item 7: the headers


def test_security_headers_on_every_answer(client: FlaskClient, auth: Auth) -> None:
    tokens = client.post("/api/auth/login", json={"username": "admin", "password": "password"})
    for response in (
        tokens,
        client.get("/health"),
        client.get("/api/nowhere"),
        client.get("/api/account/info", headers=auth.headers()),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    assert tokens.headers["Cache-Control"] == "no-store"
    refreshed = client.post(
        "/api/auth/refresh",
        headers={"Authorization": f"Bearer {tokens.get_json()['refresh_token']}"},
    )
    assert refreshed.status_code == 200
    assert refreshed.headers["Cache-Control"] == "no-store"
