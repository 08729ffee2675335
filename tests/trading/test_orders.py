"""After every broker fault the orders in the database match the broker's book, and no
client_order_id is ever booked twice."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime

import pytest
from flask import Flask
from sqlalchemy import func, select

from app.broker.alpaca import AlpacaBroker
from app.broker.alpaca_client import RetryPolicy
from app.broker.rate_limit import SlidingWindowLimiter
from app.domain import OrderRequest, Side
from app.extensions import db
from app.store.orm import FillRecord, OrderRecord
from app.trading.orders import OrderService
from tests.fakes.fake_alpaca import FakeAlpaca
from tests.support import SHARED_DATA

FAST = RetryPolicy(max_retries=4, backoff_base=0.01, backoff_max=0.05, max_total_wait=2.0)


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca(SHARED_DATA, today=date(2021, 12, 31), hang_seconds=5) as f:
        f.set_clock(datetime(2021, 12, 30, 15, 0, tzinfo=UTC), is_open=True)
        yield f


@pytest.fixture
def broker(fake: FakeAlpaca) -> Iterator[AlpacaBroker]:
    b = AlpacaBroker(
        "key",
        "secret",
        base_url=fake.base_url,
        timeout=2.0,  # the hang faults sleep 5 s; a loaded machine still answers in time
        retry=FAST,
        limiter=SlidingWindowLimiter(100_000, 60.0),
    )
    yield b
    b.close()


@pytest.fixture
def orders(app: Flask, broker: AlpacaBroker) -> OrderService:
    return OrderService(db, broker)


def buy(qty: float = 5) -> OrderRequest:
    return OrderRequest("AAPL", Side.BUY, f"t-{uuid.uuid4().hex[:10]}", qty=qty)


def assert_database_equals_book(fake: FakeAlpaca) -> None:
    with db.session() as session:
        rows = session.scalars(select(OrderRecord)).all()
        fills = dict(
            session.execute(
                select(FillRecord.order_id, func.sum(FillRecord.qty)).group_by(FillRecord.order_id)
            ).all()
        )
    for row in rows:
        booked = fake.orders_for_client_id(row.client_order_id)
        assert len(booked) <= 1, f"{row.client_order_id} booked {len(booked)} times"
        if not booked:
            assert row.status == "rejected", (row.client_order_id, row.status)
            continue
        assert row.status == booked[0].status
        assert row.filled_qty == pytest.approx(booked[0].filled_qty)
        assert fills.get(row.id, 0.0) == pytest.approx(booked[0].filled_qty)
    db_ids = {r.client_order_id for r in rows}
    assert {o.client_order_id for o in fake.orders.values()} <= db_ids


@pytest.mark.parametrize(
    "fault",
    [
        None,
        "504_after_accept",
        "hang_after_accept",
        "drop_after_accept",
        "500",
        "504",
        "429",
        "drop",
    ],
)
def test_placement_under_fault_matches_book(
    fake: FakeAlpaca, orders: OrderService, fault: str | None
) -> None:
    if fault:
        fake.inject("POST /v2/orders", fault, times=1)
    request = buy()
    placement = orders.place(request, reason="test")
    assert placement.order is not None, placement.error
    assert placement.order.status.value == "filled"
    assert len(fake.orders_for_client_id(request.client_order_id)) == 1
    orders.reconcile_open_orders()
    assert_database_equals_book(fake)


def test_duplicate_id_rejection_is_looked_up(
    fake: FakeAlpaca, broker: AlpacaBroker, orders: OrderService
) -> None:
    request = buy()
    broker.submit_market_order(request)  # booked by an earlier, lost attempt
    placement = orders.place(request)
    assert placement.order is not None
    assert len(fake.orders_for_client_id(request.client_order_id)) == 1
    assert_database_equals_book(fake)


def test_second_placement_of_same_id_is_never_sent(fake: FakeAlpaca, orders: OrderService) -> None:
    request = buy()
    orders.place(request)
    fake.reset_counts()
    again = orders.place(request)
    assert again.sent is False
    assert fake.count("POST /v2/orders") == 0
    assert len(fake.orders_for_client_id(request.client_order_id)) == 1
    assert_database_equals_book(fake)


def test_partial_fill_then_completion(fake: FakeAlpaca, orders: OrderService) -> None:
    fake.inject("POST /v2/orders", "partial", times=1)
    request = buy(10)
    placement = orders.place(request)
    assert placement.order is not None
    assert placement.order.status.value == "partially_filled"
    assert_database_equals_book(fake)
    fake.fill_open_orders()
    assert orders.reconcile_open_orders() == [request.client_order_id]
    assert_database_equals_book(fake)
    with db.session() as session:
        fills = session.scalars(select(FillRecord.qty)).all()
    assert sorted(fills) == [5.0, 5.0]


def test_unknown_outcome_stays_pending_then_reconciles(
    fake: FakeAlpaca, orders: OrderService
) -> None:
    fake.inject("POST /v2/orders", "hang", times=1)
    fake.inject("GET /v2/orders:by_client_order_id", "500", times=20)
    request = buy()
    placement = orders.place(request)
    assert placement.order is None
    with db.session() as session:
        assert session.scalar(select(OrderRecord.status)) == "pending"
    fake.clear_faults()
    orders.reconcile_open_orders()  # too fresh to call lost: still pending
    orders.reconcile_open_orders(stale_after_seconds=0)
    assert_database_equals_book(fake)


def test_order_opened_by_hand_is_recorded(
    fake: FakeAlpaca, broker: AlpacaBroker, orders: OrderService
) -> None:
    fake.set_clock(datetime(2021, 12, 30, 22, 0, tzinfo=UTC), is_open=False)
    request = buy()
    broker.submit_market_order(request)  # stays open: the market is closed
    orders.sync(request.client_order_id)
    assert_database_equals_book(fake)


def test_pending_row_unknown_to_the_broker_is_closed_only_after_its_window(
    orders: OrderService,
) -> None:
    """A row written PENDING by a process killed before it sent: left alone while it may still
    be in flight, closed as REJECTED by the first reconciliation after its window."""
    request = buy()
    with db.session() as session:
        session.add(
            OrderRecord(
                client_order_id=request.client_order_id,
                symbol="AAPL",
                side="buy",
                qty=5,
                status="pending",
                created_at=datetime(2021, 12, 30, 15, 0, tzinfo=UTC),
            )
        )
    inside = datetime(2021, 12, 30, 15, 1, 59, tzinfo=UTC)
    assert orders.reconcile_open_orders(stale_after_seconds=120, now=inside) == []
    with db.session() as session:
        assert session.scalar(select(OrderRecord.status)) == "pending"
    after = datetime(2021, 12, 30, 15, 2, 1, tzinfo=UTC)
    assert orders.reconcile_open_orders(stale_after_seconds=120, now=after) == [
        request.client_order_id
    ]
    with db.session() as session:
        assert session.scalar(select(OrderRecord.status)) == "rejected"
