"""Prometheus metrics of the trading service, correct across processes.

gunicorn runs several workers and Celery forks a pool, so every metric here works in
prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR set): each process writes its
own mmap file and whoever serves /metrics merges them. That decides each gauge's
`multiprocess_mode`:

* "mostrecent": facts about the account or the model that one cycle observes (portfolio value,
  risk state, model age). Whichever process ran the latest cycle is right; a pool child that
  exits later must not take the value with it, so not the "live" variant.
* "livesum": work in flight (tasks in progress), summed over the processes still alive.
* "liveall": per-process facts (CPU, memory), one series per live pid.

Counters and histograms are summed over all processes, dead ones included, so nothing counted
is lost when a pool child is replaced.

Services call the small `record_*`/`observe_*` helpers rather than the metric objects, so label
values stay few and bounded (Prometheus keeps one series per label combination).

MultiProcessCollector exports no `process_*` metrics, so each process samples its own CPU time
and resident memory into gauges of those names (`start_process_sampler`), labelled by role.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from app.domain import (
    Account,
    Position,
    Signal,
    TradingState,
)

log = logging.getLogger(__name__)


#: Order reasons are free text ("entry: predicted ..."); their first word is the label.
ORDER_KINDS = frozenset(
    {"entry", "stop_loss", "take_profit", "signal_sell", "rebalance", "trim", "protective"}
)
RECONCILE_KINDS = ("order_status", "never_reached_broker", "unknown_order", "unknown_position")
CYCLE_OUTCOMES = (
    "done",
    "market_closed",
    "skipped_locked",
    "error",
    "already_decided",
    "before_opg_window",
    "decision_missed",
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_CYCLE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
_TASK_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 3 * 3600.0)
_CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


def multiprocess_dir() -> str | None:
    """The shared metrics folder, when this process runs in multiprocess mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class StateGauge:
    """A "mostrecent" gauge created on its first `set`.

    An unlabelled gauge is exported as 0 by every process that merely imports this module,
    the API's included, which would report a portfolio worth $0 beside the worker's real one.
    Created on first use, only the processes that observe the value (the cycle's) export it.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name = name
        self._documentation = documentation
        self._labelnames = labelnames
        self._gauge: Gauge | None = None
        self._lock = threading.Lock()

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            if self._gauge is None:
                self._gauge = Gauge(
                    self.name,
                    self._documentation,
                    self._labelnames,
                    multiprocess_mode="mostrecent",
                )
        gauge = self._gauge
        (gauge.labels(**labels) if labels else gauge).set(value)


# ---------------------------------------------------------------------------- portfolio

PORTFOLIO_VALUE = StateGauge(
    "alpha_portfolio_value_usd", "Account equity at the last cycle", ("venue",)
)
PORTFOLIO_CASH = StateGauge(
    "alpha_portfolio_cash_usd", "Account cash at the last cycle", ("venue",)
)
PORTFOLIO_EXPOSURE = StateGauge(
    "alpha_portfolio_exposure_ratio", "Gross position value / equity at the last cycle", ("venue",)
)
PORTFOLIO_POSITIONS = StateGauge(
    "alpha_portfolio_positions", "Open positions at the last cycle", ("venue",)
)
PNL_DAILY = StateGauge(
    "alpha_pnl_daily_usd", "Equity minus start-of-day equity at the last cycle", ("venue",)
)
PNL_UNREALIZED = StateGauge(
    "alpha_pnl_unrealized_usd",
    "Sum of (price - average entry) x qty over open positions",
    ("venue",),
)
PNL_REALIZED = StateGauge(
    "alpha_pnl_realized_usd",
    "Realized P&L of every fill the bot recorded (average cost, net of commission)",
    ("venue",),
)

# ---------------------------------------------------------------------------- orders

ORDERS_SUBMITTED = Counter(
    "alpha_orders_submitted_total", "Orders accepted by the broker", ["side", "kind"]
)
ORDERS_FILLED = Counter("alpha_orders_filled_total", "Orders that became fully filled", ["side"])
ORDER_FILL_NOTIONAL = Counter(
    "alpha_order_fill_notional_usd_total", "Traded value of recorded fills", ["side"]
)
ORDERS_REJECTED = Counter(
    "alpha_orders_rejected_total",
    "Orders refused, by the risk gate (stage=risk, reason=rule) or the broker (stage=broker)",
    ["stage", "reason"],
)
ORDERS_UNCONFIRMED = Counter(
    "alpha_orders_unconfirmed_total",
    "Sends with an unknown outcome, left PENDING for reconciliation",
)
ORDERS_DUPLICATES_PREVENTED = Counter(
    "alpha_orders_duplicates_prevented_total",
    "Orders not sent because their client_order_id was already recorded",
)
RECONCILE_MISMATCHES = Counter(
    "alpha_reconcile_mismatches_total", "Database rows brought in line with the broker", ["kind"]
)

# ---------------------------------------------------------------------------- risk

RISK_STATE = StateGauge(
    "alpha_risk_state", "1 for the current trading state, 0 for the others", ("venue", "state")
)
RISK_HALTS = Counter("alpha_risk_halts_total", "Times trading was halted by the risk manager")
RISK_EVENTS = Counter("alpha_risk_events_total", "Risk events recorded by the cycle", ["kind"])

# ---------------------------------------------------------------------------- signals, model

SIGNALS = Counter("alpha_signals_total", "Signals produced by the model", ["action"])
PREDICTION_CONFIDENCE = Histogram(
    "alpha_prediction_confidence",
    "Ensemble confidence of each signal",
    ["action"],
    buckets=_CONFIDENCE_BUCKETS,
)
SIGNALS_MISSING = Counter(
    "alpha_signal_missing_total", "Universe symbols a cycle had no signal for", ["reason"]
)
BARS_READJUSTED = Counter(
    "alpha_bars_readjusted_total",
    "Symbols whose cached bars were re-adjusted upstream and re-fetched",
    ["kind"],
)
MODEL_AGE = StateGauge("alpha_model_age_seconds", "Age of the model the last cycle used")
MODEL_CREATED = StateGauge(
    "alpha_model_created_timestamp_seconds",
    "Creation time of the model the last cycle used (unix seconds)",
)

MODEL_RANK_IC = StateGauge(
    "alpha_model_rank_ic",
    "Mean realised cross-sectional rank IC over the last `window` labelled sessions "
    '(model_version="live": the signals the service acted on, whichever version made them)',
    ("model_version", "window"),
)
MODEL_RANK_IC_SESSIONS = StateGauge(
    "alpha_model_rank_ic_sessions",
    "Labelled sessions behind alpha_model_rank_ic (fewer than `window` while history builds up)",
    ("model_version", "window"),
)

# ---------------------------------------------------------------------------- cycle

CYCLES = Counter("alpha_cycles_total", "Trading cycles run", ["outcome"])
CYCLE_DURATION = Histogram(
    "alpha_cycle_duration_seconds", "Trading cycle duration", ["outcome"], buckets=_CYCLE_BUCKETS
)
DECISIONS_MISSED = Counter(
    "alpha_decisions_missed_total",
    "Decision cycles that found the market already open: the next-open fill was missed",
)
CYCLE_LAST_RUN = StateGauge(
    "alpha_cycle_last_run_timestamp_seconds", "When the last trading cycle ended (unix seconds)"
)

# ---------------------------------------------------------------------------- broker

BROKER_REQUESTS = Counter(
    "alpha_broker_requests_total",
    "Broker calls made by the trading cycle (any venue)",
    ["venue", "method", "outcome"],
)
BROKER_ERRORS = Counter(
    "alpha_broker_errors_total", "Broker calls that raised", ["venue", "method", "error"]
)
BROKER_LATENCY = Histogram(
    "alpha_broker_request_duration_seconds",
    "Broker call duration, retries and waits included",
    ["venue", "method"],
    buckets=_LATENCY_BUCKETS,
)
ALPACA_REQUESTS = Counter(
    "alpha_alpaca_requests_total",
    "alpaca-py calls per attempt, by SDK method and HTTP status (ok, code, or error class)",
    ["endpoint", "status"],
)
ALPACA_LATENCY = Histogram(
    "alpha_alpaca_request_duration_seconds",
    "alpaca-py call duration per attempt",
    ["endpoint"],
    buckets=_LATENCY_BUCKETS,
)
ALPACA_RETRIES = Counter("alpha_alpaca_retries_total", "Sleeps before retrying an Alpaca call")
ALPACA_RETRY_WAIT = Counter(
    "alpha_alpaca_retry_wait_seconds_total", "Seconds slept before retrying Alpaca calls"
)
RATE_LIMIT_ACQUIRED = Counter(
    "alpha_rate_limit_acquired_total", "Request slots taken from the Alpaca rate limiter"
)
RATE_LIMIT_WAITS = Counter(
    "alpha_rate_limit_waits_total", "Request slots that had to wait for the rate limiter"
)
RATE_LIMIT_WAIT_SECONDS = Counter(
    "alpha_rate_limit_wait_seconds_total", "Seconds slept waiting for the rate limiter"
)

# ---------------------------------------------------------------------------- celery

CELERY_TASKS = Counter("alpha_celery_tasks_total", "Celery tasks finished", ["task", "state"])
CELERY_TASK_DURATION = Histogram(
    "alpha_celery_task_duration_seconds",
    "Celery task run time (training: app.tasks.fit_models, tuning: app.tasks.optimize_*)",
    ["task"],
    buckets=_TASK_BUCKETS,
)
CELERY_TASK_FAILURES = Counter(
    "alpha_celery_task_failures_total", "Celery tasks that raised", ["task", "exception"]
)
CELERY_TASKS_IN_PROGRESS = Gauge(
    "alpha_celery_tasks_in_progress",
    "Celery tasks running now",
    ["task"],
    multiprocess_mode="livesum",
)

# Known label values start at zero, so a panel shows "none yet" rather than "no data".
for _kind in RECONCILE_KINDS:
    RECONCILE_MISMATCHES.labels(kind=_kind)
for _outcome in CYCLE_OUTCOMES:
    CYCLES.labels(outcome=_outcome)
for _reason in ("rejected", "never_reached_broker"):
    ORDERS_REJECTED.labels(stage="broker", reason=_reason)


# ---------------------------------------------------------------------------- divergence

DIVERGENCE_DIFFERENCES = StateGauge(
    "alpha_divergence_differences", "Live orders unlike the backtest replay, by kind", ("kind",)
)
DIVERGENCE_FILL_BPS = StateGauge(
    "alpha_divergence_max_fill_bps", "Largest live fill gap to the modelled price, in bps"
)


# ---------------------------------------------------------------------------- helpers


def record_portfolio(
    venue: str,
    account: Account,
    positions: Iterable[Position],
    *,
    state: TradingState,
    daily_pnl: float,
    realized_pnl: float,
) -> None:
    """What the account looks like after a cycle."""
    held = list(positions)
    gross = sum(abs(p.market_value) for p in held)
    PORTFOLIO_VALUE.set(account.equity, venue=venue)
    PORTFOLIO_CASH.set(account.cash, venue=venue)
    PORTFOLIO_EXPOSURE.set(gross / account.equity if account.equity > 0 else 0.0, venue=venue)
    PORTFOLIO_POSITIONS.set(len(held), venue=venue)
    PNL_DAILY.set(daily_pnl, venue=venue)
    PNL_UNREALIZED.set(sum(p.unrealized_pl for p in held), venue=venue)
    PNL_REALIZED.set(realized_pnl, venue=venue)
    for candidate in TradingState:
        RISK_STATE.set(1.0 if candidate is state else 0.0, venue=venue, state=candidate.value)


def realized_pnl(fills: Iterable[tuple[str, str, float, float]]) -> float:
    """Realized P&L of (symbol, side, qty, price) fills in time order, at average cost.

    Buys raise a long's cost basis (or cover a short); sells realize (price - average cost)
    on the shares they close. Kept here, not in the database, so the cycle reports it without
    a schema change.
    """
    qty: dict[str, float] = {}
    cost: dict[str, float] = {}
    realized = 0.0
    for symbol, side, amount, price in fills:
        signed = amount if side.lower() == "buy" else -amount
        held = qty.get(symbol, 0.0)
        if held == 0 or (held > 0) == (signed > 0):  # opening or adding
            cost[symbol] = (cost.get(symbol, 0.0) * abs(held) + price * abs(signed)) / (
                abs(held) + abs(signed)
            )
            qty[symbol] = held + signed
            continue
        closed = min(abs(signed), abs(held))
        direction = 1.0 if held > 0 else -1.0
        realized += (price - cost[symbol]) * closed * direction
        remaining = held + signed
        if abs(remaining) < 1e-12:
            qty[symbol], cost[symbol] = 0.0, 0.0
        elif (remaining > 0) != (held > 0):  # flipped: the rest opens at this price
            qty[symbol], cost[symbol] = remaining, price
        else:
            qty[symbol] = remaining
    return realized


def order_kind(reason: str) -> str:
    kind = reason.split(":", 1)[0].strip()
    return kind if kind in ORDER_KINDS else "other"


def record_order_submitted(side: str, reason: str) -> None:
    ORDERS_SUBMITTED.labels(side=side.lower(), kind=order_kind(reason)).inc()


def record_order_rejected(stage: str, reason: str) -> None:
    ORDERS_REJECTED.labels(stage=stage, reason=reason).inc()


def record_fill(side: str, qty: float, price: float, *, now_filled: bool) -> None:
    """A new fill the database recorded (each fill once, whoever recorded it)."""
    ORDER_FILL_NOTIONAL.labels(side=side.lower()).inc(abs(qty * price))
    if now_filled:
        ORDERS_FILLED.labels(side=side.lower()).inc()


def record_reconcile(kind: str, count: int = 1) -> None:
    if count:
        RECONCILE_MISMATCHES.labels(kind=kind).inc(count)


def record_risk_events(events: Iterable[str]) -> None:
    for event in events:
        RISK_EVENTS.labels(kind=event).inc()
        if event.endswith("halt"):
            RISK_HALTS.inc()


def record_signals(signals: Iterable[Signal]) -> None:
    for signal in signals:
        action = signal.action.value
        SIGNALS.labels(action=action).inc()
        PREDICTION_CONFIDENCE.labels(action=action).observe(signal.confidence)


def record_signals_missing(reasons: Iterable[str]) -> None:
    """One count per symbol without a signal, labelled by its reason code (a few values)."""
    for reason in reasons:
        SIGNALS_MISSING.labels(reason=reason).inc()


def record_bars_readjusted(kind: str) -> None:
    BARS_READJUSTED.labels(kind=kind).inc()


def record_model(meta: Mapping[str, Any] | None, now: datetime | None = None) -> None:
    """Model age from ModelStore metadata; a model without a creation time is left out."""
    created_at = (meta or {}).get("created_at")
    if not created_at:
        return
    created = datetime.fromisoformat(str(created_at))
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    MODEL_CREATED.set(created.timestamp())
    MODEL_AGE.set(max(((now or datetime.now(UTC)) - created).total_seconds(), 0.0))


def record_model_ic(version: str, window: int, mean: float, sessions: int) -> None:
    """The rolling realised rank IC of a model version (or of the live series)."""
    MODEL_RANK_IC.set(mean, model_version=version, window=str(window))
    MODEL_RANK_IC_SESSIONS.set(sessions, model_version=version, window=str(window))


def record_cycle(outcome: str, seconds: float) -> None:
    CYCLES.labels(outcome=outcome).inc()
    CYCLE_DURATION.labels(outcome=outcome).observe(seconds)
    CYCLE_LAST_RUN.set(time.time())


def record_rate_limit(waited: float) -> None:
    RATE_LIMIT_ACQUIRED.inc()
    if waited > 0:
        RATE_LIMIT_WAITS.inc()
        RATE_LIMIT_WAIT_SECONDS.inc(waited)


def record_alpaca_retry(delay: float) -> None:
    ALPACA_RETRIES.inc()
    ALPACA_RETRY_WAIT.inc(delay)


def _error_label(exc: BaseException) -> str:
    """An HTTP status when the exception carries one (alpaca-py's APIError), else its class."""
    status = getattr(exc, "status_code", None)
    return str(status) if isinstance(status, int) else type(exc).__name__


@contextmanager
def alpaca_call(endpoint: str) -> Iterator[None]:
    """Count and time one alpaca-py call attempt (what the guarded session sends)."""
    started = time.perf_counter()
    status = "ok"
    try:
        yield
    except BaseException as exc:
        status = _error_label(exc)
        raise
    finally:
        ALPACA_REQUESTS.labels(endpoint=endpoint, status=status).inc()
        ALPACA_LATENCY.labels(endpoint=endpoint).observe(time.perf_counter() - started)


@contextmanager
def broker_call(venue: str, method: str) -> Iterator[None]:
    """Count and time one Broker call, errors by exception class."""
    started = time.perf_counter()
    outcome = "ok"
    try:
        yield
    except BaseException as exc:
        outcome = "error"
        BROKER_ERRORS.labels(venue=venue, method=method, error=type(exc).__name__).inc()
        raise
    finally:
        BROKER_REQUESTS.labels(venue=venue, method=method, outcome=outcome).inc()
        BROKER_LATENCY.labels(venue=venue, method=method).observe(time.perf_counter() - started)


_task_started: dict[str, float] = {}
_task_lock = threading.Lock()


def task_started(task_id: str | None, task: str) -> None:
    if task_id:
        with _task_lock:
            _task_started[task_id] = time.perf_counter()
    CELERY_TASKS_IN_PROGRESS.labels(task=task).inc()


def task_finished(task_id: str | None, task: str, state: str | None) -> None:
    with _task_lock:
        started = _task_started.pop(task_id, None) if task_id else None
    CELERY_TASKS_IN_PROGRESS.labels(task=task).dec()
    CELERY_TASKS.labels(task=task, state=(state or "UNKNOWN").upper()).inc()
    if started is not None:
        CELERY_TASK_DURATION.labels(task=task).observe(time.perf_counter() - started)


def task_failed(task: str, exception: BaseException | None) -> None:
    error = type(exception).__name__ if exception is not None else "unknown"
    CELERY_TASK_FAILURES.labels(task=task, exception=error).inc()


def record_divergence(counts: Mapping[str, int], max_fill_bps: float) -> None:
    """The last divergence report: one gauge per kind, so a non-zero panel names the kind."""
    for kind, count in counts.items():
        DIVERGENCE_DIFFERENCES.set(float(count), kind=kind)
    DIVERGENCE_FILL_BPS.set(max_fill_bps)
