"""Heartbeats: one row per name holding when that work last happened.

The trading cycle runs in another process (or container) than the API; its Prometheus gauge is
not visible there, the database is."""

from __future__ import annotations

from datetime import UTC, datetime

from app.store.database import Database, upsert
from app.store.orm import Heartbeat

TRADING_CYCLE = "trading_cycle"


class HeartbeatStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def touch(self, name: str, at: datetime, detail: str | None = None) -> None:
        """One upsert: two cycles touching a name for the first time at once both succeed."""
        with self._db.session() as session:
            statement = upsert(
                session.get_bind().dialect.name, Heartbeat, ["name"], ["at", "detail"]
            )
            session.execute(statement, [{"name": name, "at": at, "detail": detail}])

    def last(self, name: str) -> tuple[datetime, str | None] | None:
        """When `name` last happened (timezone-aware) and its detail, or None if never."""
        with self._db.session() as session:
            row = session.get(Heartbeat, name)
            if row is None:
                return None
            at = row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC)  # SQLite drops the zone
            return at, row.detail

    def clear(self, name: str) -> None:
        with self._db.session() as session:
            row = session.get(Heartbeat, name)
            if row is not None:
                session.delete(row)
