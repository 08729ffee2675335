"""The walk-forward fan-out timed: a medium run's windows in-process, then on 1 and 2 Celery
worker processes (run from bench/backtest_walkforward.py --fanout; see its docstring)."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from redis import Redis

from app import create_app
from app.backtest.requests import BacktestRequest, PlannedRun, collect_locally, run_request
from app.backtest.results import BacktestResult
from app.backtest.walk_forward_window import WindowResult
from app.container import services
from app.market.sources import CsvMarketData
from app.market.universe import resolve_universe
from app.tasks.walk_forward import collect_on_workers

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data" / "daily"
BROAD_DIR = ROOT.parent / "shared" / "data" / "broad"
BIN = Path(sys.executable).parent
RETRAIN_EVERY = 63
PATHS: dict[str, int] = {"in-process": 0, "1 worker": 1, "2 workers": 2}


@dataclass(frozen=True)
class FanoutRun:
    """What the fan-out bench replays: the medium watchlist run, or the broad one."""

    data_dir: Path
    universe: str
    start: date
    end: date


MEDIUM = FanoutRun(DATA_DIR, "watchlist", date(2016, 1, 4), date(2021, 12, 31))
BROAD = FanoutRun(BROAD_DIR, "broad", date(2008, 1, 1), date(2021, 12, 31))


def _env(overrides: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in overrides}
    env.update({k.upper(): v for k, v in overrides.items()}, PYTHONPATH=str(ROOT))
    return env


def training_worker_argv(name: str, loglevel: str) -> list[str]:
    """A Celery worker with one slot on the training queue: one machine of a fan-out."""
    return [
        str(BIN / "celery"),
        "--app",
        "app.make_celery",
        "worker",
        "--queues",
        "training",
        "--concurrency",
        "1",
        "--loglevel",
        loglevel,
        "--hostname",
        f"{name}@%h",
    ]


@contextmanager
def _workers(
    n: int, env: dict[str, str], logs: Path, ping: Callable[[], list[Any]]
) -> Iterator[None]:
    """n worker processes with one slot each on the training queue, stopped afterwards."""
    names = [f"bench{i}-{time.monotonic_ns()}" for i in range(n)]
    procs = [
        subprocess.Popen(
            training_worker_argv(name, "WARNING"),
            env=env,
            cwd=ROOT,
            stdout=(logs / f"{name}.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for name in names
    ]
    try:
        deadline = time.monotonic() + 120
        while {next(iter(r)).split("@")[0] for r in ping()} < set(names):
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not start: see {logs}")
        yield
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(60)


def _fills(result: BacktestResult) -> list[tuple[Any, ...]]:
    return [(o.client_order_id, o.qty, o.status, o.fill_price) for o in result.orders]


def fanout(repeats: int, run: FanoutRun = MEDIUM, paths: Sequence[str] = tuple(PATHS)) -> None:
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
    Redis.from_url(redis_url).flushdb()
    with tempfile.TemporaryDirectory(prefix="wf-fanout-") as scratch:
        _fanout(repeats, redis_url, Path(scratch), run, paths)


def _fanout(
    repeats: int, redis_url: str, scratch: Path, run: FanoutRun, paths: Sequence[str]
) -> None:
    overrides = {
        "redis_url": redis_url,
        "database_dir": str(scratch),
        "data_dir": str(run.data_dir),
        "sim_auto_train": "false",
        "log_level": "WARNING",
    }
    env = _env(overrides)
    subprocess.run(
        [str(BIN / "flask"), "--app", "app", "db", "upgrade"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    app = create_app(overrides)
    celery = app.extensions["celery"]
    market = CsvMarketData(run.data_dir)
    feature_only: tuple[str, ...] = ()
    if run.universe == "watchlist":
        symbols = tuple(market.available_symbols())
    else:
        chosen = resolve_universe(run.universe, (), market)
        symbols, feature_only = chosen.tradable, chosen.feature_only
    request = BacktestRequest(
        symbols=symbols,
        feature_symbols=feature_only,
        start=run.start,
        end=run.end,
        retrain_every=RETRAIN_EVERY,
    )
    figures: dict[str, list[tuple[float, float]]] = {}
    reference: BacktestResult | None = None

    def ping() -> list[Any]:
        return list(celery.control.ping(timeout=0.5))

    with app.app_context():
        svc = services()
        for label in paths:
            n = PATHS[label]
            figures[label] = []
            for _ in range(repeats):
                with _workers(n, env, scratch, ping) if n else _none():
                    seconds, result = _timed_run(request, svc, run.data_dir, workers=n > 0)
                figures[label].append(seconds)
                reference = reference or result
                same = _fills(result) == _fills(reference) and all(
                    abs(a.equity - b.equity) <= 1e-9
                    for a, b in zip(result.days, reference.days, strict=True)
                )
                where = sorted({r["worker"].split("@")[0] for r in result.model["retrains"]})
                print(
                    f"[{label}] windows {seconds[0]:.1f}s, run {seconds[1]:.1f}s, "
                    f"{len(result.model['retrains'])} windows on {where}; "
                    f"same orders and equity as the first run ({paths[0]}): {same}",
                    flush=True,
                )
    print(
        f"\n{len(symbols)} symbols (+{len(feature_only)} feature-only), {run.start}..{run.end}, "
        f"retrain every {RETRAIN_EVERY}: median of {repeats} runs; ratios against {paths[0]}"
    )
    base = statistics.median(w for w, _t in figures[paths[0]])
    for label, runs in figures.items():
        windows = statistics.median(w for w, _t in runs)
        total = statistics.median(t for _w, t in runs)
        print(
            f"{label:>12}: windows {windows:7.1f}s ({base / windows:.2f}x)  whole run {total:7.1f}s"
        )


def _timed_run(
    request: BacktestRequest, svc: Any, data_dir: Path, *, workers: bool
) -> tuple[tuple[float, float], BacktestResult]:
    """(seconds collecting the windows, seconds of the whole run), and the run."""
    collect = collect_on_workers if workers else collect_locally
    spent: list[float] = []

    def timed(plan: PlannedRun) -> list[WindowResult]:
        t0 = time.perf_counter()
        out = list(collect(plan))
        spent.append(time.perf_counter() - t0)
        return out

    t0 = time.perf_counter()
    result = run_request(
        request, svc.settings, svc.venue.market, collect=timed, data_dir=str(data_dir)
    )
    return (spent[0], time.perf_counter() - t0), result


@contextmanager
def _none() -> Iterator[None]:
    yield
