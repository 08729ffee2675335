"""The trading cycle in paper mode: the real alpaca-py against the loopback fake Alpaca."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date, datetime
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import delete, func, select

from app.container import services
from app.domain import BarFrame, Signal, SignalAction, TradingState
from app.extensions import db
from app.store.orm import DecisionRun, OrderRecord, RiskEvent
from app.trading.cycle import TradingService
from app.trading.risk import RiskStateStore
from tests.api.test_market_api import PAPER
from tests.fakes.fake_alpaca import FakeAlpaca
from tests.support import SHARED_DATA
from tests.trading.conftest import OPEN, WATCH


class FixedSignals:
    """Signals chosen by the test: what the model would say, without training one."""

    def __init__(self, buys: Mapping[str, float], sells: tuple[str, ...] = ()) -> None:
        self.buys = dict(buys)
        self.sells = sells

    def signals(
        self, bars: Mapping[str, BarFrame], session: date
    ) -> tuple[dict[str, Signal], str | None]:
        out = {s: Signal(s, SignalAction.BUY, r, 0.9, 0.01, "test") for s, r in self.buys.items()}
        out.update({s: Signal(s, SignalAction.SELL, -0.02, 0.9, 0.01, "test") for s in self.sells})
        return out, None


def trading(app: Flask, source: FixedSignals) -> TradingService:
    with app.app_context():
        return services().trading(source)


def order_rows() -> list[OrderRecord]:
    with db.session() as session:
        return list(session.scalars(select(OrderRecord).order_by(OrderRecord.id)))


MONDAY = date(2021, 11, 29)  # the session about to open; Friday 2021-11-26 closed last


def test_decision_queues_market_on_open_orders_with_deterministic_ids_once(
    paper_app: Flask, fake: FakeAlpaca
) -> None:
    fake.pre_open(MONDAY)
    service = trading(paper_app, FixedSignals({"AAPL": 0.02, "MSFT": 0.01}))
    result = service.run_decision()
    assert (result.status, result.session) == ("done", "2021-11-26")
    ids = sorted(o["client_order_id"] for o in result.orders)
    assert ids == ["alpha-20211126-entry-AAPL-buy", "alpha-20211126-entry-MSFT-buy"]
    assert {o["status"] for o in result.orders} == {"new"}  # queued for the opening auction
    assert {o.time_in_force for o in fake.orders.values()} == {"opg"}
    assert all(o["qty"] == int(o["qty"]) for o in result.orders)  # OPG: whole shares
    fake.reset_counts()
    again = service.run_decision()  # a later trigger of the same morning: a no-op
    assert again.status == "already_decided"
    assert fake.count("POST /v2/orders") == 0
    fake.open_session(MONDAY)
    assert sorted(fake.positions) == ["AAPL", "MSFT"]
    for position in fake.positions.values():
        assert position.qty * position.avg_entry_price <= 0.10 * 100_000 + 1  # size cap
    guard = service.run_guard()  # protective OCOs on both holdings, recorded
    assert guard.status == "done"
    assert {r.status for r in order_rows()} == {"filled", "new"}
    protective = [o for o in fake.orders.values() if o.order_class == "oco" and o.legs]
    assert sorted(o.symbol for o in protective) == ["AAPL", "MSFT"]
    for order in protective:
        entry = fake.positions[order.symbol].avg_entry_price
        assert order.limit_price == pytest.approx(entry * 1.10, abs=0.006)
        assert order.legs[0].stop_price == pytest.approx(entry * 0.95, abs=0.006)
        assert order.qty == fake.positions[order.symbol].qty
    fake.reset_counts()
    assert service.run_guard().protective == []  # in place: nothing to change
    assert fake.count("POST /v2/orders") == 0


def test_a_decision_after_the_open_trades_nothing_and_is_reported(
    paper_app: Flask, fake: FakeAlpaca
) -> None:
    result = trading(paper_app, FixedSignals({"AAPL": 0.02})).run_decision()  # 10:00, open
    assert result.status == "decision_missed"
    assert fake.count("POST /v2/orders") == 0
    with db.session() as session:
        assert session.scalars(select(RiskEvent.kind)).all() == ["decision_missed"]


def test_no_decision_before_the_opg_window(paper_app: Flask, fake: FakeAlpaca) -> None:
    fake.set_clock(datetime(2021, 11, 29, 22, 0, tzinfo=UTC), is_open=False)  # 17:00 New York
    result = trading(paper_app, FixedSignals({"AAPL": 0.02})).run_decision()
    assert (result.status, result.session) == ("before_opg_window", "2021-11-29")
    assert fake.count("POST /v2/orders") == 0


@pytest.mark.parametrize(
    ("moment", "why"),
    [
        (datetime(2021, 11, 27, 15, 0, tzinfo=UTC), "Saturday"),
        (datetime(2021, 11, 28, 15, 0, tzinfo=UTC), "Sunday"),
        (datetime(2021, 11, 25, 15, 0, tzinfo=UTC), "Thanksgiving"),
        (datetime(2021, 7, 5, 15, 0, tzinfo=UTC), "Independence Day observed"),
        (datetime(2021, 11, 26, 18, 30, tzinfo=UTC), "after the 13:00 early close"),
        (datetime(2021, 11, 29, 13, 0, tzinfo=UTC), "before the open"),
        (datetime(2021, 11, 29, 21, 30, tzinfo=UTC), "after the close"),
    ],
)
def test_guard_cycles_are_a_no_op_while_the_market_is_closed(
    paper_app: Flask, fake: FakeAlpaca, moment: datetime, why: str
) -> None:
    fake.set_clock(moment)
    result = trading(paper_app, FixedSignals({"AAPL": 0.02})).run_guard()
    assert result.status == "market_closed", why
    assert fake.count("POST /v2/orders") == 0
    assert order_rows() == []


def test_stop_loss_and_sell_signal_exit(make_app: Callable[..., Flask], fake: FakeAlpaca) -> None:
    app = make_app(  # positions set by hand: the bot manages them only when told to
        **PAPER,
        ALPACA_BASE_URL=fake.base_url,
        ALPACA_DATA_URL=fake.base_url,
        WATCHLIST=WATCH,
        MANAGE_EXTERNAL_POSITIONS=True,
    )
    fake.pre_open(MONDAY)
    price = fake.price("KO")
    fake.set_position("KO", 10, price * 1.2)  # 17 % under water
    fake.set_position("PEP", 5, fake.price("PEP"))
    result = trading(app, FixedSignals({}, sells=("PEP",))).run_decision()
    reasons = {o["symbol"]: o["reason"].split(":")[0] for o in result.orders}
    assert reasons == {"KO": "stop_loss", "PEP": "signal_sell"}
    fake.open_session(MONDAY)
    assert "KO" not in fake.positions
    assert "PEP" not in fake.positions


def test_a_signal_exit_cancels_the_protective_order_first(
    paper_app: Flask, fake: FakeAlpaca
) -> None:
    fake.pre_open(MONDAY)
    trading(paper_app, FixedSignals({"AAPL": 0.02})).run_decision()
    fake.open_session(MONDAY)
    trading(paper_app, FixedSignals({})).run_guard()
    (oco,) = [o for o in fake.orders.values() if o.order_class == "oco" and o.legs]
    fake.close_session(MONDAY)
    tuesday = date(2021, 11, 30)
    fake.pre_open(tuesday)
    result = trading(paper_app, FixedSignals({}, sells=("AAPL",))).run_decision()
    assert [(o["client_order_id"], o["status"]) for o in result.orders] == [
        ("alpha-20211129-signal_sell-AAPL-sell", "new")
    ]
    assert oco.status == "canceled"
    assert oco.legs[0].status == "canceled"
    fake.open_session(tuesday)
    assert "AAPL" not in fake.positions


def test_halt_survives_a_restart(
    make_app: Callable[..., Flask], paper_app: Flask, fake: FakeAlpaca
) -> None:
    RiskStateStore(db).halt("operator kill switch", OPEN)
    restarted = make_app(
        **PAPER, ALPACA_BASE_URL=fake.base_url, ALPACA_DATA_URL=fake.base_url, WATCHLIST=WATCH
    )
    assert RiskStateStore(db).load().state is TradingState.HALTED
    fake.pre_open(MONDAY)
    result = trading(restarted, FixedSignals({"AAPL": 0.02})).run_decision()
    assert result.orders == []
    assert result.denied
    assert result.denied[0]["rule"] == "trading_state"
    RiskStateStore(db).resume()
    with db.session() as session:  # an operator lets the bot decide again this morning
        session.execute(delete(DecisionRun))
    assert [
        o["symbol"] for o in trading(restarted, FixedSignals({"AAPL": 0.02})).run_decision().orders
    ] == ["AAPL"]


def test_daily_loss_halts_and_is_recorded(paper_app: Flask, fake: FakeAlpaca) -> None:
    fake.last_equity = 103_000.0  # the close before; equity is 100 000 now: -2.9 %
    fake.pre_open(MONDAY)
    result = trading(paper_app, FixedSignals({"AAPL": 0.02})).run_decision()
    assert result.events == ["daily_loss_halt"]
    assert result.orders == []
    with db.session() as session:
        kinds = session.scalars(select(RiskEvent.kind)).all()
    assert "daily_loss_halt" in kinds


def test_orders_and_positions_opened_by_hand_are_reconciled(
    paper_app: Flask, fake: FakeAlpaca
) -> None:
    from app.domain import OrderRequest, Side

    fake.set_clock(datetime(2021, 11, 29, 22, 0, tzinfo=UTC), is_open=False)
    with paper_app.app_context():  # stays open: the market is closed
        services().venue.broker.submit_market_order(
            OrderRequest("XOM", Side.BUY, "by-hand-1", qty=1)
        )
    fake.set_position("CAT", 3, fake.price("CAT"))
    fake.set_clock(OPEN)
    result = trading(paper_app, FixedSignals({})).run_guard()
    assert result.reconciled == ["by-hand-1"]
    rows = {r.client_order_id: r.status for r in order_rows()}
    assert rows == {"by-hand-1": "new"}
    with db.session() as session:
        kinds = session.scalars(select(RiskEvent.kind).order_by(RiskEvent.id)).all()
    assert kinds == ["reconcile_unknown_order", "reconcile_unknown_position"]
    fake.fill_open_orders()
    assert trading(paper_app, FixedSignals({})).run_guard().reconciled == ["by-hand-1"]
    assert {r.client_order_id: r.status for r in order_rows()} == {"by-hand-1": "filled"}
    with db.session() as session:  # each mismatch is reported once, not every cycle
        assert session.scalar(select(func.count()).select_from(RiskEvent)) == 2


@pytest.fixture
def discord(make_app: Callable[..., Flask], fake: FakeAlpaca) -> Iterator[tuple[Flask, Any]]:
    """A paper app whose alerts go to a loopback Discord webhook receiver."""
    from tests.trading.test_notifier import Receiver

    receiver = Receiver()
    app = make_app(
        **PAPER,
        ALPACA_BASE_URL=fake.base_url,
        ALPACA_DATA_URL=fake.base_url,
        WATCHLIST=WATCH,
        DISCORD_WEBHOOK_URL=receiver.url,
    )
    yield app, receiver
    receiver.close()


def test_fills_and_halts_reach_discord(discord: tuple[Flask, Any], fake: FakeAlpaca) -> None:
    app, receiver = discord
    fake.pre_open(MONDAY)
    trading(app, FixedSignals({"AAPL": 0.02})).run_decision()
    fake.open_session(MONDAY)
    fake.cash -= 3_000.0  # a -3 % day against the start-of-day equity
    trading(app, FixedSignals({})).run_guard()
    with app.app_context():
        assert services().notifier.flush(10)
    titles = [r["embeds"][0]["title"] for r in receiver.received]
    assert "Entry: buy AAPL" in titles
    assert "Risk: daily_loss_halt" in titles


def test_daily_summary_reaches_discord(discord: tuple[Flask, Any], fake: FakeAlpaca) -> None:
    from app.trading.summary import daily_summary

    app, receiver = discord
    fake.pre_open(MONDAY)
    trading(app, FixedSignals({"AAPL": 0.02})).run_decision()
    fake.open_session(MONDAY)
    with app.app_context():
        summary = daily_summary(services())
        assert services().notifier.flush(10)
    assert summary["positions"] == ["AAPL"]
    assert receiver.received[-1]["embeds"][0]["title"].startswith("Daily summary")
    assert "AAPL" in receiver.received[-1]["embeds"][0]["description"]


def test_sim_replay_waits_for_the_first_model(make_app: Callable[..., Flask]) -> None:
    """While the first model trains (on the training worker), sim cycles do not use up the
    replay: the model is trained on the history before the replay's first session, and the
    demo trades from there."""
    app = make_app(DATA_DIR=str(SHARED_DATA), WATCHLIST=WATCH)
    with app.app_context():
        svc = services()
        first = svc.venue.today()
        assert svc.models.current_version() is None
        for _ in range(3):
            assert svc.trading().run_decision().session == first.isoformat()
        assert svc.venue.today() == first
        assert svc.trading(FixedSignals({})).run_decision().session == first.isoformat()
        assert svc.venue.today() > first  # with signals the replay moves on
