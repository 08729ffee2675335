"""Helpers for tests that talk to real services and start real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "daily"
BIN = Path(sys.executable).parent
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"


def services_required() -> bool:
    return os.environ.get("REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> None:
    """Skip outside CI; in CI (REQUIRE_SERVICES=1) a missing service is a failure."""
    if services_required():
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


def xdist_worker_index() -> int:
    """0 for the first pytest-xdist worker (or a run without xdist), 1 for the second..."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker.removeprefix("gw") or 0)


def redis_url() -> str:
    """The test Redis database of this xdist worker: the configured one for the first worker,
    the next lower database number for each further worker, so a test's FLUSHDB (and the Celery
    queues, locks and counters of the processes it starts) never touches another worker's data."""
    url = urlsplit(os.environ.get("TEST_REDIS_URL", DEFAULT_REDIS_URL))
    base_db = int(url.path.strip("/") or 0)
    db = base_db - xdist_worker_index()
    if db < 0:
        raise RuntimeError(f"TEST_REDIS_URL database {base_db} leaves no room for this worker")
    return urlunsplit(url._replace(path=f"/{db}"))


def postgres_url() -> str:
    return os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def redis_reachable(url: str) -> bool:
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return False
    return True


def postgres_reachable(url: str) -> bool:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_engine(url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return False
    finally:
        engine.dispose()
    return True


@contextmanager
def scratch_postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test session, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"alpha_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


class Process:
    """A child process in its own process group, with its output kept in a file."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.alive():
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode


def migrate(env: Mapping[str, str]) -> str:
    """`flask --app app db upgrade` as `make run` does it; returns its output."""
    result = subprocess.run(
        [str(BIN / "flask"), "--app", "app", "db", "upgrade"],
        env=dict(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def seed_preset() -> dict[str, str]:
    """presets/seed.env: the strategy the suite's tests were written for (tests/conftest.py)."""
    values = dotenv_values(ROOT / "presets" / "seed.env")
    return {key: value for key, value in values.items() if value is not None}


def service_env(**overrides: str) -> dict[str, str]:
    """The environment for a child process: this one's, minus settings a developer's shell
    or .env might carry, under the suite's preset as in this process, plus `overrides`."""
    from app.config import Settings

    keys = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k not in keys} | seed_preset()
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env.update(overrides)
    return env
