"""One universe, one date, no silent empty cycle: in paper mode against the loopback fake."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from flask import Flask
from prometheus_client import REGISTRY
from sqlalchemy import select

from app.ai.features import latest_features
from app.ai.signals import missing_signal_reasons
from app.container import services
from app.domain import BarFrame, Signal, SignalAction
from app.extensions import db
from app.market.sessions import session_today
from app.market.sources import CsvMarketData
from app.market.universe import feature_universe
from app.store.orm import BarRecord, MissingSignal
from app.trading.missing_signals import report_missing_signals
from app.trading.notifier import Notifier
from tests.api.test_market_api import PAPER, PaperClient
from tests.fakes.corporate_actions import BarFeed
from tests.fakes.fake_alpaca import FakeAlpaca
from tests.support import SHARED_DATA
from tests.trading.test_notifier import Receiver

NY = ZoneInfo("America/New_York")
SESSION = date(2021, 11, 29)
NEXT = date(2021, 11, 30)  # the decision on SESSION's bars runs before this day's open
SPY_COLUMNS = ["rel_ret_20_spy", "corr_spy_60", "beta_spy_60"]


class HoldWhereFeatures:
    """HOLD for every symbol with a feature row; keeps the rows it computed for the test."""

    def __init__(self) -> None:
        self.features: pd.DataFrame | None = None
        self.bars: Mapping[str, BarFrame] = {}

    def signals(
        self, bars: Mapping[str, BarFrame], session: date
    ) -> tuple[dict[str, Signal], str | None]:
        self.bars = bars
        self.features = latest_features(bars, bars.get("SPY"), session)
        return {
            s: Signal(s, SignalAction.HOLD, 0.0, 0.5, 0.0, "test") for s in self.features.index
        }, None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def custom_app(make_app: Callable[..., Flask], fake: FakeAlpaca, receiver: Receiver) -> Flask:
    return make_app(
        **PAPER,
        ALPACA_BASE_URL=fake.base_url,
        ALPACA_DATA_URL=fake.base_url,
        WATCHLIST="AAPL,MSFT,KO",  # no SPY
        DISCORD_WEBHOOK_URL=receiver.url,
    )


def missing_total(reason: str) -> float:
    return REGISTRY.get_sample_value("alpha_signal_missing_total", {"reason": reason}) or 0.0


def test_spy_features_are_not_nan_live_with_a_watchlist_without_spy(
    custom_app: Flask, fake: FakeAlpaca
) -> None:
    source = HoldWhereFeatures()
    fake.pre_open(NEXT)
    with custom_app.app_context():
        result = services().trading(source).run_decision()
    assert result.status == "done"
    assert "SPY" in source.bars
    assert source.features is not None
    assert {"AAPL", "MSFT", "KO"} <= set(source.features.index)
    assert source.features.loc[["AAPL", "MSFT", "KO"], SPY_COLUMNS].notna().all().all()


def test_a_symbol_without_a_session_bar_is_named_counted_recorded_and_alerted(
    custom_app: Flask, fake: FakeAlpaca, receiver: Receiver
) -> None:
    feed = BarFeed()
    feed.drop("KO", [SESSION])
    fake.bars_hook = feed
    fake.pre_open(NEXT)
    before = missing_total("no_session_bar")
    with custom_app.app_context():
        svc = services()
        assert svc.trading(HoldWhereFeatures()).run_decision().status == "done"
        assert svc.notifier.flush()
    with db.session() as session:
        rows = session.scalars(select(MissingSignal)).all()
    assert [(r.symbol, r.as_of) for r in rows] == [("KO", SESSION)]
    assert rows[0].reason == "no_session_bar: no bar for 2021-11-29 (the last is 2021-11-26)"
    assert missing_total("no_session_bar") == before + 1
    alerts = [m["embeds"][0] for m in receiver.received]
    missing = [a for a in alerts if a["title"] == "No signal for KO"]
    assert len(missing) == 1
    assert "KO: no_session_bar" in missing[0]["description"]


def test_reasons_name_rejections_short_history_and_nan_features(app: Flask) -> None:
    bars = CsvMarketData(SHARED_DATA).get_daily_bars(
        ["AAPL", "MSFT", "V", "SPY"], date(2021, 1, 4), SESSION
    )
    bars["V"] = bars["V"].tail(50)
    frozen = bars["MSFT"].copy()
    frozen.loc[frozen.index[-30:], ["open", "high", "low", "close"]] = 300.0  # zero variance
    bars["MSFT"] = frozen
    bars["AAPL"] = bars["AAPL"].iloc[:-1]

    def rejection(symbol: str, day: date) -> str | None:
        return "jump: AAPL 2021-11-29 ..." if symbol == "AAPL" else None

    reasons = missing_signal_reasons(
        ["AAPL", "MSFT", "V", "SPY"],
        bars,
        SESSION,
        {"SPY": None},
        rejection,  # type: ignore[dict-item]
    )
    assert reasons["AAPL"].startswith("rejected: the bar of 2021-11-29 was rejected (jump: AAPL")
    assert reasons["V"] == "too_few_bars: 50 bars, the features need 120"
    assert reasons["MSFT"].startswith("feature_nan: ")
    assert "SPY" not in reasons


def test_nothing_is_reported_when_every_symbol_has_a_signal(app: Flask) -> None:
    bars = CsvMarketData(SHARED_DATA).get_daily_bars(["KO", "SPY"], date(2021, 1, 4), SESSION)
    signals = {s: Signal(s, SignalAction.HOLD, 0.0, 0.5, 0.0, "t") for s in ("KO", "SPY")}
    notifier = Notifier(None)
    assert report_missing_signals(db, notifier, ["KO", "SPY"], bars, signals, SESSION) == {}


def test_the_cache_and_the_cycle_agree_on_the_session_in_paper_mode(
    custom_app: Flask, fake: FakeAlpaca
) -> None:
    # 10:00 New York on 2021-11-29 (the fixture's clock): the session is open, not closed.
    with custom_app.app_context():
        svc = services()
        assert session_today(svc.venue.broker.get_clock()) == SESSION
        assert svc.venue.last_closed_session() == date(2021, 11, 26)  # the one before
        svc.venue.market.get_daily_bars(["KO", "SPY"], date(2021, 11, 1), SESSION)
        with db.session() as s:
            stored = s.scalar(select(BarRecord.day).order_by(BarRecord.day.desc()).limit(1))
        assert stored == date(2021, 11, 26)  # the open session's bar is never stored


def test_the_decision_before_the_open_uses_and_stores_the_closed_session(
    custom_app: Flask, fake: FakeAlpaca
) -> None:
    fake.pre_open(NEXT)  # 08:00 the next morning: the decision on the closed session
    with custom_app.app_context():
        svc = services()
        result = svc.trading(HoldWhereFeatures()).run_decision()
        assert result.session == SESSION.isoformat()
        assert svc.venue.last_closed_session() == SESSION
        with db.session() as s:
            stored = s.scalar(select(BarRecord.day).order_by(BarRecord.day.desc()).limit(1))
        assert stored == SESSION


def test_after_the_close_the_session_is_the_new_york_date_of_the_broker_clock(
    custom_app: Flask, fake: FakeAlpaca
) -> None:
    fake.set_clock(datetime.combine(SESSION, time(21, 0), NY))  # 02:00 UTC the next day
    with custom_app.app_context():
        svc = services()
        assert session_today(svc.venue.broker.get_clock()) == SESSION
        assert svc.venue.today() == SESSION  # the New York date, not the UTC one
        assert svc.venue.last_closed_session is not None
        assert svc.venue.last_closed_session() == SESSION
        frame = svc.venue.market.get_daily_bars(["AAPL"], date(2021, 11, 1), SESSION)["AAPL"]
        with db.session() as s:
            stored = s.scalar(select(BarRecord.day).order_by(BarRecord.day.desc()).limit(1))
    assert frame.index[-1] == pd.Timestamp(SESSION)
    assert stored == SESSION  # closed: now it is cached


def test_the_api_answers_for_the_new_york_session_after_20_00(
    custom_app: Flask, fake: FakeAlpaca
) -> None:
    fake.set_clock(datetime.combine(SESSION, time(21, 0), NY))
    api = PaperClient(custom_app, fake)
    price = api.get("/api/price/AAPL").get_json()
    assert price["as_of"] == "2021-11-29"
    bars = api.get("/api/market/bars/AAPL?limit=3").get_json()
    assert bars["bars"][-1]["date"] == "2021-11-29"


def test_every_path_uses_the_same_universe() -> None:
    assert feature_universe(["msft", "AAPL"], ["KO"]) == ["AAPL", "KO", "MSFT", "SPY"]
    assert feature_universe(["SPY"]) == ["SPY"]
