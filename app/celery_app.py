"""celery_init_app: Flask's pattern, so every task runs inside the app context."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_init, worker_ready
from flask import Flask

from app.celery_config import celery_settings
from app.config import Settings, TradingMode
from app.extensions import db


def celery_init_app(app: Flask, settings: Settings) -> Celery:
    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery = Celery(app.name, task_cls=FlaskTask)
    celery.config_from_object(celery_settings(settings))
    celery.set_default()
    app.extensions["celery"] = celery
    celery.loader.import_default_modules()  # register the tasks in the API process too

    @worker_ready.connect(weak=False)
    def _train_when_sim_has_no_model(**_kwargs: Any) -> None:
        """Sim mode out of the box: a worker that finds no model trains one first."""
        if settings.trading_mode is not TradingMode.SIM or not settings.sim_auto_train:
            return
        with app.app_context():
            from app.container import services
            from app.tasks import start_batch_training

            svc = services()
            if svc.models.current_version() is None:
                task_id = start_batch_training(svc, None, requested_by="sim start-up")
                logging.getLogger(__name__).info("no model yet: training one (task %s)", task_id)

    return celery


@worker_process_init.connect
def _dispose_pool_after_fork(**_kwargs: Any) -> None:
    """Prefork children must not share the parent's database connections."""
    db.dispose()
