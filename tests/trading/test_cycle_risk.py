"""Issue 12 through the service: the real alpaca-py against the loopback fake, on SQLite and on
PostgreSQL+Redis: halt instants, the kill switch against a running cycle, external holdings and
non-fractionable assets."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from flask import Flask
from sqlalchemy import select

from app.container import services
from app.domain import BarFrame, Signal, TradingState
from app.extensions import db
from app.store.orm import FillRecord, OrderRecord, RiskEvent
from app.trading import kill_switch
from app.trading.risk import RiskLimits, RiskManager, RiskState, RiskStateStore
from tests.api.test_market_api import PAPER
from tests.fakes.fake_alpaca import FakeAlpaca
from tests.trading.conftest import OPEN, WATCH
from tests.trading.test_cycle import FixedSignals, order_rows, trading

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
    result = trading(paper_app, HaltingSignals(paper_app, {"AAPL": 0.02})).run_cycle()
    assert fake.count("POST /v2/orders") == 0
    assert result.orders == []
    assert [d["rule"] for d in result.denied] == ["trading_state"]
    assert RiskStateStore(db).load().state is TradingState.HALTED  # not overwritten


def test_the_kill_switch_flattens_through_the_order_service(
    paper_app: Flask, fake: FakeAlpaca
) -> None:
    trading(paper_app, FixedSignals({"AAPL": 0.02})).run_cycle()
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
    trading(paper_app, FixedSignals({})).run_cycle()
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
    result = trading(app, FixedSignals({"AAPL": 0.02}, sells=("KO",))).run_cycle()
    assert [(o["symbol"], o["side"]) for o in result.orders] == [("AAPL", "buy")]  # a free slot
    assert {"KO", "PEP"} <= set(fake.positions)
    trading(app, FixedSignals({}, sells=("KO",))).run_cycle()
    with db.session() as session:
        reported = list(
            session.scalars(
                select(RiskEvent.symbol).where(RiskEvent.kind == "reconcile_unknown_position")
            )
        )
    assert sorted(reported) == ["KO", "PEP"]  # once each


def test_non_fractionable_assets_get_whole_shares_and_a_rejection_is_not_resent(
    paper_app: Flask, fake: FakeAlpaca
) -> None:
    fake.non_fractionable.add("AAPL")
    fake.untradable.add("MSFT")  # the broker rejects this one
    result = trading(paper_app, FixedSignals({"AAPL": 0.02, "MSFT": 0.01})).run_cycle()
    sent = {o["symbol"]: o for o in result.orders}
    assert sent["AAPL"]["qty"] == int(sent["AAPL"]["qty"])
    assert sent["AAPL"]["status"] == "filled"
    assert sent["MSFT"]["error"]
    fake.reset_counts()
    later = OPEN + timedelta(minutes=10)
    fake.set_clock(later)
    again = trading(paper_app, FixedSignals({"AAPL": 0.02, "MSFT": 0.01})).run_cycle()
    assert again.cycle_key != result.cycle_key
    assert again.orders == []
    assert fake.count("POST /v2/orders") == 0
    with db.session() as session:
        rows = session.scalars(select(OrderRecord.symbol).where(OrderRecord.symbol == "MSFT"))
        assert len(list(rows)) == 1
    assert later.tzinfo is UTC


def test_a_holding_trimmed_by_the_bot_stays_the_bots(paper_app: Flask, fake: FakeAlpaca) -> None:
    """A partial sell (a trim) does not make the rest look opened by hand."""
    from app.domain import OrderRequest, Side

    service = trading(paper_app, FixedSignals({"AAPL": 0.02}))
    service.run_cycle()
    held = fake.positions["AAPL"].qty
    with paper_app.app_context():
        services().trading(FixedSignals({}))._orders.place(
            OrderRequest("AAPL", Side.SELL, "alpha-trim-AAPL", qty=1),
            reason="trim: test",
            session_date=OPEN.date(),
        )
    assert fake.positions["AAPL"].qty == held - 1
    fake.set_price("AAPL", fake.price("AAPL") * 1.15)  # +15 %: take-profit, if it is ours
    fake.set_clock(OPEN + timedelta(minutes=10))
    result = trading(paper_app, FixedSignals({})).run_cycle()
    assert [(o["symbol"], o["reason"].split(":")[0]) for o in result.orders] == [
        ("AAPL", "take_profit")
    ]
