"""Training through the API (Celery eager), signals from the trained model, tuning validation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from tests.conftest import Auth
from tests.support import SHARED_DATA


@pytest.fixture
def trained_app(make_app: Callable[..., Flask], tmp_path: Path) -> Flask:
    return make_app(
        DATA_DIR=str(SHARED_DATA),
        WATCHLIST="AAPL,MSFT,KO,PEP,XOM,SPY",
        MODELS_DIR=str(tmp_path / "models"),
        BEST_PARAMS_DIR=str(tmp_path / "best"),
        TRAIN_YEARS=2,
        CELERY_ALWAYS_EAGER=True,
    )


def test_batch_training_then_signal(trained_app: Flask) -> None:
    client = trained_app.test_client()
    headers = Auth(client).headers()
    assert client.get("/api/trading/signal/AAPL", headers=headers).status_code == 409
    started = client.post("/api/training/start/batch", headers=headers, json={})
    assert started.status_code == 202
    status = client.get(started.get_json()["status_url"], headers=headers).get_json()
    assert status["state"] == "SUCCESS", status
    result = status["result"]
    assert result["mode"] == "pooled"
    assert result["train_end"] < "2021-01-04"  # sim replay starts 2021-01-04: no lookahead
    signal = client.get("/api/trading/signal/aapl", headers=headers)
    assert signal.status_code == 200
    body = signal.get_json()
    assert body["signal"] in {"BUY", "SELL", "HOLD"}
    assert 0.0 <= body["confidence"] <= 1.0
    assert body["model_version"] == result["version"]
    dashboard = client.get("/api/dashboard/all_data", headers=headers).get_json()
    assert dashboard["model"]["version"] == result["version"]
    assert dashboard["model"]["stale"] is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"n_trials": 0}, "n_trials"),
        ({"n_trials": 100000}, "n_trials"),
        ({"timeout": 1}, "timeout"),
        ({"timeout": 10**9}, "timeout"),
        ({"symbols": []}, "symbols"),
        ({"symbols": ["A$B"]}, "symbols"),
        ({"symbols": ["ZZZZ"]}, "symbols"),
        ({"mode": "magic"}, "mode"),
        ({"n_trials": "many"}, "n_trials"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_optimize_rejects_absurd_requests(trained_app: Flask, body: dict, field: str) -> None:
    client = trained_app.test_client()
    response = client.post(
        "/api/hyperparameter/optimize/", headers=Auth(client).headers(), json=body
    )
    assert response.status_code in (400, 422)
    assert field in response.get_json()["error"]["message"]


def test_optimize_starts_a_task(trained_app: Flask) -> None:
    client = trained_app.test_client()
    headers = Auth(client).headers()
    response = client.post(
        "/api/hyperparameter/optimize/", headers=headers, json={"n_trials": 2, "timeout": 60}
    )
    assert response.status_code == 202
    status = client.get(response.get_json()["status_url"], headers=headers).get_json()
    assert status["name"] == "app.tasks.optimize_hyperparameters_for_watchlist"


@pytest.mark.parametrize(
    ("path", "body"),
    [("/api/training/start/batch", {}), ("/api/hyperparameter/optimize/", {"n_trials": 1})],
)
def test_second_training_or_tuning_is_409_naming_the_live_task(
    make_app: Callable[..., Flask], path: str, body: dict
) -> None:
    """No worker runs here, so the first task stays queued: that holds the slot too."""
    client = make_app(WATCHLIST="AAPL,MSFT,SPY").test_client()
    headers = Auth(client).headers()
    first = client.post(path, headers=headers, json=body)
    assert first.status_code == 202
    task_id = first.get_json()["task_id"]
    for _ in range(3):
        again = client.post(path, headers=headers, json=body)
        assert again.status_code == 409
        error = again.get_json()["error"]
        assert error["code"] == "conflict"
        assert task_id in error["message"]
    other = "/api/hyperparameter/optimize/" if "training" in path else "/api/training/start/batch"
    assert client.post(other, headers=headers, json={}).status_code == 202  # separate slots
