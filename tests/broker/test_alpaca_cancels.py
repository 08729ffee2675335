"""Alpaca cancels asynchronously: AlpacaBroker.cancel_order returns only once the broker confirms
the order ended, so the shares it held are free. The real alpaca-py against the loopback fake in
its pending-cancel mode (a cancel stays `pending_cancel`, its shares held, for a few reads).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest

from app import domain, errors
from app.broker.alpaca import AlpacaBroker
from tests.broker.test_alpaca import FAST, NY, roomy_limiter
from tests.fakes.fake_alpaca import FakeAlpaca

CLOSED = datetime(2021, 12, 30, 18, 0, tzinfo=NY)  # after the close: orders wait for the open


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca() as f:
        f.set_clock(CLOSED)
        f.set_position("AAPL", 10, 150.0)
        yield f


def make_broker(fake: FakeAlpaca, cancel_confirm_timeout: float = 5.0) -> AlpacaBroker:
    return AlpacaBroker(
        "key",
        "secret",
        base_url=fake.base_url,
        timeout=2.0,
        limiter=roomy_limiter(),
        retry=FAST,
        cancel_confirm_timeout=cancel_confirm_timeout,
    )


def protect(broker: AlpacaBroker, cid: str = "alpha-20211230-protect1-AAPL-sell") -> str:
    broker.submit_protective_order(domain.ProtectiveRequest("AAPL", cid, 10, 180.0, 140.0))
    return cid


def sell_all(cid: str = "alpha-20211230-signal_sell-AAPL-sell") -> domain.OrderRequest:
    return domain.OrderRequest(
        "AAPL", domain.Side.SELL, cid, qty=10, time_in_force=domain.TimeInForce.OPG
    )


def test_a_cancel_returns_once_confirmed_and_the_shares_can_be_sold(fake: FakeAlpaca) -> None:
    broker = make_broker(fake)
    cid = protect(broker)
    fake.pending_cancel_reads = 3
    broker.cancel_order(cid)
    booked = fake.order_by_client_id(cid)
    assert booked is not None
    assert booked.status == "canceled"
    assert booked.legs[0].status == "canceled"
    order = broker.submit_market_order(sell_all())  # the shares are free: accepted
    assert order.status is domain.OrderStatus.NEW
    broker.cancel_order(cid)  # ended: a no-op
    assert fake.count("DELETE /v2/orders/*") == 1


def test_the_fake_refuses_a_sell_of_shares_a_pending_cancel_holds(fake: FakeAlpaca) -> None:
    """What the wait prevents: the exit refused for shares the OCO still holds."""
    broker = make_broker(fake)
    cid = protect(broker)
    fake.pending_cancel_reads = 10**9
    with pytest.raises(errors.CancelPending, match="pending_cancel"):
        make_broker(fake, cancel_confirm_timeout=0.3).cancel_order(cid)
    with pytest.raises(errors.OrderRejected, match="insufficient qty available"):
        broker.submit_market_order(sell_all())
    booked = fake.order_by_client_id(cid)
    assert booked is not None
    assert booked.status == "pending_cancel"


def test_a_pending_cancel_is_waited_for_not_sent_again(fake: FakeAlpaca) -> None:
    broker = make_broker(fake)
    cid = protect(broker)
    fake.pending_cancel_reads = 10**9
    with pytest.raises(errors.CancelPending):
        make_broker(fake, cancel_confirm_timeout=0.2).cancel_order(cid)
    fake.pending_cancel_reads = 0
    booked = fake.order_by_client_id(cid)
    assert booked is not None
    booked.reads_until_canceled = 2  # the broker confirms on a later read
    broker.cancel_order(cid)
    assert booked.status == "canceled"
    assert fake.count("DELETE /v2/orders/*") == 1


def test_a_refused_cancel_raises_order_rejected(fake: FakeAlpaca) -> None:
    broker = make_broker(fake)
    cid = protect(broker)
    fake.refuse_cancel.add("AAPL")
    with pytest.raises(errors.OrderRejected, match="not cancelable"):
        broker.cancel_order(cid)
