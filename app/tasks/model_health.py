"""Thin Celery task for live model health: score the sessions whose labels arrived."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from app.container import services
from app.trading.model_health import ModelHealth


@shared_task(name="app.tasks.update_model_health", soft_time_limit=600, time_limit=660)
def update_model_health() -> dict[str, Any]:
    """After the close: realised rank IC per model version, gauges, and the Discord alert."""
    svc = services()
    return ModelHealth.of(svc).update(svc.venue.today())
