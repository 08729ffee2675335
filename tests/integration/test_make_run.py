"""What `make run` starts: migrations, then honcho running gunicorn and a Celery worker with
embedded beat on the embedded (SQLite) broker; Ctrl-C stops them all."""

from __future__ import annotations

import os
import signal
import time

import pytest
import requests

from tests import support

pytestmark = pytest.mark.integration


def test_make_run_stack_serves_and_stops_on_ctrl_c(tmp_path) -> None:
    port = support.free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = support.service_env(
        DATABASE_DIR=str(tmp_path),
        MODELS_DIR=str(tmp_path / "models"),
        BEST_PARAMS_DIR=str(tmp_path / "best_params"),
        PORT=str(port),
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        SIM_CYCLE_SECONDS="2",  # the default is 20 s; the loop is the same
    )
    migrated = support.migrate(env)
    assert "created admin user 'admin'" in migrated

    stack = support.Process(
        [str(support.BIN / "honcho"), "--procfile", "Procfile", "start"], env, tmp_path / "run.log"
    )
    base = f"http://127.0.0.1:{port}"
    try:
        support.wait_until(lambda: support.http_ok(f"{base}/health"), 90, "the API")
        health = requests.get(f"{base}/health", timeout=5).json()
        assert health["checks"] == {"database": "ok", "celery_broker": "ok"}

        login = requests.post(
            f"{base}/api/auth/login", json={"username": "admin", "password": "password"}, timeout=5
        )
        assert login.status_code == 200
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        assert (
            requests.get(f"{base}/api/openapi.json", headers=headers, timeout=5).status_code == 200
        )
        assert requests.get(f"{base}/api/openapi.json", timeout=5).status_code == 401

        metrics = requests.get(f"{base}/metrics", timeout=5).text
        assert "flask_http_request_duration_seconds_count" in metrics

        task_id = requests.post(f"{base}/api/tasks/ping", headers=headers, timeout=5).json()[
            "task_id"
        ]
        deadline = time.monotonic() + 90
        state = None
        while time.monotonic() < deadline:
            body = requests.get(f"{base}/api/tasks/{task_id}", headers=headers, timeout=5).json()
            state = body["state"]
            if state in {"SUCCESS", "FAILURE"}:
                break
            time.sleep(0.5)
        assert state == "SUCCESS", stack.output()[-3000:]
        assert body["result"]["pong"] is True
        assert "beat: Starting" in stack.output()

        # The whole loop offline: a model is trained at start, then every cycle replays a
        # session: orders placed, positions held, risk events, a changing dashboard.
        first = requests.get(f"{base}/api/dashboard/all_data", headers=headers, timeout=10).json()
        deadline = time.monotonic() + 240
        seen: dict[str, object] = {}
        while time.monotonic() < deadline:
            board = requests.get(f"{base}/api/dashboard/all_data", headers=headers, timeout=10)
            seen = board.json()
            orders = requests.get(f"{base}/api/orders", headers=headers, timeout=10).json()
            if seen["positions"] and seen["risk"]["recent_events"] and orders["total"]:
                break
            time.sleep(2)
        assert seen["positions"], stack.output()[-3000:]
        assert seen["risk"]["recent_events"]
        assert orders["total"] > 0
        assert seen["as_of"] > first["as_of"]
        assert seen["account"]["equity"] != first["account"]["equity"]
        assert seen["model"]["version"]
    finally:
        pgid = stack.popen.pid
        os.killpg(pgid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        try:
            stack.popen.wait(40)
        finally:
            stack.stop()
    output = stack.output()
    assert stack.popen.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # nothing of the group is left running
    assert "Traceback" not in output, output[-3000:]
