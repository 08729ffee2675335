"""Shared fixtures: settings, a migrated database per backend, the app, a client, auth."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import delete, event

from app import create_app
from app.config import Settings
from app.extensions import db, limiter
from app.store import migrations
from app.store.orm import Base
from tests import support

# Settings a developer's shell could carry must not leak into tests.
for _key in list(os.environ):
    if _key.lower() in Settings.model_fields:
        del os.environ[_key]
os.environ["ENV_FILE"] = ""  # never read a developer's .env in tests
# The suite's tests were written for the strategy before round 3 (the watchlist, round 2's
# signal rule, the seed's exits): they run under that documented preset. Tests of the defaults
# (tests/test_config.py) and of a new user's `make run` clear it.
os.environ.update(support.seed_preset())


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
    migrations.upgrade(url)
    return url


@pytest.fixture(scope="session")
def postgres_database_url() -> Iterator[str]:
    admin_url = support.postgres_url()
    if not support.postgres_reachable(admin_url):
        support.unavailable(f"PostgreSQL not reachable at {admin_url}")
    with support.scratch_postgres_database(admin_url) as url:
        migrations.upgrade(url)
        yield url


@pytest.fixture(scope="session")
def redis_test_url() -> str:
    url = support.redis_url()
    if not support.redis_reachable(url):
        support.unavailable(f"Redis not reachable at {url}")
    return url


BACKENDS = ["sqlite", "postgres+redis"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings overrides for a backend: SQLite with the embedded broker, or PostgreSQL+Redis."""
    tmp: Path = request.getfixturevalue("tmp_path")
    overrides: dict[str, Any] = {
        "DATABASE_DIR": str(tmp),
        "LOG_LEVEL": "WARNING",
        "SIM_AUTO_TRAIN": False,  # workers started by tests do only what the test sends
    }
    if request.param == "sqlite":
        overrides["DATABASE_URL"] = request.getfixturevalue("sqlite_url")
    else:
        overrides["DATABASE_URL"] = request.getfixturevalue("postgres_database_url")
        overrides["REDIS_URL"] = request.getfixturevalue("redis_test_url")
    return overrides


@pytest.fixture
def make_app(backend: dict[str, Any]) -> Iterator[Callable[..., Flask]]:
    """Build apps on the test's backend; tables are emptied afterwards."""

    def factory(**overrides: Any) -> Flask:
        return create_app({**backend, **overrides})

    yield factory
    with contextlib.suppress(RedisError):  # a test may point the limiter at a dead Redis
        limiter.reset()
    if backend.get("REDIS_URL"):  # cached answers, counters and revoked tokens of this test
        Redis.from_url(backend["REDIS_URL"]).flushdb()
    with db.session() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(delete(table))


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@contextlib.contextmanager
def sql_statements() -> Iterator[list[str]]:
    """Every SQL statement the app's database is sent meanwhile (an executemany once)."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        sent.append(sql)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(db.engine, "before_cursor_execute", record)


class Auth:
    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def login(self, username: str = "admin", password: str = "password") -> dict[str, Any]:
        response = self.client.post(
            "/api/auth/login", json={"username": username, "password": password}
        )
        assert response.status_code == 200, response.get_json()
        return dict(response.get_json())

    def headers(self, token: str | None = None) -> dict[str, str]:
        token = token or self.login()["access_token"]
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def auth(client: FlaskClient) -> Auth:
    return Auth(client)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Schedule for pytest-xdist (`make test`): end-to-end tests first, so the long ones start at
    once and the many short ones fill the gaps (the run ends soon after its longest test instead
    of starting it last); a file's tests stay on one worker, sharing its module fixtures (trained
    models, loaded bars), unless the file is marked `spread` (long, independent tests). Stable:
    each group keeps its file order."""
    items.sort(key=lambda item: item.get_closest_marker("integration") is None)
    for item in items:
        if item.get_closest_marker("spread") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
