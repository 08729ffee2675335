"""Walk-forward windows fanned out to two real Celery worker processes (real Redis broker and
backend, PostgreSQL) give the same backtest as the in-process path: same orders and fills, same
equity to 1e-9, and both workers trained windows. Through the CLI (`--workers celery`: a group
the CLI waits on) and through the API (the backtest task becomes a chord under its own id)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.backtest.report import to_report
from app.backtest.requests import run_request
from app.backtest.runs import BacktestRunStore
from app.cli.backtest import backtest_command
from app.container import services
from app.store import tasks as task_service
from app.tasks.backtest import request_from_params
from app.tasks.walk_forward import collect_on_workers
from bench.walkforward_fanout import training_worker_argv
from tests import support
from tests.conftest import Auth
from tests.support import SHARED_DATA

pytestmark = pytest.mark.integration

SYMBOLS = "AAPL,MSFT,KO,XOM,JPM"
#: Small members (tuned params from before every window): the test is about where windows run.
SMALL_TUNING = {
    "mode": "pooled",
    "params": {"n_estimators": 60, "num_leaves": 8, "min_child_samples": 50},
    "best_trial_window": {"train_end": "2010-01-01"},
}
#: Trades enough to compare: a loose buy threshold.
THRESHOLDS = {"buy_threshold": 0.0002, "sell_threshold": -0.0002, "confidence_threshold": 0.5}


@pytest.fixture
def settings(backend: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    best = tmp_path / "best"
    best.mkdir()
    (best / "pooled.json").write_text(json.dumps(SMALL_TUNING))
    return {
        **backend,
        "DATA_DIR": str(SHARED_DATA),
        "WATCHLIST": SYMBOLS,
        "MODELS_DIR": str(tmp_path / "models"),
        "BEST_PARAMS_DIR": str(best),
        "TRAIN_YEARS": 1,
    }


@pytest.fixture
def fanout_app(make_app: Callable[..., Flask], settings: dict[str, Any]) -> Flask:
    return make_app(**settings)


@pytest.fixture
def worker_data(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The second worker's DATA_DIR: the shared bars, or ("altered") a copy with one close
    changed (a host whose data differs from the others')."""
    if getattr(request, "param", None) != "altered":
        return SHARED_DATA
    copy = tmp_path / "altered"
    copy.mkdir()
    for symbol in [*SYMBOLS.split(","), "SPY"]:
        (copy / f"{symbol}.csv").write_bytes((SHARED_DATA / f"{symbol}.csv").read_bytes())
    lines = (copy / "KO.csv").read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("2019-06-03"))
    day, o, h, low, c, v = lines[row].split(",")
    lines[row] = ",".join([day, o, h, low, str(float(c) * 1.001), v])
    (copy / "KO.csv").write_text("\n".join(lines) + "\n")
    return copy


@pytest.fixture
def workers(
    fanout_app: Flask, settings: dict[str, Any], worker_data: Path, tmp_path: Path
) -> Iterator[list[support.Process]]:
    """Two worker processes serving the training queue, one slot each: two machines."""
    names = [f"wf-{n}-{tmp_path.name}" for n in ("one", "two")]
    data_dirs = [SHARED_DATA, worker_data]
    started = [
        support.Process(
            training_worker_argv(name, "INFO"),
            support.service_env(**{k: str(v) for k, v in {**settings, "DATA_DIR": data}.items()}),
            tmp_path / f"{name}.log",
        )
        for name, data in zip(names, data_dirs, strict=True)
    ]
    celery = fanout_app.extensions["celery"]

    def both_answer() -> bool:
        replies = celery.control.ping(timeout=0.5)
        return {next(iter(r)).split("@")[0] for r in replies} >= set(names)

    try:
        support.wait_until(both_answer, 90, "both workers to answer a ping")
        yield started
    finally:
        for process in started:
            process.stop()


def _finished_task(
    client: FlaskClient,
    headers: dict[str, str],
    task_id: str,
    timeout: float,
    progress: list[dict[str, Any]],
) -> dict[str, Any]:
    """GET /api/tasks/<id> until it succeeds or fails (or `timeout` passes); every progress
    reading on the way is appended to `progress`."""
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(f"/api/tasks/{task_id}", headers=headers).get_json()
        if body["progress"] and body["state"] == task_service.PROGRESS:
            progress.append(body["progress"])
        if body["state"] in {"SUCCESS", "FAILURE"} or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def _fills(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (
            o["client_order_id"],
            o["symbol"],
            o["side"],
            o["qty"],
            o["status"],
            o["fill_date"],
            o["fill_price"],
        )
        for o in report["orders"]
    ]


def _assert_same_run(fanned: dict[str, Any], local: dict[str, Any]) -> None:
    assert _fills(fanned) == _fills(local)
    assert len([f for f in _fills(local) if f[4] == "filled"]) >= 5  # a run with trades
    curve, expected = fanned["equity_curve"], local["equity_curve"]
    assert [p["date"] for p in curve] == [p["date"] for p in expected]
    for got, want in zip(curve, expected, strict=True):
        assert got["equity"] == pytest.approx(want["equity"], abs=1e-9)
    assert _retrains(fanned) == _retrains(local)


