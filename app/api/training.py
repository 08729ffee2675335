"""Training and hyperparameter tuning, as background tasks."""

from __future__ import annotations

from typing import Any

from flask_jwt_extended import get_jwt_identity

from app.api.blueprint import Blueprint
from app.api.schemas import OptimizeSchema, TaskStartedSchema, TrainingSchema
from app.api.tasks import started
from app.container import services
from app.errors import ValidationError
from app.market.universe import configured_universe
from app.store import tasks as task_service
from app.tasks import job_slots
from app.tasks.celery_config import TRAINING_QUEUE
from app.tasks.job_slots import JobKind

blp = Blueprint("training", __name__, url_prefix="/api", description="Model training and tuning")


@blp.route("/training/start/batch", methods=["POST"])
@blp.arguments(TrainingSchema, required=False)
@blp.response(202, TaskStartedSchema)
@blp.alt_response(409, response="CONFLICT")  # a training is live: its id is named
def start_batch(body: dict[str, Any]) -> dict[str, str]:
    """Train the universe (UNIVERSE): a group of per-symbol data tasks chorded into one fit."""
    from app.tasks.training import start_batch_training

    return started(start_batch_training(services(), body.get("mode"), get_jwt_identity()))


@blp.route("/hyperparameter/optimize/", methods=["POST"])
@blp.arguments(OptimizeSchema, required=False)
@blp.response(202, TaskStartedSchema)
@blp.alt_response(409, response="CONFLICT")  # a tuning is live: its id is named
def optimize(body: dict[str, Any]) -> dict[str, str]:
    svc = services()
    symbols = [s.upper() for s in body.get("symbols") or ()] or list(
        configured_universe(svc.settings, svc.venue.market).symbols
    )
    known = set(svc.venue.symbols() if svc.venue.symbols else symbols)
    unknown = sorted(set(symbols) - known)
    if unknown:
        raise ValidationError(f"unknown symbols {unknown}", field="symbols")
    kwargs = {
        "symbols": symbols,
        "n_trials": body.get("n_trials", 20),
        "timeout": body.get("timeout", 600),
        "mode": body.get("mode"),
    }
    with job_slots.claim(svc.db, svc.celery, svc.redis, svc.settings.database_dir, JobKind.TUNING):
        task_id = task_service.start(
            svc.db,
            svc.celery,
            "app.tasks.optimize_hyperparameters_for_watchlist",
            kwargs,
            get_jwt_identity(),
            queue=TRAINING_QUEUE,
        )
    return started(task_id)
