"""At most one training and one tuning job at a time, held as a lease a dead task cannot keep.

A second request while one is queued or running is refused with 409 naming the task that holds
the slot, instead of queueing a duplicate that burns hours of CPU to produce the same model.
The check and the record of the new task happen under a short lock, so two requests at the
same instant cannot both pass.

The holder is the newest TaskRun of the slot's task whose Celery state is not final, and only
while it shows life: a worker holds one of its parts (each worker beats, every few seconds,
for the jobs of the requests it has received, running or prefetched), or a part still waits in
the broker's queue (it will run when a worker comes back), or, with a broker that broadcasts,
a worker answers `inspect` with it. A job with none of these after `STALE_AFTER` is lost (a
kill -9, an out-of-memory kill, a power cut): it is marked REVOKED, so the slot is free at
once, GET /api/tasks/<id> says so, and a copy redelivered later (Redis restores unacked
messages after an hour) stops before doing anything.

A batch training is a chord: per-symbol data tasks (carrying the fit's id as `job`), then the
fit. Celery's `chord_unlock` poller is not counted as life: it waits for ever on a data task
that died, so a job counts only while a part that does the work lives.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

from celery import Celery, states
from celery.exceptions import Ignore, TaskRevokedError
from celery.signals import task_received, worker_ready
from celery.worker import state as worker_state
from kombu.transport import redis as kombu_redis
from kombu.transport import sqlalchemy as kombu_sqla
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import select, text

from app.config import load_settings
from app.errors import ConflictError
from app.store.database import Database
from app.store.orm import TaskRun
from app.trading.cycle_lock import CycleLock

log = logging.getLogger(__name__)


class JobKind(StrEnum):
    TRAINING = "training"
    TUNING = "tuning"


#: The task that holds each slot.
SLOT_TASKS = {
    JobKind.TRAINING: "app.tasks.fit_models",
    JobKind.TUNING: "app.tasks.optimize_hyperparameters_for_watchlist",
}
#: How often a worker beats for the jobs it holds, and how long a job may go without a beat
#: (and without a queued message) before it counts as lost.
HEARTBEAT_SECONDS = 2.0
STALE_AFTER_SECONDS = 20.0
#: A message fetched from the broker is beaten on receipt; this pause before the second look
#: at the heartbeats covers a part caught between the queue and the worker during a check.
_SETTLE_SECONDS = 0.5
_INSPECT_TIMEOUT = 0.5
_KEEP_SECONDS = 7 * 24 * 3600
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_CHORD_UNLOCK = "celery.chord_unlock"
LOST = "lost: no worker holds it, none of its messages is queued, no heartbeat"


class TaskHeartbeats:
    """When each job last showed life in a worker, and which jobs were given up as lost.

    In Redis when there is one (every host sees it); otherwise files in the database
    directory: without Redis the broker is the embedded SQLite one, so there is one machine."""

    def __init__(self, redis: Redis | None, directory: Path) -> None:
        self._redis = redis
        self._dir = directory

    def beat(self, job_ids: Iterable[str]) -> None:
        ids = [i for i in job_ids if _ID.match(i)]
        if not ids:
            return
        if self._redis is not None:
            pipe = self._redis.pipeline()
            for job_id in ids:
                pipe.set(f"alpha:job:beat:{job_id}", time.time(), ex=_KEEP_SECONDS)
            pipe.execute()
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        for job_id in ids:
            (self._dir / f"{job_id}.beat").touch()

    def age(self, job_id: str) -> float | None:
        """Seconds since the job's last beat, or None if it never had one."""
        if not _ID.match(job_id):
            return None
        if self._redis is not None:
            value = self._redis.get(f"alpha:job:beat:{job_id}")
            return None if value is None else time.time() - float(value)
        try:
            return time.time() - (self._dir / f"{job_id}.beat").stat().st_mtime
        except OSError:
            return None

    def give_up(self, job_id: str) -> None:
        """Record the job as lost, for a copy of it that shows up later."""
        if self._redis is not None:
            self._redis.set(f"alpha:job:lost:{job_id}", 1, ex=_KEEP_SECONDS)
            self._redis.delete(f"alpha:job:beat:{job_id}")
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        (self._dir / f"{job_id}.lost").touch()
        (self._dir / f"{job_id}.beat").unlink(missing_ok=True)

    def given_up(self, job_id: str) -> bool:
        if not _ID.match(job_id):
            return False
        if self._redis is not None:
            return bool(self._redis.exists(f"alpha:job:lost:{job_id}"))
        return (self._dir / f"{job_id}.lost").exists()


