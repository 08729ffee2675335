"""Thin Celery tasks for training and tuning: take ids and symbols, call one service, return
a small dict."""

from __future__ import annotations

import logging
from datetime import date
from typing import Any
from uuid import uuid4

from celery import Task, chord, group, shared_task

from app.ai.training import fit_and_save, load_bars, training_window
from app.ai.tuning import optimize
from app.ai.tuning_storage import storage_url_for
from app.config import TradingMode
from app.container import services
from app.errors import ConflictError
from app.market.calendar import NyseCalendar
from app.market.universe import BENCHMARK, configured_universe, feature_universe
from app.store import tasks as task_service
from app.tasks import job_slots
from app.tasks.celery_config import TRAINING_QUEUE
from app.tasks.job_slots import JobKind

log = logging.getLogger(__name__)


@shared_task(bind=True, name="app.tasks.prepare_symbol_bars")
def prepare_symbol_bars(
    self: Task, symbol: str, start: str, end: str, job: str | None = None
) -> dict[str, Any]:
    """Fetch (and cache) one symbol's bars: the fanned-out part of a batch training. `job`:
    the fit's id, so the worker holding this part keeps the training's slot alive."""
    svc = services()
    if job is not None:
        job_slots.stop_if_given_up(self, job, _heartbeats(svc))
    bars = svc.venue.market.get_daily_bars(
        [symbol], date.fromisoformat(start), date.fromisoformat(end)
    )
    return {"symbol": symbol, "bars": len(bars.get(symbol, ()))}


@shared_task(bind=True, name="app.tasks.fit_models", soft_time_limit=3 * 3600, time_limit=3 * 3700)
def fit_models(
    self: Task,
    prepared: list[dict[str, Any]] | None = None,
    mode: str | None = None,
    gated: bool = False,
) -> dict[str, Any]:
    """Train on the prepared symbols and save the model atomically; `gated` (the nightly
    retrain): it replaces the current model only when not worse (champion / challenger)."""
    svc = services()
    job_slots.stop_if_given_up(self, self.request.id, _heartbeats(svc))
    symbols = [p["symbol"] for p in prepared or [] if p.get("bars")] or None

    def progress(stage: str, done: int, total: int) -> None:
        self.update_state(state="PROGRESS", meta={"stage": stage, "done": done, "total": total})

    result = fit_and_save(
        settings=svc.settings,
        db=svc.db,
        market=svc.venue.market,
        store=svc.models,
        today=svc.venue.today(),
        symbols=symbols,
        mode=mode,
        progress=progress,
        gated=gated,
    )
    gate = result["gate"]
    svc.notifier.notify(
        f"Training: kept the {gate['kept']}",
        f"Current model {result['current_version']} (challenger {result['version']}, "
        f"champion {gate['champion'] or 'none'}): {gate['reason']}.",
        "info" if gate["kept"] == "challenger" else "warning",
    )
    return result


@shared_task(name="app.tasks.train_models_batch")
def train_models_batch(mode: str | None = None) -> dict[str, Any]:
    """Start a batch training (the beat entry point); returns the fit task's id."""
    svc = services()
    fit_id = start_batch_training(svc, mode, requested_by="beat", gated=True)
    return {"fit_task_id": fit_id}


def start_batch_training(
    svc: Any, mode: str | None, requested_by: str | None, *, gated: bool = False
) -> str:
    """Fan the universe (UNIVERSE) out as a group of per-symbol data tasks, chorded into one fit.
    `gated`: the champion / challenger gate decides (the nightly retrain); a manual request
    (API, CLI, sim start-up) promotes its model as before, and reports what the gate says.

    Raises ConflictError naming the live one while another training is queued or running."""
    with job_slots.claim(
        svc.db, svc.celery, svc.redis, svc.settings.database_dir, JobKind.TRAINING
    ):
        return _start_batch_training(svc, mode, requested_by, gated)