def _retrains(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The retrain records but for where and how fast each window trained."""
    return [
        {k: v for k, v in r.items() if k not in ("seconds", "worker")}
        for r in report["model"]["retrains"]
    ]


def _workers_of(report: dict[str, Any]) -> set[str]:
    return {r["worker"].split("@")[0] for r in report["model"]["retrains"]}


def _output(workers: list[support.Process]) -> str:
    return "\n".join(w.output()[-3000:] for w in workers)


@pytest.mark.parametrize("backend", ["postgres+redis"], indirect=True)
def test_cli_fan_out_equals_in_process(
    fanout_app: Flask, workers: list[support.Process], tmp_path: Path
) -> None:
    """A placebo run: its label shuffles draw from each window's own generator, so they
    are the same wherever and in whatever order the windows train."""
    runner = fanout_app.test_cli_runner()
    reports = {}
    for mode in ("local", "celery"):
        output = tmp_path / f"{mode}.json"
        args = [
            "--data-dir",
            str(SHARED_DATA),
            "--symbols",
            SYMBOLS,
            "--start",
            "2020-01-02",
            "--end",
            "2020-06-30",
            "--retrain-every",
            "21",
            "--placebo",
            *(f"--{k.replace('_', '-')}={v}" for k, v in THRESHOLDS.items()),
            "--workers",
            mode,
            "--output",
            str(output),
        ]
        result = runner.invoke(backtest_command, args)
        assert result.exit_code == 0, (result.output, _output(workers))
        reports[mode] = json.loads(output.read_text())
    local, fanned = reports["local"], reports["celery"]
    assert len(fanned["model"]["retrains"]) == 6
    assert fanned["model"]["shuffle_labels"] is True
    _assert_same_run(fanned, local)
    assert _workers_of(fanned) == {w.log_path.stem for w in workers}
    assert _workers_of(local) == {"in-process"}


@pytest.mark.parametrize("backend", ["postgres+redis"], indirect=True)
def test_api_backtest_is_a_chord_of_windows_equal_to_in_process(
    fanout_app: Flask, workers: list[support.Process]
) -> None:
    client = fanout_app.test_client()
    headers = Auth(client).headers()
    started = client.post(
        "/api/backtest/run",
        json={
            "symbols": SYMBOLS.split(","),
            "start": "2020-01-02",
            "end": "2020-06-30",
            "retrain_every": 21,
            **THRESHOLDS,
        },
        headers=headers,
    )
    assert started.status_code == 202, started.get_json()
    task_id = started.get_json()["task_id"]
    seen: list[dict[str, Any]] = []
    body = _finished_task(client, headers, task_id, 600, seen)
    assert body["state"] == "SUCCESS", (body, _output(workers))
    assert body["result"]["task_id"] == task_id
    for progress in seen:  # windows done of all, then sessions: never ids, never past the end
        assert progress["stage"] in {"windows", "sessions"}
        assert 0 <= progress["done"] <= progress["total"]
        assert "subtasks" not in progress
        if progress["stage"] == "windows":
            assert progress["total"] == 6
    with fanout_app.app_context():
        svc = services()
        run = BacktestRunStore(svc.db).get(task_id)
        assert run is not None
        assert run["status"] == "SUCCESS"
        request = request_from_params(run["params"])
        local = to_report(run_request(request, svc.settings, svc.venue.market))
        # the CLI's group path on the same request, for good measure
        fanned_here = to_report(
            run_request(request, svc.settings, svc.venue.market, collect=collect_on_workers)
        )
    fanned = run["result"]
    assert len(fanned["model"]["retrains"]) == 6
    _assert_same_run(fanned, local)
    _assert_same_run(fanned_here, local)
    assert _workers_of(fanned) == {w.log_path.stem for w in workers}


@pytest.mark.parametrize("worker_data", ["altered"], indirect=True)
@pytest.mark.parametrize("backend", ["postgres+redis"], indirect=True)
def test_workers_with_other_bars_fail_the_run_instead_of_training_on_them(
    fanout_app: Flask, workers: list[support.Process]
) -> None:
    """One close differs in one worker's data: the windows that worker gets from a run the
    other planned (or the other's, if it planned) refuse, the chord fails, and the run's row
    and task say why."""
    client = fanout_app.test_client()
    headers = Auth(client).headers()
    started = client.post(
        "/api/backtest/run",
        json={
            "symbols": SYMBOLS.split(","),
            "start": "2020-01-02",
            "end": "2020-06-30",
            "retrain_every": 21,
        },
        headers=headers,
    )
    assert started.status_code == 202, started.get_json()
    task_id = started.get_json()["task_id"]
    body = _finished_task(client, headers, task_id, 300, [])
    assert body["state"] == "FAILURE", (body, _output(workers))
    assert "not the ones the run was planned on" in body["error"]
    run = client.get(f"/api/backtest/{task_id}", headers=headers).get_json()
    assert run["status"] == "FAILURE"
    assert "not the ones the run was planned on" in run["result"]["error"]


@pytest.mark.parametrize("backend", ["postgres+redis"], indirect=True)
def test_progress_counts_the_windows_done(fanout_app: Flask) -> None:
    """GET /api/tasks/<id> while a chord's windows run: how many of them have finished."""
    celery = fanout_app.extensions["celery"]
    with fanout_app.app_context():
        svc = services()
        task_service.record(svc.db, "bt-1", "app.tasks.run_backtest", {}, "admin")
        parts = ["win-1", "win-2", "win-3"]
        celery.backend.store_result(
            "bt-1",
            {"stage": "windows", "done": 0, "total": 3, "subtasks": parts},
            task_service.PROGRESS,
        )
        assert task_service.describe(svc.db, celery, "bt-1")["progress"] == {
            "stage": "windows",
            "done": 0,
            "total": 3,
        }
        celery.backend.store_result("win-2", {}, "SUCCESS")
        celery.backend.store_result("win-3", {}, "STARTED")
        assert task_service.describe(svc.db, celery, "bt-1")["progress"]["done"] == 1
