"""The trading cycle with real Redis, real Celery worker processes, PostgreSQL and the real
alpaca-py against the loopback fake Alpaca: overlap and kill -9 never make a second order."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import delete, select

from app import create_app
from app.ai.store import ModelStore
from app.ai.training import train
from app.container import EXTENSION_KEY, Services
from app.extensions import db
from app.market.calendar import NyseCalendar
from app.market.sources import CsvMarketData
from app.store.orm import Base, OrderRecord
from app.trading.orders import OrderService
from tests import support
from tests.api.test_market_api import PAPER
from tests.fakes.fake_alpaca import FakeAlpaca

pytestmark = [pytest.mark.integration, pytest.mark.spread]

WATCH = ["AAPL", "MSFT", "KO", "PEP", "XOM", "JPM", "WMT", "INTC", "CSCO", "PFE", "SPY"]
START = datetime(2021, 11, 29, 15, 0, tzinfo=UTC)
STALE_AFTER_SECONDS = 120.0  # the cycle's "never reached the broker" window


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real model, trained on data before the test's trading day."""
    bars = CsvMarketData(support.SHARED_DATA).get_daily_bars(
        WATCH, date(2019, 1, 1), date(2021, 11, 26)
    )
    quick = {"lightgbm": {"num_boost_round": 40}, "xgboost": {"num_boost_round": 40}}
    bundle = train(bars, bars["SPY"], "pooled", date(2021, 11, 24), quick, n_lgbm=1, n_xgb=1)
    path = tmp_path_factory.mktemp("models")
    ModelStore(path).save(bundle)
    return path


@pytest.fixture
def stack(
    postgres_database_url: str, redis_test_url: str, model_dir: Path, tmp_path: Path
) -> Iterator[dict[str, Any]]:

    redis.Redis.from_url(redis_test_url).flushdb()
    with FakeAlpaca(support.SHARED_DATA, today=START.date()) as fake:
        fake.pre_open(START.date())  # the decision runs before the open
        settings = {
            **{k: str(v) for k, v in PAPER.items()},
            "ALPACA_TIMEOUT_SECONDS": "5",
            # Cycles seconds apart, not a session: Alpaca's 200 a minute would only add waits.
            "ALPACA_REQUESTS_PER_MINUTE": "10000",
            "ALPACA_BASE_URL": fake.base_url,
            "ALPACA_DATA_URL": fake.base_url,
            "DATABASE_URL": postgres_database_url,
            "REDIS_URL": redis_test_url,
            "DATABASE_DIR": str(tmp_path),
            "MODELS_DIR": str(model_dir),
            "WATCHLIST": ",".join(WATCH),
            # permissive thresholds: the small model's predictions turn into trades
            "AI_CONFIDENCE_THRESHOLD": "0",
            "AI_SIGNAL_BUY_THRESHOLD": "0.000001",
            "AI_SIGNAL_SELL_THRESHOLD": "-0.5",
            # the label the fixture's model was trained for (train's defaults)
            "AI_PREDICTION_HORIZON_DAYS": "1",
            "AI_LABEL_NORMALISATION": "raw",
            "LOG_LEVEL": "WARNING",
        }
        app = create_app(settings)
        yield {"fake": fake, "settings": settings, "app": app, "tmp": tmp_path}
        with db.session() as session:
            for table in reversed(Base.metadata.sorted_tables):
                session.execute(delete(table))


