"""One contract every domain.Broker must honour, run against each implementation.

The trading cycle is written once against domain.Broker and runs on SimBroker (backtests),
SimExchange (sim mode, book in the database) and AlpacaBroker (paper/live). A behaviour that
differs between them is a surprise waiting for the day a strategy moves from sim to live, so
each case here runs against all three:

* ``sim``: SimBroker in memory, prices from a dict, a fixed clock inside a session;
* ``exchange-sqlite`` / ``exchange-postgres+redis``: SimExchange on the `app` fixture's database;
* ``alpaca``: AlpacaBroker driving the real alpaca-py over HTTP against tests/fakes/fake_alpaca.

Every venue starts flat with the same cash and the same fixed prices on 2021-12-30 with the
market open, so the expected numbers are the same everywhere.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from app import domain, errors
from app.broker.alpaca import AlpacaBroker
from app.broker.alpaca_client import RetryPolicy
from app.broker.rate_limit import SlidingWindowLimiter
from app.broker.sim import SimBroker
from app.broker.sim_exchange import SimExchange
from app.extensions import db
from app.store.orm import SimExchangeState
from tests.fakes.fake_alpaca import FakeAlpaca

NY = ZoneInfo("America/New_York")
CASH = 100_000.0
PRICES = {"AAPL": 100.0, "MSFT": 200.0}
#: 10:00 New York on a regular session: the market is open, orders fill at once.
OPEN_AT = datetime(2021, 12, 30, 10, 0, tzinfo=NY)
SESSION = OPEN_AT.date()
FAST = RetryPolicy(max_retries=3, backoff_base=0.01, backoff_max=0.05, max_total_wait=2.0)
KINDS = ["sim", "exchange-sqlite", "exchange-postgres+redis", "alpaca"]


@dataclass
class Venue:
    """A broker under test plus the one venue-specific knob the contract needs."""

    kind: str
    broker: domain.Broker
    #: From now on, orders stay open (NEW) instead of filling on submission.
    defer_fills: Callable[[], None]


class FixedClock:
    """domain.Clock frozen at one instant, so SimBroker's clock matches the fake's."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


class FixedPrices:
    """The replayable market SimExchange needs, reduced to fixed prices."""

    def get_latest_price(self, symbol: str) -> float:
        try:
            return PRICES[symbol.upper()]
        except KeyError:
            raise errors.NotFoundError(f"no price for {symbol}") from None

    def set_as_of(self, value: date | None) -> None:
        """Prices do not move with the replay session here."""


