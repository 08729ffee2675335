"""Issue 24: no 500 on odd JSON, logout ends a whole login, a login throttle an attacker
cannot turn against the real user, private database files, a spec that matches the routes."""

from __future__ import annotations

import re
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import flask_smorest
import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.ai.tuning_storage import make_storage, storage_url_for
from app.api.blueprint import Blueprint
from app.extensions import db
from app.store import migrations
from app.trading.risk import RiskStateStore, TradingState
from tests.conftest import Auth

HUGE = "9" * 5000  # past Python's 4300-digit int conversion limit


def post_raw(client: FlaskClient, path: str, body: str, headers: dict[str, str]) -> Any:
    return client.post(path, data=body, headers={**headers, "Content-Type": "application/json"})


# --- item 2: oversized integers -----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/backtest/run", '{"days": %s}', "days"),
        ("/api/hyperparameter/optimize/", '{"n_trials": %s}', "n_trials"),
        ("/api/risk/halt", '{"hours": %s}', "hours"),
        ("/api/risk/halt", '{"hours": -%s}', "hours"),
        ("/api/backtest/run", '{"symbols": ["AAPL", %s]}', "symbols.1"),
    ],
)
def test_an_integer_too_long_to_convert_is_a_4xx_naming_the_field(
    client: FlaskClient, auth: Auth, path: str, body: str, field: str
) -> None:
    response = post_raw(client, path, body % HUGE, auth.headers())
    assert response.status_code in (400, 422), response.get_json()
    error = response.get_json()["error"]
    assert field in error["fields"], error
    if field != "symbols.1":  # a number where a string belongs is just not a string
        assert "5000 digits" in " ".join(error["fields"][field])


def test_an_integer_too_long_in_a_query_is_a_4xx_naming_the_field(
    client: FlaskClient, auth: Auth
) -> None:
    response = client.get(f"/api/orders?page={HUGE}", headers=auth.headers())
    assert response.status_code in (400, 422)
    assert "page" in response.get_json()["error"]["fields"]


# --- item 2: lone surrogates --------------------------------------------------------------

LOGIN_SURROGATE = '{"username": "\\udfff", "password": "x"}'


def test_a_lone_surrogate_in_the_username_is_a_401_not_a_500(
    make_app: Callable[..., Flask],
) -> None:
    client = make_app(LOGIN_RATE_LIMIT="2 per minute").test_client()
    codes = [post_raw(client, "/api/auth/login", LOGIN_SURROGATE, {}) for _ in range(3)]
    assert [r.status_code for r in codes] == [401, 401, 429]  # throttled: still no 500
    assert codes[0].get_json()["error"]["code"] == "invalid_credentials"


def test_a_lone_surrogate_in_the_halt_reason_still_halts(client: FlaskClient, auth: Auth) -> None:
    headers = auth.headers()
    response = post_raw(client, "/api/risk/halt", '{"reason": "\\ud800", "hours": 1}', headers)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["state"] == "HALTED"
    assert body["halt_reason"].startswith("\ufffd (by admin)")


def test_the_risk_store_halts_whatever_text_it_is_given(app: Flask) -> None:
    """The kill switch is called by the CLI and tasks too: its text can never stop a halt."""
    store = RiskStateStore(db)
    store.halt("bad \ud800 text", datetime.now(UTC), hours=1)
    state = store.load()
    assert state.state is TradingState.HALTED
    assert state.halt_reason == "bad \ufffd text"
    assert store.recent_events(1)[0]["detail"] == "bad \ufffd text"


def test_a_lone_surrogate_in_a_symbol_is_a_400_naming_it(client: FlaskClient, auth: Auth) -> None:
    response = post_raw(client, "/api/backtest/run", '{"symbols": ["\\udc00"]}', auth.headers())
    assert response.status_code == 400
    assert "symbols.0" in response.get_json()["error"]["fields"]


# --- item 3: logout ends the whole login --------------------------------------------------


def refreshed_access(client: FlaskClient, refresh_token: str) -> str:
    response = client.post(
        "/api/auth/refresh", headers={"Authorization": f"Bearer {refresh_token}"}
    )
    assert response.status_code == 200
    return str(response.get_json()["access_token"])