def heartbeats_for(redis: Redis | None, database_dir: Path) -> TaskHeartbeats:
    return TaskHeartbeats(redis, database_dir / "task-heartbeats")


def running_task(
    db: Database,
    celery: Celery,
    kind: JobKind,
    heartbeats: TaskHeartbeats,
    stale_after: float | None = None,
) -> str | None:
    """The id of a live queued or running task of this kind, if any; lost ones are released."""
    stale_after = STALE_AFTER_SECONDS if stale_after is None else stale_after
    with db.session() as session:
        runs = session.execute(
            select(TaskRun.task_id, TaskRun.params)
            .where(TaskRun.name == SLOT_TASKS[kind])
            .order_by(TaskRun.created_at.desc())
            .limit(20)
        ).all()
    for task_id, params in runs:
        if _ready(celery, task_id):
            continue
        if is_alive(celery, heartbeats, task_id, stale_after):
            return str(task_id)
        release(celery, heartbeats, task_id, (params or {}).get("subtasks") or [])
    return None


def is_alive(celery: Celery, heartbeats: TaskHeartbeats, job_id: str, stale_after: float) -> bool:
    """A recent beat, a queued message, or a worker that says it holds a part of the job."""

    def beating() -> bool:
        age = heartbeats.age(job_id)
        return age is not None and age < stale_after

    if beating() or queued(celery, job_id) or held_by_worker(celery, job_id):
        return True
    time.sleep(_SETTLE_SECONDS)
    return beating()


def release(celery: Celery, heartbeats: TaskHeartbeats, job_id: str, subtasks: list[str]) -> None:
    """Give the slot back: the job and its unfinished parts are marked REVOKED (a poller
    waiting on a dead part then ends too)."""
    if _ready(celery, job_id):
        return
    heartbeats.give_up(job_id)
    for part in [*subtasks, job_id]:
        if not _ready(celery, part):
            celery.backend.mark_as_revoked(part, reason=LOST)
    log.warning("task %s released its slot: %s", job_id, LOST)


def _ready(celery: Celery, task_id: str) -> bool:
    return celery.AsyncResult(task_id).state in states.READY_STATES


def queued(celery: Celery, job_id: str) -> bool:
    """A message of the job still waits in a queue of the broker (it will be delivered when a
    worker consumes that queue). A broker whose queues cannot be read here counts as holding
    it: nothing proves the job lost."""
    with celery.connection_for_read() as connection:
        channel = connection.default_channel
        if isinstance(channel, kombu_sqla.Channel):
            engine, _ = channel._open()  # type: ignore[no-untyped-call]
            table = channel.message_tablename  # kombu's own setting, not input
            with engine.connect() as db:
                payloads: Iterable[Any] = db.scalars(
                    text(f"SELECT payload FROM {table} WHERE visible")  # noqa: S608
                ).all()
        elif isinstance(channel, kombu_redis.Channel):
            payloads = [
                raw
                for queue in celery.amqp.queues
                for priority in channel.priority_steps
                for raw in channel.client.lrange(
                    channel._q_for_pri(queue, priority),  # type: ignore[no-untyped-call]
                    0,
                    -1,
                )
            ]
        else:
            return True
    return any(_message_of(payload, job_id) for payload in payloads)


def _message_of(payload: str | bytes, job_id: str) -> bool:
    """The message is the job's task or one of its parts (which carry its id as `job`)."""
    try:
        message = json.loads(payload)
        headers = message.get("headers") or {}
        if headers.get("task") == _CHORD_UNLOCK:
            return False
        if headers.get("id") == job_id:
            return True
        body = message.get("body") or ""
        if (message.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body).decode()
        return job_id in str(body)
    except (ValueError, AttributeError, TypeError):
        return False


