"""AlpacaBroker / AlpacaMarketData driving the real alpaca-py against the loopback fake.

alpaca-py is never mocked: every call goes through its TradingClient/StockHistoricalDataClient,
our hardened requests session, and real HTTP to tests/fakes/fake_alpaca.py. After each fault the
broker layer's answer is checked against the fake's book.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import redis

from app import domain, errors
from app.broker.alpaca import AlpacaBroker
from app.broker.alpaca_client import RetryPolicy
from app.broker.alpaca_data import AlpacaMarketData
from app.broker.rate_limit import SlidingWindowLimiter
from tests import support
from tests.fakes.fake_alpaca import DEFAULT_DATA_DIR, FakeAlpaca

NY = ZoneInfo("America/New_York")
FAST = RetryPolicy(max_retries=6, backoff_base=0.01, backoff_max=0.1, max_total_wait=10.0)
ORDERS = "POST /v2/orders"
LOOKUP = "GET /v2/orders:by_client_order_id"


def roomy_limiter() -> SlidingWindowLimiter:
    """A private limiter so tests never share (or exhaust) the process-wide budget."""
    return SlidingWindowLimiter(100_000, 60.0)


def make_broker(
    fake: FakeAlpaca,
    *,
    timeout: float = 2.0,
    retry: RetryPolicy = FAST,
    limiter: SlidingWindowLimiter | None = None,
) -> AlpacaBroker:
    return AlpacaBroker(
        "key",
        "secret",
        paper=True,
        base_url=fake.base_url,
        timeout=timeout,
        limiter=limiter or roomy_limiter(),
        retry=retry,
    )


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca() as f:
        yield f


@pytest.fixture
def broker(fake: FakeAlpaca) -> Iterator[AlpacaBroker]:
    b = make_broker(fake)
    yield b
    b.close()


@pytest.fixture
def quick_broker(fake: FakeAlpaca) -> Iterator[AlpacaBroker]:
    """Half-second timeout: what the hang tests measure against."""
    b = make_broker(fake, timeout=0.5)
    yield b
    b.close()


@pytest.fixture
def market(fake: FakeAlpaca) -> Iterator[AlpacaMarketData]:
    m = AlpacaMarketData(
        "key", "secret", data_url=fake.base_url, timeout=5.0, limiter=roomy_limiter(), retry=FAST
    )
    yield m
    m.close()


def cid() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def buy(
    symbol: str = "AAPL", qty: float = 10, client_order_id: str | None = None
) -> domain.OrderRequest:
    return domain.OrderRequest(symbol, domain.Side.BUY, client_order_id or cid(), qty=qty)


def assert_matches_book(order: domain.Order, fake: FakeAlpaca) -> None:
    """What the broker layer returned is what the fake booked, and it booked exactly one."""
    booked = fake.orders_for_client_id(order.client_order_id)
    assert len(booked) == 1
    b = booked[0]
    assert order.broker_order_id == b.id
    assert order.status.value == b.status
    assert order.filled_qty == pytest.approx(b.filled_qty)
    if b.filled_avg_price is None:
        assert order.filled_avg_price is None
    else:
        assert order.filled_avg_price == pytest.approx(b.filled_avg_price)


# ---------------------------------------------------------------------- protocol and reads


def test_adapters_implement_domain_protocols(
    broker: AlpacaBroker, market: AlpacaMarketData
) -> None:
    assert isinstance(broker, domain.Broker)
    assert isinstance(market, domain.MarketData)


def test_builtin_sdk_retry_is_off_and_session_has_timeout(broker: AlpacaBroker) -> None:
    client = broker._client
    assert client._retry == 0
    assert client._session.default_timeout == 2.0


def test_account_and_positions_match_book(broker: AlpacaBroker, fake: FakeAlpaca) -> None:
    fake.set_price("AAPL", 100.0)
    fake.set_price("MSFT", 200.0)
    broker.submit_market_order(buy("AAPL", 10))
    broker.submit_market_order(buy("AAPL", 10))
    broker.submit_market_order(buy("MSFT", 5))
    fake.set_price("AAPL", 110.0)

    account = broker.get_account()
    assert account.cash == pytest.approx(fake.cash) == pytest.approx(100_000 - 3_000)
    assert account.equity == pytest.approx(fake.equity()) == pytest.approx(97_000 + 2_200 + 1_000)
    assert account.buying_power == pytest.approx(fake.cash)
    assert account.last_equity == pytest.approx(100_000)
    assert account.status == "ACTIVE"

    positions = {p.symbol: p for p in broker.get_positions()}
    assert set(positions) == set(fake.positions) == {"AAPL", "MSFT"}
    aapl = positions["AAPL"]
    assert aapl.qty == pytest.approx(20)
    assert aapl.avg_entry_price == pytest.approx(100.0)
    assert aapl.current_price == pytest.approx(110.0)
    assert aapl.unrealized_pl == pytest.approx(200.0)


def test_market_order_fills_at_last_close_by_default(
    broker: AlpacaBroker, fake: FakeAlpaca
) -> None:
    last_close = float(pd.read_csv(DEFAULT_DATA_DIR / "AAPL.csv")["close"].iloc[-1])
    order = broker.submit_market_order(buy("AAPL", 3))
    assert order.status is domain.OrderStatus.FILLED
    assert order.side is domain.Side.BUY
    assert order.qty == 3
    assert order.filled_avg_price == pytest.approx(last_close)
    assert order.submitted_at is not None
    assert order.submitted_at.tzinfo is not None
    assert_matches_book(order, fake)
    assert fake.cash == pytest.approx(100_000 - 3 * last_close)


def test_notional_order(broker: AlpacaBroker, fake: FakeAlpaca) -> None:
    fake.set_price("MSFT", 250.0)
    order = broker.submit_market_order(
        domain.OrderRequest("MSFT", domain.Side.BUY, cid(), notional=1_000.0)
    )
    assert order.notional == pytest.approx(1_000.0)
    assert order.qty is None
    assert order.filled_qty == pytest.approx(4.0)
    assert_matches_book(order, fake)


def test_order_lookup_and_open_orders_when_market_closed(
    broker: AlpacaBroker, fake: FakeAlpaca
) -> None:
    fake.set_clock(datetime(2021, 12, 30, 18, 0, tzinfo=NY))  # after the close
    request = buy("AAPL", 2)
    order = broker.submit_market_order(request)
    assert order.status is domain.OrderStatus.NEW
    assert order.filled_qty == 0
    assert order.filled_avg_price is None
    assert [o.client_order_id for o in broker.get_open_orders()] == [request.client_order_id]
    assert broker.get_order_by_client_id("never-sent") is None

    assert fake.fill_open_orders() == 1
    filled = broker.get_order_by_client_id(request.client_order_id)
    assert filled is not None
    assert filled.status is domain.OrderStatus.FILLED
    assert_matches_book(filled, fake)
    assert broker.get_open_orders() == []


def test_cancel_order(broker: AlpacaBroker, fake: FakeAlpaca) -> None:
    fake.set_clock(datetime(2021, 12, 30, 18, 0, tzinfo=NY))
    request = buy("AAPL", 2)
    broker.submit_market_order(request)
    broker.cancel_order(request.client_order_id)
    booked = fake.order_by_client_id(request.client_order_id)
    assert booked is not None
    assert booked.status == "canceled"
    # Cancelling an order that already ended is a no-op, not an error.
    broker.cancel_order(request.client_order_id)
    assert fake.count("DELETE /v2/orders/*") == 1
    with pytest.raises(errors.NotFoundError):
        broker.cancel_order("never-sent")


def test_close_position_is_idempotent_by_client_id(broker: AlpacaBroker, fake: FakeAlpaca) -> None:
    fake.set_price("AAPL", 100.0)
    broker.submit_market_order(buy("AAPL", 7))
    close_id = cid()
    order = broker.close_position("AAPL", close_id)
    assert order.side is domain.Side.SELL
    assert order.qty == 7
    assert order.status is domain.OrderStatus.FILLED
    assert "AAPL" not in fake.positions
    assert fake.cash == pytest.approx(100_000)
    # A retried close (say after a crash) returns the same order instead of failing.
    again = broker.close_position("AAPL", close_id)
    assert again.broker_order_id == order.broker_order_id
    assert_matches_book(again, fake)
    with pytest.raises(errors.NotFoundError):
        broker.close_position("MSFT", cid())


def test_clock_and_calendar(broker: AlpacaBroker, fake: FakeAlpaca) -> None:
    fake.set_clock(datetime(2021, 11, 26, 12, 0, tzinfo=NY))  # day after Thanksgiving
    fake.set_early_close(date(2021, 11, 26), "13:00")
    clock = broker.get_clock()
    assert clock.timestamp == datetime(2021, 11, 26, 12, 0, tzinfo=NY)
    assert clock.is_open is True
    assert clock.next_close == datetime(2021, 11, 26, 13, 0, tzinfo=NY)
    assert clock.next_open == datetime(2021, 11, 29, 9, 30, tzinfo=NY)

    fake.set_clock(datetime(2021, 11, 27, 12, 0, tzinfo=NY))  # Saturday
    assert broker.get_clock().is_open is False

    sessions = broker.get_calendar(date(2021, 11, 22), date(2021, 11, 30))
    days = [s.day for s in sessions]
    spy = pd.read_csv(DEFAULT_DATA_DIR / "SPY.csv", parse_dates=["date"])["date"].dt.date
    assert days == [d for d in spy if date(2021, 11, 22) <= d <= date(2021, 11, 30)]
    assert date(2021, 11, 25) not in days  # Thanksgiving
    by_day = {s.day: s for s in sessions}
    assert by_day[date(2021, 11, 26)].close == datetime(2021, 11, 26, 13, 0, tzinfo=NY)
    assert by_day[date(2021, 11, 29)].open == datetime(2021, 11, 29, 9, 30, tzinfo=NY)
    assert by_day[date(2021, 11, 29)].close == datetime(2021, 11, 29, 16, 0, tzinfo=NY)


def test_asset_and_tradable(broker: AlpacaBroker, fake: FakeAlpaca) -> None:
    asset = broker.get_asset("aapl")
    assert asset is not None
    assert asset.symbol == "AAPL"
    assert asset.tradable
    assert asset.fractionable
    assert broker.is_tradable("AAPL")
    assert broker.get_asset("ZZZZ") is None
    assert not broker.is_tradable("ZZZZ")


# ---------------------------------------------------------------------- rejections


def test_insufficient_buying_power_is_rejected(broker: AlpacaBroker, fake: FakeAlpaca) -> None:
    fake.set_price("AAPL", 100.0)
    request = buy("AAPL", 2_000)
    with pytest.raises(errors.OrderRejected, match="insufficient buying power"):
        broker.submit_market_order(request)
    assert fake.orders == {}
    assert fake.cash == 100_000
    assert fake.count(LOOKUP) == 0  # a definite 4xx needs no lookup


def test_unknown_symbol_is_rejected_not_mistaken_for_duplicate(
    broker: AlpacaBroker, fake: FakeAlpaca
) -> None:
    with pytest.raises(errors.OrderRejected, match="not found"):
        broker.submit_market_order(buy("ZZZZ", 1))
    assert fake.count(ORDERS) == 1
    assert fake.count(LOOKUP) == 0


def test_selling_more_than_held_is_rejected(broker: AlpacaBroker, fake: FakeAlpaca) -> None:
    fake.set_position("AAPL", 5, 100.0)
    with pytest.raises(errors.OrderRejected, match="insufficient qty"):
        broker.submit_market_order(domain.OrderRequest("AAPL", domain.Side.SELL, cid(), qty=6))
    assert fake.positions["AAPL"].qty == 5


# ---------------------------------------------------------------------- order safety


def test_504_after_accept_returns_the_booked_order_once(
    broker: AlpacaBroker, fake: FakeAlpaca
) -> None:
    fake.inject(ORDERS, "504_after_accept")
    order = broker.submit_market_order(buy("AAPL", 10))
    assert order.status is domain.OrderStatus.FILLED
    assert_matches_book(order, fake)
    assert fake.count(ORDERS) == 1  # never re-sent: the lookup found it
    assert fake.count(LOOKUP) == 1
    assert fake.positions["AAPL"].qty == 10


def test_duplicate_client_order_id_returns_the_existing_order(
    broker: AlpacaBroker, fake: FakeAlpaca
) -> None:
    request = buy("AAPL", 10)
    first = broker.submit_market_order(request)
    second = broker.submit_market_order(request)
    assert second.broker_order_id == first.broker_order_id
    assert_matches_book(second, fake)
    assert fake.count(ORDERS) == 2
    assert fake.positions["AAPL"].qty == 10


def test_client_order_id_reused_for_another_trade_is_rejected(
    broker: AlpacaBroker, fake: FakeAlpaca
) -> None:
    request = buy("AAPL", 1)
    broker.submit_market_order(request)
    other = domain.OrderRequest("MSFT", domain.Side.BUY, request.client_order_id, qty=1)
    with pytest.raises(errors.OrderRejected, match="already used"):
        broker.submit_market_order(other)
    assert "MSFT" not in fake.positions
    assert len(fake.orders_for_client_id(request.client_order_id)) == 1


@pytest.mark.parametrize("kind", ["hang_after_accept", "drop_after_accept", "504_after_accept"])
def test_lost_answer_after_accept_is_found_by_lookup(
    quick_broker: AlpacaBroker, fake: FakeAlpaca, kind: str
) -> None:
    fake.inject(ORDERS, kind)
    started = time.monotonic()
    order = quick_broker.submit_market_order(buy("AAPL", 4))
    assert time.monotonic() - started < 2.0
    assert_matches_book(order, fake)
    assert fake.count(ORDERS) == 1
    assert fake.count(LOOKUP) == 1


@pytest.mark.parametrize("kind", ["hang", "drop", "500", "504"])
def test_lost_request_is_sent_once_more_with_the_same_id(
    quick_broker: AlpacaBroker, fake: FakeAlpaca, kind: str
) -> None:
    fake.inject(ORDERS, kind)
    started = time.monotonic()
    order = quick_broker.submit_market_order(buy("AAPL", 4))
    assert time.monotonic() - started < 2.0
    assert order.status is domain.OrderStatus.FILLED
    assert_matches_book(order, fake)
    assert fake.count(ORDERS) == 2
    assert fake.count(LOOKUP) == 1


def test_persistent_failure_sends_at_most_twice(
    quick_broker: AlpacaBroker, fake: FakeAlpaca
) -> None:
    fake.inject(ORDERS, "500", times=10)
    request = buy("AAPL", 4)
    with pytest.raises(errors.BrokerUnavailable):
        quick_broker.submit_market_order(request)
    assert fake.count(ORDERS) == 2
    assert fake.orders_for_client_id(request.client_order_id) == []


def test_failed_lookup_never_resends(quick_broker: AlpacaBroker, fake: FakeAlpaca) -> None:
    fake.inject(ORDERS, "hang_after_accept")
    fake.inject(LOOKUP, "hang")
    request = buy("AAPL", 4)
    started = time.monotonic()
    with pytest.raises(errors.BrokerUnavailable):
        quick_broker.submit_market_order(request)
    assert time.monotonic() - started < 2.0
    assert fake.count(ORDERS) == 1
    # The order did land; a later reconciliation by client_order_id finds it.
    order = quick_broker.get_order_by_client_id(request.client_order_id)
    assert order is not None
    assert_matches_book(order, fake)


def test_rate_limited_order_waits_and_is_booked_once(
    broker: AlpacaBroker, fake: FakeAlpaca
) -> None:
    fake.inject(ORDERS, "429", times=2)
    order = broker.submit_market_order(buy("AAPL", 1))
    assert_matches_book(order, fake)
    assert fake.count(ORDERS) == 3
    assert broker.retry_sleeps == 2


def test_partial_fill_is_reported(broker: AlpacaBroker, fake: FakeAlpaca) -> None:
    fake.set_price("AAPL", 100.0)
    fake.inject(ORDERS, "partial")
    request = buy("AAPL", 10)
    order = broker.submit_market_order(request)
    assert order.status is domain.OrderStatus.PARTIALLY_FILLED
    assert order.filled_qty == pytest.approx(5)
    assert order.qty == 10
    assert_matches_book(order, fake)
    assert fake.positions["AAPL"].qty == pytest.approx(5)
    assert [o.filled_qty for o in broker.get_open_orders()] == [pytest.approx(5)]
    assert broker.get_account().buying_power == pytest.approx(fake.cash - 500)

    fake.fill_open_orders()
    done = broker.get_order_by_client_id(request.client_order_id)
    assert done is not None
    assert done.status is domain.OrderStatus.FILLED
    assert done.filled_qty == pytest.approx(10)
    assert_matches_book(done, fake)


# ---------------------------------------------------------------------- read faults


@pytest.mark.parametrize("kind", ["500", "504", "drop"])
def test_reads_are_retried(broker: AlpacaBroker, fake: FakeAlpaca, kind: str) -> None:
    fake.inject("GET /v2/account", kind, times=2)
    account = broker.get_account()
    assert account.cash == pytest.approx(fake.cash)
    assert fake.count("GET /v2/account") == 3
    assert broker.calls["get_account"] == 3
    assert broker.retry_sleeps == 2


def test_hang_on_read_raises_within_the_timeout(
    quick_broker: AlpacaBroker, fake: FakeAlpaca
) -> None:
    fake.inject("GET /v2/positions", "hang")
    started = time.monotonic()
    with pytest.raises(errors.BrokerUnavailable, match=r"no answer within 0\.5s"):
        quick_broker.get_positions()
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 1.2
    assert quick_broker.get_positions() == []  # the next call works


def test_429_storm_slows_the_client_instead_of_failing(
    broker: AlpacaBroker, fake: FakeAlpaca
) -> None:
    fake.inject("GET /v2/account", "429", times=5)
    started = time.monotonic()
    account = broker.get_account()
    elapsed = time.monotonic() - started
    assert account.cash == pytest.approx(fake.cash)
    assert fake.count("GET /v2/account") == 6
    assert broker.retry_sleeps == 5
    # X-RateLimit-Reset is the next whole second: the waits follow it, not the tiny backoff.
    assert broker.retry_wait_seconds > 2.5
    assert elapsed >= broker.retry_wait_seconds
    assert elapsed < 8.0


def test_429_beyond_the_wait_budget_raises_rate_limited(fake: FakeAlpaca) -> None:
    b = make_broker(fake, retry=RetryPolicy(max_retries=3, backoff_base=0.01, max_total_wait=0.05))
    fake.rate_limit_reset_seconds = 2.0  # the server asks for more than the budget allows
    fake.inject("GET /v2/clock", "429", times=10)
    started = time.monotonic()
    with pytest.raises(errors.RateLimited):
        b.get_clock()
    assert time.monotonic() - started < 1.0
    assert fake.count("GET /v2/clock") == 1
    b.close()


def test_no_builtin_three_second_retry_on_504(fake: FakeAlpaca) -> None:
    b = make_broker(fake, retry=RetryPolicy(max_retries=0))
    fake.inject("GET /v2/clock", "504")
    started = time.monotonic()
    with pytest.raises(errors.BrokerUnavailable):
        b.get_clock()
    assert time.monotonic() - started < 1.0
    assert fake.count("GET /v2/clock") == 1
    b.close()


def test_unreachable_broker_is_unavailable() -> None:
    with FakeAlpaca() as f:
        url = f.base_url  # a port nobody listens on once the fake stops
    b = AlpacaBroker(
        "key", "secret", base_url=url, timeout=0.5, limiter=roomy_limiter(), retry=FAST
    )
    with pytest.raises(errors.BrokerUnavailable, match="connection failed"):
        b.get_account()
    assert b.calls["get_account"] == FAST.max_retries + 1
    b.close()


# ---------------------------------------------------------------------- market data


def csv_frame(symbol: str, start: str, end: str) -> pd.DataFrame:
    df = pd.read_csv(DEFAULT_DATA_DIR / f"{symbol}.csv", index_col="date", parse_dates=True)
    return df.loc[start:end].astype("float64")


def test_daily_bars_match_the_csv(market: AlpacaMarketData) -> None:
    frames = market.get_daily_bars(["aapl", "MSFT", "SPY"], date(2021, 1, 1), date(2021, 6, 30))
    assert list(frames) == ["AAPL", "MSFT", "SPY"]
    for symbol, frame in frames.items():
        expected = csv_frame(symbol, "2021-01-01", "2021-06-30")
        assert list(frame.columns) == list(domain.BAR_COLUMNS)
        assert frame.index.name == "date"
        assert isinstance(frame.index, pd.DatetimeIndex)
        assert frame.index.tz is None
        assert frame.index.is_monotonic_increasing
        assert frame.index.is_unique
        assert (frame.dtypes == "float64").all()
        pd.testing.assert_frame_equal(frame, expected, check_index_type=False, check_freq=False)
    assert market.calls["get_stock_bars"] == 1


def test_daily_bars_chunk_symbols_and_follow_pages(
    fake: FakeAlpaca, market: AlpacaMarketData
) -> None:
    market.chunk_size = 2
    fake.max_page_size = 100
    symbols = ["AAPL", "MSFT", "SPY", "NVDA", "AMZN"]
    frames = market.get_daily_bars(symbols, date(2021, 1, 1), date(2021, 12, 31))
    assert all(len(frames[s]) == 252 for s in symbols)
    assert market.calls["get_stock_bars"] == 3  # ceil(5 / 2) SDK calls
    # 504 + 504 + 252 bars at 100 per page: the SDK followed next_page_token.
    assert fake.count("GET /v2/stocks/bars") == 6 + 6 + 3


def test_daily_bars_stop_at_today_and_unknown_symbols_are_empty(
    fake: FakeAlpaca, market: AlpacaMarketData
) -> None:
    fake.set_today(date(2021, 6, 30))
    frames = market.get_daily_bars(["AAPL", "ZZZZ"], date(2021, 6, 1), date(2021, 12, 31))
    assert frames["AAPL"].index[-1] == pd.Timestamp("2021-06-30")
    assert frames["ZZZZ"].empty
    assert list(frames["ZZZZ"].columns) == list(domain.BAR_COLUMNS)


def test_daily_bars_retry_a_failed_page(fake: FakeAlpaca, market: AlpacaMarketData) -> None:
    fake.max_page_size = 50
    fake.inject("GET /v2/stocks/bars", "500")
    frames = market.get_daily_bars(["AAPL"], date(2021, 1, 1), date(2021, 3, 31))
    pd.testing.assert_frame_equal(
        frames["AAPL"], csv_frame("AAPL", "2021-01-01", "2021-03-31"), check_index_type=False
    )


def test_latest_price_and_quote(fake: FakeAlpaca, market: AlpacaMarketData) -> None:
    fake.set_today(date(2021, 6, 30))
    assert market.get_latest_price("AAPL") == pytest.approx(
        csv_frame("AAPL", "2021-06-30", "2021-06-30")["close"].iloc[0]
    )
    fake.set_price("AAPL", 123.45)
    assert market.get_latest_price("aapl") == pytest.approx(123.45)
    assert market.get_latest_prices(["AAPL", "ZZZZ"]) == {"AAPL": pytest.approx(123.45)}
    with pytest.raises(errors.NotFoundError):
        market.get_latest_price("ZZZZ")

    quote = market.get_quote("AAPL")
    assert quote.symbol == "AAPL"
    assert quote.bid < 123.45 < quote.ask
    assert quote.mid == pytest.approx(123.45, rel=1e-4)
    assert quote.timestamp.tzinfo is not None
    with pytest.raises(errors.NotFoundError):
        market.get_quote("ZZZZ")


def test_market_data_rejects_unknown_feed() -> None:
    with pytest.raises(errors.ConfigError):
        AlpacaMarketData("key", "secret", feed="nope")


def test_paper_and_live_urls_cannot_be_mixed() -> None:
    with pytest.raises(errors.ConfigError):
        AlpacaBroker("key", "secret", paper=True, base_url="https://api.alpaca.markets")
    with pytest.raises(errors.ConfigError):
        AlpacaBroker("key", "secret", paper=False, base_url="https://paper-api.alpaca.markets/v2")
    with pytest.raises(errors.ConfigError):
        AlpacaBroker("", "secret")


# ---------------------------------------------------------------------- rate limiter


def test_client_limiter_keeps_the_server_from_answering_429(fake: FakeAlpaca) -> None:
    fake.rate_limit = (10, 1.0)
    # A slightly longer client window absorbs the send->arrival latency.
    limiter = SlidingWindowLimiter(10, 1.1)
    b = make_broker(fake, limiter=limiter)
    started = time.monotonic()
    for _ in range(25):
        b.get_clock()
    assert fake.rate_limited == 0
    assert limiter.waits >= 2
    assert time.monotonic() - started >= 2.0
    b.close()


def test_local_limiter_blocks_instead_of_failing() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = SlidingWindowLimiter(3, 10.0, clock=lambda: now[0], sleep=sleep)
    assert [limiter.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire() == pytest.approx(10.0)
    assert limiter.waits == 1
    assert limiter.total_wait == pytest.approx(10.0)
    assert limiter.acquired == 4


def test_limiter_falls_back_to_local_window_when_redis_is_down() -> None:
    limiter = SlidingWindowLimiter(5, 1.0, redis_client="redis://127.0.0.1:1/0")
    assert limiter.shared
    assert [limiter.acquire() for _ in range(5)] == [0.0] * 5


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    url = support.redis_url()
    if not support.redis_reachable(url):
        support.unavailable(f"Redis not reachable at {url}")
    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
    yield client
    client.close()


def test_limiters_sharing_redis_stay_within_the_budget(redis_client: redis.Redis) -> None:
    key = f"test:alpaca-limit:{uuid.uuid4().hex}"
    limit, window = 5, 0.5
    limiters = [
        SlidingWindowLimiter(limit, window, redis_client=redis_client, key=key) for _ in range(2)
    ]
    stamps: list[float] = []
    lock = threading.Lock()

    def worker(limiter: SlidingWindowLimiter) -> None:
        for _ in range(8):
            limiter.acquire()
            with lock:
                stamps.append(time.monotonic())

    try:
        started = time.monotonic()
        threads = [threading.Thread(target=worker, args=(lim,)) for lim in limiters]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        elapsed = time.monotonic() - started
    finally:
        redis_client.delete(key)

    assert len(stamps) == 16
    stamps.sort()
    # In any window (less a little slack for the Redis round trip) at most `limit` went out.
    for i, t in enumerate(stamps):
        in_window = sum(1 for s in stamps[i:] if s < t + window - 0.05)
        assert in_window <= limit
    # 16 slots at 5 per 0.5 s need at least three further windows.
    assert elapsed >= 3 * window - 0.1
    assert sum(lim.waits for lim in limiters) > 0
    assert all(lim.shared for lim in limiters)
