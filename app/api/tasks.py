"""GET /api/tasks/<id>: state, progress and result of any task started through the API."""

from __future__ import annotations

from typing import Any

from flask import url_for
from flask_jwt_extended import get_jwt_identity

from app.api.blueprint import Blueprint
from app.api.schemas import TaskStartedSchema, TaskStatusSchema
from app.container import services
from app.store import tasks as task_service

blp = Blueprint("tasks", __name__, url_prefix="/api/tasks", description="Background tasks")


@blp.route('/<task_id("ping"):task_id>')
@blp.response(200, TaskStatusSchema)
def task_status(task_id: str) -> dict[str, Any]:
    svc = services()
    return task_service.describe(svc.db, svc.celery, task_id)


@blp.route("/ping", methods=["POST"])
@blp.response(202, TaskStartedSchema)
def ping() -> dict[str, str]:
    """Round-trip a trivial task through the broker and a worker: proves the set-up works."""
    svc = services()
    task_id = task_service.start(svc.db, svc.celery, "app.tasks.ping", {}, get_jwt_identity())
    return started(task_id)


def started(task_id: str) -> dict[str, str]:
    return {"task_id": task_id, "status_url": url_for("tasks.task_status", task_id=task_id)}