def held_by_worker(celery: Celery, job_id: str) -> bool:
    """A live worker reports a part of the job as running, prefetched or scheduled. Only with
    a broker that broadcasts (the embedded one does not: its workers' beats answer instead)."""
    with celery.connection_for_read() as connection:
        if isinstance(connection.default_channel, kombu_sqla.Channel):
            return False
    inspect = celery.control.inspect(timeout=_INSPECT_TIMEOUT)
    for answer in (inspect.active(), inspect.reserved(), inspect.scheduled()):
        for requests in (answer or {}).values():
            for entry in requests:
                request = entry.get("request", entry)
                if request.get("name") != _CHORD_UNLOCK and job_id in json.dumps(
                    request, default=str
                ):
                    return True
    return False


def stop_if_given_up(task: Any, job_id: str, heartbeats: TaskHeartbeats) -> None:
    """At the start of a job's part: a copy of a job given up as lost (redelivered late) does
    nothing, and the job stays REVOKED."""
    if heartbeats.given_up(job_id):
        task.backend.mark_as_revoked(task.request.id, reason=LOST)
        log.warning("task %s belongs to job %s, given up as lost: not run", task.request.id, job_id)
        raise Ignore()


@contextmanager
def claim(
    db: Database, celery: Celery, redis: Redis | None, lock_dir: Path, kind: JobKind
) -> Iterator[None]:
    """Run the body (which records and sends the task) only if no job of this kind is live."""
    with CycleLock(redis, lock_dir, name=f"start-{kind}", ttl=30).hold() as owned:
        if not owned:
            raise ConflictError(f"another {kind} request is being started: try again shortly")
        running = running_task(db, celery, kind, heartbeats_for(redis, lock_dir))
        if running is not None:
            raise ConflictError(
                f"a {kind} task is already queued or running: {running} (see /api/tasks/{running})",
                field="task_id",
            )
        yield


class _QuietLostChord(logging.Filter):
    """Celery's chord poller logs a part released as lost with a traceback, as if a bug had
    struck; it is the expected end of a job killed with its worker: one warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, TaskRevokedError) and LOST in str(exc):
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


logging.getLogger("celery.app.builtins").addFilter(_QuietLostChord())


# -- the worker side: beat for the jobs this worker holds ----------------------------------------
_worker_beats: list[TaskHeartbeats] = []
_beats_lock = threading.Lock()


def _jobs_of(request: Any) -> set[str]:
    """The jobs a received request is part of: a slot task is its own job; a part names it."""
    jobs = set()
    if getattr(request, "name", None) in SLOT_TASKS.values():
        jobs.add(str(request.id))
    kwargs = getattr(request, "kwargs", None)
    if isinstance(kwargs, dict) and isinstance(kwargs.get("job"), str):
        jobs.add(kwargs["job"])
    return jobs


def _this_workers_beats() -> TaskHeartbeats:
    with _beats_lock:
        if not _worker_beats:
            settings = load_settings()
            redis = (
                Redis.from_url(settings.redis_url, socket_timeout=5) if settings.redis_url else None
            )
            _worker_beats.append(heartbeats_for(redis, settings.database_dir))
        return _worker_beats[0]


def _held_jobs() -> set[str]:
    for _ in range(3):  # the consumer thread may change the sets while they are copied
        try:
            held = [
                *worker_state.reserved_requests,
                *worker_state.active_requests,
                *worker_state.scheduled_requests,
            ]
            return set().union(*(_jobs_of(r) for r in held))
        except RuntimeError:
            continue
    return set()


def _beat_held_jobs(beats: TaskHeartbeats) -> None:
    try:
        beats.beat(_held_jobs())
    except (OSError, RedisError) as exc:  # a missed beat must not stop the worker
        log.warning("job heartbeat failed: %s", exc)


@task_received.connect
def _beat_on_receipt(request: Any = None, **_kwargs: Any) -> None:
    """A part taken off the queue shows life at once, not at the next periodic beat."""
    jobs = _jobs_of(request)
    if jobs:
        try:
            _this_workers_beats().beat(jobs)
        except (OSError, RedisError) as exc:
            log.warning("job heartbeat failed: %s", exc)


@worker_ready.connect
def _start_beating(**_kwargs: Any) -> None:
    """A daemon thread: it dies with the worker, and with it the beats."""
    beats = _this_workers_beats()

    def loop() -> None:
        while True:
            _beat_held_jobs(beats)
            time.sleep(HEARTBEAT_SECONDS)

    threading.Thread(target=loop, name="job-heartbeats", daemon=True).start()
