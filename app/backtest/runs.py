"""Backtest runs in the database (BacktestRun): written before the task is sent, finished by it.

A row exists from the moment the API hands out the task id, so GET /api/backtest/<id> can tell
an unknown id (404) from a queued run, and the result survives Celery's result expiry.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from app.store.database import Database
from app.store.orm import BacktestRun

__all__ = ["BacktestRunStore", "RunStatus"]


class RunStatus:
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


class BacktestRunStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, task_id: str, params: dict[str, Any]) -> None:
        with self._db.session() as session:
            session.add(BacktestRun(task_id=task_id, status=RunStatus.PENDING, params=params))

    def running(self, task_id: str, params: dict[str, Any] | None = None) -> None:
        """Mark a run started (creating its row when the task was sent some other way)."""
        with self._db.session() as session:
            row = self._row(session, task_id)
            if row is None:
                row = BacktestRun(task_id=task_id, status=RunStatus.RUNNING, params=params or {})
                session.add(row)
            row.status = RunStatus.RUNNING

    def finish(self, task_id: str, result: dict[str, Any]) -> None:
        self._end(task_id, RunStatus.SUCCESS, result)

    def fail(self, task_id: str, error: str) -> None:
        self._end(task_id, RunStatus.FAILURE, {"status": "error", "error": error[:2000]})

    def get(self, task_id: str) -> dict[str, Any] | None:
        with self._db.session() as session:
            row = self._row(session, task_id)
            if row is None:
                return None
            return {
                "task_id": row.task_id,
                "status": row.status,
                "params": row.params,
                "result": row.result,
                "created_at": _utc(row.created_at),
                "finished_at": _utc(row.finished_at),
            }

    def _end(self, task_id: str, status: str, result: dict[str, Any]) -> None:
        with self._db.session() as session:
            row = self._row(session, task_id)
            if row is None:
                row = BacktestRun(task_id=task_id, params={})
                session.add(row)
            row.status = status
            row.result = result
            row.finished_at = datetime.now(UTC)

    @staticmethod
    def _row(session: Any, task_id: str) -> BacktestRun | None:
        row: BacktestRun | None = session.scalar(
            select(BacktestRun).where(BacktestRun.task_id == task_id).order_by(BacktestRun.id)
        )
        return row


def _utc(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite drops the zone; we store UTC
        value = value.replace(tzinfo=UTC)
    return value.isoformat()
