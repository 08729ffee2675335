"""A real Prometheus scrapes a sim stack, and every Grafana panel's query returns data.

The stack is deployed the way docker-compose deploys it, on loopback: gunicorn (two workers)
and a Celery worker with embedded beat, each with its own multiprocess metrics folder, the
worker serving its metrics on METRICS_PORT. Prometheus gets prometheus.yml with the docker
hostnames swapped for loopback addresses and a 1 s scrape interval. After the sim has trained
its model and run some cycles, each `targets[].expr` of the dashboard is sent to Prometheus's
query API: a panel whose query returns nothing would be an empty panel in Grafana.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests import support

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
DASHBOARD = support.ROOT / "grafana" / "provisioning" / "dashboards" / "alpha-trader.json"
PROMETHEUS_CONFIG = support.ROOT / "prometheus.yml"
#: What Grafana substitutes for its interval variables, for a 1 s scrape interval.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "15s", "$__range": "5m"}


def prometheus_available() -> bool:
    return os.access(PROMETHEUS, os.X_OK)


def dashboard_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, rows' children included."""
    queries: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                if target.get("expr"):
                    queries.append((panel["title"], target["expr"]))

    walk(json.loads(path.read_text())["panels"])
    return queries


def grafana_expr(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


METRICS_TOKEN = "test-metrics-token-0123456789abcdef"


def loopback_config(
    targets: dict[str, str], scrape_interval: str, token_file: Path | None = None
) -> dict[str, Any]:
    """prometheus.yml with docker hostnames mapped to loopback; jobs left unmapped dropped;
    the compose secret holding METRICS_TOKEN replaced by `token_file`."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["rule_files"] = [str(support.ROOT / f) for f in config.get("rule_files", [])]
    for job in config["scrape_configs"]:
        if token_file is not None and "authorization" in job:
            job["authorization"]["credentials_file"] = str(token_file)
    config["global"].update(
        scrape_interval=scrape_interval,
        scrape_timeout=scrape_interval,
        evaluation_interval=scrape_interval,
    )
    jobs = []
    for job in config["scrape_configs"]:
        static = [t for group in job["static_configs"] for t in group["targets"]]
        if all(t in targets for t in static):
            job["static_configs"] = [{"targets": [targets[t] for t in static]}]
            jobs.append(job)
    config["scrape_configs"] = jobs
    return config


SCRAPER = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def scrape_ok(url: str) -> bool:
    try:
        return requests.get(url, headers=SCRAPER, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@dataclass
class ObservedStack:
    """URLs of the running stack, and Prometheus's query API."""

    api: str
    worker_metrics: str
    prometheus: str
    processes: dict[str, support.Process] = field(default_factory=dict)

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = requests.get(
            f"{self.prometheus}/api/v1/query", params={"query": grafana_expr(expr)}, timeout=10
        )
        body = response.json()
        assert body.get("status") == "success", (expr, body)
        return list(body["data"]["result"])

    def query_range(self, expr: str, start: float, end: float, step: str) -> list[dict[str, Any]]:
        params = {"query": grafana_expr(expr), "start": start, "end": end, "step": step}
        response = requests.get(f"{self.prometheus}/api/v1/query_range", params=params, timeout=30)
        body = response.json()
        assert body.get("status") == "success", (expr, body)
        return list(body["data"]["result"])

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"--- {name} ---\n{process.output()[-tail:]}"
            for name, process in self.processes.items()
        )


def _start(stack: ExitStack, args: list[str], env: dict[str, str], log: Path) -> support.Process:
    process = support.Process(args, env, log)
    stack.callback(process.stop)
    return process


