"""The trading cycle in paper mode: the real alpaca-py against the loopback fake Alpaca."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date, datetime
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from app.container import services
from app.domain import BarFrame, Signal, SignalAction, TradingState
from app.extensions import db
from app.store.orm import OrderRecord, RiskEvent
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


def test_cycle_buys_with_deterministic_ids_and_never_twice(
    paper_app: Flask, fake: FakeAlpaca
) -> None:
    service = trading(paper_app, FixedSignals({"AAPL": 0.02, "MSFT": 0.01}))
    result = service.run_cycle()
    assert result.status == "done"
    assert result.cycle_key == "1500"
    ids = sorted(o["client_order_id"] for o in result.orders)
    assert ids == ["alpha-20211129-1500-AAPL-buy", "alpha-20211129-1500-MSFT-buy"]
    assert {o["status"] for o in result.orders} == {"filled"}
    assert sorted(fake.positions) == ["AAPL", "MSFT"]
    for position in fake.positions.values():
        assert position.qty * position.avg_entry_price <= 0.10 * 100_000 + 1  # size cap
    fake.reset_counts()
    again = service.run_cycle()  # same slot, now holding: nothing new to send
    assert again.orders == []
    assert fake.count("POST /v2/orders") == 0
    assert len(order_rows()) == 2


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
def test_closed_market_means_no_submission(
    paper_app: Flask, fake: FakeAlpaca, moment: datetime, why: str
) -> None:
    fake.set_clock(moment)
    result = trading(paper_app, FixedSignals({"AAPL": 0.02})).run_cycle()
    assert result.status == "market_closed", why
    assert fake.count("POST /v2/orders") == 0
    assert order_rows() == []


def test_early_close_day_trades_before_the_close(paper_app: Flask, fake: FakeAlpaca) -> None:
    fake.set_clock(datetime(2021, 11, 26, 17, 30, tzinfo=UTC))
    result = trading(paper_app, FixedSignals({"AAPL": 0.02})).run_cycle()
    assert result.status == "done"
    assert [o["symbol"] for o in result.orders] == ["AAPL"]


def test_stop_loss_and_sell_signal_exit(make_app: Callable[..., Flask], fake: FakeAlpaca) -> None:
    app = make_app(  # positions set by hand: the bot manages them only when told to
        **PAPER,
        ALPACA_BASE_URL=fake.base_url,
        ALPACA_DATA_URL=fake.base_url,
        WATCHLIST=WATCH,
        MANAGE_EXTERNAL_POSITIONS=True,
    )
    price = fake.price("KO")
    fake.set_position("KO", 10, price * 1.2)  # 17 % under water
    fake.set_position("PEP", 5, fake.price("PEP"))
    result = trading(app, FixedSignals({}, sells=("PEP",))).run_cycle()
    reasons = {o["symbol"]: o["reason"].split(":")[0] for o in result.orders}
    assert reasons == {"KO": "stop_loss", "PEP": "signal_sell"}
    assert "KO" not in fake.positions
    assert "PEP" not in fake.positions


def test_halt_survives_a_restart(
    make_app: Callable[..., Flask], paper_app: Flask, fake: FakeAlpaca
) -> None:
    RiskStateStore(db).halt("operator kill switch", OPEN)
    restarted = make_app(
        **PAPER, ALPACA_BASE_URL=fake.base_url, ALPACA_DATA_URL=fake.base_url, WATCHLIST=WATCH
    )
    assert RiskStateStore(db).load().state is TradingState.HALTED
    result = trading(restarted, FixedSignals({"AAPL": 0.02})).run_cycle()
    assert result.orders == []
    assert result.denied
    assert result.denied[0]["rule"] == "trading_state"
    RiskStateStore(db).resume()
    assert [
        o["symbol"] for o in trading(restarted, FixedSignals({"AAPL": 0.02})).run_cycle().orders
    ] == ["AAPL"]


def test_daily_loss_halts_and_is_recorded(paper_app: Flask, fake: FakeAlpaca) -> None:
    fake.last_equity = 103_000.0  # yesterday's close; equity is 100 000 now: -2.9 %
    result = trading(paper_app, FixedSignals({"AAPL": 0.02})).run_cycle()
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
    result = trading(paper_app, FixedSignals({})).run_cycle()
    assert result.reconciled == ["by-hand-1"]
    rows = {r.client_order_id: r.status for r in order_rows()}
    assert rows == {"by-hand-1": "new"}
    with db.session() as session:
        kinds = session.scalars(select(RiskEvent.kind).order_by(RiskEvent.id)).all()
    assert kinds == ["reconcile_unknown_order", "reconcile_unknown_position"]
    fake.fill_open_orders()
    assert trading(paper_app, FixedSignals({})).run_cycle().reconciled == ["by-hand-1"]
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
    trading(app, FixedSignals({"AAPL": 0.02})).run_cycle()
    fake.cash -= 3_000.0  # a -3 % day against the start-of-day equity
    fake.set_clock(OPEN.replace(minute=20))
    trading(app, FixedSignals({})).run_cycle()
    with app.app_context():
        assert services().notifier.flush(10)
    titles = [r["embeds"][0]["title"] for r in receiver.received]
    assert "Entry: buy AAPL" in titles
    assert "Risk: daily_loss_halt" in titles


def test_daily_summary_reaches_discord(discord: tuple[Flask, Any]) -> None:
    from app.trading.summary import daily_summary

    app, receiver = discord
    trading(app, FixedSignals({"AAPL": 0.02})).run_cycle()
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
            assert svc.trading().run_cycle().session == first.isoformat()
        assert svc.venue.today() == first
        assert svc.trading(FixedSignals({})).run_cycle().session == first.isoformat()
        assert svc.venue.today() > first  # with signals the replay moves on
