"""UNIVERSE drives paper decisions and training, not only backtests; a holding whose symbol
stops trading at the broker is reported once, and nothing is sent for it (its protective
order stays). Paper runs against the loopback fake Alpaca: real alpaca-py over HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import date
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from app.config import load_settings
from app.container import Services, services
from app.domain import BarFrame, Signal
from app.extensions import db
from app.market.universe import configured_universe
from app.store.orm import ModelRun, RiskEvent
from app.tasks.training import train_models_batch
from app.trading.untradable import UNTRADABLE_HOLDING
from tests.api.test_market_api import PAPER
from tests.fakes.fake_alpaca import FakeAlpaca
from tests.support import SHARED_DATA
from tests.trading.test_cycle import FixedSignals
from tests.trading.test_notifier import Receiver

WATCH = "AAPL,MSFT,SPY"
MINE = ("KO", "PEP", "XOM", "JPM", "WMT", "PG")
MONDAY, TUESDAY, WEDNESDAY = date(2021, 11, 29), date(2021, 11, 30), date(2021, 12, 1)


class RecordingSignals(FixedSignals):
    """FixedSignals that keep which symbols' bars the decision fetched."""

    def __init__(self, buys: Mapping[str, float], sells: tuple[str, ...] = ()) -> None:
        super().__init__(buys, sells)
        self.loaded: set[str] = set()

    def signals(
        self, bars: Mapping[str, BarFrame], session: date
    ) -> tuple[dict[str, Signal], str | None]:
        self.loaded = set(bars)
        return super().signals(bars, session)


@pytest.fixture
def mine(tmp_path: Path) -> Path:
    path = tmp_path / "mine.txt"
    path.write_text("# a small universe\n" + "\n".join(MINE) + "\n")
    return path


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def paper(make_app: Callable[..., Flask], fake: FakeAlpaca, **overrides: str) -> Flask:
    return make_app(
        **PAPER, ALPACA_BASE_URL=fake.base_url, ALPACA_DATA_URL=fake.base_url, **overrides
    )


def test_the_watchlist_stays_the_default_and_a_named_universe_lists_its_file() -> None:
    settings = load_settings({"WATCHLIST": WATCH})
    assert configured_universe(settings).tradable == ("AAPL", "MSFT", "SPY")
    broad = configured_universe(load_settings({"WATCHLIST": WATCH, "UNIVERSE": "broad"}))
    assert len(broad.tradable) == 646
    assert "AAPL" in broad.tradable
    assert broad.feature_only == ("SPY",)


def test_a_paper_decision_trades_the_universe_file_not_the_watchlist(
    make_app: Callable[..., Flask], fake: FakeAlpaca, mine: Path
) -> None:
    app = paper(make_app, fake, WATCHLIST=WATCH, UNIVERSE=str(mine))
    fake.pre_open(MONDAY)
    # The model likes AAPL (watchlist only) and SPY (feature-only here) best.
    source = RecordingSignals({"AAPL": 0.05, "SPY": 0.04, "KO": 0.02, "XOM": 0.01})
    with app.app_context():
        result = services().trading(source).run_decision()
    assert (result.status, result.session) == ("done", "2021-11-26")
    assert source.loaded == {*MINE, "SPY"}  # the universe and the features' benchmark
    assert sorted(o["symbol"] for o in result.orders) == ["KO", "XOM"]
    assert {o.symbol for o in fake.orders.values()} == {"KO", "XOM"}


def test_a_holding_that_stops_trading_is_reported_once_and_keeps_its_protection(
    make_app: Callable[..., Flask], fake: FakeAlpaca, receiver: Receiver
) -> None:
    settings = {"WATCHLIST": "KO,PEP,SPY", "DISCORD_WEBHOOK_URL": receiver.url}
    app = paper(make_app, fake, **settings)
    fake.pre_open(MONDAY)
    with app.app_context():
        assert services().trading(FixedSignals({"KO": 0.02})).run_decision().orders
    fake.open_session(MONDAY)
    with app.app_context():
        services().trading(FixedSignals({})).run_guard()  # the protective OCO on KO
    fake.close_session(MONDAY)
    protective = [o for o in fake.orders.values() if o.order_class == "oco" and o.legs]
    assert [(o.symbol, o.is_open) for o in protective] == [("KO", True)]

    fake.untradable.add("KO")  # delisted overnight: gone from the active asset listing
    app = paper(make_app, fake, **settings)  # the next day's listing (kept a New York day)
    fake.pre_open(TUESDAY)
    with app.app_context():
        result = services().trading(FixedSignals({"PEP": 0.01}, sells=("KO",))).run_decision()
    assert result.untradable == ["KO"]
    assert [(d["symbol"], d["rule"]) for d in result.denied] == [("KO", "not_tradable")]
    assert [o["symbol"] for o in result.orders] == ["PEP"]  # other entries go on
    assert protective[0].is_open  # not cancelled for an exit the broker would refuse
    exits = [o for o in fake.orders.values() if o.symbol == "KO" and o.order_type == "market"]
    assert [o.side for o in exits] == ["buy"]  # the entry; no exit was sent

    fake.open_session(TUESDAY)
    fake.close_session(TUESDAY)
    fake.pre_open(WEDNESDAY)
    with app.app_context():
        again = services().trading(FixedSignals({"KO": 0.03})).run_decision()
        assert services().notifier.flush(10)
    assert again.untradable == ["KO"]
    assert "KO" not in {o["symbol"] for o in again.orders}  # no entry in it either
    titles = [r["embeds"][0]["title"] for r in receiver.received]
    assert titles.count("Holding KO stopped trading") == 1
    with db.session() as session:
        kinds = session.scalars(
            select(RiskEvent.symbol).where(RiskEvent.kind == UNTRADABLE_HOLDING)
        )
        assert list(kinds) == ["KO"]


def test_training_with_a_universe_trains_on_its_symbols(
    make_app: Callable[..., Flask], tmp_path: Path, mine: Path
) -> None:
    app = make_app(
        DATA_DIR=str(SHARED_DATA),
        WATCHLIST=WATCH,
        UNIVERSE=str(mine),
        TRAIN_YEARS=2,
        MODELS_DIR=str(tmp_path / "models"),
        BEST_PARAMS_DIR=str(tmp_path / "best"),
        CELERY_ALWAYS_EAGER=True,
    )
    svc: Services = app.extensions["alpha_trader"]
    with app.app_context():
        fit_id = train_models_batch.apply().get()["fit_task_id"]
        result = svc.celery.AsyncResult(fit_id).get(timeout=120)
    with svc.db.session() as session:
        run = session.scalars(select(ModelRun).where(ModelRun.version == result["version"])).one()
    assert run.symbols["symbols"] == sorted({*MINE, "SPY"})
