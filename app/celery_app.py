"""celery_init_app: Flask's pattern, so every task runs inside the app context."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_init
from flask import Flask

from app.celery_config import celery_settings
from app.config import Settings
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
    return celery


@worker_process_init.connect
def _dispose_pool_after_fork(**_kwargs: Any) -> None:
    """Prefork children must not share the parent's database connections."""
    db.dispose()