def start_worker(settings: dict[str, str], log: Path, concurrency: int) -> support.Process:
    env = support.service_env(**settings)
    args = [
        str(support.BIN / "celery"),
        "--app",
        "app.make_celery",
        "worker",
        "--queues",
        "trading",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "WARNING",
        "--hostname",
        f"{log.stem}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    return support.Process(args, env, log)


def wait_ready(celery: Celery, timeout: float = 60) -> None:
    support.wait_until(lambda: bool(celery.control.ping(timeout=0.5)), timeout, "a worker")


def assert_database_equals_book(fake: FakeAlpaca, services: Services | None = None) -> int:
    """What must hold at any timing: no client order id twice at the broker; every broker
    order has its row, with the broker's status; a row the broker never received is PENDING
    only while it may still be in flight, and a reconciliation after its window closes it.
    With `services`, that later reconciliation runs (its clock moved past the window)."""
    booked = Counter(o.client_order_id for o in fake.orders.values())
    duplicates = {cid: n for cid, n in booked.items() if n > 1}
    assert duplicates == {}
    by_cid = {o.client_order_id: o for o in fake.orders.values()}
    with db.session() as session:
        rows = session.scalars(select(OrderRecord)).all()
    assert set(by_cid) <= {r.client_order_id for r in rows}
    unsent = [r for r in rows if r.client_order_id not in by_cid]
    assert {r.status for r in unsent} <= {"rejected", "pending"}
    if services is not None and any(r.status == "pending" for r in unsent):
        latest = max(r.created_at.replace(tzinfo=r.created_at.tzinfo or UTC) for r in unsent)
        later = latest + timedelta(seconds=STALE_AFTER_SECONDS + 1)
        OrderService(services.db, services.venue.broker).reconcile_open_orders(
            stale_after_seconds=STALE_AFTER_SECONDS, now=later
        )
        with db.session() as session:
            rows = session.scalars(select(OrderRecord)).all()
    for row in rows:
        order = by_cid.get(row.client_order_id)
        if order is None:
            if services is not None:
                assert row.status == "rejected", (row.client_order_id, row.status)
        else:
            assert (row.status, row.filled_qty) == (order.status, pytest.approx(order.filled_qty))
    return len(rows)


def test_twenty_concurrent_runs_give_one_order_each(stack: dict[str, Any]) -> None:
    fake: FakeAlpaca = stack["fake"]
    # A lock that lapses at once: overlapping cycles must be safe by idempotency alone.
    settings = {**stack["settings"], "TRADING_LOCK_TTL_SECONDS": "0.001"}
    workers = [start_worker(settings, stack["tmp"] / f"w{i}.log", 4) for i in range(2)]
    celery: Celery = stack["app"].extensions["celery"]
    try:
        wait_ready(celery)
        results = [celery.send_task("app.tasks.smart_trading_pipeline") for _ in range(20)]
        outcomes = [r.get(timeout=120) for r in results]
    finally:
        for worker in workers:
            worker.stop()
    assert {o["status"] for o in outcomes} <= {"done", "skipped_locked", "already_decided"}
    assert sum(o["status"] == "done" for o in outcomes) >= 2, "the runs did overlap"
    keys = Counter((o.symbol, o.side) for o in fake.orders.values())
    assert keys, "the model's signals produced orders"
    assert max(keys.values()) == 1  # one order per (symbol, side) in this cycle
    services = stack["app"].extensions[EXTENSION_KEY]
    assert assert_database_equals_book(fake, services) == len(fake.orders)


@pytest.mark.timeout(900)
def test_kill_minus_nine_mid_cycle_leaves_no_duplicate(stack: dict[str, Any]) -> None:
    fake: FakeAlpaca = stack["fake"]
    celery: Celery = stack["app"].extensions["celery"]
    # A killed worker's lock lapses after its TTL (below the interval in production); a short
    # TTL lets this test run its cycles seconds apart instead of ten minutes.
    settings = {**stack["settings"], "TRADING_LOCK_TTL_SECONDS": "1"}
    rng = random.Random(7)
    lock_store = redis.Redis.from_url(stack["settings"]["REDIS_URL"])
    # What is proven is per kill: a SIGKILL at any moment of a cycle (before, between or after
    # its sends) leaves no duplicate and a database that reconciles to the book. What matters
    # is that the kill moments cover the cycle's span, not how many sessions there are: each of
    # the 12 kills lands in its own twelfth of the 0-4 s span (stratified), which covers it as
    # evenly as the 20 uniform draws this test used to make (those left gaps and clumps).
    kills = 12
    days = NyseCalendar().sessions_index(date(2021, 10, 28), START.date())
    sessions = [d.date() for d in days][-(kills + 1) :]
    fake.pre_open(sessions[-1])
    market = stack["app"].extensions[EXTENSION_KEY].venue.market
    # The bar cache warm: a decision fits between two kills.
    market.get_daily_bars(WATCH, sessions[0] - timedelta(days=200), START.date())
    for i, day in enumerate(sessions[:-1]):
        fake.pre_open(day)  # a new session, so a new decision each time
        with fake.lock:  # sold outside the bot: the next cycle has something to buy again
            fake.positions.clear()
            fake.cash = 100_000.0
        worker = start_worker(settings, stack["tmp"] / f"kill{i}.log", 1)
        wait_ready(celery)
        celery.send_task("app.tasks.smart_trading_pipeline")
        time.sleep((i + rng.random()) * 4.0 / kills)  # mid-cycle, at a moment of its own
        worker.stop(signal.SIGKILL)
        support.wait_until(
            lambda: not lock_store.exists("alpha:lock:trading-cycle"), 5, "the dead worker's lock"
        )
        fake.open_session(day)  # what the decision queued fills at the open
    fake.pre_open(sessions[-1])
    worker = start_worker(settings, stack["tmp"] / "final.log", 1)
    try:
        wait_ready(celery)
        outcome = celery.send_task("app.tasks.smart_trading_pipeline").get(timeout=120)
    finally:
        worker.stop()
    assert outcome["status"] == "done"
    services = stack["app"].extensions[EXTENSION_KEY]
    assert assert_database_equals_book(fake, services) >= len(fake.orders)
    decided = {o.client_order_id.split("-")[1] for o in fake.orders.values()}
    assert len(decided) >= 5, "kills landed mid-cycle with orders already sent in several cycles"
