"""Bounded queues for the work users start by hand.

Backtests are capped per user and in all (they share the training queue's worker slots with
training and tuning), and at most one manual trading cycle waits in the queue (each one replays
a session in sim). Both are counted from the TaskRun rows and Celery's states, never in memory,
so they hold across gunicorn workers and restarts; the check and the record of a new task happen
under a short lock, so two requests at the same instant cannot both pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from celery import Celery, states
from redis import Redis
from sqlalchemy import or_, select

from app.backtest.runs import RunStatus
from app.errors import ConflictError, TooManyTasks
from app.store import tasks as task_service
from app.store.database import Database
from app.store.orm import BacktestRun, TaskRun
from app.trading.cycle_lock import CycleLock

BACKTEST_TASK = "app.tasks.run_backtest"
CYCLE_TASK = "app.tasks.smart_trading_pipeline"
#: A backtest sent longer ago than this is lost (with a broker, or a worker killed mid-run)
#: whatever Celery last said: its time limit is 6 h, and it may wait as long again in the queue.
BACKTEST_MAX_AGE = timedelta(hours=12)
#: A manual cycle still queued after this was lost with the broker; a new one may be queued.
CYCLE_QUEUED_MAX_AGE = timedelta(hours=1)
#: How long a request waits for another one being recorded (a few database writes).
_LOCK_WAIT_SECONDS = 5.0


def live_backtests(db: Database, celery: Celery) -> list[tuple[str, str | None]]:
    """(task id, requested by) of every backtest queued or running, oldest first. A run frees
    its place when its row says it finished or failed, when Celery's state is final (failed
    before it wrote its row, revoked), or when it is older than BACKTEST_MAX_AGE."""
    since = datetime.now(UTC) - BACKTEST_MAX_AGE
    with db.session() as session:
        rows = session.execute(
            select(TaskRun.task_id, TaskRun.requested_by)
            .outerjoin(BacktestRun, BacktestRun.task_id == TaskRun.task_id)
            .where(
                TaskRun.name == BACKTEST_TASK,
                TaskRun.created_at >= since,
                or_(
                    BacktestRun.status.is_(None),
                    BacktestRun.status.in_([RunStatus.PENDING, RunStatus.RUNNING]),
                ),
            )
            .order_by(TaskRun.created_at)
        ).all()
    return [
        (str(task_id), requested_by)
        for task_id, requested_by in rows
        if celery.AsyncResult(task_id).state not in states.READY_STATES
    ]


@contextmanager
def backtest_place(
    db: Database,
    celery: Celery,
    redis: Redis | None,
    lock_dir: Path,
    requested_by: str | None,
    *,
    per_user: int,
    total: int,
) -> Iterator[None]:
    """Run the body (which records and sends the backtest) only under both caps; beyond one,
    TooManyTasks (429) names the live backtests that hold it."""
    with _starting(redis, lock_dir, "backtest"):
        live = live_backtests(db, celery)
        mine = [task_id for task_id, who in live if who == requested_by]
        if len(mine) >= per_user:
            raise TooManyTasks(
                f"{len(mine)} of your backtests are queued or running, at most {per_user} per "
                f"user (BACKTEST_MAX_PER_USER): {', '.join(mine)}; "
                "see /api/backtest/<task_id>, try again when one has finished",
                field="task_id",
            )
        if len(live) >= total:
            ids = [task_id for task_id, _who in live]
            raise TooManyTasks(
                f"{len(live)} backtests are queued or running, at most {total} in all "
                f"(BACKTEST_MAX_QUEUED): {', '.join(ids)}; try again when one has finished",
                field="task_id",
            )
        yield


def queued_cycle(db: Database, celery: Celery) -> str | None:
    """The id of a manual cycle still waiting in the queue (no worker has started it), if any."""
    since = datetime.now(UTC) - CYCLE_QUEUED_MAX_AGE
    with db.session() as session:
        ids = session.scalars(
            select(TaskRun.task_id)
            .where(TaskRun.name == CYCLE_TASK, TaskRun.created_at >= since)
            .order_by(TaskRun.created_at.desc())
            .limit(20)
        ).all()
    for task_id in ids:
        if celery.AsyncResult(task_id).state == states.PENDING:  # STARTED once a worker has it
            return str(task_id)
    return None


def start_manual_cycle(
    db: Database, celery: Celery, redis: Redis | None, lock_dir: Path, requested_by: str | None
) -> tuple[str, bool]:
    """(task id, queued now): a new cycle, or the one already waiting in the queue."""
    with _starting(redis, lock_dir, "cycle"):
        waiting = queued_cycle(db, celery)
        if waiting is not None:
            return waiting, False
        return task_service.start(db, celery, CYCLE_TASK, {}, requested_by), True


@contextmanager
def _starting(redis: Redis | None, lock_dir: Path, what: str) -> Iterator[None]:
    with CycleLock(redis, lock_dir, name=f"start-{what}", ttl=30).hold(
        wait=_LOCK_WAIT_SECONDS
    ) as owned:
        if not owned:
            raise ConflictError(f"another {what} request is being started: try again shortly")
        yield
