"""SimBroker: money and share bookkeeping, costs, refusals, idempotency and deferred fills."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app.broker.costs import CommissionModel, SlippageModel
from app.broker.sim import SimBroker
from app.domain import Broker, OrderRequest, OrderStatus, Side
from app.errors import NotFoundError, OrderRejected
from app.market.calendar import NyseCalendar, ReplayClock

CAL = NyseCalendar()


class Prices:
    """A mutable price source: tests move prices between fills."""

    def __init__(self, **prices: float) -> None:
        self.prices = dict(prices)

    def __call__(self, symbol: str) -> float:
        return self.prices[symbol]


def make(
    prices: Prices | None = None, cash: float = 10_000.0, **kwargs: object
) -> tuple[SimBroker, Prices]:
    prices = prices or Prices(AAPL=100.0, MSFT=200.0)
    clock = ReplayClock(date(2021, 7, 6), calendar=CAL)
    broker = SimBroker(prices, starting_cash=cash, clock=clock, calendar=CAL, **kwargs)  # type: ignore[arg-type]
    return broker, prices


_ids = iter(range(1_000_000))


def buy(
    symbol: str = "AAPL", qty: float | None = None, notional: float | None = None
) -> OrderRequest:
    return OrderRequest(symbol, Side.BUY, f"b-{next(_ids)}", qty=qty, notional=notional)


def sell(
    symbol: str = "AAPL", qty: float | None = None, notional: float | None = None
) -> OrderRequest:
    return OrderRequest(symbol, Side.SELL, f"s-{next(_ids)}", qty=qty, notional=notional)


def test_implements_the_broker_protocol() -> None:
    assert isinstance(make()[0], Broker)


def test_buy_moves_cash_into_a_position() -> None:
    broker, _ = make()
    order = broker.submit_market_order(buy(qty=10))
    assert order.status is OrderStatus.FILLED
    assert order.filled_qty == 10
    assert order.filled_avg_price == 100.0
    assert broker.cash == pytest.approx(9_000.0)
    [position] = broker.get_positions()
    assert (position.symbol, position.qty, position.avg_entry_price) == ("AAPL", 10, 100.0)
    account = broker.get_account()
    assert account.equity == pytest.approx(10_000.0)
    assert account.buying_power == pytest.approx(9_000.0)
    [fill] = broker.fills
    assert (fill.client_order_id, fill.qty, fill.price) == (order.client_order_id, 10, 100.0)
    assert fill.timestamp == datetime(2021, 7, 6, 20, 0, tzinfo=UTC)


def test_average_cost_and_realised_pl() -> None:
    broker, prices = make()
    broker.submit_market_order(buy(qty=10))
    prices.prices["AAPL"] = 130.0
    broker.submit_market_order(buy(qty=5))
    assert broker.get_position("AAPL").avg_entry_price == pytest.approx(110.0)  # type: ignore[union-attr]
    broker.submit_market_order(sell(qty=6))
    position = broker.get_position("AAPL")
    assert position is not None
    assert position.qty == pytest.approx(9)
    assert position.avg_entry_price == pytest.approx(110.0)  # selling keeps the average
    assert broker.realized_pl == pytest.approx(6 * 20.0)
    assert broker.cash == pytest.approx(10_000 - 1000 - 650 + 780)
    broker.submit_market_order(sell(qty=9))
    assert broker.get_positions() == []


def test_commission_bps_per_share_and_minimum() -> None:
    model = CommissionModel(bps=10, per_share=0.01, minimum=1.0)
    assert model.cost(100, 50.0) == pytest.approx(5.0 + 1.0)
    assert model.cost(1, 50.0) == 1.0  # 0.05 + 0.01 below the minimum
    broker, _ = make(commission=model)
    broker.submit_market_order(buy(qty=10))
    assert broker.cash == pytest.approx(10_000 - 1000 - 1.1)
    assert broker.fills[-1].commission == pytest.approx(1.1)
    assert broker.commission_paid == pytest.approx(1.1)
    assert broker.get_position("AAPL").avg_entry_price == 100.0  # type: ignore[union-attr]


def test_slippage_is_adverse_to_each_side() -> None:
    broker, _ = make(slippage=SlippageModel(bps=50))
    bought = broker.submit_market_order(buy(qty=10))
    sold = broker.submit_market_order(sell(qty=10))
    assert bought.filled_avg_price == pytest.approx(100.5)
    assert sold.filled_avg_price == pytest.approx(99.5)
    assert broker.cash == pytest.approx(10_000 - 10 * 1.0)


def test_fractional_notional_orders() -> None:
    broker, _ = make(commission=CommissionModel(bps=10))
    order = broker.submit_market_order(buy(notional=250.0))
    assert order.filled_qty == pytest.approx(2.5)
    assert broker.cash == pytest.approx(10_000 - 250 - 0.25)
    broker.submit_market_order(sell(qty=0.75))
    assert broker.get_position("AAPL").qty == pytest.approx(1.75)  # type: ignore[union-attr]
    broker.submit_market_order(sell(notional=175.0))
    assert broker.get_positions() == []


def test_whole_share_mode_refuses_fractions() -> None:
    broker, _ = make(fractional=False)
    with pytest.raises(OrderRejected, match="fractional"):
        broker.submit_market_order(buy(qty=1.5))
    with pytest.raises(OrderRejected, match="notional"):
        broker.submit_market_order(buy(notional=100.0))
    assert broker.submit_market_order(buy(qty=2)).status is OrderStatus.FILLED


def test_insufficient_buying_power_is_rejected_and_changes_nothing() -> None:
    broker, _ = make(commission=CommissionModel(minimum=1.0))
    request = buy(qty=100)  # exactly all the cash, plus the commission
    with pytest.raises(OrderRejected, match="insufficient buying power"):
        broker.submit_market_order(request)
    assert broker.cash == 10_000.0
    assert broker.get_positions() == []
    assert broker.fills == []
    booked = broker.get_order_by_client_id(request.client_order_id)
    assert booked is not None
    assert booked.status is OrderStatus.REJECTED
    assert "insufficient buying power" in (booked.reject_reason or "")


def test_spending_exactly_all_cash_is_allowed() -> None:
    broker, _ = make(Prices(AAPL=3.0), cash=10.0)
    broker.submit_market_order(buy(qty=10 / 3))
    assert broker.cash == pytest.approx(0.0, abs=1e-6)
    assert broker.cash >= 0
    broker2, _ = make(Prices(AAPL=3.0), cash=10.0)
    broker2.submit_market_order(buy(notional=10.0))
    assert 0 <= broker2.cash < 1e-6


@pytest.mark.parametrize(
    "request_",
    [sell(qty=1), sell(notional=50.0), sell("MSFT", qty=1)],
    ids=["qty", "notional", "other-symbol"],
)
def test_no_shorting_without_a_position(request_: OrderRequest) -> None:
    broker, _ = make()
    with pytest.raises(OrderRejected, match="no shorting"):
        broker.submit_market_order(request_)
    assert broker.cash == 10_000.0
    assert broker.get_positions() == []


def test_sale_whose_commission_exceeds_cash_is_rejected() -> None:
    broker, _ = make(Prices(AAPL=100.0), cash=1_000.0, commission=CommissionModel(minimum=5.0))
    broker.submit_market_order(buy(notional=995.0))  # cash left: 0
    with pytest.raises(OrderRejected, match="commission"):
        broker.submit_market_order(sell(qty=0.01))  # 1.00 proceeds, 5.00 fee
    assert broker.cash == pytest.approx(0.0, abs=1e-9)
    assert broker.cash >= 0


def test_cannot_sell_more_than_held() -> None:
    broker, _ = make()
    broker.submit_market_order(buy(qty=3))
    with pytest.raises(OrderRejected, match="only 3 available"):
        broker.submit_market_order(sell(qty=3.5))
    with pytest.raises(OrderRejected, match="no shorting"):
        broker.submit_market_order(sell(notional=1000.0))
    assert broker.get_position("AAPL").qty == 3  # type: ignore[union-attr]


def test_same_client_order_id_never_fills_twice() -> None:
    broker, _ = make()
    request = buy(qty=10)
    first = broker.submit_market_order(request)
    second = broker.submit_market_order(request)
    assert second == first
    assert len(broker.fills) == 1
    assert broker.cash == pytest.approx(9_000.0)
    assert broker.get_order_by_client_id(request.client_order_id) == first
    assert broker.get_order_by_client_id("never-sent") is None


def test_reusing_a_client_order_id_for_another_order_is_refused() -> None:
    broker, _ = make()
    request = buy(qty=1)
    broker.submit_market_order(request)
    with pytest.raises(OrderRejected, match="already used"):
        broker.submit_market_order(OrderRequest("MSFT", Side.BUY, request.client_order_id, qty=1))


def test_a_missing_price_rejects_the_order() -> None:
    broker, _ = make()
    with pytest.raises(OrderRejected, match="no price for TSLA"):
        broker.submit_market_order(buy("TSLA", qty=1))


def test_pending_orders_fill_at_the_next_price() -> None:
    broker, prices = make(fill_immediately=False)
    order = broker.submit_market_order(buy(qty=10))
    assert order.status is OrderStatus.NEW
    assert broker.get_open_orders() == [order]
    assert broker.cash == 10_000.0
    assert broker.get_account().buying_power == pytest.approx(10_000.0)  # no mark yet
    prices.prices["AAPL"] = 105.0  # next open
    [filled] = broker.process_pending()
    assert filled.status is OrderStatus.FILLED
    assert filled.filled_avg_price == 105.0
    assert broker.get_open_orders() == []
    assert broker.cash == pytest.approx(10_000 - 1050)
    assert broker.process_pending() == []
    assert broker.submit_market_order(buy(qty=1)).status is OrderStatus.NEW
    assert broker.get_account().buying_power == pytest.approx(10_000 - 1050 - 105)


def test_pending_resubmission_does_not_queue_twice() -> None:
    broker, _ = make(fill_immediately=False)
    request = buy(qty=10)
    broker.submit_market_order(request)
    broker.submit_market_order(request)
    assert len(broker.get_open_orders()) == 1
    broker.process_pending()
    assert len(broker.fills) == 1


def test_pending_sells_fill_first_and_fund_buys() -> None:
    broker, _ = make(cash=1_000.0)
    broker.submit_market_order(buy(qty=9))  # 900 in AAPL, 100 cash
    broker.fill_immediately = False  # the backtester's mode from here on
    buy_order = broker.submit_market_order(buy("MSFT", qty=4))  # needs 800
    sell_order = broker.submit_market_order(sell(qty=9))
    results = broker.process_pending()
    assert [o.client_order_id for o in results] == [
        sell_order.client_order_id,
        buy_order.client_order_id,
    ]
    assert all(o.status is OrderStatus.FILLED for o in results)
    assert broker.cash == pytest.approx(200.0)


def test_pending_buy_that_no_longer_fits_is_rejected_without_raising() -> None:
    broker, prices = make(fill_immediately=False, cash=1_000.0)
    broker.submit_market_order(buy(qty=9))
    prices.prices["AAPL"] = 120.0  # gapped up overnight: 9 shares now cost 1080
    [result] = broker.process_pending()
    assert result.status is OrderStatus.REJECTED
    assert broker.cash == 1_000.0


def test_pending_sells_cannot_oversell_together() -> None:
    broker, _ = make()
    broker.submit_market_order(buy(qty=5))
    broker.fill_immediately = False
    broker.submit_market_order(sell(qty=3))
    with pytest.raises(OrderRejected, match="only 2 available"):
        broker.submit_market_order(sell(qty=3))


def test_cancel_open_order() -> None:
    broker, _ = make(fill_immediately=False)
    order = broker.submit_market_order(buy(qty=1))
    broker.cancel_order(order.client_order_id)
    broker.cancel_order(order.client_order_id)  # idempotent
    assert broker.get_order_by_client_id(order.client_order_id).status is OrderStatus.CANCELED  # type: ignore[union-attr]
    assert broker.get_open_orders() == []
    assert broker.process_pending() == []
    with pytest.raises(NotFoundError):
        broker.cancel_order("unknown")


def test_cancel_filled_order_is_refused() -> None:
    broker, _ = make()
    order = broker.submit_market_order(buy(qty=1))
    with pytest.raises(OrderRejected, match="not cancelable"):
        broker.cancel_order(order.client_order_id)


def test_close_position_sells_everything_once() -> None:
    broker, _ = make()
    broker.submit_market_order(buy(qty=2.5))
    order = broker.close_position("aapl", "close-1")
    assert order.status is OrderStatus.FILLED
    assert order.filled_qty == pytest.approx(2.5)
    assert broker.get_positions() == []
    assert broker.close_position("AAPL", "close-1") == order  # idempotent
    with pytest.raises(NotFoundError):
        broker.close_position("AAPL", "close-2")


def test_mark_and_start_day_drive_equity_and_last_equity() -> None:
    broker, _ = make()
    assert broker.get_account().last_equity == 10_000.0
    broker.submit_market_order(buy(qty=10))
    broker.mark({"AAPL": 90.0})
    account = broker.get_account()
    assert account.equity == pytest.approx(9_900.0)
    assert broker.get_position("AAPL").unrealized_pl == pytest.approx(-100.0)  # type: ignore[union-attr]
    assert broker.start_day() == pytest.approx(9_900.0)
    broker.mark({"AAPL": 95.0})
    account = broker.get_account()
    assert (account.equity, account.last_equity) == (pytest.approx(9_950.0), pytest.approx(9_900.0))
    with pytest.raises(ValueError, match="bad mark"):
        broker.mark({"AAPL": -1.0})


def test_clock_and_calendar_follow_the_replay_clock() -> None:
    clock = ReplayClock(date(2019, 11, 27), calendar=CAL)
    broker = SimBroker(Prices(AAPL=1.0), clock=clock, calendar=CAL)
    market = broker.get_clock()
    assert market.is_open  # sitting on the close: the closing auction still trades
    assert market.timestamp == datetime(2019, 11, 27, 21, 0, tzinfo=UTC)
    assert market.next_open == datetime(2019, 11, 29, 14, 30, tzinfo=UTC)
    clock.advance()
    assert broker.get_clock().next_close == datetime(2019, 11, 29, 18, 0, tzinfo=UTC)
    days = broker.get_calendar(date(2019, 11, 27), date(2019, 12, 2))
    assert [d.day for d in days] == [date(2019, 11, 27), date(2019, 11, 29), date(2019, 12, 2)]
    assert days[1].close == datetime(2019, 11, 29, 18, 0, tzinfo=UTC)


def test_concurrent_buys_never_overspend() -> None:
    broker, _ = make(cash=1_000.0)
    errors: list[Exception] = []

    def worker(n: int) -> None:
        for i in range(20):
            try:
                broker.submit_market_order(OrderRequest("AAPL", Side.BUY, f"t{n}-{i}", qty=1))
            except OrderRejected as exc:
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(broker.fills) == 10
    assert len(errors) == 150
    assert broker.cash == pytest.approx(0.0)


# -- property: cash and positions never go negative -------------------------------------------

SYMBOLS = ("AAPL", "MSFT", "KO")
symbol_st = st.sampled_from(SYMBOLS)
qty_st = st.floats(min_value=0.001, max_value=60, allow_nan=False, allow_infinity=False)
notional_st = st.floats(min_value=0.01, max_value=8_000, allow_nan=False, allow_infinity=False)
price_st = st.floats(min_value=0.01, max_value=2_000, allow_nan=False, allow_infinity=False)
side_st = st.sampled_from(["buy", "sell"])

op_st = st.one_of(
    st.tuples(st.just("buy"), st.just("qty"), symbol_st, qty_st),
    st.tuples(st.just("buy"), st.just("notional"), symbol_st, notional_st),
    st.tuples(side_st, st.just("qty"), symbol_st, qty_st),
    st.tuples(side_st, st.just("notional"), symbol_st, notional_st),
    st.tuples(st.just("price"), st.just(""), symbol_st, price_st),
    st.tuples(st.just("all_in"), st.just(""), symbol_st, st.just(0.0)),
    st.tuples(
        st.sampled_from(["close", "process", "cancel", "resubmit"]),
        st.just(""),
        symbol_st,
        st.just(0.0),
    ),
)


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    ops=st.lists(op_st, min_size=5, max_size=50),
    cash=st.sampled_from([0.0, 1.0]) | st.floats(2_000, 100_000) | st.floats(5_000, 50_000),
    bps=st.floats(min_value=0, max_value=100),
    per_share=st.floats(min_value=0, max_value=0.05),
    minimum=st.floats(min_value=0, max_value=5),
    slip=st.floats(min_value=0, max_value=100),
    immediate=st.booleans(),
)
def test_cash_and_positions_never_go_negative(
    ops: list[tuple[str, str, str, float]],
    cash: float,
    bps: float,
    per_share: float,
    minimum: float,
    slip: float,
    immediate: bool,
) -> None:
    prices = Prices(AAPL=100.0, MSFT=250.0, KO=50.0)
    broker = SimBroker(
        prices,
        starting_cash=cash,
        clock=ReplayClock(date(2021, 7, 6), calendar=CAL),
        calendar=CAL,
        commission=CommissionModel(bps=bps, per_share=per_share, minimum=minimum),
        slippage=SlippageModel(bps=slip),
        fill_immediately=immediate,
    )
    last_id = "none"
    for n, (kind, unit, symbol, amount) in enumerate(ops):
        try:
            if kind in ("buy", "sell"):
                side = Side.BUY if kind == "buy" else Side.SELL
                last_id = f"o{n}"
                request = OrderRequest(
                    symbol,
                    side,
                    last_id,
                    qty=amount if unit == "qty" else None,
                    notional=amount if unit == "notional" else None,
                )
                broker.submit_market_order(request)
            elif kind == "price":
                prices.prices[symbol] = amount
                broker.mark({symbol: amount})
            elif kind == "all_in":  # spend (nearly) every cent: the edge where fees bite
                price = prices.prices[symbol] * (1 + slip / 10_000)
                rate = 1 + bps / 10_000 + per_share / price
                notional = min(broker.cash - minimum, broker.cash / rate) - 1e-6
                if notional > 0:
                    last_id = f"o{n}"
                    broker.submit_market_order(
                        OrderRequest(symbol, Side.BUY, last_id, notional=notional)
                    )
            elif kind == "close":
                broker.close_position(symbol, f"c{n}")
            elif kind == "process":
                broker.process_pending()
            elif kind == "cancel":
                broker.cancel_order(last_id)
            elif kind == "resubmit" and (order := broker.get_order_by_client_id(last_id)):
                fills_before = len(broker.fills)
                broker.submit_market_order(
                    OrderRequest(
                        order.symbol, order.side, last_id, qty=order.qty, notional=order.notional
                    )
                )
                assert len(broker.fills) == fills_before
        except (OrderRejected, NotFoundError):
            pass
        assert broker.cash >= 0
        assert all(p.qty > 0 for p in broker.get_positions())
        account = broker.get_account()
        assert account.buying_power >= 0
        assert account.equity >= 0
    broker.process_pending()
    assert broker.cash >= 0
    assert all(p.qty > 0 for p in broker.get_positions())
    assert len({f.client_order_id for f in broker.fills}) == len(broker.fills)
    event(f"fills: {min(len(broker.fills), 5)}")


def test_fills_since_is_the_tail_of_the_fills() -> None:
    broker, _ = make()
    broker.submit_market_order(buy(qty=1))
    broker.submit_market_order(buy("MSFT", qty=2))
    broker.submit_market_order(sell(qty=1))
    everything = broker.fills
    assert [f.symbol for f in everything] == ["AAPL", "MSFT", "AAPL"]
    for start in range(len(everything) + 2):
        assert broker.fills_since(start) == everything[start:]


def test_positions_in_symbol_order_at_their_marks() -> None:
    broker, _ = make()
    broker.submit_market_order(buy("MSFT", qty=2))
    broker.submit_market_order(buy(qty=1))
    broker.mark({"msft": 210.0})
    aapl, msft = broker.get_positions()
    assert (aapl.symbol, aapl.qty, aapl.current_price) == ("AAPL", 1, aapl.avg_entry_price)
    assert (msft.symbol, msft.qty, msft.current_price) == ("MSFT", 2, 210.0)
    assert broker.get_position("msft") == msft