class DeferrableExchange(SimExchange):
    """SimExchange with a test hook to leave orders open.

    Sim mode always fills on submission, so an open order never exists there; deferring the
    fills still sends the open order through the database book (persisted as pending, read back
    and cancelled in later transactions), which is the part of SimExchange worth checking.
    """

    fill_immediately = True

    def _broker(self, row: SimExchangeState) -> SimBroker:
        broker = super()._broker(row)
        broker.fill_immediately = self.fill_immediately
        return broker


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend(kind: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Overrides conftest's parametrised `backend`: only the exchange needs a database, and its
    kind names which one (the same overrides as conftest builds)."""
    tmp = request.getfixturevalue("tmp_path")
    overrides: dict[str, Any] = {"DATABASE_DIR": str(tmp), "LOG_LEVEL": "WARNING"}
    if kind == "exchange-postgres+redis":
        overrides["DATABASE_URL"] = request.getfixturevalue("postgres_database_url")
        overrides["REDIS_URL"] = request.getfixturevalue("redis_test_url")
    else:
        overrides["DATABASE_URL"] = request.getfixturevalue("sqlite_url")
    return overrides


def _sim_venue() -> Venue:
    broker = SimBroker(lambda s: PRICES[s.upper()], starting_cash=CASH, clock=FixedClock(OPEN_AT))

    def defer() -> None:
        broker.fill_immediately = False

    return Venue("sim", broker, defer)


def _exchange_venue(kind: str, request: pytest.FixtureRequest) -> Venue:
    request.getfixturevalue("app")  # a migrated database, emptied after the test
    exchange = DeferrableExchange(
        db,
        FixedPrices(),
        start_session=SESSION,
        starting_cash=CASH,
        commission_bps=0.0,
        slippage_bps=0.0,
    )

    def defer() -> None:
        exchange.fill_immediately = False

    return Venue(kind, exchange, defer)


@contextlib.contextmanager
def _alpaca_venue() -> Iterator[Venue]:
    with FakeAlpaca(cash=CASH) as fake:
        fake.set_clock(OPEN_AT, is_open=True)
        fake.set_early_close(date(2021, 11, 26), "13:00")  # the day after Thanksgiving
        for symbol, price in PRICES.items():
            fake.set_price(symbol, price)
        broker = AlpacaBroker(
            "key",
            "secret",
            paper=True,
            base_url=fake.base_url,
            timeout=5.0,
            limiter=SlidingWindowLimiter(100_000, 60.0),  # never the process-wide budget
            retry=FAST,
        )
        try:
            yield Venue("alpaca", broker, lambda: fake.set_clock(OPEN_AT, is_open=False))
        finally:
            broker.close()


@pytest.fixture
def venue(kind: str, request: pytest.FixtureRequest) -> Iterator[Venue]:
    if kind == "sim":
        yield _sim_venue()
    elif kind.startswith("exchange"):
        yield _exchange_venue(kind, request)
    else:
        with _alpaca_venue() as v:
            yield v


# ---------------------------------------------------------------------- helpers


def cid() -> str:
    return f"contract-{uuid.uuid4().hex[:12]}"


def buy(
    symbol: str = "AAPL", qty: float | None = None, notional: float | None = None
) -> domain.OrderRequest:
    return domain.OrderRequest(symbol, domain.Side.BUY, cid(), qty=qty, notional=notional)


def sell(
    symbol: str = "AAPL", qty: float | None = None, notional: float | None = None
) -> domain.OrderRequest:
    return domain.OrderRequest(symbol, domain.Side.SELL, cid(), qty=qty, notional=notional)


def positions(broker: domain.Broker) -> dict[str, float]:
    return {p.symbol: p.qty for p in broker.get_positions()}


def assert_no_trace(broker: domain.Broker, client_order_id: str) -> None:
    """A rejected order is either unknown or on record as REJECTED: never open, never filled."""
    order = broker.get_order_by_client_id(client_order_id)
    if order is not None:
        assert order.status is domain.OrderStatus.REJECTED
        assert order.filled_qty == 0


# ---------------------------------------------------------------------- account and fills


def test_implements_the_protocol(venue: Venue) -> None:
    assert isinstance(venue.broker, domain.Broker)


def test_account_fields_are_sane(venue: Venue) -> None:
    account = venue.broker.get_account()
    assert account.cash == pytest.approx(CASH)
    assert account.equity == pytest.approx(CASH)  # flat: equity is cash
    assert 0 < account.buying_power <= account.cash + 1e-6  # cash account, no margin
    assert account.last_equity == pytest.approx(CASH)
    assert account.currency == "USD"
    assert venue.broker.get_positions() == []
    assert venue.broker.get_open_orders() == []


def test_qty_buy_fills_and_opens_a_position(venue: Venue) -> None:
    order = venue.broker.submit_market_order(buy(qty=10))
    assert order.status is domain.OrderStatus.FILLED
    assert order.side is domain.Side.BUY
    assert order.symbol == "AAPL"
    assert order.filled_qty == pytest.approx(10)
    assert order.filled_avg_price == pytest.approx(PRICES["AAPL"])
    assert order.broker_order_id
    [position] = venue.broker.get_positions()
    assert position.symbol == "AAPL"
    assert position.qty == pytest.approx(10)
    assert position.avg_entry_price == pytest.approx(order.filled_avg_price)
    assert position.current_price == pytest.approx(PRICES["AAPL"])
    account = venue.broker.get_account()
    assert account.cash == pytest.approx(CASH - 10 * PRICES["AAPL"])
    assert account.equity == pytest.approx(CASH)  # bought at the mark, no fees
    assert venue.broker.get_open_orders() == []


def test_notional_buy_spends_the_amount(venue: Venue) -> None:
    order = venue.broker.submit_market_order(buy("MSFT", notional=1234.5))
    assert order.status is domain.OrderStatus.FILLED
    assert order.notional == pytest.approx(1234.5)
    assert order.filled_avg_price == pytest.approx(PRICES["MSFT"])
    assert order.filled_qty * PRICES["MSFT"] == pytest.approx(1234.5, abs=0.01)
    assert positions(venue.broker) == {"MSFT": pytest.approx(1234.5 / PRICES["MSFT"], abs=1e-6)}
    assert venue.broker.get_account().cash == pytest.approx(CASH - 1234.5, abs=0.01)


def test_sell_part_then_all_closes_the_position(venue: Venue) -> None:
    venue.broker.submit_market_order(buy(qty=10))
    part = venue.broker.submit_market_order(sell(qty=4))
    assert part.status is domain.OrderStatus.FILLED
    assert part.side is domain.Side.SELL
    assert part.filled_qty == pytest.approx(4)
    assert positions(venue.broker) == {"AAPL": pytest.approx(6)}
    rest = venue.broker.submit_market_order(sell(qty=6))
    assert rest.status is domain.OrderStatus.FILLED
    assert venue.broker.get_positions() == []
    assert venue.broker.get_account().cash == pytest.approx(CASH)


# ---------------------------------------------------------------------- client order ids


def test_order_lookup_by_client_id(venue: Venue) -> None:
    request = buy(qty=3)
    submitted = venue.broker.submit_market_order(request)
    found = venue.broker.get_order_by_client_id(request.client_order_id)
    assert found is not None
    assert found.client_order_id == request.client_order_id
    assert found.broker_order_id == submitted.broker_order_id
    assert (found.symbol, found.side, found.status) == ("AAPL", domain.Side.BUY, submitted.status)
    assert found.filled_qty == pytest.approx(3)
    assert venue.broker.get_order_by_client_id("contract-never-sent") is None


def test_resubmitting_a_client_id_returns_the_same_order(venue: Venue) -> None:
    request = buy(qty=5)
    first = venue.broker.submit_market_order(request)
    cash = venue.broker.get_account().cash
    again = venue.broker.submit_market_order(request)
    assert again.broker_order_id == first.broker_order_id
    assert again.status is domain.OrderStatus.FILLED
    assert again.filled_qty == pytest.approx(5)
    assert positions(venue.broker) == {"AAPL": pytest.approx(5)}  # no second fill
    assert venue.broker.get_account().cash == pytest.approx(cash)
    # The id reused for a different trade is refused, never taken as the first order.
    other = domain.OrderRequest("AAPL", domain.Side.SELL, request.client_order_id, qty=5)
    with pytest.raises(errors.OrderRejected):
        venue.broker.submit_market_order(other)
    assert positions(venue.broker) == {"AAPL": pytest.approx(5)}


# ---------------------------------------------------------------------- rejections


def test_selling_more_than_held_is_rejected(venue: Venue) -> None:
    """No shorting: a sell beyond the position (or with none) is refused, not partly filled."""
    venue.broker.submit_market_order(buy(qty=5))
    for request in (sell(qty=6), sell(notional=5 * PRICES["AAPL"] + 100), sell("MSFT", qty=1)):
        with pytest.raises(errors.OrderRejected):
            venue.broker.submit_market_order(request)
        assert_no_trace(venue.broker, request.client_order_id)
    assert positions(venue.broker) == {"AAPL": pytest.approx(5)}
    assert venue.broker.get_account().cash == pytest.approx(CASH - 5 * PRICES["AAPL"])


def test_buying_beyond_buying_power_is_rejected(venue: Venue) -> None:
    bp = venue.broker.get_account().buying_power
    too_many = bp / PRICES["AAPL"] + 1
    for request in (buy(qty=round(too_many)), buy("MSFT", notional=bp + 1_000)):
        with pytest.raises(errors.OrderRejected):
            venue.broker.submit_market_order(request)
        assert_no_trace(venue.broker, request.client_order_id)
    assert venue.broker.get_positions() == []
    assert venue.broker.get_account().cash == pytest.approx(CASH)


# ---------------------------------------------------------------------- close and cancel


def test_close_position_sells_everything_once(venue: Venue) -> None:
    venue.broker.submit_market_order(buy(qty=7.5))
    close_id = cid()
    order = venue.broker.close_position("aapl", close_id)
    assert order.client_order_id == close_id
    assert (order.symbol, order.side, order.status) == (
        "AAPL",
        domain.Side.SELL,
        domain.OrderStatus.FILLED,
    )
    assert order.filled_qty == pytest.approx(7.5)
    assert venue.broker.get_positions() == []
    assert venue.broker.get_account().cash == pytest.approx(CASH)
    # Retrying the close (say after a timeout) returns the same order and sells nothing more.
    again = venue.broker.close_position("AAPL", close_id)
    assert again.broker_order_id == order.broker_order_id
    with pytest.raises(errors.NotFoundError):
        venue.broker.close_position("AAPL", cid())


def test_cancel_open_order(venue: Venue) -> None:
    venue.defer_fills()
    request = buy(qty=3)
    order = venue.broker.submit_market_order(request)
    assert order.status is domain.OrderStatus.NEW
    assert order.filled_qty == 0
    assert [o.client_order_id for o in venue.broker.get_open_orders()] == [request.client_order_id]
    venue.broker.cancel_order(request.client_order_id)
    canceled = venue.broker.get_order_by_client_id(request.client_order_id)
    assert canceled is not None
    assert canceled.status is domain.OrderStatus.CANCELED
    assert canceled.filled_qty == 0
    assert venue.broker.get_open_orders() == []
    venue.broker.cancel_order(request.client_order_id)  # already cancelled: a no-op
    assert venue.broker.get_positions() == []
    assert venue.broker.get_account().buying_power == pytest.approx(CASH)
    with pytest.raises(errors.NotFoundError):
        venue.broker.cancel_order("contract-never-sent")


def test_cancel_never_undoes_a_fill(venue: Venue) -> None:
    """Implementations differ on how they say it (AlpacaBroker: no-op, SimBroker:
    OrderRejected), but a cancel that comes too late leaves the fill and position alone."""
    request = buy(qty=2)
    venue.broker.submit_market_order(request)
    with contextlib.suppress(errors.OrderRejected):
        venue.broker.cancel_order(request.client_order_id)
    order = venue.broker.get_order_by_client_id(request.client_order_id)
    assert order is not None
    assert order.status is domain.OrderStatus.FILLED
    assert positions(venue.broker) == {"AAPL": pytest.approx(2)}


def test_shares_held_by_an_open_sell_cannot_be_sold_again(venue: Venue) -> None:
    venue.broker.submit_market_order(buy(qty=10))
    venue.defer_fills()
    pending = venue.broker.submit_market_order(sell(qty=8))
    assert pending.status is domain.OrderStatus.NEW
    request = sell(qty=3)
    with pytest.raises(errors.OrderRejected):
        venue.broker.submit_market_order(request)
    assert_no_trace(venue.broker, request.client_order_id)
    assert positions(venue.broker) == {"AAPL": pytest.approx(10)}


# ---------------------------------------------------------------------- clock and calendar


def test_clock(venue: Venue) -> None:
    clock = venue.broker.get_clock()
    assert isinstance(clock, domain.MarketClock)
    for ts in (clock.timestamp, clock.next_open, clock.next_close):
        assert ts.tzinfo is not None
    assert clock.is_open  # inside the 2021-12-30 session (SimExchange: on its close)
    assert clock.timestamp.astimezone(NY).date() == SESSION
    assert clock.next_close >= clock.timestamp
    assert clock.next_close.astimezone(NY).date() == SESSION
    assert clock.next_open == datetime(2021, 12, 31, 14, 30, tzinfo=UTC)
    assert clock.next_close < clock.next_open  # open: today's close comes first


def test_calendar_around_thanksgiving_2021(venue: Venue) -> None:
    sessions = venue.broker.get_calendar(date(2021, 11, 22), date(2021, 11, 30))
    assert all(isinstance(s, domain.TradingSession) for s in sessions)
    assert [s.day for s in sessions] == [
        date(2021, 11, 22),
        date(2021, 11, 23),
        date(2021, 11, 24),
        date(2021, 11, 26),  # Thanksgiving (25th) closed
        date(2021, 11, 29),
        date(2021, 11, 30),
    ]
    closes = {s.day: s.close.astimezone(UTC) for s in sessions}
    assert closes[date(2021, 11, 26)] == datetime(2021, 11, 26, 18, 0, tzinfo=UTC)  # early
    assert closes[date(2021, 11, 24)] == datetime(2021, 11, 24, 21, 0, tzinfo=UTC)
    assert all(s.open.astimezone(UTC).time().isoformat() == "14:30:00" for s in sessions)
