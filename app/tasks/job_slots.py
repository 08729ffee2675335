"""At most one training and one tuning job at a time.

A second request while one is queued or running is refused with 409 naming the task that holds
the slot, instead of queueing a duplicate that burns hours of CPU to produce the same model.
The check and the record of the new task happen under a short lock, so two requests at the
same instant cannot both pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from celery import Celery, states
from redis import Redis
from sqlalchemy import select

from app.errors import ConflictError
from app.store.database import Database
from app.store.orm import TaskRun
from app.trading.cycle_lock import CycleLock


class JobKind(StrEnum):
    TRAINING = "training"
    TUNING = "tuning"


#: The task that holds each slot, and how long after its start a record still counts (its time
#: limit plus queueing), so a task lost with a broker cannot hold the slot for ever.
SLOT_TASKS = {
    JobKind.TRAINING: ("app.tasks.fit_models", timedelta(hours=6)),
    JobKind.TUNING: ("app.tasks.optimize_hyperparameters_for_watchlist", timedelta(hours=25)),
}


def running_task(db: Database, celery: Celery, kind: JobKind) -> str | None:
    """The id of a queued or running task of this kind, if any."""
    name, max_age = SLOT_TASKS[kind]
    since = datetime.now(UTC) - max_age
    with db.session() as session:
        ids = session.scalars(
            select(TaskRun.task_id)
            .where(TaskRun.name == name, TaskRun.created_at >= since)
            .order_by(TaskRun.created_at.desc())
            .limit(20)
        ).all()
    for task_id in ids:
        if celery.AsyncResult(task_id).state not in states.READY_STATES:
            return str(task_id)
    return None


@contextmanager
def claim(
    db: Database, celery: Celery, redis: Redis | None, lock_dir: Path, kind: JobKind
) -> Iterator[None]:
    """Run the body (which records and sends the task) only if no job of this kind is live."""
    with CycleLock(redis, lock_dir, name=f"start-{kind}", ttl=30).hold() as owned:
        if not owned:
            raise ConflictError(f"another {kind} request is being started: try again shortly")
        running = running_task(db, celery, kind)
        if running is not None:
            raise ConflictError(
                f"a {kind} task is already queued or running: {running} (see /api/tasks/{running})",
                field="task_id",
            )
        yield
