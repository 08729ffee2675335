"""Thin Celery tasks for trading: the cycle, the daily summary, the ping, and failure alerts."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import shared_task
from celery.signals import task_failure

from app.ai.signals import NO_MODEL
from app.container import services
from app.tasks.training import train_first_sim_model

log = logging.getLogger(__name__)


@shared_task(name="app.tasks.ping")
def ping() -> dict[str, Any]:
    """Proves the broker → worker → result backend round trip."""
    return {"pong": True, "worker": f"{socket.gethostname()}:{os.getpid()}"}


@shared_task(name="app.tasks.smart_trading_pipeline", soft_time_limit=240, time_limit=300)
def smart_trading_pipeline() -> dict[str, Any]:
    """The decision cycle: once per session before the open (later triggers are no-ops); in
    sim mode one replayed session."""
    svc = services()
    cycle = svc.trading().run_decision()
    if cycle.problem == NO_MODEL:  # sim holds for its first model: is one still coming?
        train_first_sim_model(svc, requested_by="sim replay")
    result: dict[str, Any] = cycle.as_dict()
    return result


@shared_task(name="app.tasks.guard_cycle", soft_time_limit=240, time_limit=300)
def guard_cycle() -> dict[str, Any]:
    """A guard cycle: reconcile, daily-loss halt, protective exits (market open only)."""
    result: dict[str, Any] = services().trading().run_guard().as_dict()
    return result


@task_failure.connect
def _alert_task_failure(
    sender: Any = None, exception: BaseException | None = None, **_: Any
) -> None:
    name = getattr(sender, "name", "task")
    try:
        services().notifier.notify(
            f"Task failed: {name}", f"{type(exception).__name__}: {exception}", "error"
        )
    except RuntimeError:  # outside an app context: nothing to tell
        log.exception("task %s failed", name)


@shared_task(name="app.tasks.daily_summary")
def daily_summary() -> dict[str, Any]:
    """After the close: the day in one Discord message."""
    from app.trading.summary import daily_summary as summarise

    return summarise(services())
