"""The fake's wire contract, checked with plain `requests` (and alpaca-py where it parses)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
import requests

from app.broker.alpaca import AlpacaBroker
from app.broker.rate_limit import SlidingWindowLimiter
from tests.fakes.fake_alpaca import DUPLICATE_CLIENT_ORDER_ID, FakeAlpaca

AUTH = {"APCA-API-KEY-ID": "key", "APCA-API-SECRET-KEY": "secret"}


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca() as f:
        yield f


def get(fake: FakeAlpaca, path: str, **params: Any) -> requests.Response:
    return requests.get(fake.base_url + path, params=params, headers=AUTH, timeout=5)


def post_order(fake: FakeAlpaca, **body: Any) -> requests.Response:
    order = {"symbol": "AAPL", "qty": 1, "side": "buy", "type": "market", "time_in_force": "day"}
    order.update(body)
    return requests.post(fake.base_url + "/v2/orders", json=order, headers=AUTH, timeout=5)


def test_error_bodies_are_json(fake: FakeAlpaca) -> None:
    r = get(fake, "/v2/nowhere")
    assert r.status_code == 404
    assert r.json()["code"] == 40410000
    r = requests.get(fake.base_url + "/v2/account", timeout=5)
    assert r.status_code == 401
    assert "message" in r.json()
    for kind, status in (("500", 500), ("504", 504)):
        fake.inject("GET /v2/account", kind)
        r = get(fake, "/v2/account")
        assert r.status_code == status
        assert set(r.json()) == {"code", "message"}


def test_duplicate_client_order_id_and_buying_power(fake: FakeAlpaca) -> None:
    assert post_order(fake, client_order_id="one").status_code == 200
    r = post_order(fake, client_order_id="one")
    assert r.status_code == 422
    assert r.json() == DUPLICATE_CLIENT_ORDER_ID
    r = post_order(fake, client_order_id="big", qty=1_000_000)
    assert r.status_code == 403
    assert r.json()["message"] == "insufficient buying power"
    assert len(fake.orders) == 1


def test_429_carries_rate_limit_headers(fake: FakeAlpaca) -> None:
    fake.inject("GET /v2/clock", "429")
    before = time.time()
    r = get(fake, "/v2/clock")
    assert r.status_code == 429
    assert r.headers["X-RateLimit-Limit"] == "200"
    assert r.headers["X-RateLimit-Remaining"] == "0"
    assert before < int(r.headers["X-RateLimit-Reset"]) <= before + 1.5
    assert r.json()["code"] == 42910000
    assert get(fake, "/v2/clock").status_code == 200  # times=1


def test_server_side_rate_limit(fake: FakeAlpaca) -> None:
    fake.rate_limit = (3, 10.0)
    codes = [get(fake, "/v2/clock").status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    assert fake.rate_limited == 2


def test_drop_closes_the_connection_without_an_answer(fake: FakeAlpaca) -> None:
    fake.inject("GET /v2/account", "drop")
    with pytest.raises(requests.ConnectionError):
        get(fake, "/v2/account")
    assert get(fake, "/v2/account").status_code == 200
    assert fake.count("GET /v2/account") == 2


def test_504_after_accept_books_the_order(fake: FakeAlpaca) -> None:
    fake.inject("POST /v2/orders", "504_after_accept")
    assert post_order(fake, client_order_id="late").status_code == 504
    booked = fake.order_by_client_id("late")
    assert booked is not None
    assert booked.status == "filled"


def test_stop_is_prompt_while_a_request_hangs() -> None:
    fake = FakeAlpaca(hang_seconds=30).start()
    fake.inject("GET /v2/clock", "hang")
    outcome: list[BaseException | int] = []

    def call() -> None:
        try:
            outcome.append(get(fake, "/v2/clock").status_code)
        except requests.RequestException as exc:
            outcome.append(exc)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.2)
    started = time.monotonic()
    fake.stop()
    t.join(timeout=5)
    assert time.monotonic() - started < 1.5
    assert len(outcome) == 1
    assert isinstance(outcome[0], requests.ConnectionError)


def test_hang_is_bounded_by_hang_seconds() -> None:
    with FakeAlpaca(hang_seconds=0.2) as fake:
        fake.inject("GET /v2/clock", "hang")
        started = time.monotonic()
        with pytest.raises(requests.ConnectionError):
            get(fake, "/v2/clock")
        assert 0.15 < time.monotonic() - started < 2.0


def test_inject_validates_its_arguments(fake: FakeAlpaca) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        fake.inject("GET /v2/clock", "explode")
    with pytest.raises(ValueError, match="route"):
        fake.inject("/v2/clock", "500")
    fake.inject("GET /v2/positions/*", "500", times=2)
    assert get(fake, "/v2/positions/AAPL").status_code == 500
    assert get(fake, "/v2/positions/MSFT").status_code == 500
    assert get(fake, "/v2/positions/MSFT").status_code == 404
    assert fake.count("GET /v2/positions/*") == 3
    fake.reset_counts()
    assert fake.count("*") == 0


def test_bars_pages_honour_limit(fake: FakeAlpaca) -> None:
    params = {
        "symbols": "MSFT,AAPL,ZZZZ",
        "timeframe": "1Day",
        "start": "2021-12-01T00:00:00+00:00",
        "end": "2021-12-31T23:59:59+00:00",
        "adjustment": "all",
        "feed": "iex",
        "limit": 7,
    }
    seen: list[tuple[str, str]] = []
    pages = 0
    token: str | None = None
    while True:
        body = get(fake, "/v2/stocks/bars", **params, **({"page_token": token} if token else {}))
        body.raise_for_status()
        data = body.json()
        pages += 1
        page = [(sym, bar["t"]) for sym, bars in data["bars"].items() for bar in bars]
        assert len(page) <= 7
        for bars in data["bars"].values():
            assert set(bars[0]) == {"t", "o", "h", "l", "c", "v", "n", "vw"}
        seen.extend(page)
        token = data["next_page_token"]
        if token is None:
            break
    # 22 December 2021 sessions for each of AAPL and MSFT, symbols in order, no repeats.
    assert len(seen) == 44 == len(set(seen))
    assert [s for s, _ in seen] == ["AAPL"] * 22 + ["MSFT"] * 22
    assert seen[0][1] == "2021-12-01T05:00:00Z"
    assert pages == 7


def test_bars_for_unknown_symbols_are_an_empty_object(fake: FakeAlpaca) -> None:
    r = get(fake, "/v2/stocks/bars", symbols="ZZZZ", timeframe="1Day")
    assert r.json() == {"bars": {}, "next_page_token": None}


def test_calendar_wire_format(fake: FakeAlpaca) -> None:
    fake.set_early_close(date(2021, 12, 23), "13:00")
    rows = get(fake, "/v2/calendar", start="2021-12-22", end="2021-12-27").json()
    assert [(r["date"], r["open"], r["close"]) for r in rows] == [
        ("2021-12-22", "09:30", "16:00"),
        ("2021-12-23", "09:30", "13:00"),
        ("2021-12-27", "09:30", "16:00"),
    ]


def test_close_position_endpoint_through_alpaca_py(fake: FakeAlpaca) -> None:
    fake.set_position("AAPL", 3, 100.0)
    fake.set_price("AAPL", 120.0)
    broker = AlpacaBroker(
        "key", "secret", base_url=fake.base_url, limiter=SlidingWindowLimiter(1000, 60.0)
    )
    order = broker._client.close_position("AAPL")  # DELETE /v2/positions/AAPL, parsed by the SDK
    broker.close()
    assert order.symbol == "AAPL"
    assert order.side.value == "sell"
    assert order.filled_qty == "3"
    assert "AAPL" not in fake.positions
    assert fake.cash == pytest.approx(100_000 + 360)
    assert fake.count("DELETE /v2/positions/AAPL") == 1
