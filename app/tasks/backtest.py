"""The backtest as a Celery task: parse the request, run one service, store the report.

Registered as "app.tasks.run_backtest" so it routes like the other long jobs; the module must be
in celery_config's "imports" for a worker to know it.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any
from uuid import uuid4

from celery import Task, shared_task

from app.backtest.report import SEED_KEYS, to_report
from app.backtest.requests import BacktestRequest, run_request
from app.backtest.runs import BacktestRunStore
from app.container import Services, services
from app.store import tasks as task_service
from app.tasks import queue_limits
from app.tasks.celery_config import TRAINING_QUEUE

log = logging.getLogger(__name__)

#: Progress updates per run: each one is a write to the result backend.
PROGRESS_STEPS = 50


def start_backtest(svc: Services, request: BacktestRequest, requested_by: str | None) -> str:
    """Record and queue a checked request on the training queue, within the backtest caps
    (TooManyTasks names the live ones beyond them); returns the task id."""
    params = request.as_dict()
    task_id = str(uuid4())
    settings = svc.settings
    with queue_limits.backtest_place(
        svc.db,
        svc.celery,
        svc.redis,
        settings.database_dir,
        requested_by,
        per_user=settings.backtest_max_per_user,
        total=settings.backtest_max_queued,
    ):
        BacktestRunStore(svc.db).create(task_id, params)
        task_service.record(svc.db, task_id, queue_limits.BACKTEST_TASK, params, requested_by)
    run_backtest.apply_async(kwargs={"params": params}, task_id=task_id, queue=TRAINING_QUEUE)
    return task_id


def request_from_params(params: dict[str, Any]) -> BacktestRequest:
    return BacktestRequest(
        symbols=tuple(params["symbols"]),
        start=date.fromisoformat(params["start"]),
        end=date.fromisoformat(params["end"]),
        initial_capital=float(params["initial_capital"]),
        commission_bps=params.get("commission_bps"),
        slippage_bps=params.get("slippage_bps"),
        retrain_every=int(params.get("retrain_every", 63)),
        model=params.get("model", "walk_forward"),
        buy_threshold=params.get("buy_threshold"),
        sell_threshold=params.get("sell_threshold"),
        confidence_threshold=params.get("confidence_threshold"),
        placebo=bool(params.get("placebo", False)),
    )


@shared_task(
    bind=True, name="app.tasks.run_backtest", soft_time_limit=6 * 3600, time_limit=6 * 3600 + 300
)
def run_backtest(self: Task, params: dict[str, Any]) -> dict[str, Any]:
    """Run one backtest; the full report goes to the BacktestRun row, a summary to Celery."""
    svc = services()
    store = BacktestRunStore(svc.db)
    task_id = str(self.request.id)
    store.running(task_id, params)
    request = request_from_params(params)
    reported = -1

    def progress(done: int, total: int) -> None:
        nonlocal reported
        if done == total or done - reported >= max(1, total // PROGRESS_STEPS):
            reported = done
            self.update_state(state="PROGRESS", meta={"done": done, "total": total})

    try:
        bundle = svc.models.load_current() if request.model == "current" else None
        result = run_request(
            request, svc.settings, svc.venue.market, bundle=bundle, progress=progress
        )
        report = to_report(result)
    except Exception as exc:
        store.fail(task_id, f"{type(exc).__name__}: {exc}")
        raise
    store.finish(task_id, report)
    log.info("backtest %s done in %.1fs", task_id, result.seconds)
    return {
        "task_id": task_id,
        "status": report["status"],
        "performance": {key: report["performance"].get(key) for key in SEED_KEYS},
    }
