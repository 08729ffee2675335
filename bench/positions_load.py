"""GET /api/positions through gunicorn under concurrent clients, against the loopback fake
Alpaca in paper mode: requests per second, p50/p99 latency, and the broker calls it caused.

    .venv/bin/python -m bench.positions_load [--clients 50] [--seconds 30] [--runs 3]

Uses wrk (Debian package `wrk`) when installed, else a thread pool of Python clients.
Redis (when reachable at 127.0.0.1:6379) shares the answer cache between gunicorn workers.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path

import requests

from app.store import migrations
from tests import support
from tests.fakes.fake_alpaca import FakeAlpaca

PASSWORD = "bench-admin-password"


def run_once(clients: int, seconds: int, use_redis: bool) -> dict[str, float]:
    with (
        FakeAlpaca(support.SHARED_DATA, today=date(2021, 12, 31)) as fake,
        tempfile.TemporaryDirectory() as tmp,
    ):
        fake.set_clock(datetime(2021, 12, 30, 15, 0, tzinfo=UTC), is_open=True)
        for symbol, qty, price in [("AAPL", 10, 150.0), ("MSFT", 5, 300.0), ("SPY", 3, 450.0)]:
            fake.set_position(symbol, qty, price)
        url = f"sqlite:///{tmp}/bench.db"
        migrations.upgrade(url)
        port = support.free_port()
        env = support.service_env(
            TRADING_MODE="paper",
            ALPACA_API_KEY="key",
            ALPACA_API_SECRET="secret",
            ALPACA_BASE_URL=fake.base_url,
            ALPACA_DATA_URL=fake.base_url,
            ADMIN_PASSWORD=PASSWORD,
            JWT_SECRET_KEY="j" * 40,
            SECRET_KEY="s" * 40,
            DATABASE_URL=url,
            DATABASE_DIR=tmp,
            PORT=str(port),
            WEB_CONCURRENCY="2",
            GUNICORN_THREADS="8",
            GUNICORN_ACCESS_LOG="/dev/null",
            LOG_LEVEL="WARNING",
        )
        if use_redis:
            env["REDIS_URL"] = "redis://127.0.0.1:6379/14"
            import redis

            redis.Redis.from_url(env["REDIS_URL"]).flushdb()
        base = f"http://127.0.0.1:{port}"
        server = support.Process(
            [str(support.BIN / "gunicorn"), "--config", "gunicorn_config.py", "app:create_app()"],
            env,
            Path(tmp) / "gunicorn.log",
        )
        try:
            support.wait_until(lambda: support.http_ok(f"{base}/health"), 60, "gunicorn")
            token = requests.post(
                f"{base}/api/auth/login",
                json={"username": "admin", "password": PASSWORD},
                timeout=10,
            ).json()["access_token"]
            fake.reset_counts()
            result = (
                _wrk(base, token, clients, seconds)
                if shutil.which("wrk")
                else _threads(base, token, clients, seconds)
            )
            calls = fake.count("GET /v2/positions")
            result["broker_calls"] = calls
            result["broker_calls_per_minute"] = calls * 60 / seconds
            return result
        finally:
            server.stop()


def _wrk(base: str, token: str, clients: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(clients, 2)}",
            f"-c{clients}",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"Authorization: Bearer {token}",
            f"{base}/api/positions",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
        "errors": float(non2xx.group(1)) if non2xx else 0.0,
    }


def _threads(base: str, token: str, clients: int, seconds: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        nonlocal errors
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        while time.monotonic() < deadline:
            started = time.perf_counter()
            ok = session.get(f"{base}/api/positions", timeout=30).status_code == 200
            with lock:
                latencies.append((time.perf_counter() - started) * 1000)
                errors += 0 if ok else 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    return {
        "rps": len(latencies) / seconds,
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[int(len(latencies) * 0.99)],
        "errors": float(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    use_redis = support.redis_reachable("redis://127.0.0.1:6379/14")
    tool = "wrk" if shutil.which("wrk") else "python threads"
    print(
        f"GET /api/positions: gunicorn 2 workers x 8 threads, paper mode vs loopback fake Alpaca, "
        f"{args.clients} clients x {args.seconds}s via {tool}, answer cache "
        f"{'in Redis' if use_redis else 'per process'}; {args.runs} runs"
    )
    runs = [run_once(args.clients, args.seconds, use_redis) for _ in range(args.runs)]
    for i, r in enumerate(runs, 1):
        print(
            f"run {i}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
            f"errors {r['errors']:.0f}, broker calls {r['broker_calls']:.0f} "
            f"({r['broker_calls_per_minute']:.0f}/min)"
        )
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(
        f"median: {med['rps']:.0f} req/s, p50 {med['p50_ms']:.1f} ms, p99 {med['p99_ms']:.1f} ms, "
        f"broker calls {med['broker_calls']:.0f} in {args.seconds}s = "
        f"{med['broker_calls_per_minute']:.0f}/min (Alpaca budget: 200/min)"
    )


if __name__ == "__main__":
    os.environ.setdefault("ENV_FILE", "")
    sys.exit(main())
