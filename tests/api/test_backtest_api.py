"""POST /api/backtest/run → Celery task (eager here) → BacktestRun row → GET /api/backtest/<id>;
and the `flask backtest` command."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from app.backtest.report import SEED_KEYS
from app.cli.backtest import backtest_command
from app.extensions import db
from app.store.orm import BacktestRun
from app.tasks import backtest as backtest_tasks
from tests.conftest import Auth
from tests.support import SHARED_DATA


@pytest.fixture
def backtest_app(make_app: Callable[..., Flask], tmp_path: Path) -> Flask:
    return make_app(
        DATA_DIR=str(SHARED_DATA),
        WATCHLIST="AAPL,MSFT,KO,SPY",
        MODELS_DIR=str(tmp_path / "models"),
        BEST_PARAMS_DIR=str(tmp_path / "best"),
        TRAIN_YEARS=1,
        CELERY_ALWAYS_EAGER=True,
    )


def stored_runs() -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(BacktestRun)) or 0)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"symbols": ["ZZZZ"]}, "symbols"),
        ({"symbols": ["AAPL", "NOPE"]}, "symbols"),
        ({"symbols": ["A$B"]}, "symbols"),
        ({"symbols": []}, "symbols"),
        ({"days": 0}, "days"),
        ({"days": 10_001}, "days"),
        ({"days": "many"}, "days"),
        ({"initial_capital": 0}, "initial_capital"),
        ({"initial_capital": -100}, "initial_capital"),
        ({"commission_bps": -1}, "commission_bps"),
        ({"slippage_bps": 5000}, "slippage_bps"),
        ({"retrain_every": 0}, "retrain_every"),
        ({"days": 30, "start": "2020-01-02"}, "days"),
        ({"start": "2020-03-01", "end": "2020-01-02"}, "start"),
        ({"start": "1900-01-02", "end": "1900-03-01"}, "start"),
        ({"model": "magic"}, "model"),
        ({"model": "current"}, "model"),  # no trained model yet
        ({"surprise": 1}, "surprise"),
        ({"placebo": "yes"}, "placebo"),
        ({"model": "sma_cross", "placebo": True}, "placebo"),
    ],
)
def test_run_rejects_bad_requests_naming_the_field(
    backtest_app: Flask, body: dict[str, Any], field: str
) -> None:
    client = backtest_app.test_client()
    response = client.post("/api/backtest/run", headers=Auth(client).headers(), json=body)
    assert response.status_code == 400, response.get_json()
    assert field in response.get_json()["error"]["message"]
    assert stored_runs() == 0


def test_backtest_needs_a_token_and_unknown_runs_are_404(backtest_app: Flask) -> None:
    client = backtest_app.test_client()
    assert client.post("/api/backtest/run", json={"days": 5}).status_code == 401
    missing = client.get("/api/backtest/no-such-run", headers=Auth(client).headers())
    assert missing.status_code == 404
    assert missing.get_json()["error"]["code"] == "not_found"


def test_walk_forward_run_through_the_task(
    backtest_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = backtest_app.test_client()
    headers = Auth(client).headers()
    task = backtest_app.extensions["celery"].tasks[backtest_tasks.run_backtest.name]
    updates: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(
        task, "update_state", lambda state, meta: updates.append((state, meta)), raising=False
    )
    started = client.post(
        "/api/backtest/run",
        headers=headers,
        json={"symbols": ["AAPL", "MSFT", "KO"], "days": 30, "initial_capital": 50_000},
    )
    assert started.status_code == 202, started.get_json()
    body = started.get_json()
    assert set(body) == {"task_id", "status_url"}
    assert body["status_url"] == f"/api/backtest/{body['task_id']}"
    run = client.get(body["status_url"], headers=headers).get_json()
    assert run["status"] == "SUCCESS", run
    result = run["result"]
    assert result["status"] == "success"
    assert set(SEED_KEYS) <= set(result["performance"])
    params = run["params"]
    assert params["symbols"] == ["AAPL", "MSFT", "KO"]
    assert params["end"] == "2020-12-31"  # the sim replay starts 2021-01-04: nothing later
    assert result["params"]["sessions"] == 30
    assert result["equity_curve"][0]["equity"] == 50_000
    model = result["model"]
    assert model["kind"] == "walk_forward"
    assert model["retrains"][0]["last_label_end"] < params["start"]
    assert run["finished_at"] is not None
    assert updates, "no progress reported"
    assert {state for state, _meta in updates} == {"PROGRESS"}
    # eager: the walk-forward windows in the task (tests/tasks/test_walk_forward_fanout.py has
    # workers), then the sessions
    assert updates[0][1]["stage"] == "windows"
    assert updates[0][1]["total"] == len(model["retrains"])
    assert updates[-1][1] == {"stage": "sessions", "done": 30, "total": 30}
    sessions = [meta["done"] for _s, meta in updates if meta["stage"] == "sessions"]
    assert sessions == sorted(sessions)
    task = client.get(f"/api/tasks/{body['task_id']}", headers=headers).get_json()
    assert task["name"] == "app.tasks.run_backtest"
    assert stored_runs() == 1


def test_a_placebo_run_trains_on_shuffled_labels(backtest_app: Flask) -> None:
    """The placebo the README puts beside every figure is one field away through the API."""
    client = backtest_app.test_client()
    headers = Auth(client).headers()
    body = {"symbols": ["AAPL", "MSFT", "KO"], "days": 20, "placebo": True}
    started = client.post("/api/backtest/run", headers=headers, json=body)
    assert started.status_code == 202, started.get_json()
    run = client.get(started.get_json()["status_url"], headers=headers).get_json()
    assert run["status"] == "SUCCESS", run
    assert run["params"]["placebo"] is True
    assert run["result"]["model"]["shuffle_labels"] is True


def test_rule_run_with_dates_trades(backtest_app: Flask) -> None:
    client = backtest_app.test_client()
    headers = Auth(client).headers()
    started = client.post(
        "/api/backtest/run",
        headers=headers,
        json={
            "symbols": ["AAPL", "MSFT", "KO", "SPY"],
            "start": "2019-01-02",
            "end": "2020-12-31",
            "model": "sma_cross",
            "commission_bps": 1,
            "slippage_bps": 2,
        },
    )
    assert started.status_code == 202, started.get_json()
    result = client.get(started.get_json()["status_url"], headers=headers).get_json()["result"]
    assert result["performance"]["num_trades"] > 5
    assert result["params"]["commission_bps"] == 1
    assert {"spy_buy_and_hold", "equal_weight_buy_and_hold"} == set(result["benchmarks"])


def test_cli_writes_json_html_and_png(backtest_app: Flask, tmp_path: Path) -> None:
    out = tmp_path / "out"
    runner = backtest_app.test_cli_runner()
    result = runner.invoke(
        backtest_command,
        [
            "--data-dir",
            str(SHARED_DATA),
            "--symbols",
            "AAPL,MSFT,KO,PEP,XOM",
            "--start",
            "2018-01-01",
            "--end",
            "2020-12-31",
            "--initial-capital",
            "25000",
            "--model",
            "sma_cross",
            "--output",
            str(out / "bt.json"),
            "--html",
            str(out / "bt.html"),
            "--png",
            str(out / "bt.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bt.json").read_text())
    assert report["status"] == "success"
    assert report["equity_curve"][0]["equity"] == 25_000
    assert "<svg" in (out / "bt.html").read_text()
    assert (out / "bt.png").read_bytes()[:4] == b"\x89PNG"
    assert "total_return=" in result.output