def test_logout_revokes_access_tokens_refreshed_from_the_same_login(
    client: FlaskClient, auth: Auth
) -> None:
    tokens = auth.login()
    refreshed = refreshed_access(client, tokens["refresh_token"])
    other_login = auth.login()
    assert client.get("/api/risk/status", headers=auth.headers(refreshed)).status_code == 200

    logout = client.post("/api/auth/logout", headers=auth.headers(tokens["access_token"]))
    assert logout.status_code == 200

    for token in (tokens["access_token"], refreshed):
        revoked = client.get("/api/risk/status", headers=auth.headers(token))
        assert revoked.status_code == 401
        assert revoked.get_json()["error"]["message"] == "token has been revoked"
    refresh = client.post(
        "/api/auth/refresh", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}
    )
    assert refresh.status_code == 401  # the refresh token of that login too, though not sent
    other = auth.headers(other_login["access_token"])
    assert client.get("/api/risk/status", headers=other).status_code == 200


def test_logout_with_a_refreshed_token_revokes_the_first_one(
    client: FlaskClient, auth: Auth
) -> None:
    tokens = auth.login()
    refreshed = refreshed_access(client, tokens["refresh_token"])
    assert client.post("/api/auth/logout", headers=auth.headers(refreshed)).status_code == 200
    first = client.get("/api/risk/status", headers=auth.headers(tokens["access_token"]))
    assert first.status_code == 401


# --- item 5: a login throttle an attacker cannot turn against the user --------------------

ATTACKER = {"REMOTE_ADDR": "203.0.113.7"}
USER = {"REMOTE_ADDR": "198.51.100.20"}


def login_from(client: FlaskClient, environ: dict[str, str], password: str) -> Any:
    body = {"username": "admin", "password": password}
    return client.post("/api/auth/login", json=body, environ_base=environ)


def test_an_attacker_elsewhere_cannot_lock_out_the_user_and_is_still_throttled(
    make_app: Callable[..., Flask],
) -> None:
    client = make_app(
        LOGIN_RATE_LIMIT="100 per minute", LOGIN_BACKOFF_AFTER=3, LOGIN_BACKOFF_SECONDS=60
    ).test_client()
    attempts = [login_from(client, ATTACKER, "guess") for _ in range(6)]
    assert [r.status_code for r in attempts] == [401, 401, 401, 429, 429, 429]
    throttled = attempts[-1]
    assert throttled.get_json()["error"]["code"] == "rate_limited"
    assert int(throttled.headers["Retry-After"]) >= 1
    # The real user, from their own address, logs in at once, right password or a typo.
    assert login_from(client, USER, "wrong").status_code == 401
    assert login_from(client, USER, "password").status_code == 200
    # And the attacker still waits.
    assert login_from(client, ATTACKER, "password").status_code == 429


def test_a_successful_login_clears_the_backoff(make_app: Callable[..., Flask]) -> None:
    client = make_app(
        LOGIN_RATE_LIMIT="100 per minute", LOGIN_BACKOFF_AFTER=3, LOGIN_BACKOFF_SECONDS=60
    ).test_client()
    assert [login_from(client, USER, "typo").status_code for _ in range(2)] == [401, 401]
    assert login_from(client, USER, "password").status_code == 200
    assert [login_from(client, USER, "typo").status_code for _ in range(3)] == [401] * 3


def test_the_wait_doubles_with_each_failure_up_to_a_cap() -> None:
    from app.api.login_backoff import backoff_seconds

    waits = [backoff_seconds(failures, free=3, cap=900) for failures in range(1, 16)]
    assert waits[:2] == [0, 0]
    assert waits[2:7] == [1, 2, 4, 8, 16]
    assert max(waits) == 900
    assert waits[-1] == 900


# --- item 5: private database files -------------------------------------------------------


