"""app/metrics.py: values that mean what the dashboard says, in one process and in many."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from app import metrics
from app.broker.alpaca import AlpacaBroker
from app.broker.alpaca_client import RetryPolicy
from app.broker.instrumented import InstrumentedBroker
from app.broker.rate_limit import SlidingWindowLimiter
from app.config import load_settings
from app.domain import Account, Position, Signal, SignalAction, TradingState
from app.errors import ConfigError
from app.tasks.celery_app import _task_failure, _task_postrun, _task_prerun
from tests import support
from tests.fakes.fake_alpaca import FakeAlpaca


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_realized_pnl_at_average_cost() -> None:
    fills = [
        ("AAPL", "buy", 10, 100.0),
        ("AAPL", "buy", 10, 120.0),  # average 110
        ("AAPL", "sell", 5, 130.0),  # +100
        ("MSFT", "buy", 2, 50.0),
        ("AAPL", "sell", 15, 100.0),  # -150, flat
        ("MSFT", "sell", 3, 40.0),  # -20 on 2 shares, then short 1 at 40
        ("MSFT", "buy", 1, 30.0),  # +10 covering the short
    ]
    assert metrics.realized_pnl(fills) == pytest.approx(100 - 150 - 20 + 10)
    assert metrics.realized_pnl([]) == 0.0
    assert metrics.realized_pnl([("X", "buy", 1, 10.0)]) == 0.0


def test_portfolio_and_risk_state_after_a_cycle() -> None:
    account = Account(cash=40_000, equity=100_000, buying_power=0, last_equity=99_000)
    held = [Position("AAPL", 100, 150.0, 160.0), Position("KO", 200, 55.0, 50.0)]
    metrics.record_portfolio(
        "test-venue", account, held, state=TradingState.HALTED, daily_pnl=-2500, realized_pnl=42
    )
    venue = {"venue": "test-venue"}
    assert sample("alpha_portfolio_value_usd", **venue) == 100_000
    assert sample("alpha_portfolio_cash_usd", **venue) == 40_000
    assert sample("alpha_portfolio_exposure_ratio", **venue) == pytest.approx(0.26)
    assert sample("alpha_portfolio_positions", **venue) == 2
    assert sample("alpha_pnl_daily_usd", **venue) == -2500
    assert sample("alpha_pnl_unrealized_usd", **venue) == pytest.approx(1000 - 1000)
    assert sample("alpha_pnl_realized_usd", **venue) == 42
    states = {s.value: sample("alpha_risk_state", state=s.value, **venue) for s in TradingState}
    assert states == {"ACTIVE": 0.0, "REDUCING": 0.0, "HALTED": 1.0}


def test_signals_model_age_orders_and_risk_events_are_counted() -> None:
    before_buy = sample("alpha_signals_total", action="BUY")
    before_conf = sample("alpha_prediction_confidence_count", action="BUY")
    metrics.record_signals(
        [
            Signal("A", SignalAction.BUY, 0.01, 0.8, 0.01, "v"),
            Signal("B", SignalAction.BUY, 0.02, 0.4, 0.01, "v"),
        ]
    )
    assert sample("alpha_signals_total", action="BUY") == before_buy + 2
    assert sample("alpha_prediction_confidence_count", action="BUY") == before_conf + 2

    now = datetime(2024, 1, 2, tzinfo=UTC)
    metrics.record_model({"created_at": (now - timedelta(hours=2)).isoformat()}, now)
    assert sample("alpha_model_age_seconds") == 7200
    metrics.record_model(None, now)  # no model: left as it was
    assert sample("alpha_model_age_seconds") == 7200

    before = sample("alpha_orders_submitted_total", side="buy", kind="other")
    metrics.record_order_submitted("buy", "something new: reason")
    assert sample("alpha_orders_submitted_total", side="buy", kind="other") == before + 1
    halts = sample("alpha_risk_halts_total")
    metrics.record_risk_events(["daily_loss_halt", "halt_expired"])
    assert sample("alpha_risk_halts_total") == halts + 1
    assert sample("alpha_risk_events_total", kind="halt_expired") >= 1


class _Broker:
    def __init__(self) -> None:
        self.extra = "passed through"

    def get_account(self) -> Account:
        return Account(cash=1, equity=1, buying_power=1, last_equity=1)

    def get_positions(self) -> list[Position]:
        raise TimeoutError("slow")


def test_instrumented_broker_times_calls_and_counts_errors() -> None:
    broker = InstrumentedBroker(_Broker(), "unit")  # type: ignore[arg-type]
    ok = sample("alpha_broker_requests_total", venue="unit", method="get_account", outcome="ok")
    assert broker.get_account().cash == 1
    with pytest.raises(TimeoutError):
        broker.get_positions()
    assert broker.extra == "passed through"
    labels = {"venue": "unit", "method": "get_account"}
    assert sample("alpha_broker_requests_total", outcome="ok", **labels) == ok + 1
    assert sample("alpha_broker_request_duration_seconds_count", **labels) >= 1
    assert (
        sample(
            "alpha_broker_errors_total", venue="unit", method="get_positions", error="TimeoutError"
        )
        >= 1
    )


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca() as f:
        yield f


def test_alpaca_attempts_retries_and_rate_limit_are_counted(fake: FakeAlpaca) -> None:
    fast = RetryPolicy(max_retries=3, backoff_base=0.01, backoff_max=0.05, max_total_wait=5.0)
    broker = AlpacaBroker(
        "key",
        "secret",
        base_url=fake.base_url,
        timeout=2.0,
        limiter=SlidingWindowLimiter(100_000, 60.0),
        retry=fast,
    )
    try:
        ok = sample("alpha_alpaca_requests_total", endpoint="get_account", status="ok")
        failed = sample("alpha_alpaca_requests_total", endpoint="get_account", status="500")
        retries = sample("alpha_alpaca_retries_total")
        acquired = sample("alpha_rate_limit_acquired_total")
        fake.inject("GET /v2/account", "500")
        broker.get_account()
    finally:
        broker.close()
    assert sample("alpha_alpaca_requests_total", endpoint="get_account", status="500") == (
        failed + 1
    )
    assert sample("alpha_alpaca_requests_total", endpoint="get_account", status="ok") == ok + 1
    assert sample("alpha_alpaca_retries_total") == retries + 1
    assert sample("alpha_rate_limit_acquired_total") == acquired + 2
    assert sample("alpha_alpaca_request_duration_seconds_count", endpoint="get_account") >= 2


def test_rate_limit_waits_are_counted() -> None:
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    limiter = SlidingWindowLimiter(1, 10.0, clock=lambda: clock[0], sleep=sleep)
    waits = sample("alpha_rate_limit_waits_total")
    seconds = sample("alpha_rate_limit_wait_seconds_total")
    limiter.acquire()
    limiter.acquire()
    assert sample("alpha_rate_limit_waits_total") == waits + 1
    assert sample("alpha_rate_limit_wait_seconds_total") == pytest.approx(seconds + 10.0)


def test_celery_signals_count_tasks_durations_and_failures() -> None:
    task = SimpleNamespace(name="app.tasks.unit_test")
    name = {"task": "app.tasks.unit_test"}
    _task_prerun(sender=task, task_id="t1", task=task)
    assert sample("alpha_celery_tasks_in_progress", **name) == 1
    _task_failure(sender=task, exception=ValueError("boom"))
    _task_postrun(sender=task, task_id="t1", task=task, state="FAILURE")
    assert sample("alpha_celery_tasks_in_progress", **name) == 0
    assert sample("alpha_celery_tasks_total", state="FAILURE", **name) == 1
    assert sample("alpha_celery_task_duration_seconds_count", **name) == 1
    assert sample("alpha_celery_task_failures_total", exception="ValueError", **name) == 1


def test_metrics_port_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METRICS_PORT", raising=False)
    assert load_settings().metrics_port is None
    monkeypatch.setenv("METRICS_PORT", "9808")
    assert load_settings().metrics_port == 9808
    for bad in ("http", "0", "70000"):
        monkeypatch.setenv("METRICS_PORT", bad)
        with pytest.raises(ConfigError, match="METRICS_PORT"):
            load_settings()


MULTIPROCESS_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from prometheus_client import generate_latest
    from app import metrics, metrics_export
    from app.domain import Account, TradingState

    def exported():
        return generate_latest(metrics_export.collector_registry()).decode()

    before = exported()
    metrics.record_portfolio(
        "sim", Account(cash=5, equity=10, buying_power=0, last_equity=10), [],
        state=TradingState.ACTIVE, daily_pnl=0, realized_pnl=0,
    )
    assert metrics_export.start_process_sampler("unit")
    assert not metrics_export.start_process_sampler("unit")  # once per process
    pid = os.fork()
    if pid == 0:  # a pool child: its own sampler, its own pid
        metrics_export.start_process_sampler("child")
        os._exit(0)
    os.waitpid(pid, 0)
    after = exported()
    metrics_export.mark_process_dead(pid)
    print("BEFORE", "alpha_portfolio_value_usd" in before, "alpha_cycles_total" in before)
    print("AFTER", 'alpha_portfolio_value_usd{venue="sim"} 10.0' in after)
    print("PROCESS", f'process_resident_memory_bytes{{pid="{os.getpid()}",role="unit"}}' in after)
    print("CHILD", f'pid="{pid}",role="child"' in after)
    print("DEAD", f'pid="{pid}"' in exported())
    """
)


def test_multiprocess_mode_exports_only_observed_state_and_samples_processes(
    tmp_path: Path,
) -> None:
    env = support.service_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_SCRIPT],
        env=env,
        cwd=support.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    # The API imports app.metrics but never runs a cycle: no $0 portfolio beside the worker's.
    assert lines["BEFORE"] == "False True"
    assert lines["AFTER"] == "True"
    assert lines["PROCESS"] == "True"
    assert lines["CHILD"] == "True"
    assert lines["DEAD"] == "False"
