"""The one session scope over the service's database, and its engine's lifecycle.

Plain SQLAlchemy rather than Flask-SQLAlchemy, so Celery tasks, the CLI and backtests use the
same sessions as the API without an app context.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Owner only, like DATABASE_DIR/secret_key: the files hold users, password hashes and orders.
SQLITE_FILE_MODE = 0o600


class Database:
    """Holds the engine and session factory; created unbound, bound by `configure`."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None

    def configure(self, url: str) -> None:
        if self._engine is not None:
            self._engine.dispose()
        self._engine = make_engine(url)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("database is not configured; call create_app first")
        return self._engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back if it raises."""
        if self._sessions is None:
            raise RuntimeError("database is not configured; call create_app first")
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        """Drop pooled connections inherited over fork; each child opens its own."""
        if self._engine is not None:
            self._engine.dispose(close=False)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def has_table(self, name: str) -> bool:
        return inspect(self.engine).has_table(name)


def make_engine(url: str) -> Engine:
    """SQLite gets WAL and a busy timeout so API, worker and beat can share one file."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        private_sqlite_file(url)
    engine = create_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    return engine


def private_sqlite_file(url: str) -> None:
    """Make the file of a SQLite URL (`sqlite:///...`, also Celery's `db+sqlite:///...`)
    readable by its owner only before anything opens it: created empty with mode 0600 (SQLite
    gives its -wal and -shm files the database's mode), an existing one and its companions
    tightened. Other URLs are left alone."""
    parsed = make_url(url.removeprefix("db+"))
    name = parsed.database
    if parsed.get_backend_name() != "sqlite" or not name or name == ":memory:":
        return
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, SQLITE_FILE_MODE))
        for file in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
            with suppress(FileNotFoundError):
                file.chmod(SQLITE_FILE_MODE)
    except PermissionError as exc:  # another user's file: theirs to protect
        log.warning("cannot make %s private: %s", path, exc)


def dialect_insert(dialect: str) -> Any:
    """The INSERT construct with ON CONFLICT support for this dialect (PostgreSQL or SQLite)."""
    return pg_insert if dialect == "postgresql" else sqlite_insert


def upsert(dialect: str, model: type, keys: list[str], update: list[str]) -> Any:
    """INSERT ... ON CONFLICT for PostgreSQL and SQLite: update `update`, or do nothing. One
    statement, so concurrent writers of the same key never race a read-then-insert."""
    statement = dialect_insert(dialect)(model)
    if not update:
        return statement.on_conflict_do_nothing(index_elements=keys)
    return statement.on_conflict_do_update(
        index_elements=keys, set_={col: statement.excluded[col] for col in update}
    )
