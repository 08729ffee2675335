"""A task started through the API round-trips through a real broker and worker process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests import support
from tests.conftest import Auth

pytestmark = pytest.mark.integration


@pytest.fixture
def worker(backend: dict[str, Any], tmp_path) -> Iterator[support.Process]:
    env = support.service_env(**{k: str(v) for k, v in backend.items()})
    args = [
        str(support.BIN / "celery"),
        "--app",
        "app.make_celery",
        "worker",
        "--queues",
        "default,training",
        "--concurrency",
        "1",
        "--loglevel",
        "INFO",
        "--hostname",
        f"test-{tmp_path.name}@%h",
    ]
    process = support.Process(args, env, tmp_path / "worker.log")
    yield process
    process.stop()


def wait_for_task(client: FlaskClient, headers: dict[str, str], task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        body = client.get(f"/api/tasks/{task_id}", headers=headers).get_json()
        if body["state"] in {"SUCCESS", "FAILURE"}:
            return dict(body)
        time.sleep(0.3)
    raise AssertionError(f"task {task_id} did not finish")


def test_ping_task_round_trips(app: Flask, worker: support.Process) -> None:
    client = app.test_client()
    headers = Auth(client).headers()
    started = client.post("/api/tasks/ping", headers=headers)
    assert started.status_code == 202
    task_id = started.get_json()["task_id"]
    assert started.get_json()["status_url"] == f"/api/tasks/{task_id}"
    try:
        body = wait_for_task(client, headers, task_id)
    except AssertionError:
        raise AssertionError(worker.output()[-3000:]) from None
    assert body["state"] == "SUCCESS", body
    assert body["name"] == "app.tasks.ping"
    assert body["result"]["pong"] is True
    # the task ran in the worker process, not here
    assert body["result"]["worker"].split(":")[1] != str(__import__("os").getpid())


def test_model_health_task_runs_in_a_real_worker(app: Flask, worker: support.Process) -> None:
    """Beat's daily model-health entry, sent by name to the default queue: the worker scores
    the recorded signals whose labels its market already has."""
    from datetime import date

    from app.container import Services
    from app.market.calendar import NyseCalendar
    from app.store.orm import SignalRecord

    svc: Services = app.extensions["alpha_trader"]
    symbols = list(svc.settings.watchlist)[:8]
    sessions = NyseCalendar().sessions(date(2020, 11, 2), date(2020, 11, 30))
    with svc.db.session() as session:
        for day in sessions:
            session.add_all(
                SignalRecord(
                    symbol=s,
                    action="HOLD",
                    predicted_return=float(i),
                    confidence=0.5,
                    dispersion=0.0,
                    model_version="integration",
                    as_of=day,
                )
                for i, s in enumerate(symbols)
            )
    result = app.extensions["celery"].send_task("app.tasks.update_model_health", queue="default")
    try:
        body = result.get(timeout=90)
    except Exception:
        raise AssertionError(worker.output()[-3000:]) from None
    assert body["scored"] == len(sessions)  # the sim replay starts 2021-01-04: all labelled
    assert {w["window"]: w["sessions"] for w in body["live"]} == {20: 20, 60: len(sessions)}
