"""Alembic migrations build exactly the schema the ORM declares, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app.store import migrations
from app.store.orm import Base
from tests import support


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrate.db'}"
        return
    admin_url = support.postgres_url()
    if not support.postgres_reachable(admin_url):
        support.unavailable(f"PostgreSQL not reachable at {admin_url}")
    with support.scratch_postgres_database(admin_url) as url:
        yield url


def test_upgrade_matches_models_and_downgrade_empties(empty_database: str) -> None:
    migrations.upgrade(empty_database)
    engine = create_engine(empty_database)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert diff == []
            tables = set(inspect(conn).get_table_names())
        assert {
            "users",
            "orders",
            "fills",
            "signals",
            "equity_snapshots",
            "risk_state",
            "risk_events",
            "model_runs",
            "backtest_runs",
            "task_runs",
            "revoked_tokens",
        } <= tables
        assert migrations.current(empty_database) is not None
        migrations.downgrade(empty_database, "base")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        migrations.upgrade(empty_database)  # and back up again
    finally:
        engine.dispose()


def test_client_order_id_is_unique(empty_database: str) -> None:
    from sqlalchemy.exc import IntegrityError

    from app.store.database import Database
    from app.store.orm import OrderRecord

    migrations.upgrade(empty_database)
    database = Database()
    database.configure(empty_database)
    try:
        with database.session() as session:
            session.add(
                OrderRecord(client_order_id="c1", symbol="AAPL", side="buy", status="pending")
            )
        with pytest.raises(IntegrityError), database.session() as session:
            session.add(
                OrderRecord(client_order_id="c1", symbol="AAPL", side="buy", status="pending")
            )
    finally:
        database.engine.dispose()


def test_sqlite_runs_in_wal_mode_with_busy_timeout(tmp_path) -> None:
    from sqlalchemy import text

    from app.store.database import SQLITE_BUSY_TIMEOUT_MS, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == SQLITE_BUSY_TIMEOUT_MS
    engine.dispose()
