"""Protective OCO exits as Alpaca reports them, and the feed the daily bars come from: the real
alpaca-py against the loopback fake, which (like Alpaca) lists an OCO's legs only in nested reads.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, time, timedelta
from typing import Any

import pytest
import requests

from app import domain
from app.broker.alpaca import AlpacaBroker
from app.broker.alpaca_data import AlpacaMarketData
from app.broker.venue import alpaca_market_data
from app.config import load_settings
from tests.broker.test_alpaca import FAST, NY, roomy_limiter
from tests.fakes.fake_alpaca import FakeAlpaca


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca() as f:
        f.set_position("AAPL", 10, 100.0)
        yield f


@pytest.fixture
def broker(fake: FakeAlpaca) -> Iterator[AlpacaBroker]:
    b = AlpacaBroker(
        "key", "secret", base_url=fake.base_url, timeout=5.0, limiter=roomy_limiter(), retry=FAST
    )
    yield b
    b.close()


def protect(broker: AlpacaBroker) -> domain.ProtectiveRequest:
    request = domain.ProtectiveRequest("AAPL", f"oco-{uuid.uuid4().hex[:10]}", 10, 110.0, 95.0)
    placed = broker.submit_protective_order(request)
    assert (placed.status, placed.stop_price, placed.limit_price) == (
        domain.OrderStatus.NEW,
        95.0,
        110.0,
    )
    return request


def test_the_fake_lists_oco_legs_only_in_nested_reads(
    broker: AlpacaBroker, fake: FakeAlpaca
) -> None:
    request = protect(broker)
    session = requests.Session()
    session.headers.update({"APCA-API-KEY-ID": "key", "APCA-API-SECRET-KEY": "secret"})

    def get(path: str, **params: str) -> dict[str, Any]:
        response = session.get(f"{fake.base_url}{path}", params=params, timeout=5)
        answer: dict[str, Any] = response.json()
        return answer

    flat = get("/v2/orders:by_client_order_id", client_order_id=request.client_order_id)
    assert flat["legs"] is None
    assert get(f"/v2/orders/{flat['id']}")["legs"] is None
    (leg,) = get(f"/v2/orders/{flat['id']}", nested="true")["legs"]
    assert (leg["type"], leg["stop_price"]) == ("stop", "95")


def test_a_stop_fill_is_seen_by_the_lookup_by_client_id(
    broker: AlpacaBroker, fake: FakeAlpaca
) -> None:
    """The lookup by client id answers without legs; the stop leg's fill is still seen."""
    request = protect(broker)
    fake.fill_oco_leg(request.client_order_id, "stop", 94.5)
    order = broker.get_order_by_client_id(request.client_order_id)
    assert order is not None
    assert (order.status, order.filled_qty, order.filled_avg_price) == (
        domain.OrderStatus.FILLED,
        10,
        94.5,
    )
    assert (order.stop_price, order.limit_price, order.exit_kind) == (95.0, 110.0, "stop_loss")
    assert "AAPL" not in fake.positions


@pytest.mark.parametrize(
    ("leg", "price", "kind"),
    [
        ("stop", 96.0, "stop_loss"),  # a stop filled above its stop price (a rebound)
        ("limit", 112.0, "take_profit"),  # a take-profit filled above its limit (a gap)
        ("stop", 94.0, "stop_loss"),
        ("limit", 110.0, "take_profit"),
    ],
)
def test_the_exit_kind_is_the_leg_that_filled_not_a_price_rule(
    broker: AlpacaBroker, fake: FakeAlpaca, leg: str, price: float, kind: str
) -> None:
    request = protect(broker)
    fake.fill_oco_leg(request.client_order_id, leg, price)
    order = broker.get_order_by_client_id(request.client_order_id)
    assert order is not None
    assert (order.filled_avg_price, order.exit_kind) == (price, kind)


def test_sip_is_the_default_feed_of_the_daily_bars(fake: FakeAlpaca) -> None:
    """The daily bars come from SIP, the consolidated tape the models are trained on (a closed
    session's bars are free on it once 15 minutes old); the latest trade stays on IEX, the free
    real-time feed."""
    settings = load_settings(
        {"ALPACA_API_KEY": "key", "ALPACA_API_SECRET": "secret", "ALPACA_DATA_URL": fake.base_url}
    )
    assert (settings.alpaca_data_feed, settings.alpaca_latest_feed) == ("sip", "iex")
    data = alpaca_market_data(settings, roomy_limiter())
    try:
        bars = data.get_daily_bars(["AAPL"], fake.today - timedelta(days=10), fake.today)
        price = data.get_latest_price("AAPL")
    finally:
        data.close()
    assert len(bars["AAPL"]) > 0
    assert price == fake.price("AAPL")
    feeds = {route: q.get("feed") for route, q in fake.request_queries}
    assert feeds == {"GET /v2/stocks/bars": "sip", "GET /v2/stocks/trades/latest": "iex"}


def test_sip_bars_are_asked_for_only_once_15_minutes_old(fake: FakeAlpaca) -> None:
    """Alpaca's free plan refuses SIP data younger than 15 minutes (403): at 16:05 New York a
    request for the session's bars ends 16 minutes before now instead of at midnight."""
    fake.sip_delay = timedelta(minutes=15)
    day = fake.today
    fake.set_clock(datetime.combine(day, time(16, 5), NY), is_open=False)
    data = AlpacaMarketData(
        "key", "secret", data_url=fake.base_url, limiter=roomy_limiter(), retry=FAST, now=fake.now
    )
    try:
        bars = data.get_daily_bars(["AAPL"], day - timedelta(days=10), day)["AAPL"]
    finally:
        data.close()
    assert bars.index[-1].date() == day
    (end,) = [q["end"] for route, q in fake.request_queries if route == "GET /v2/stocks/bars"]
    assert datetime.fromisoformat(end.replace("Z", "+00:00")) == fake.now() - timedelta(minutes=16)


def test_the_fake_refuses_a_fractional_market_on_open_order_as_alpaca_does(
    fake: FakeAlpaca,
) -> None:
    """What the decision's split of a fractional exit (whole shares OPG, fraction DAY) is for."""
    fake.set_clock(datetime.combine(fake.today, time(8, 0), NY), is_open=False)
    session = requests.Session()
    session.headers.update({"APCA-API-KEY-ID": "key", "APCA-API-SECRET-KEY": "secret"})
    order = {"symbol": "AAPL", "side": "sell", "type": "market", "qty": "0.5"}
    opg = session.post(
        f"{fake.base_url}/v2/orders", json={**order, "time_in_force": "opg"}, timeout=5
    )
    assert opg.status_code == 422
    assert "DAY" in opg.json()["message"]
    day = session.post(
        f"{fake.base_url}/v2/orders", json={**order, "time_in_force": "day"}, timeout=5
    )
    assert (day.status_code, day.json()["status"]) == (200, "new")  # queued for the open