@contextmanager
def observed_stack(
    tmp: Path, *, scrape_interval: str = "1s", cycle_seconds: str = "2"
) -> Iterator[ObservedStack]:
    """Start API, worker (with beat) and Prometheus under `tmp`; stop them all on exit."""
    api_port, worker_port, prom_port = (support.free_port() for _ in range(3))
    env = support.service_env(
        DATABASE_DIR=str(tmp),
        MODELS_DIR=str(tmp / "models"),
        BEST_PARAMS_DIR=str(tmp / "best_params"),
        PORT=str(api_port),
        SIM_CYCLE_SECONDS=cycle_seconds,
        SIM_AUTO_TRAIN="true",  # the worker trains a model at start, then cycles trade
        LOG_LEVEL="INFO",
        METRICS_TOKEN=METRICS_TOKEN,
    )
    support.migrate(env)
    token_file = tmp / "metrics_token"
    token_file.write_text(METRICS_TOKEN)

    def metrics_env(folder: str, **extra: str) -> dict[str, str]:
        path = tmp / folder
        path.mkdir()
        return {**env, "PROMETHEUS_MULTIPROC_DIR": str(path), **extra}

    config = loopback_config(
        {
            "flask:5000": f"127.0.0.1:{api_port}",
            "celery_worker:9808": f"127.0.0.1:{worker_port}",
        },
        scrape_interval,
        token_file,
    )
    config_path = tmp / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))

    with ExitStack() as stack:
        processes = {
            "api": _start(
                stack,
                [
                    str(support.BIN / "gunicorn"),
                    "--config",
                    "gunicorn_config.py",
                    "app:create_app()",
                ],
                metrics_env("metrics-api", WEB_CONCURRENCY="2", GUNICORN_THREADS="2"),
                tmp / "api.log",
            ),
            "worker": _start(
                stack,
                [
                    str(support.BIN / "celery"),
                    "--app",
                    "app.make_celery",
                    "worker",
                    "--beat",
                    "--queues",
                    "default,training,trading",
                    "--concurrency",
                    "2",
                    "--loglevel",
                    "INFO",
                    "--hostname",
                    f"prom-{tmp.name}@%h",
                ],
                metrics_env(
                    "metrics-worker", METRICS_PORT=str(worker_port), METRICS_ADDR="127.0.0.1"
                ),
                tmp / "worker.log",
            ),
            "prometheus": _start(
                stack,
                [
                    PROMETHEUS,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--log.level=warn",
                ],
                env,
                tmp / "prometheus.log",
            ),
        }
        observed = ObservedStack(
            api=f"http://127.0.0.1:{api_port}",
            worker_metrics=f"http://127.0.0.1:{worker_port}/metrics",
            prometheus=f"http://127.0.0.1:{prom_port}",
            processes=processes,
        )
        try:
            support.wait_until(lambda: support.http_ok(f"{observed.api}/health"), 90, "the API")
            support.wait_until(
                lambda: scrape_ok(observed.worker_metrics), 90, "the worker's metrics"
            )
            support.wait_until(
                lambda: support.http_ok(f"{observed.prometheus}/-/ready"), 60, "Prometheus"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{observed.logs()}") from None
        yield observed


def _value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


def _first(result: list[dict[str, Any]]) -> float:
    assert result, "no data"
    return _value(result[0])


def test_every_dashboard_query_returns_data(tmp_path: Path) -> None:
    if not prometheus_available():
        support.unavailable(f"Prometheus is not installed at {PROMETHEUS} (Debian: prometheus)")
    queries = dashboard_queries()
    assert len(queries) >= 20
    with observed_stack(tmp_path) as stack:
        deadline = time.monotonic() + 420
        empty = [title for title, _ in queries]
        while time.monotonic() < deadline:
            requests.get(f"{stack.api}/health", timeout=5)  # traffic for the API panels
            requests.post(f"{stack.api}/api/auth/login", json={"username": "x"}, timeout=5)
            empty = [f"{title}: {expr}" for title, expr in queries if not stack.query(expr)]
            if not empty:
                break
            time.sleep(2)
        assert not empty, "panels without data:\n" + "\n".join(empty) + "\n" + stack.logs()

        up = {r["metric"]["job"]: _value(r) for r in stack.query("up")}
        assert up == {"alpha-trader-api": 1.0, "alpha-trader-worker": 1.0}
        # The values mean something, not just exist.
        assert _first(stack.query('alpha_portfolio_value_usd{venue="sim"}')) > 0
        assert _first(stack.query('alpha_risk_state{state="ACTIVE"}')) in {0.0, 1.0}
        assert sum(_value(r) for r in stack.query("alpha_risk_state")) == 1.0
        assert 0 <= _first(stack.query("alpha_model_age_seconds")) < 3600
        fit = stack.query('alpha_celery_tasks_total{task="app.tasks.fit_models",state="SUCCESS"}')
        assert _first(fit) >= 1
        cycles = stack.query('sum(alpha_cycles_total{outcome="done"})')
        assert _first(cycles) >= 2
        broker = stack.query('sum by (method) (alpha_broker_requests_total{venue="sim"})')
        assert {r["metric"]["method"] for r in broker} >= {"get_positions", "get_account"}
        confidence = stack.query("sum(alpha_prediction_confidence_count)")
        assert _first(confidence) > 0
        # CPU and memory of every process kind, from the sampled gauges.
        roles = {
            (r["metric"]["job"], r["metric"]["role"])
            for r in stack.query("process_resident_memory_bytes")
        }
        assert roles >= {
            ("alpha-trader-api", "api"),
            ("alpha-trader-worker", "worker"),
            ("alpha-trader-worker", "worker-pool"),
        }
        assert all(_value(r) > 10_000_000 for r in stack.query("process_resident_memory_bytes"))
        latency = stack.query(
            "histogram_quantile(0.95, sum by (le, endpoint) "
            "(rate(flask_http_request_duration_seconds_bucket[30s])))"
        )
        assert any(not math.isnan(_value(r)) for r in latency)
        # The API serves no trading state of its own: the portfolio comes from the worker only.
        api_text = requests.get(f"{stack.api}/metrics", headers=SCRAPER, timeout=5).text
        # Both endpoints refuse a scraper without METRICS_TOKEN.
        assert requests.get(f"{stack.api}/metrics", timeout=5).status_code == 401
        assert requests.get(stack.worker_metrics, timeout=5).status_code == 401
        assert "alpha_portfolio_value_usd" not in api_text
        assert "flask_http_request_duration_seconds_count" in api_text
    for name in ("api", "worker"):
        assert "Traceback" not in stack.processes[name].output(), stack.logs()
