"""Celery settings as data: broker and backend URLs, queues, and the beat schedule (UTC)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.schedules import crontab
from kombu.entity import Queue

from app.config import Settings, TradingMode

TRAINING_QUEUE = "training"
EMBEDDED_TRANSPORT = "app.tasks.embedded_broker:Transport"
#: Trading cycles have a queue and a worker slot of their own (the Procfile's `trader`,
#: compose's `celery_trader`), so no pile of training, tuning or backtests can delay a cycle.
TRADING_QUEUE = "trading"
CYCLE_WATCH_SECONDS = 30


#: The decision cycle's triggers: every 10 minutes 11:00-13:20 UTC, Monday to Friday. In New
#: York that is 06:00-08:20 (EST) or 07:00-09:20 (EDT): always inside Alpaca's market-on-open
#: window (19:00 the evening before until 09:28) and after the previous close. The first
#: trigger of a session decides; the rest are no-ops.
DECISION_TRIGGERS = (("11-12", "*/10"), ("13", "0,10,20"))


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Decision triggers before the open, guard cycles every TRADING_CYCLE_MINUTES while the
    market may be open (the seed's schedule); model health and the divergence report after
    the close; nightly tuning and training chained in one entry. Every entry expires before its
    next run, so a backlog never piles up. Sim: one replayed session (decision, open, guard,
    close) every SIM_CYCLE_SECONDS, the daily reports every few replayed sessions."""
    every = settings.trading_cycle_minutes
    trading = {"queue": TRADING_QUEUE}
    cycles: dict[str, dict[str, Any]] = {}
    if settings.trading_mode is TradingMode.SIM:
        session = settings.sim_cycle_seconds
        cycles["smart-trading-pipeline"] = {
            "task": "app.tasks.smart_trading_pipeline",
            "schedule": timedelta(seconds=session),
            "options": {"expires": max(1.0, session - 1), **trading},
        }
        health: Any = timedelta(seconds=max(10.0, 5 * session))
        health_expires = max(5.0, 5 * session - 1)
        divergence: Any = timedelta(seconds=10 * session)
    else:
        for i, (hours, minutes) in enumerate(DECISION_TRIGGERS):
            cycles[f"decision-cycle-{i + 1}"] = {
                "task": "app.tasks.smart_trading_pipeline",
                "schedule": crontab(minute=minutes, hour=hours, day_of_week="mon-fri"),
                "options": {"expires": 540, **trading},
            }
        cycles["guard-cycle"] = {
            "task": "app.tasks.guard_cycle",
            "schedule": crontab(
                minute=f"*/{every}", hour=settings.trading_hours_utc, day_of_week="mon-fri"
            ),
            "options": {"expires": max(30, every * 60 - 60), **trading},
        }
        health, health_expires = crontab(hour=21, minute=30, day_of_week="mon-fri"), 3600
        divergence = crontab(hour=21, minute=45, day_of_week="mon-fri")
    return {
        **cycles,
        "daily-summary": {
            "task": "app.tasks.daily_summary",
            "schedule": crontab(hour=21, minute=15, day_of_week="mon-fri"),
            "options": {"expires": 3600},
        },
        "model-health": {
            "task": "app.tasks.update_model_health",
            "schedule": health,
            "options": {"expires": health_expires, "queue": "default"},
        },
        "divergence-report": {
            "task": "app.tasks.divergence_report",
            "schedule": divergence,
            "options": {"expires": 3600},
        },
        # Served by the training worker, so a dead trader or a dead beat's silence is noticed
        # (cycle_watch.py: a Discord alert once per stale spell).
        "cycle-watch": {
            "task": "app.tasks.watch_trading_cycle",
            "schedule": timedelta(seconds=CYCLE_WATCH_SECONDS),
            "options": {"expires": CYCLE_WATCH_SECONDS - 5, "queue": "default"},
        },
        "nightly-tune-then-train": {
            "task": "app.tasks.nightly_tune_then_train",
            "schedule": crontab(hour=settings.nightly_hour_utc, minute=0, day_of_week="mon-fri"),
            "options": {"expires": 60 * 60, "queue": TRAINING_QUEUE},
        },
    }


def celery_settings(settings: Settings) -> dict[str, Any]:
    broker_options: dict[str, Any] = {}
    if settings.uses_embedded_broker:
        # kombu hands these to create_engine: wait on SQLite locks instead of failing.
        broker_options = {"connect_args": {"timeout": 30}}
    return {
        "imports": (
            "app.tasks.trading",
            "app.tasks.training",
            "app.tasks.backtest",
            "app.tasks.walk_forward",
            "app.tasks.model_health",
            "app.tasks.divergence",
            "app.tasks.cycle_watch",
        ),
        "broker_url": settings.broker_url,
        "broker_transport": EMBEDDED_TRANSPORT if settings.uses_embedded_broker else None,
        "result_backend": settings.result_backend,
        "broker_transport_options": broker_options,
        "broker_connection_retry_on_startup": True,
        "task_ignore_result": False,
        "result_extended": True,
        "result_expires": 7 * 24 * 3600,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_track_started": True,
        "task_default_queue": "default",
        "task_queues": (
            Queue("default"),  # type: ignore[no-untyped-call]
            Queue(TRAINING_QUEUE),  # type: ignore[no-untyped-call]
            Queue(TRADING_QUEUE),  # type: ignore[no-untyped-call]
        ),
        "task_routes": {
            "app.tasks.smart_trading_pipeline": {"queue": TRADING_QUEUE},
            "app.tasks.guard_cycle": {"queue": TRADING_QUEUE},
            "app.tasks.train_*": {"queue": TRAINING_QUEUE},
            "app.tasks.optimize_*": {"queue": TRAINING_QUEUE},
            "app.tasks.nightly_*": {"queue": TRAINING_QUEUE},
            "app.tasks.walk_forward_*": {"queue": TRAINING_QUEUE},
            "app.tasks.finish_backtest": {"queue": TRAINING_QUEUE},
        },
        "task_always_eager": settings.celery_always_eager,
        "task_eager_propagates": settings.celery_always_eager,
        "task_store_eager_result": settings.celery_always_eager,
        "beat_schedule": beat_schedule(settings),
        "beat_schedule_filename": str(settings.database_dir / "celerybeat-schedule"),
    }