def train_first_sim_model(svc: Any, requested_by: str) -> str | None:
    """Sim out of the box: train a model if none exists and no training is live. Called when
    the training worker starts and by every sim tick that holds for want of a model, so a
    training lost in a crash is replaced as soon as it is known lost."""
    if svc.settings.trading_mode is not TradingMode.SIM or not svc.settings.sim_auto_train:
        return None
    if svc.models.current_version() is not None:
        return None
    try:
        task_id = start_batch_training(svc, None, requested_by=requested_by)
    except ConflictError as exc:
        log.info("no model yet, and %s", exc.message)
        return None
    log.info("no model yet: training one (task %s)", task_id)
    return task_id


def _heartbeats(svc: Any) -> job_slots.TaskHeartbeats:
    return job_slots.heartbeats_for(svc.redis, svc.settings.database_dir)


def _start_batch_training(svc: Any, mode: str | None, requested_by: str | None, gated: bool) -> str:
    today = svc.venue.today()
    fit_id = str(uuid4())
    start, end = training_window(today, svc.settings.train_years, NyseCalendar())
    symbols = feature_universe(configured_universe(svc.settings, svc.venue.market).symbols)
    header = [
        prepare_symbol_bars.si(s, start.isoformat(), end.isoformat(), job=fit_id).set(
            task_id=str(uuid4())
        )
        for s in symbols
    ]
    body = fit_models.s(mode=mode, gated=gated).set(task_id=fit_id, queue=TRAINING_QUEUE)
    task_service.record(
        svc.db,
        fit_id,
        "app.tasks.fit_models",
        {"mode": mode, "gated": gated, "symbols": symbols, "subtasks": [h.id for h in header]},
        requested_by,
    )
    chord(group(header))(body)
    return fit_id


@shared_task(
    bind=True,
    name="app.tasks.optimize_hyperparameters_for_watchlist",
    soft_time_limit=24 * 3600,
    time_limit=24 * 3600 + 300,
)
def optimize_hyperparameters_for_watchlist(
    self: Task,
    symbols: list[str] | None = None,
    n_trials: int = 20,
    timeout: int = 600,
    mode: str | None = None,
) -> dict[str, Any]:
    """Tune the ensemble on data before today; several workers may tune one study at once."""
    svc = services()
    job_slots.stop_if_given_up(self, self.request.id, _heartbeats(svc))
    settings = svc.settings
    mode = (mode or settings.model_mode).replace("-", "_")
    start, end = training_window(svc.venue.today(), settings.train_years, NyseCalendar())
    self.update_state(state="PROGRESS", meta={"stage": "data", "done": 0, "total": n_trials})
    market = svc.venue.market
    bars = load_bars(market, symbols or configured_universe(settings, market).symbols, start, end)
    return optimize(
        bars,
        bars.get(BENCHMARK),
        mode=mode,  # type: ignore[arg-type]
        storage_url=settings.optuna_storage or storage_url_for(settings.sql_url),
        n_trials=n_trials,
        timeout=timeout,
        train_end=end,
        best_params_dir=settings.best_params_dir,
        horizon=settings.ai_prediction_horizon_days,
        normalisation=settings.ai_label_normalisation,
        feature_set=settings.ai_feature_set,
    )


@shared_task(name="app.tasks.nightly_tune_then_train")
def nightly_tune_then_train() -> dict[str, Any]:
    """Tuning, then training with what it found: one chain, never both at once."""
    svc = services()
    tune_id = str(uuid4())
    with job_slots.claim(svc.db, svc.celery, svc.redis, svc.settings.database_dir, JobKind.TUNING):
        task_service.record(
            svc.db, tune_id, "app.tasks.optimize_hyperparameters_for_watchlist", {}, "beat"
        )
        workflow = optimize_hyperparameters_for_watchlist.si().set(
            queue=TRAINING_QUEUE, task_id=tune_id
        ) | train_models_batch.si().set(queue=TRAINING_QUEUE)
        result = workflow.apply_async()
    return {"chain_id": result.id, "tuning_task_id": tune_id}
