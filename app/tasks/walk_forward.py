"""Walk-forward windows as Celery tasks on the training queue: N workers on N hosts train a
run's windows N at a time.

A window task takes the run's FeatureSource (a description, never the feature frame) and the
window, and returns the window's predictions as JSON; each worker process loads and featurises
the bars once per run. Two ways to collect: the CLI sends a group and waits (it is no worker);
the backtest task becomes a chord (app.tasks.backtest), so no worker slot waits on its own
windows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from uuid import uuid4

from celery import Task, group, shared_task
from celery.canvas import Signature

from app.backtest.feature_source import FeatureSource, load_source
from app.backtest.requests import PlannedRun
from app.backtest.results import ProgressFn
from app.backtest.walk_forward_window import WalkForwardWindow, WindowResult, run_window
from app.container import Services, services
from app.domain import MarketData
from app.market.sources import CsvMarketData
from app.tasks.celery_config import TRAINING_QUEUE

#: How often the CLI looks at its windows while it waits.
POLL_SECONDS = 0.5


@shared_task(
    bind=True,
    name="app.tasks.walk_forward_window",
    soft_time_limit=3 * 3600,
    time_limit=3 * 3600 + 300,
)
def walk_forward_window(
    self: Task, source: dict[str, Any], window: dict[str, Any]
) -> dict[str, Any]:
    """Train one window's model and predict its sessions (walk_forward_window.run_window)."""
    described = FeatureSource.from_dict(source)
    data = load_source(described, market_for(described, services()))
    result = run_window(
        WalkForwardWindow.from_dict(window), data, worker=str(self.request.hostname)
    )
    return result.as_dict()


def market_for(source: FeatureSource, svc: Services) -> MarketData:
    """The market data a run's bars come from: the CSV directory it names, or this host's."""
    return CsvMarketData(Path(source.data_dir)) if source.data_dir else svc.venue.market


def window_tasks(plan: PlannedRun) -> list[Signature]:
    """One task per window of the run, ids fixed now so progress can count them."""
    if plan.source is None:
        raise ValueError("only a walk-forward run has windows")
    source = plan.source.as_dict()
    return [
        walk_forward_window.si(source=source, window=window.as_dict()).set(
            queue=TRAINING_QUEUE, task_id=str(uuid4())
        )
        for window in plan.windows
    ]


def collect_on_workers(plan: PlannedRun, progress: ProgressFn | None = None) -> list[WindowResult]:
    """The CLI's path: send the windows to the training queue and wait for them; the first
    failure stops the wait and revokes the rest (as does Ctrl-C)."""
    tasks = window_tasks(plan)
    sent = group(tasks).apply_async()
    try:
        while not sent.ready():
            failed = next((part for part in sent.results if part.failed()), None)
            if failed is not None:
                failed.get(propagate=True)  # raises the window's error
            if progress is not None:
                progress(sent.completed_count(), len(tasks))
            time.sleep(POLL_SECONDS)
        values = sent.get(propagate=True)
    except BaseException:
        sent.revoke()
        raise
    finally:
        sent.forget()
    if progress is not None:
        progress(len(tasks), len(tasks))
    return [WindowResult.from_dict(value) for value in values]
