"""The divergence report: live orders against the backtest replay of the live period."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import pytest
from flask import Flask
from prometheus_client import REGISTRY
from sqlalchemy import select

from app.backtest.divergence import (
    DivergenceService,
    ExecutedOrder,
    compare,
)
from app.container import services
from app.domain import MarketClock, SignalAction
from app.extensions import db
from app.market.calendar import NyseCalendar
from app.market.sessions import last_closed_session
from app.store.orm import (
    DivergenceRecord,
    EquitySnapshot,
    FillRecord,
    OrderRecord,
    SignalRecord,
)
from tests.conftest import Auth
from tests.support import SHARED_DATA
from tests.trading.test_notifier import Receiver

D1, D2, D3 = date(2021, 3, 1), date(2021, 3, 2), date(2021, 3, 3)


def order(day: date, purpose: str = "entry", qty: float = 10, price: float | None = 100.0) -> Any:
    return ExecutedOrder(day, "AAPL", "buy", qty, purpose, price)


def test_identical_orders_have_no_difference() -> None:
    orders = [order(D1), order(D2, "stop_loss")]
    differences, worst = compare(orders, orders, fill_tolerance_bps=1.0)
    assert differences == []
    assert worst == 0.0


def test_each_kind_of_difference_is_named() -> None:
    live = [order(D1), order(D2, qty=11), order(D3, price=100.5)]
    modelled = [order(D2), order(D3), order(D3, "take_profit")]
    differences, worst = compare(live, modelled, fill_tolerance_bps=10.0)
    kinds = {(d.kind, d.session, d.purpose) for d in differences}
    assert kinds == {
        ("live_only", D1, "entry"),
        ("qty", D2, "entry"),
        ("fill_price", D3, "entry"),
        ("backtest_only", D3, "take_profit"),
    }
    assert worst == pytest.approx(50.0)


def test_one_share_more_or_less_is_a_quantity_difference() -> None:
    """Issue 23: 763 shares live against 734 modelled went unexplained; one share must show."""
    live = [order(D1, qty=735), order(D2, "stop_loss", qty=159), order(D3, qty=20)]
    modelled = [order(D1, qty=734), order(D2, "stop_loss", qty=160), order(D3, qty=20)]
    differences, _ = compare(live, modelled, fill_tolerance_bps=10.0)
    assert [(d.kind, d.session, d.live, d.modelled) for d in differences] == [
        ("qty", D1, 735, 734),
        ("qty", D2, 159, 160),
    ]
    assert differences[0].detail == "735 vs 734"


def test_a_fill_within_the_tolerance_is_not_a_difference() -> None:
    differences, worst = compare([order(D1, price=100.05)], [order(D1)], fill_tolerance_bps=10.0)
    assert differences == []
    assert worst == pytest.approx(5.0)


def test_last_closed_session_follows_the_broker_clock() -> None:
    cal = NyseCalendar()
    # Tuesday 2021-03-02 at 15:00 New York, market open: Monday is the last closed session.
    open_clock = MarketClock(
        datetime(2021, 3, 2, 20, 0, tzinfo=UTC),
        True,
        datetime(2021, 3, 3, 14, 30, tzinfo=UTC),
        datetime(2021, 3, 2, 21, 0, tzinfo=UTC),
    )
    assert last_closed_session(open_clock, cal) == D1
    # 21:00 New York (02:00 UTC next day): Tuesday has closed.
    evening = MarketClock(
        datetime(2021, 3, 3, 2, 0, tzinfo=UTC),
        False,
        datetime(2021, 3, 3, 14, 30, tzinfo=UTC),
        datetime(2021, 3, 3, 21, 0, tzinfo=UTC),
    )
    assert last_closed_session(evening, cal) == D2


SESSIONS = NyseCalendar().sessions(date(2021, 3, 1), date(2021, 3, 19))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def sim_app(make_app: Callable[..., Flask], receiver: Receiver) -> Flask:
    app = make_app(
        TRADING_MODE="sim",
        DATA_DIR=str(SHARED_DATA),
        WATCHLIST="AAPL,MSFT,KO,SPY",
        DISCORD_WEBHOOK_URL=receiver.url,
    )
    with app.app_context(), db.session() as session:
        session.add(EquitySnapshot(equity=100_000.0, cash=100_000.0, exposure=0.0, positions=0))
        for i, day in enumerate(SESSIONS):
            for symbol in ("AAPL", "MSFT", "KO"):
                action = SignalAction.HOLD
                if i == 0 and symbol != "KO":
                    action = SignalAction.BUY
                if i == 6 and symbol == "MSFT":
                    action = SignalAction.SELL
                session.add(
                    SignalRecord(
                        symbol=symbol,
                        action=action.value,
                        predicted_return=0.02 if action is SignalAction.BUY else -0.001,
                        confidence=0.9,
                        dispersion=0.01,
                        model_version="test",
                        as_of=day,
                    )
                )
    return app


def _service(app: Flask) -> DivergenceService:
    svc = services()
    return DivergenceService(
        settings=svc.settings, db=svc.db, market=svc.venue.market, notifier=svc.notifier
    )


def _record_as_live(modelled: list[ExecutedOrder]) -> None:
    """Write what the backtest modelled as the orders live sent: live did exactly that."""
    cal = NyseCalendar()
    with db.session() as session:
        for o in modelled:
            intraday = o.purpose in {"stop_loss", "take_profit"}
            row = OrderRecord(
                client_order_id=o.client_order_id,
                symbol=o.symbol,
                side=o.side,
                qty=o.qty,
                status="filled",
                filled_qty=o.qty,
                filled_avg_price=o.fill_price,
                reason=f"{o.purpose}: as modelled",
                session_date=o.session,
                cycle_id="eod",
            )
            session.add(row)
            session.flush()
            filled = cal.session_close(o.session) if intraday else cal.session_open(o.session)
            session.add(
                FillRecord(
                    order_id=row.id,
                    fill_key=f"{o.client_order_id}-1",
                    symbol=o.symbol,
                    side=o.side,
                    qty=o.qty,
                    price=o.fill_price or 0.0,
                    filled_at=filled,
                )
            )


def test_the_report_is_stored_exported_served_and_alerted(
    sim_app: Flask, receiver: Receiver
) -> None:
    through = SESSIONS[-1]
    with sim_app.app_context():
        service = _service(sim_app)
        signals_only = service.run(through)
        assert signals_only.status == "diverged"  # live sent nothing the replay sent
        assert signals_only.counts()["backtest_only"] == signals_only.modelled_orders >= 3
        modelled = signals_only.modelled
        assert {"entry", "stop_loss"} <= {o.purpose for o in modelled}  # MSFT: -5 % in March
        assert all(o.fill_price for o in modelled)

        _record_as_live(modelled)
        clean = service.publish(through)
        assert clean.status == "ok", clean.as_dict()
        assert clean.live_orders == clean.modelled_orders == len(modelled)
        assert _gauge("live_only") == 0

        with db.session() as session:  # live filled one order 50 bps away and sent one more
            row = session.scalars(select(OrderRecord).order_by(OrderRecord.id)).first()
            assert row is not None
            row.filled_avg_price = (row.filled_avg_price or 0) * 1.005
            session.add(
                OrderRecord(
                    client_order_id="alpha-extra",
                    symbol="KO",
                    side="buy",
                    qty=5,
                    status="filled",
                    filled_qty=5,
                    filled_avg_price=50.0,
                    reason="entry: placed by a bug",
                    session_date=SESSIONS[3],
                    cycle_id="eod",
                )
            )
        diverged = service.publish(through)
        assert diverged.status == "diverged"
        assert diverged.counts() == {"live_only": 1, "backtest_only": 0, "qty": 0, "fill_price": 1}
        assert diverged.max_fill_bps == pytest.approx(50.0, abs=0.01)
        assert _gauge("live_only") == 1
        assert _gauge("fill_price") == 1
        assert services().notifier.flush(10)
        with db.session() as session:
            assert len(session.scalars(select(DivergenceRecord)).all()) == 2

    titles = [r["embeds"][0]["title"] for r in receiver.received]
    assert titles == ["Live diverged from the backtest: 2 difference(s)"]
    client = sim_app.test_client()
    body = client.get("/api/divergence", headers=Auth(client).headers()).get_json()
    assert body["status"] == "diverged"
    assert body["counts"]["live_only"] == 1
    assert {d["kind"] for d in body["differences"]} == {"live_only", "fill_price"}


def test_the_report_flags_live_buying_one_share_more_than_modelled(sim_app: Flask) -> None:
    """The whole report, on a constructed live period: live did what the replay modelled,
    except one entry that bought one share more."""
    through = SESSIONS[-1]
    with sim_app.app_context():
        service = _service(sim_app)
        modelled = service.run(through).modelled
        entry = next(o for o in modelled if o.purpose == "entry" and o.qty >= 2)
        _record_as_live([replace(o, qty=o.qty + 1) if o is entry else o for o in modelled])
        report = service.run(through)
    assert report.status == "diverged"
    assert report.counts() == {"live_only": 0, "backtest_only": 0, "qty": 1, "fill_price": 0}
    (difference,) = report.differences
    assert (difference.session, difference.symbol, difference.purpose) == (
        entry.session,
        entry.symbol,
        "entry",
    )
    assert (difference.live, difference.modelled) == (entry.qty + 1, entry.qty)


def test_before_any_report_the_api_says_so(sim_app: Flask) -> None:
    client = sim_app.test_client()
    response = client.get("/api/divergence", headers=Auth(client).headers())
    assert response.status_code == 200
    assert response.get_json()["status"] == "no_report"
    assert client.get("/api/divergence").status_code == 401


def _gauge(kind: str) -> float | None:
    return REGISTRY.get_sample_value("alpha_divergence_differences", {"kind": kind})


def test_the_daily_task_reports_through_the_last_closed_session(sim_app: Flask) -> None:
    from app.tasks.celery_config import beat_schedule
    from app.tasks.divergence import divergence_report

    with sim_app.app_context():
        result = divergence_report()
        svc = services()
        assert date.fromisoformat(result["through"]) == svc.venue.last_closed_session()
        assert result["status"] in {"no_live_period", "ok", "diverged"}
        assert "divergence-report" in beat_schedule(svc.settings)
