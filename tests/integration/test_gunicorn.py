"""Two gunicorn workers share the token blocklist, the login rate limit and the metrics."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
import requests

from tests import support

pytestmark = pytest.mark.integration

LOGIN_LIMIT = 5


@pytest.fixture
def gunicorn(postgres_database_url: str, redis_test_url: str, tmp_path) -> Iterator[str]:
    import redis

    redis.Redis.from_url(redis_test_url).flushdb()
    port = support.free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = support.service_env(
        DATABASE_URL=postgres_database_url,
        REDIS_URL=redis_test_url,
        DATABASE_DIR=str(tmp_path),
        WEB_CONCURRENCY="2",
        GUNICORN_THREADS="2",
        PORT=str(port),
        LOGIN_RATE_LIMIT=f"{LOGIN_LIMIT} per minute",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    args = [str(support.BIN / "gunicorn"), "--config", "gunicorn_config.py", "app:create_app()"]
    process = support.Process(args, env, tmp_path / "gunicorn.log")
    base = f"http://127.0.0.1:{port}"
    try:
        support.wait_until(lambda: support.http_ok(f"{base}/health"), 60, "gunicorn")
    except AssertionError:
        process.stop()
        raise AssertionError(process.output()[-3000:]) from None
    process.base_url = base  # type: ignore[attr-defined]
    yield process  # type: ignore[misc]
    process.stop()


def fresh(method: str, url: str, **kwargs: object) -> requests.Response:
    """One request on a new connection, so the kernel may hand it to either worker."""
    with requests.Session() as session:
        return session.request(
            method,
            url,
            headers={"Connection": "close", **kwargs.pop("headers", {})},
            timeout=10,
            **kwargs,
        )  # type: ignore[arg-type]


def pids_serving(log: str, path: str) -> set[str]:
    return set(re.findall(rf'"\w+ {re.escape(path)}\S* HTTP/1.1" \d+ .* pid=<?(\d+)', log))


def until_both_workers_served(
    gunicorn: support.Process, path: str, send: Callable[[], requests.Response], least: int
) -> list[requests.Response]:
    """Send at least `least` requests, and more until both workers answered one: which worker
    accepts a connection is the kernel's choice, so a fixed count may all land on one."""
    answers: list[requests.Response] = []
    while len(answers) < least or len(pids_serving(gunicorn.output(), path)) < 2:
        assert len(answers) < 200, f"one worker served all {len(answers)} requests to {path}"
        answers.append(send())
    return answers


def test_blocklist_rate_limit_and_metrics_are_shared(gunicorn: support.Process) -> None:
    base = gunicorn.base_url  # type: ignore[attr-defined]
    credentials = {"username": "admin", "password": "password"}
    codes = until_both_workers_served(
        gunicorn,
        "/api/auth/login",
        lambda: fresh("POST", f"{base}/api/auth/login", json=credentials),
        12,
    )
    statuses = [r.status_code for r in codes]
    assert statuses.count(200) == LOGIN_LIMIT, statuses  # one budget across both workers
    assert statuses.count(429) == len(statuses) - LOGIN_LIMIT

    token = codes[0].json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    before = [fresh("GET", f"{base}/api/openapi.json", headers=auth).status_code for _ in range(10)]
    assert set(before) == {200}
    assert fresh("POST", f"{base}/api/auth/logout", headers=auth).status_code == 200
    after = until_both_workers_served(
        gunicorn, "/api/tasks/x", lambda: fresh("GET", f"{base}/api/tasks/x", headers=auth), 20
    )
    assert {r.status_code for r in after} == {401}  # the revocation reached both workers

    for _ in range(10):
        fresh("GET", f"{base}/health")
    metrics = fresh("GET", f"{base}/metrics").text
    counts = re.findall(
        r'flask_http_request_duration_seconds_count\{[^}]*endpoint="health.health"[^}]*\} (\S+)',
        metrics,
    )
    assert counts, metrics[:2000]
    # at least the 10 probes above (plus the start-up wait) counted across both workers
    assert sum(float(c) for c in counts) >= 10


def raw_request(base: str, request: bytes) -> bytes:
    """Bytes on a socket: what a broken or hostile client sends, unaltered by any library."""
    import socket

    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_gunicorn_limits_are_set_and_above_normal_clients(gunicorn: support.Process) -> None:
    """gunicorn's own answers are the one non-JSON place (README): limits set explicitly in
    gunicorn_config.py, far above what a client of this API sends, so none meets them."""
    import gunicorn_config

    assert gunicorn_config.limit_request_line == 8190
    assert gunicorn_config.limit_request_fields == 100
    assert gunicorn_config.limit_request_field_size == 16380
    base = gunicorn.base_url  # type: ignore[attr-defined]
    # a long but normal request: a 4 KB Authorization header and a long query string
    long_query = "&".join(["limit=10"] * 300)
    normal = fresh(
        "GET",
        f"{base}/api/market/bars/AAPL?{long_query}",
        headers={"Authorization": "Bearer " + "x" * 4000},
    )
    assert normal.status_code == 401  # Flask answered, in JSON
    assert normal.json()["error"]["code"] == "unauthorized"
    # beyond the limits: gunicorn answers itself
    too_long = raw_request(base, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert too_long.startswith(b"HTTP/1.1 414")
    garbage = raw_request(base, b"NOT A REQUEST\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400")


def test_chunked_body_over_the_limit_is_413_through_gunicorn(gunicorn: support.Process) -> None:
    base = gunicorn.base_url  # type: ignore[attr-defined]

    def body() -> Iterator[bytes]:
        yield b'{"username": "admin", "password": "'
        for _ in range(40):
            yield b"x" * 65536  # 2.5 MB in all, over MAX_REQUEST_BYTES (1 MB)
        yield b'"}'

    response = requests.post(
        f"{base}/api/auth/login",
        data=body(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
