"""Halt, restart every process, and the bot is still HALTED until its time or a resume."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import support

pytestmark = pytest.mark.integration


def start_stack(env: dict[str, str], log: Path) -> support.Process:
    return support.Process(
        [str(support.BIN / "honcho"), "--procfile", "Procfile", "start"], env, log
    )


def stop_stack(stack: support.Process) -> None:
    os.killpg(stack.popen.pid, signal.SIGINT)
    try:
        stack.popen.wait(40)
    finally:
        stack.stop()


def test_halt_survives_restart_of_every_process(tmp_path: Path) -> None:
    port = support.free_port()
    (tmp_path / "metrics").mkdir()
    env = support.service_env(
        DATABASE_DIR=str(tmp_path),
        MODELS_DIR=str(tmp_path / "models"),
        PORT=str(port),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
        SIM_CYCLE_SECONDS="2",
    )
    support.migrate(env)
    base = f"http://127.0.0.1:{port}"

    def login() -> dict[str, str]:
        tokens = requests.post(
            f"{base}/api/auth/login",
            json={"username": "admin", "password": "password"},
            timeout=10,
        ).json()
        return {"Authorization": f"Bearer {tokens['access_token']}"}

    stack = start_stack(env, tmp_path / "first.log")
    try:
        support.wait_until(lambda: support.http_ok(f"{base}/health"), 90, "the API")
        halted = requests.post(
            f"{base}/api/risk/halt", headers=login(), json={"reason": "restart test"}, timeout=30
        )
        assert halted.status_code == 200, halted.text
        assert halted.json()["state"] == "HALTED"
    finally:
        stop_stack(stack)

    stack = start_stack(env, tmp_path / "second.log")
    try:
        support.wait_until(lambda: support.http_ok(f"{base}/health"), 90, "the API")
        headers = login()
        status = requests.get(f"{base}/api/risk/status", headers=headers, timeout=30).json()
        assert status["state"] == "HALTED"
        assert status["halt_reason"].startswith("restart test")
        # cycles keep running after the restart, and none of them buys

        def dashboard() -> dict[str, Any]:
            url = f"{base}/api/dashboard/all_data"
            return dict(requests.get(url, headers=headers, timeout=30).json())

        support.wait_until(lambda: dashboard()["model"]["version"] is not None, 120, "a model")
        # Three sessions replayed with the model in place: three decisions that could have bought.
        replayed: set[str] = set()

        def sessions_seen() -> int:
            replayed.add(dashboard()["as_of"])
            return len(replayed)

        support.wait_until(lambda: sessions_seen() > 3, 120, "three more replayed sessions")
        orders = requests.get(f"{base}/api/orders", headers=headers, timeout=30).json()
        assert [o for o in orders["items"] if o["side"] == "buy"] == []
        resumed = requests.post(f"{base}/api/risk/resume", headers=headers, timeout=30)
        assert resumed.json()["state"] == "ACTIVE"
    finally:
        stop_stack(stack)
