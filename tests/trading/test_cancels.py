"""Order flow against real Alpaca's asynchronous cancels: the loopback fake keeps a cancel
`pending_cancel` (its shares held) for a while, refuses a sell of held shares, refuses chosen
cancels and refuses market-on-open orders from 09:28. The real alpaca-py, the real cycles.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

import pytest
from flask import Flask
from sqlalchemy import select

from app.container import services
from app.extensions import db
from app.store.orm import RiskEvent
from app.trading.cycle import TradingService
from tests.api.test_market_api import PAPER
from tests.fakes.fake_alpaca import NY, FakeAlpaca, FakeOrder
from tests.trading.conftest import WATCH
from tests.trading.test_cycle import FixedSignals

MONDAY = date(2021, 11, 29)
TUESDAY = date(2021, 11, 30)
#: Seven holdings (RISK_MAX_POSITIONS): ABT is the first by name, the weakest when none has a
#: signal, so a better candidate replaces it.
BOOK = ("ABT", "CSCO", "DIS", "HD", "JNJ", "KO", "PEP")


def make(make_app: Callable[..., Flask], fake: FakeAlpaca, **overrides: object) -> Flask:
    """A paper app on the fake that manages the holdings the tests set by hand."""
    return make_app(
        **PAPER,
        ALPACA_BASE_URL=fake.base_url,
        ALPACA_DATA_URL=fake.base_url,
        WATCHLIST=WATCH,
        MANAGE_EXTERNAL_POSITIONS=True,
        **overrides,
    )


def trading(
    app: Flask, source: FixedSignals, clock: Callable[[], datetime] | None = None
) -> TradingService:
    with app.app_context():
        return services().trading(source, clock)


def hold(fake: FakeAlpaca, *symbols: str, qty: float = 10) -> None:
    for symbol in symbols:
        price = fake.price(symbol)
        assert price is not None
        fake.set_position(symbol, qty, price)


def open_ocos(fake: FakeAlpaca, symbol: str) -> list[FakeOrder]:
    return [
        o
        for o in fake.orders.values()
        if o.symbol == symbol and o.order_class == "oco" and o.legs and o.is_open
    ]


def market_orders(fake: FakeAlpaca) -> list[FakeOrder]:
    return [o for o in fake.orders.values() if o.order_type == "market"]


def events(kind: str) -> list[RiskEvent]:
    with db.session() as session:
        return list(session.scalars(select(RiskEvent).where(RiskEvent.kind == kind)))


def protected_then_tuesday(app: Flask, fake: FakeAlpaca, symbol: str = "AAPL") -> FakeOrder:
    """`symbol` held and protected by a guard on Monday; Tuesday 08:00, before the decision."""
    hold(fake, symbol)
    assert trading(app, FixedSignals({})).run_guard().status == "done"
    (oco,) = open_ocos(fake, symbol)
    fake.close_session(MONDAY)
    fake.pre_open(TUESDAY)
    return oco


# -- issue 23, item 3: the exit waits for the cancel's confirmation ---------------------------


def test_an_exit_waits_for_the_pending_cancel_and_fills_at_the_open(
    make_app: Callable[..., Flask], fake: FakeAlpaca
) -> None:
    app = make(make_app, fake)
    oco = protected_then_tuesday(app, fake)
    fake.pending_cancel_reads = 3  # Alpaca confirms a few reads later
    result = trading(app, FixedSignals({}, sells=("AAPL",))).run_decision()
    assert [(o["client_order_id"], o["status"]) for o in result.orders] == [
        ("alpha-20211129-signal_sell-AAPL-sell", "new")
    ]
    assert oco.status == "canceled"
    fake.open_session(TUESDAY)
    assert "AAPL" not in fake.positions


def test_an_exit_whose_cancel_is_never_confirmed_is_held_back_and_alerted(
    make_app: Callable[..., Flask], fake: FakeAlpaca
) -> None:
    app = make(make_app, fake, CANCEL_CONFIRM_TIMEOUT_SECONDS=0.3)
    oco = protected_then_tuesday(app, fake)
    fake.pending_cancel_reads = 10**9
    result = trading(app, FixedSignals({}, sells=("AAPL",))).run_decision()
    assert market_orders(fake) == []  # nothing the broker would refuse for held shares
    assert result.orders == []
    assert [d["rule"] for d in result.denied] == ["cancel_pending"]
    assert oco.status == "pending_cancel"
    (event,) = events("cancel_not_confirmed")
    assert event.symbol == "AAPL"
    assert "pending_cancel" in event.detail


# -- issue 24, item 6: a BUY that counts on a SELL goes only once the SELL is accepted --------


@pytest.mark.parametrize(
    ("signals", "kind"),
    [
        (FixedSignals({"MSFT": 0.05}, sells=("ABT",)), "signal_sell"),
        (FixedSignals({"MSFT": 0.05}), "rebalance"),
    ],
    ids=["exit-frees-a-slot", "rebalancing-swap"],
)
def test_the_book_never_exceeds_max_positions_when_a_sell_is_refused(
    make_app: Callable[..., Flask], fake: FakeAlpaca, signals: FixedSignals, kind: str
) -> None:
    app = make(make_app, fake)
    fake.pre_open(MONDAY)
    hold(fake, *BOOK)
    with app.app_context():  # the day's asset listing says ABT trades...
        services().venue.broker.get_assets()
    fake.untradable.add("ABT")  # ...but the broker refuses every order of ABT (halted since)
    result = trading(app, signals).run_decision()
    sent = [(o["client_order_id"], o["status"]) for o in result.orders]
    assert sent == [
        (f"alpha-20211126-{kind}-ABT-sell", "unknown"),
        (f"alpha-20211126-{kind}_retry-ABT-sell", "unknown"),  # refused once more: alerted
    ]
    assert [d["symbol"] for d in result.denied if d["side"] == "buy"] == ["MSFT"]
    assert events("exit_refused")[0].symbol == "ABT"
    fake.open_session(MONDAY)
    assert len(fake.positions) == 7
    assert "MSFT" not in fake.positions


# -- issue 24, item 7: one failed cancel never leaves the other holdings unprotected ----------


def test_a_refused_cancel_does_not_stop_the_guard_protecting_the_others(
    make_app: Callable[..., Flask], fake: FakeAlpaca
) -> None:
    app = make(make_app, fake)
    hold(fake, "AAPL")
    service = trading(app, FixedSignals({}))
    service.run_guard()
    (old,) = open_ocos(fake, "AAPL")
    hold(fake, "AAPL", qty=15)  # bought more: AAPL's order must be replaced...
    hold(fake, "KO")  # ...and KO, new, protected
    fake.refuse_cancel.add("AAPL")
    result = service.run_guard()
    assert result.status == "done"
    assert len(open_ocos(fake, "KO")) == 1
    assert open_ocos(fake, "AAPL") == [old]  # still the old one: it holds the shares
    (event,) = events("protective_cancel_failed")
    assert event.symbol == "AAPL"
    assert "not cancelable" in event.detail
    fake.refuse_cancel.clear()
    service.run_guard()  # the next guard replaces it
    (new,) = open_ocos(fake, "AAPL")
    assert new.qty == 15


# -- issue 24, item 9: the cutoff is checked before every cancel and send ---------------------


def test_a_cutoff_reached_mid_decision_sends_nothing_more_and_restores_protection(
    make_app: Callable[..., Flask], fake: FakeAlpaca
) -> None:
    app = make(make_app, fake)
    oco = protected_then_tuesday(app, fake)
    late = datetime.combine(TUESDAY, datetime.min.time(), NY).replace(hour=9, minute=29)

    def cancel_takes_until_0929(route: str) -> None:
        if route.startswith("DELETE /v2/orders/"):
            fake.set_clock(late, is_open=False)

    fake.on_request = cancel_takes_until_0929
    source = FixedSignals({"MSFT": 0.05}, sells=("AAPL",))
    result = trading(app, source, clock=fake.now).run_decision()
    assert oco.status == "canceled"
    assert market_orders(fake) == []  # nothing sent past the cutoff, nothing refused
    assert result.late == ["AAPL", "MSFT"]
    assert {d["rule"] for d in result.denied} == {"decision_cutoff"}
    assert len(open_ocos(fake, "AAPL")) == 1  # protection put back at once
    assert events("decision_cutoff")


def test_no_protective_order_is_cancelled_without_time_to_send_its_exit(
    make_app: Callable[..., Flask], fake: FakeAlpaca
) -> None:
    app = make(make_app, fake)  # CANCEL_CONFIRM_TIMEOUT_SECONDS: 10 s
    oco = protected_then_tuesday(app, fake)
    fake.set_clock(datetime(2021, 11, 30, 14, 27, 55, tzinfo=UTC), is_open=False)  # 09:27:55
    result = trading(app, FixedSignals({}, sells=("AAPL",)), clock=fake.now).run_decision()
    assert fake.count("DELETE /v2/orders/*") == 0
    assert oco.is_open
    assert market_orders(fake) == []
    assert [d["rule"] for d in result.denied] == ["decision_cutoff"]
