"""The backtest as a Celery task: parse the request, run one service, store the report; a
walk-forward run's windows fan out as a chord (app.tasks.walk_forward).

Registered as "app.tasks.run_backtest" so it routes like the other long jobs; the module must be
in celery_config's "imports" for a worker to know it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import date
from typing import Any
from uuid import uuid4

from celery import Task, chord, shared_task
from celery.canvas import Signature
from celery.exceptions import Ignore

from app.backtest.feature_source import FeatureSource
from app.backtest.report import SEED_KEYS, to_report
from app.backtest.requests import (
    BacktestRequest,
    PlannedRun,
    collect_locally,
    plan_request,
    run_planned,
)
from app.backtest.results import ProgressFn
from app.backtest.runs import BacktestRunStore
from app.backtest.walk_forward import WalkForwardConfig
from app.backtest.walk_forward_window import WindowResult
from app.container import Services, services
from app.store import tasks as task_service
from app.tasks import queue_limits
from app.tasks.celery_config import TRAINING_QUEUE
from app.tasks.walk_forward import market_for, window_tasks

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
        feature_symbols=tuple(params.get("feature_symbols") or ()),
        momentum_lookback=params.get("momentum_lookback"),
        momentum_skip=params.get("momentum_skip"),
        momentum_top_k=params.get("momentum_top_k"),
    )


@shared_task(
    bind=True, name="app.tasks.run_backtest", soft_time_limit=6 * 3600, time_limit=6 * 3600 + 300
)
def run_backtest(self: Task, params: dict[str, Any]) -> dict[str, Any]:
    """Run one backtest; the full report goes to the BacktestRun row, a summary to Celery.

    A walk-forward run becomes a chord under this task's id: its windows on the training
    queue (any worker, any host), then finish_backtest. This task ends at once, so with few
    worker slots none waits on windows that need a slot themselves."""
    svc = services()
    store = BacktestRunStore(svc.db)
    task_id = str(self.request.id)
    store.running(task_id, params)
    request = request_from_params(params)
    try:
        plan = plan_request(request, svc.settings, svc.venue.market)
        if plan.walk_forward is None or self.request.is_eager:
            # Eager mode has no workers (and Celery cannot replace a task by a chord there):
            # the windows run here, one after another.
            windows = collect_locally(plan, _progress(self, "windows")) if plan.windows else None
            bundle = svc.models.load_current() if request.model == "current" else None
            result = run_planned(
                plan, windows=windows, bundle=bundle, progress=_progress(self, "sessions")
            )
            return _finished(store, task_id, to_report(result), result.seconds)
        return self.replace(_windows_then_finish(self, plan, params))  # type: ignore[no-any-return]
    except Ignore:  # replaced: this task's id now belongs to the chord's finish_backtest
        raise
    except Exception as exc:
        store.fail(task_id, f"{type(exc).__name__}: {exc}")
        raise


def _windows_then_finish(task: Task, plan: PlannedRun, params: dict[str, Any]) -> Signature:
    """The chord of a walk-forward run; the task's progress counts its windows meanwhile."""
    assert plan.source is not None
    assert plan.walk_forward is not None
    windows = window_tasks(plan)
    subtasks = [str(w.id) for w in windows]
    task.update_state(
        state=task_service.PROGRESS,
        meta={"stage": "windows", "done": 0, "total": len(windows), "subtasks": subtasks},
    )
    body = finish_backtest.s(
        params=params,
        source=plan.source.as_dict(),
        walk_forward=plan.walk_forward.as_dict(),
        subtasks=subtasks,
    ).set(queue=TRAINING_QUEUE)
    body.link_error(backtest_failed.s())
    return chord(windows, body)


@shared_task(
    bind=True,
    name="app.tasks.finish_backtest",
    soft_time_limit=6 * 3600,
    time_limit=6 * 3600 + 300,
)
def finish_backtest(
    self: Task,
    windows: list[dict[str, Any]],
    params: dict[str, Any],
    source: dict[str, Any],
    walk_forward: dict[str, Any],
    subtasks: list[str],
) -> dict[str, Any]:
    """The chord's end, under the backtest's task id: the engine over the windows' results.
    The run is planned again from the same bars (the fingerprint proves it) and the same
    retraining knobs the windows used."""
    svc = services()
    store = BacktestRunStore(svc.db)
    task_id = str(self.request.id)
    described = FeatureSource.from_dict(source)
    try:
        plan = plan_request(
            request_from_params(params),
            svc.settings,
            market_for(described, svc),
            data_dir=described.data_dir,
        )
        if plan.source != described:
            raise ValueError("the bars changed between planning the windows and running the run")
        plan = replace(plan, walk_forward=WalkForwardConfig.from_dict(walk_forward))
        result = run_planned(
            plan,
            windows=[WindowResult.from_dict(w) for w in windows],
            progress=_progress(self, "sessions"),
        )
        report = to_report(result)
    except Exception as exc:
        store.fail(task_id, f"{type(exc).__name__}: {exc}")
        raise
    summary = _finished(store, task_id, report, result.seconds)
    for part in subtasks:  # the report holds what mattered; the windows' results can go
        self.app.AsyncResult(part).forget()
    return summary


@shared_task(name="app.tasks.backtest_failed")
def backtest_failed(request: Any, exc: BaseException, traceback: Any) -> None:
    """The chord's error callback (a window failed): the run's row says so."""
    BacktestRunStore(services().db).fail(str(request.id), f"{type(exc).__name__}: {exc}")


def _progress(task: Task, stage: str) -> ProgressFn:
    """Progress of a stage (windows, sessions) as the task's state, at most PROGRESS_STEPS
    writes per stage."""
    reported = -1

    def progress(done: int, total: int) -> None:
        nonlocal reported
        if done == total or done - reported >= max(1, total // PROGRESS_STEPS):
            reported = done
            task.update_state(
                state=task_service.PROGRESS,
                meta={"stage": stage, "done": done, "total": total},
            )

    return progress


def _finished(
    store: BacktestRunStore, task_id: str, report: dict[str, Any], seconds: float
) -> dict[str, Any]:
    store.finish(task_id, report)
    log.info("backtest %s done in %.1fs", task_id, seconds)
    return {
        "task_id": task_id,
        "status": report["status"],
        "performance": {key: report["performance"].get(key) for key in SEED_KEYS},
    }
