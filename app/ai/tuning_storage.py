"""Optuna's RDB storage, shared by every worker that tunes one study.

Optuna keeps its schema version in an Alembic ``alembic_version`` table, the same table the app's
migrations use, so on PostgreSQL the studies live in their own schema (``optuna``, via the
connection's search_path); SQLite has no schemas, so the app's SQLite database gets a sibling file
(``storage_url_for``), which also keeps tuning writes off the app database's single write lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.ai.params import _fail
from app.store.database import private_sqlite_file

#: PostgreSQL schema holding Optuna's tables (its own alembic_version included).
OPTUNA_SCHEMA = "optuna"
#: Seconds a SQLite writer waits for another process's lock before failing.
SQLITE_TIMEOUT_SECONDS = 120.0
#: Serialises first-time creation of Optuna's tables across processes (PostgreSQL).
_PG_INIT_LOCK_KEY = zlib.crc32(b"alpha-trader/optuna-storage-init")
# Storage
# --------------------------------------------------------------------------------------------


def storage_url_for(sql_url: str) -> str:
    """The Optuna storage URL that goes with the app's database URL (``settings.sql_url``).

    PostgreSQL: the same database (``make_storage`` puts the tables in schema ``optuna``).
    SQLite: a sibling file ``<name>-optuna.db``, because SQLite has no schemas.
    """
    url = make_url(sql_url)
    if url.get_backend_name() != "sqlite":
        return sql_url
    if not url.database or url.database == ":memory:":
        raise _fail("storage_url", "an in-memory SQLite database cannot be shared by processes")
    path = Path(url.database)
    sibling = path.with_name(f"{path.stem}-optuna{path.suffix or '.db'}")
    return url.set(database=str(sibling)).render_as_string(hide_password=False)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock between processes on this host."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare_sqlite(path: Path) -> None:
    """WAL (readers do not block the writer) and a refusal to share another app's file."""
    connection = sqlite3.connect(path, timeout=SQLITE_TIMEOUT_SECONDS)
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        if "alembic_version" in tables and "version_info" not in tables:
            raise _fail(
                "storage_url",
                f"{path} holds another application's Alembic schema; Optuna's would clash with "
                "it. Use storage_url_for(settings.sql_url) or a separate file.",
            )
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()


def make_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDBStorage that several processes can share safely; see the module docstring.

    First-time table creation (create_all + Alembic stamp) is not safe against a concurrent
    first-timer, so it runs under a cross-process lock: a file lock for SQLite, an advisory
    lock for PostgreSQL.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise _fail("storage_url", "an in-memory SQLite database cannot be shared")
        path = Path(parsed.database)
        private_sqlite_file(url)
        kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS}}
        with _file_lock(path.with_name(f".{path.name}.lock")):
            _prepare_sqlite(path)
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    if backend == "postgresql":
        kwargs = {
            "connect_args": {"options": f"-c search_path={OPTUNA_SCHEMA}"},
            "pool_pre_ping": True,
        }
        admin = create_engine(url)
        try:
            with admin.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_INIT_LOCK_KEY})
                try:
                    conn.execute(text('CREATE SCHEMA IF NOT EXISTS "optuna"'))
                    conn.commit()
                    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
                finally:
                    conn.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_INIT_LOCK_KEY}
                    )
                    conn.commit()
        finally:
            admin.dispose()
    # Other backends (MySQL): a database of their own is the caller's choice.
    return optuna.storages.RDBStorage(url)


def _close_storage(storage: optuna.storages.RDBStorage) -> None:
    storage.remove_session()
    storage.engine.dispose()


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
