"""Starting Celery tasks on behalf of API users and reporting on them.

A TaskRun row is written before the task is sent, so an id the API never handed out is a 404
rather than Celery's eternal PENDING.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery
from sqlalchemy import select

from app.errors import NotFoundError
from app.store.database import Database
from app.store.orm import TaskRun

PROGRESS = "PROGRESS"


def start(
    db: Database,
    celery: Celery,
    name: str,
    kwargs: dict[str, Any],
    requested_by: str | None,
    *,
    queue: str | None = None,
) -> str:
    task_id = str(uuid.uuid4())
    record(db, task_id, name, kwargs, requested_by)
    options: dict[str, Any] = {"task_id": task_id}
    if queue:
        options["queue"] = queue
    task = celery.tasks.get(name)
    if task is not None:  # registered here: apply_async honours eager mode
        task.apply_async(kwargs=kwargs, **options)
    else:
        celery.send_task(name, kwargs=kwargs, **options)
    return task_id


def record(
    db: Database, task_id: str, name: str, params: dict[str, Any], requested_by: str | None
) -> None:
    """Remember a task handed out to a user, before it is sent."""
    with db.session() as session:
        session.add(TaskRun(task_id=task_id, name=name, params=params, requested_by=requested_by))


def describe(db: Database, celery: Celery, task_id: str) -> dict[str, Any]:
    with db.session() as session:
        run = session.scalar(select(TaskRun).where(TaskRun.task_id == task_id))
    if run is None:
        raise NotFoundError(f"no task {task_id!r}", field="task_id")
    result = celery.AsyncResult(task_id)
    state = result.state
    info = result.info
    body: dict[str, Any] = {
        "task_id": task_id,
        "name": run.name,
        "state": state,
        "progress": None,
        "result": None,
        "error": None,
    }
    subtasks = (run.params or {}).get("subtasks") or []
    if state == PROGRESS and isinstance(info, dict):
        body["progress"] = progress_of(celery, info)
    elif state == "PENDING" and subtasks:
        ready = sum(celery.AsyncResult(sid).ready() for sid in subtasks)
        body["progress"] = {"stage": "data", "done": ready, "total": len(subtasks)}
    elif state == "SUCCESS":
        body["result"] = info
        body["progress"] = {"done": 1, "total": 1}
    elif state in {"FAILURE", "REVOKED"}:
        body["error"] = f"{type(info).__name__}: {info}" if info else state.lower()
    return body


def progress_of(celery: Celery, info: dict[str, Any]) -> dict[str, Any]:
    """A PROGRESS state as users see it. A task whose work runs as other tasks (a walk-forward
    backtest's windows, on any worker) names them in "subtasks": done counts those finished."""
    parts = info.get("subtasks")
    if not isinstance(parts, list):
        return info
    shown = {key: value for key, value in info.items() if key != "subtasks"}
    shown["done"] = sum(celery.AsyncResult(part).state == "SUCCESS" for part in parts)
    shown["total"] = len(parts)
    return shown
