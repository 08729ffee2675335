"""The daily divergence report as a Celery task (registered as "app.tasks.divergence_report")."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from app.backtest.divergence import DivergenceService
from app.container import services


@shared_task(name="app.tasks.divergence_report", soft_time_limit=1800, time_limit=1900)
def divergence_report() -> dict[str, Any]:
    """After the close: replay the live period through the backtest and report differences."""
    svc = services()
    through = svc.venue.last_closed_session()
    report = DivergenceService(
        settings=svc.settings, db=svc.db, market=svc.venue.market, notifier=svc.notifier
    ).publish(through)
    return {
        "status": report.status,
        "through": through.isoformat(),
        "counts": report.counts(),
        "max_fill_bps": round(report.max_fill_bps, 2),
    }
