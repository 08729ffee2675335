"""Issue 12 through the service: the real alpaca-py against the loopback fake, on SQLite and on
PostgreSQL+Redis: halt instants, the kill switch against a running cycle, external holdings and
non-fractionable assets."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from flask import Flask
from sqlalchemy import delete, select

from app.container import services
from app.domain import BarFrame, Signal, TradingState
from app.extensions import db
from app.store.orm import DecisionRun, FillRecord, OrderRecord, RiskEvent
from app.trading import kill_switch
from app.trading.risk import RiskLimits, RiskManager, RiskState, RiskStateStore
from tests.api.test_market_api import PAPER
from tests.fakes.fake_alpaca import FakeAlpaca
from tests.trading.conftest import OPEN, WATCH
from tests.trading.test_cycle import MONDAY, FixedSignals, order_rows, trading

NEW_YORK = ZoneInfo("America/New_York")


def test_a_halt_at_noon_new_york_lasts_until_noon_the_next_day(paper_app: Flask) -> None:
    """SQLite keeps no offset: an instant stored with -05:00 used to come back 5 h early."""
    noon = datetime(2021, 11, 30, 12, 0, tzinfo=NEW_YORK)
    store = RiskStateStore(db)
    for halt in (
        lambda: store.halt("kill switch", noon, hours=24),
        lambda: store.save(
            RiskManager(RiskLimits()).update_state(
                RiskState(session_date=noon.date(), start_of_day_equity=103_000),
                _account(100_000),
                noon.date(),
                noon,
            )[0]
        ),
    ):
        halt()
        state = store.load()
        assert state.state is TradingState.HALTED
        assert state.halted(noon + timedelta(hours=23, minutes=59))
        assert not state.halted(noon + timedelta(hours=24))
        assert state.halted_until == noon + timedelta(hours=24)
        assert state.halted_until is not None
        assert state.halted_until.utcoffset() == timedelta(0)


def _account(equity: float):  # type: ignore[no-untyped-def]
    from app.domain import Account

    return Account(cash=equity, equity=equity, buying_power=equity, last_equity=equity)


class HaltingSignals(FixedSignals):
    """An operator presses the kill switch while the cycle computes its signals."""

    def __init__(self, app: Flask, buys: Mapping[str, float]) -> None:
        super().__init__(buys)
        self.app = app

    def signals(
        self, bars: Mapping[str, BarFrame], session: date
    ) -> tuple[dict[str, Signal], str | None]:
        with self.app.app_context():
            report = kill_switch.halt(
                services(),
                "operator",
                now=OPEN,
                hours=None,
                cancel_orders=False,
                flatten=False,
                lock_wait=0.0,  # the cycle holds the lock: halt anyway
            )
        assert report.errors == []
        return super().signals(bars, session)


def test_a_halt_during_a_cycle_stops_its_entries_and_stays(
    paper_app: Flask, fake: FakeAlpaca
) -> None:
    fake.pre_open(MONDAY)
    result = trading(paper_app, HaltingSignals(paper_app, {"AAPL": 0.02})).run_decision()
    assert fake.count("POST /v2/orders") == 0
    assert result.orders == []
    assert [d["rule"] for d in result.denied] == ["trading_state"]
    assert RiskStateStore(db).load().state is TradingState.HALTED  # not overwritten


def test_the_kill_switch_flattens_through_the_order_service(
    paper_app: Flask, fake: FakeAlpaca
) -> None:
    fake.pre_open(MONDAY)
    trading(paper_app, FixedSignals({"AAPL": 0.02})).run_decision()
    fake.open_session(MONDAY)
    trading(paper_app, FixedSignals({})).run_guard()  # a protective OCO holds the shares
    assert "AAPL" in fake.positions
    with paper_app.app_context():
        svc = services()
        with svc.cycle_lock.hold() as owned:  # a running cycle: the kill switch waits...
            assert owned
            report = kill_switch.halt(
                svc, "test", now=OPEN, hours=None, cancel_orders=True, flatten=True, lock_wait=0
            )
        assert report.closed == ["AAPL"]  # ...then halts anyway: cycles re-read before sending
    assert "AAPL" not in fake.positions
    (kill,) = [r for r in order_rows() if r.client_order_id.startswith("alpha-kill-")]
    assert (kill.status, kill.side, kill.reason) == ("filled", "sell", "kill_switch: flatten")
    with db.session() as session:
        sold = session.scalars(select(FillRecord.side).where(FillRecord.order_id == kill.id))
        assert list(sold) == ["sell"]
    RiskStateStore(db).resume()
    trading(paper_app, FixedSignals({})).run_guard()
    with db.session() as session:
        kinds = set(session.scalars(select(RiskEvent.kind)))
    assert "reconcile_unknown_order" not in kinds


def test_positions_the_bot_did_not_open_are_left_alone(
    make_app: Callable[..., Flask], paper_app: Flask, fake: FakeAlpaca
) -> None:
    fake.set_position("KO", 100, fake.price("KO") / 1.58)  # bought by hand, up 58 %
    fake.set_position("PEP", 10, fake.price("PEP") * 1.2)  # by hand, 17 % under water
    app = make_app(
        **PAPER,
        ALPACA_BASE_URL=fake.base_url,
        ALPACA_DATA_URL=fake.base_url,
        WATCHLIST=WATCH,
        RISK_MAX_POSITIONS=1,
    )
    fake.pre_open(MONDAY)
    result = trading(app, FixedSignals({"AAPL": 0.02}, sells=("KO",))).run_decision()
    assert [(o["symbol"], o["side"]) for o in result.orders] == [("AAPL", "buy")]  # a free slot
    fake.open_session(MONDAY)
    assert {"KO", "PEP"} <= set(fake.positions)
    trading(app, FixedSignals({}, sells=("KO",))).run_guard()
    assert {o.symbol for o in fake.orders.values() if o.order_class == "oco"} == {"AAPL"}
    with db.session() as session:
        reported = list(
            session.scalars(
                select(RiskEvent.symbol).where(RiskEvent.kind == "reconcile_unknown_position")
            )
        )
    assert sorted(reported) == ["KO", "PEP"]  # once each


def test_non_fractionable_assets_get_whole_shares_and_a_rejection_is_not_resent(
    make_app: Callable[..., Flask], fake: FakeAlpaca
) -> None:
    app = make_app(
        **PAPER,
        ALPACA_BASE_URL=fake.base_url,
        ALPACA_DATA_URL=fake.base_url,
        WATCHLIST=WATCH,
        PROTECTIVE_ORDERS=False,  # fractional DAY orders, queued for the open
    )
    fake.non_fractionable.add("AAPL")
    with app.app_context():  # the day's asset listing says MSFT trades...
        services().venue.broker.get_assets()
    fake.untradable.add("MSFT")  # ...but the broker rejects its order (halted since)
    fake.pre_open(MONDAY)
    result = trading(app, FixedSignals({"AAPL": 0.02, "MSFT": 0.01})).run_decision()
    sent = {o["symbol"]: o for o in result.orders}
    assert sent["AAPL"]["qty"] == int(sent["AAPL"]["qty"])
    assert sent["AAPL"]["status"] == "new"
    assert sent["MSFT"]["error"]
    fake.reset_counts()
    later = datetime(2021, 11, 29, 13, 10, tzinfo=UTC)
    fake.set_clock(later, is_open=False)
    with db.session() as session:  # a decision run again for the session (an operator)
        session.execute(delete(DecisionRun))
    again = trading(app, FixedSignals({"AAPL": 0.02, "MSFT": 0.01})).run_decision()
    assert again.orders == []
    assert fake.count("POST /v2/orders") == 0
    with db.session() as session:
        rows = session.scalars(select(OrderRecord.symbol).where(OrderRecord.symbol == "MSFT"))
        assert len(list(rows)) == 1
    assert later.tzinfo is UTC


def test_a_holding_trimmed_by_the_bot_stays_the_bots(paper_app: Flask, fake: FakeAlpaca) -> None:
    """A partial sell (a trim) does not make the rest look opened by hand: its protective
    order is replaced for the shares left, a new generation."""
    from app.domain import OrderRequest, Side

    fake.pre_open(MONDAY)
    trading(paper_app, FixedSignals({"AAPL": 0.02})).run_decision()
    fake.open_session(MONDAY)
    service = trading(paper_app, FixedSignals({}))
    service.run_guard()
    held = fake.positions["AAPL"].qty
    first = fake.order_by_client_id("alpha-20211129-protect1-AAPL-sell")
    assert first is not None
    assert first.qty == held
    with paper_app.app_context():
        svc = services().trading(FixedSignals({}))
        svc._broker.cancel_order(first.client_order_id)  # the trim needs the shares
        svc._orders.place(
            OrderRequest("AAPL", Side.SELL, "alpha-trim-AAPL", qty=1),
            reason="trim: test",
            session_date=OPEN.date(),
        )
    assert fake.positions["AAPL"].qty == held - 1
    service.run_guard()
    second = fake.order_by_client_id("alpha-20211129-protect2-AAPL-sell")
    assert second is not None
    assert (second.qty, second.status) == (held - 1, "new")