def test_the_sqlite_files_the_app_creates_are_private(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'alpha_trader.db'}"
    migrations.upgrade(url)
    app = create_app({"DATABASE_DIR": str(tmp_path), "DATABASE_URL": url, "LOG_LEVEL": "WARNING"})
    client = app.test_client()
    assert client.post("/api/tasks/ping", headers=Auth(client).headers()).status_code == 202
    make_storage(storage_url_for(url))
    files = [p for p in tmp_path.iterdir() if p.suffix in {".db", ".sqlite"}]
    files += [p for p in tmp_path.iterdir() if p.name.endswith(("-wal", "-shm"))]
    names = {p.name for p in files}
    assert {"alpha_trader.db", "celery-broker.sqlite", "alpha_trader-optuna.db"} <= names
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o600"}, modes


# --- item 5: the spec says what the routes accept ----------------------------------------

SYMBOL_BOUNDS = {"pattern", "minLength", "maxLength"}


def spec(client: FlaskClient, auth: Auth) -> dict[str, Any]:
    return dict(client.get("/api/openapi.json", headers=auth.headers()).get_json())


def test_the_spec_gives_every_symbol_its_pattern_and_length(
    client: FlaskClient, auth: Auth
) -> None:
    document = spec(client, auth)
    found = []
    for path, item in document["paths"].items():
        for operation in [item, *(v for v in item.values() if isinstance(v, dict))]:
            for parameter in operation.get("parameters", []):
                if isinstance(parameter, dict) and parameter.get("name") == "symbol":
                    found.append((path, parameter["schema"]))
    schemas = document["components"]["schemas"]
    found.append(("BacktestRun", schemas["BacktestRun"]["properties"]["symbols"]["items"]))
    found.append(("Optimize", schemas["Optimize"]["properties"]["symbols"]["items"]))
    assert len(found) >= 6  # price, bars, signal, orders, trades, two bodies
    missing = [(where, s) for where, s in found if not set(s) >= SYMBOL_BOUNDS]
    assert missing == []


def test_the_spec_bounds_every_date(client: FlaskClient, auth: Auth) -> None:
    document = spec(client, auth)
    start = document["components"]["schemas"]["BacktestRun"]["properties"]["start"]
    assert start["format"] == "date"
    assert "pattern" in start
    pattern = re.compile(start["pattern"])
    assert pattern.search("1970-01-01")
    assert pattern.search("2200-12-31")
    assert not pattern.search("1969-12-31")
    assert not pattern.search("2201-01-01")
    assert not pattern.search("20200105")


@pytest.mark.parametrize("value", ["20200105", "2020-W01-1", "1969-12-31"])
def test_a_date_outside_the_spec_is_refused(client: FlaskClient, auth: Auth, value: str) -> None:
    response = client.get(f"/api/orders?start={value}", headers=auth.headers())
    assert response.status_code in (400, 422)
    assert "start" in response.get_json()["error"]["fields"]


@pytest.mark.parametrize("symbol", ["%20AAPL", "AAPL%20", "TOOLONGSYMB"])
def test_a_path_symbol_outside_the_spec_is_a_400(
    client: FlaskClient, auth: Auth, symbol: str
) -> None:
    response = client.get(f"/api/price/{symbol}", headers=auth.headers())
    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "symbol"


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/api/backtest/run", {"POST", "OPTIONS"}),
        ("/api/tasks/ping", {"POST", "OPTIONS"}),
        ("/api/tasks/some-task", {"GET", "HEAD", "OPTIONS"}),
        ("/api/backtest/some-run", {"GET", "HEAD", "OPTIONS"}),
    ],
)
def test_options_answers_only_the_real_methods(
    client: FlaskClient, path: str, allowed: set[str]
) -> None:
    response = client.open(path, method="OPTIONS")
    assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed


@pytest.mark.parametrize("path", ["/api/backtest/run", "/api/tasks/ping"])
def test_get_on_a_post_only_route_is_a_405(client: FlaskClient, auth: Auth, path: str) -> None:
    response = client.get(path, headers=auth.headers())
    assert response.status_code == 405
    assert "GET" not in response.headers["Allow"]


def test_every_api_blueprint_reads_bodies_through_the_api_parser(app: Flask) -> None:
    """A module on flask-smorest's own Blueprint would read JSON with the standard library."""
    smorest = [b for b in app.blueprints.values() if isinstance(b, flask_smorest.Blueprint)]
    assert len(smorest) >= 13
    assert [b.name for b in smorest if not isinstance(b, Blueprint)] == []
