"""Bounded queues: backtests are capped per user and overall, a manual trading cycle is queued
at most once, GET never starts one, and a backtest that cannot run is refused before it queues.

No worker runs in these tests, so a sent task stays queued: exactly the state the caps count.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from app.extensions import db
from app.market.calendar import NyseCalendar
from app.store.orm import BacktestRun, TaskRun
from app.store.users import UserService
from tests.conftest import Auth
from tests.support import ROOT, SHARED_DATA

BACKTEST = "app.tasks.run_backtest"
CYCLE = "app.tasks.smart_trading_pipeline"
#: A quick run: the rule needs no model.
QUICK = {"symbols": ["AAPL", "MSFT"], "days": 20, "model": "sma_cross"}


@pytest.fixture
def capped_app(make_app: Callable[..., Flask], tmp_path: Path) -> Flask:
    return make_app(
        DATA_DIR=str(SHARED_DATA),
        WATCHLIST="AAPL,MSFT,KO,SPY",
        MODELS_DIR=str(tmp_path / "models"),
        BEST_PARAMS_DIR=str(tmp_path / "best"),
        TRAIN_YEARS=1,
        BACKTEST_MAX_PER_USER=2,
        BACKTEST_MAX_QUEUED=3,
    )


def task_rows(name: str) -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(TaskRun.task_id).where(TaskRun.name == name)).all())


def stored_runs() -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(BacktestRun)) or 0)


def second_user(client: FlaskClient) -> dict[str, str]:
    UserService(db).create_user("analyst", "analyst-password")
    return Auth(client).headers(Auth(client).login("analyst", "analyst-password")["access_token"])


def start_backtest(client: FlaskClient, headers: dict[str, str]) -> str:
    response = client.post("/api/backtest/run", headers=headers, json=QUICK)
    assert response.status_code == 202, response.get_json()
    return str(response.get_json()["task_id"])


def test_backtests_beyond_the_per_user_and_global_caps_are_429_naming_the_live_ones(
    capped_app: Flask,
) -> None:
    client = capped_app.test_client()
    admin = Auth(client).headers()
    mine = [start_backtest(client, admin) for _ in range(2)]
    refused = client.post("/api/backtest/run", headers=admin, json=QUICK)
    assert refused.status_code == 429, refused.get_json()
    error = refused.get_json()["error"]
    assert error["code"] == "too_many_tasks"
    assert all(task_id in error["message"] for task_id in mine)
    assert sorted(task_rows(BACKTEST)) == sorted(mine)  # the refusal queued nothing
    assert stored_runs() == 2

    analyst = second_user(client)
    theirs = start_backtest(client, analyst)  # another user's own cap is free: 3 of 3 overall
    full = client.post("/api/backtest/run", headers=analyst, json=QUICK)
    assert full.status_code == 429, full.get_json()
    assert all(task_id in full.get_json()["error"]["message"] for task_id in [*mine, theirs])
    assert stored_runs() == 3


def test_a_finished_failed_or_lost_backtest_frees_its_place(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    app = make_app(
        DATA_DIR=str(SHARED_DATA),
        WATCHLIST="AAPL,MSFT,KO,SPY",
        MODELS_DIR=str(tmp_path / "models"),
        BACKTEST_MAX_PER_USER=1,
        BACKTEST_MAX_QUEUED=1,
    )
    client = app.test_client()
    headers = Auth(client).headers()
    celery = app.extensions["celery"]

    finished = start_backtest(client, headers)
    assert client.post("/api/backtest/run", headers=headers, json=QUICK).status_code == 429
    stored = client.get(f"/api/backtest/{finished}", headers=headers).get_json()["params"]
    celery.tasks[BACKTEST].apply(kwargs={"params": stored}, task_id=finished)  # a worker runs it
    assert client.get(f"/api/backtest/{finished}", headers=headers).get_json()["status"] == (
        "SUCCESS"
    )

    failed = start_backtest(client, headers)
    assert client.post("/api/backtest/run", headers=headers, json=QUICK).status_code == 429
    celery.backend.mark_as_failure(failed, RuntimeError("worker lost"))  # Celery says FAILURE

    lost = start_backtest(client, headers)
    assert client.post("/api/backtest/run", headers=headers, json=QUICK).status_code == 429
    with db.session() as session:  # sent long ago and never heard of since: the broker lost it
        session.execute(
            update(TaskRun)
            .where(TaskRun.task_id == lost)
            .values(created_at=datetime.now(UTC) - timedelta(days=2))
        )
    start_backtest(client, headers)


def test_a_second_manual_cycle_while_one_is_queued_returns_its_id(app: Flask) -> None:
    client = app.test_client()
    headers = Auth(client).headers()
    first = client.post("/api/trading/auto/start", headers=headers)
    assert first.status_code == 202, first.get_json()
    queued = first.get_json()["task_id"]
    for _ in range(3):
        again = client.post("/api/trading/auto/start", headers=headers)
        assert again.status_code == 200, again.get_json()
        assert again.get_json()["task_id"] == queued
    assert task_rows(CYCLE) == [queued]

    app.extensions["celery"].backend.store_result(queued, None, "STARTED")  # a worker took it
    later = client.post("/api/trading/auto/start", headers=headers)
    assert later.status_code == 202, later.get_json()
    assert later.get_json()["task_id"] != queued
    assert len(task_rows(CYCLE)) == 2


def test_get_on_auto_start_is_405_and_not_advertised(client: FlaskClient, auth: Auth) -> None:
    headers = auth.headers()
    response = client.get("/api/trading/auto/start", headers=headers)
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert "GET" not in response.headers["Allow"]
    assert task_rows(CYCLE) == []
    spec = client.get("/api/openapi.json", headers=headers).get_json()
    assert set(spec["paths"]["/api/trading/auto/start"]) == {"post"}
    assert "GET /api/trading/auto/start" not in (ROOT / "README.md").read_text()


def _sessions_back_to(first: date) -> int:
    """`days` whose window, ending at the sim replay's last closed session, starts at `first`."""
    return len(NyseCalendar().sessions_index(first, date(2020, 12, 31)))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # The shared CSVs start on 2004-01-02: no labelled row before the first window.
        ({"start": "2004-01-05", "end": "2004-12-31"}, "start"),
        # Some labelled rows, too few for the split training needs (it failed in the task).
        ({"start": "2004-07-15", "end": "2004-12-31"}, "start"),
        ({"days": _sessions_back_to(date(2004, 3, 1))}, "days"),
        # A window without a session: nothing to replay, whatever the model.
        ({"start": "2020-12-26", "end": "2020-12-27"}, "start"),
        ({"start": "2020-12-26", "end": "2020-12-27", "model": "sma_cross"}, "start"),
    ],
)
def test_a_backtest_that_cannot_run_is_refused_before_it_queues(
    capped_app: Flask, body: dict[str, Any], field: str
) -> None:
    client = capped_app.test_client()
    response = client.post(
        "/api/backtest/run",
        headers=Auth(client).headers(),
        json={"symbols": ["AAPL", "MSFT", "KO"], **body},
    )
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["field"] == field, error
    assert stored_runs() == 0
    assert task_rows(BACKTEST) == []
