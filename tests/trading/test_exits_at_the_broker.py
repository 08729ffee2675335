"""Exits at the broker as Alpaca treats them, through the trading cycles against the loopback
fake: orders placed by hand stay untouched, and fractional holdings are sold whole shares on
the open plus the fraction by a DAY order (Alpaca refuses fractional market-on-open orders)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import select

from app.container import services
from app.domain import ProtectiveRequest
from app.extensions import db
from app.store.orm import RiskEvent
from app.trading.protection import protective_levels
from app.trading.risk import RiskLimits
from tests.api.test_market_api import PAPER
from tests.fakes.fake_alpaca import FakeAlpaca
from tests.trading.conftest import WATCH
from tests.trading.test_cycle import MONDAY, FixedSignals, trading


def app_for(make_app: Callable[..., Flask], fake: FakeAlpaca, *, manage: bool) -> Flask:
    return make_app(
        **PAPER,
        ALPACA_BASE_URL=fake.base_url,
        ALPACA_DATA_URL=fake.base_url,
        WATCHLIST=WATCH,
        MANAGE_EXTERNAL_POSITIONS=manage,
    )


def place_by_hand(app: Flask, symbol: str, qty: float, entry: float) -> str:
    """An OCO the account's owner placed himself (any client order id but the bot's)."""
    stop, target = protective_levels(entry, RiskLimits())
    cid = f"my-own-oco-{symbol}"
    with app.app_context():
        services().venue.broker.submit_protective_order(
            ProtectiveRequest(symbol, cid, qty, target, stop)
        )
    return cid


@pytest.mark.parametrize("manage", [False, True])
def test_an_oco_placed_by_hand_is_left_alone(
    make_app: Callable[..., Flask], fake: FakeAlpaca, manage: bool
) -> None:
    """Unmanaged holding: its hand-placed OCO stays and the bot adds none. Managed holding: the
    hand-placed OCO stays and the bot protects only the shares it does not hold."""
    app = app_for(make_app, fake, manage=manage)
    entry = fake.price("CAT") or 0.0
    fake.set_position("CAT", 5, entry)
    cid = place_by_hand(app, "CAT", 2, entry)
    result = trading(app, FixedSignals({})).run_guard()
    assert result.status == "done"
    mine = fake.order_by_client_id(cid)
    assert mine is not None
    assert (mine.status, mine.legs[0].status) == ("new", "held")
    assert fake.count("DELETE /v2/orders/*") == 0
    bot = [o for o in fake.orders.values() if o.client_order_id.startswith("alpha-")]
    if manage:
        assert [(o.symbol, o.qty, o.order_class) for o in bot] == [("CAT", 3, "oco")]
    else:
        assert bot == []
    fake.reset_counts()
    assert trading(app, FixedSignals({})).run_guard().protective == []  # stable: no churn
    assert fake.count("POST /v2/orders") == fake.count("DELETE /v2/orders/*") == 0


def test_a_stop_filled_above_its_stop_is_reported_as_a_stop_loss(
    paper_app: Flask, fake: FakeAlpaca
) -> None:
    """The guard's reconciliation tells the leg that filled, whatever the price."""
    fake.pre_open(MONDAY)
    trading(paper_app, FixedSignals({"AAPL": 0.02})).run_decision()
    fake.open_session(MONDAY)
    trading(paper_app, FixedSignals({})).run_guard()
    (oco,) = [o for o in fake.orders.values() if o.order_class == "oco" and o.legs]
    stop = oco.legs[0].stop_price or 0.0
    fake.fill_oco_leg(oco.client_order_id, "stop", stop + 0.5)  # a rebound while it worked
    trading(paper_app, FixedSignals({})).run_guard()
    with db.session() as session:
        kinds = session.scalars(
            select(RiskEvent.kind).where(RiskEvent.kind.in_(["stop_loss", "take_profit"]))
        ).all()
    assert kinds == ["stop_loss"]


def test_a_fractional_holding_is_sold_whole_shares_on_the_open_and_the_fraction_by_day(
    make_app: Callable[..., Flask], fake: FakeAlpaca
) -> None:
    """Alpaca refuses a fractional market-on-open order (as the fake does): the 10 whole
    shares go on the open, the half share as a DAY market order, both from the decision."""
    app = app_for(make_app, fake, manage=True)
    fake.pre_open(MONDAY)
    fake.set_position("KO", 10.5, (fake.price("KO") or 0.0) * 1.2)  # 17 % under water
    result = trading(app, FixedSignals({})).run_decision()
    assert result.status == "done"
    sent = sorted((o["client_order_id"], o["qty"], o["status"]) for o in result.orders)
    assert sent == [
        ("alpha-20211126-stop_loss-KO-sell", 10, "new"),
        ("alpha-20211126-stop_loss_fraction-KO-sell", 0.5, "new"),
    ]
    booked = {o.client_order_id: (o.qty, o.time_in_force) for o in fake.orders.values()}
    assert booked == {
        "alpha-20211126-stop_loss-KO-sell": (10, "opg"),
        "alpha-20211126-stop_loss_fraction-KO-sell": (0.5, "day"),
    }
    fake.open_session(MONDAY)
    assert "KO" not in fake.positions
