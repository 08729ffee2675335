"""`"model": "momentum"` through POST /api/backtest/run: its options reach the task (they
survive the stored params), and a bad option is a 400 naming the field, before anything queues."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from app.cli.backtest import backtest_command
from app.extensions import db
from app.store.orm import BacktestRun
from tests.conftest import Auth
from tests.support import SHARED_DATA


@pytest.fixture
def backtest_app(make_app: Callable[..., Flask], tmp_path: Path) -> Flask:
    return make_app(
        DATA_DIR=str(SHARED_DATA),
        WATCHLIST="AAPL,MSFT,KO,SPY",
        MODELS_DIR=str(tmp_path / "models"),
        BEST_PARAMS_DIR=str(tmp_path / "best"),
        CELERY_ALWAYS_EAGER=True,
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "momentum", "momentum_top_k": 0}, "momentum_top_k"),
        ({"model": "momentum", "momentum_lookback": "long"}, "momentum_lookback"),
        ({"model": "momentum", "momentum_lookback": 1}, "momentum_lookback"),
        ({"model": "momentum", "momentum_skip": -1}, "momentum_skip"),
        ({"model": "momentum", "momentum_skip": 300}, "momentum_skip"),  # >= lookback 252
        ({"model": "sma_cross", "momentum_top_k": 3}, "momentum_top_k"),
        ({"model": "momentum", "placebo": True}, "placebo"),
    ],
)
def test_bad_momentum_options_are_400_naming_the_field(
    backtest_app: Flask, body: dict[str, Any], field: str
) -> None:
    client = backtest_app.test_client()
    response = client.post("/api/backtest/run", headers=Auth(client).headers(), json=body)
    assert response.status_code == 400, response.get_json()
    assert field in response.get_json()["error"]["message"]
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(BacktestRun)) == 0


def test_a_momentum_run_through_the_task_uses_its_options(backtest_app: Flask) -> None:
    client = backtest_app.test_client()
    headers = Auth(client).headers()
    body = {
        "symbols": ["AAPL", "MSFT", "KO", "XOM"],
        "start": "2019-01-02",
        "end": "2019-02-28",
        "model": "momentum",
        "momentum_top_k": 2,
        "momentum_skip": 10,
    }
    started = client.post("/api/backtest/run", headers=headers, json=body)
    assert started.status_code == 202, started.get_json()
    run = client.get(started.get_json()["status_url"], headers=headers).get_json()
    assert run["status"] == "SUCCESS", run
    assert run["params"]["momentum_top_k"] == 2
    model = run["result"]["model"]
    assert (model["kind"], model["lookback"], model["skip"], model["top_k"]) == (
        "momentum",
        252,
        10,
        2,
    )
    assert run["result"]["performance"]["num_trades"] >= 2


def test_the_cli_runs_momentum_and_refuses_a_bad_option(
    backtest_app: Flask, tmp_path: Path
) -> None:
    out = tmp_path / "bt.json"
    args = [
        "--data-dir",
        str(SHARED_DATA),
        "--symbols",
        "AAPL,MSFT,KO,XOM",
        "--start",
        "2019-01-02",
        "--end",
        "2019-01-31",
        "--model",
        "momentum",
        "--output",
        str(out),
    ]
    runner = backtest_app.test_cli_runner()
    result = runner.invoke(backtest_command, [*args, "--momentum-top-k", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["model"]["kind"] == "momentum"
    assert report["model"]["top_k"] == 2
    refused = runner.invoke(backtest_command, [*args, "--momentum-skip", "300"])
    assert refused.exit_code != 0
    assert "momentum_skip" in refused.output
