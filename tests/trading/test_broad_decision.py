"""A paper decision over a broad universe (320 stocks + SPY from ../shared/data/broad) against the
loopback fake Alpaca: the bars of every symbol come through alpaca-py in a few paginated
multi-symbol requests, tradability from one asset listing, the bar cache in a few bulk
statements, and the whole cycle stays well inside Alpaca's 200 requests a minute.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest
from flask import Flask

from app.broker.alpaca_data import MAX_SYMBOLS_PER_REQUEST, PAGE_BARS
from app.broker.rate_limit import ALPACA_REQUESTS_PER_MINUTE
from app.container import services
from app.domain import BarFrame, Signal
from app.trading.day_signals import LOOKBACK_CALENDAR_DAYS
from tests.api.test_market_api import PAPER
from tests.conftest import sql_statements
from tests.fakes.broad import broad_data_dir, broad_symbols
from tests.fakes.fake_alpaca import FakeAlpaca
from tests.trading.test_cycle import FixedSignals

MONDAY = date(2021, 11, 29)  # the session about to open; Friday 2021-11-26 closed last
FRIDAY = date(2021, 11, 26)
TUESDAY = date(2021, 11, 30)
SYMBOLS = broad_symbols()
#: Ten entries wanted, best first; the risk cap lets RISK_MAX_POSITIONS of them through.
BUYS = {s: 0.05 - 0.002 * i for i, s in enumerate(SYMBOLS[::32])}
HALTED = SYMBOLS[0]  # the best signal, but Alpaca's listing says it does not trade today
BARS = "GET /v2/stocks/bars"


class RecordingSignals(FixedSignals):
    """FixedSignals that keep what the decision fed them: the bars it fetched."""

    def __init__(self, buys: Mapping[str, float]) -> None:
        super().__init__(buys)
        self.bars: dict[str, int] = {}

    def signals(
        self, bars: Mapping[str, BarFrame], session: date
    ) -> tuple[dict[str, Signal], str | None]:
        self.bars = {s: len(f) for s, f in bars.items()}
        return super().signals(bars, session)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return broad_data_dir(tmp_path_factory.mktemp("broad"), SYMBOLS)


@pytest.fixture
def fake(data_dir: Path) -> Iterator[FakeAlpaca]:
    with FakeAlpaca(data_dir, today=MONDAY) as f:
        f.set_early_close(FRIDAY, "13:00")
        yield f


def bars_served(fake: FakeAlpaca, start: date, end: date) -> int:
    total = 0
    for symbol in [*SYMBOLS, "SPY"]:
        days = pd.read_csv(fake.data_dir / f"{symbol}.csv", usecols=["date"])["date"]
        total += int(days.between(start.isoformat(), end.isoformat()).sum())
    return total


def test_a_broad_decision_fetches_every_symbol_in_few_requests_within_the_budget(
    make_app: Callable[..., Flask], fake: FakeAlpaca
) -> None:
    app = make_app(
        **{**PAPER, "ALPACA_TIMEOUT_SECONDS": 30},  # a 10,000-bar page on a loaded machine
        ALPACA_BASE_URL=fake.base_url,
        ALPACA_DATA_URL=fake.base_url,
        WATCHLIST=",".join(SYMBOLS),
    )
    with app.app_context():
        settings = services().settings
        broker = services().venue.broker
    assert settings.alpaca_requests_per_minute == ALPACA_REQUESTS_PER_MINUTE == 200
    fake.untradable.add(HALTED)
    fake.pre_open(MONDAY)
    source = RecordingSignals(BUYS)
    with app.app_context(), sql_statements() as statements:
        result = services().trading(source).run_decision()
    assert (result.status, result.session) == ("done", FRIDAY.isoformat())

    # Every symbol's bars came through alpaca-py from the fake, a feature window's worth (a
    # few files hold placeholder bars, which validation rejects: CVG, CMX, EP).
    assert len(source.bars) == len(SYMBOLS) + 1 >= 300
    assert min(source.bars.values()) > 0
    assert sum(n >= 120 for n in source.bars.values()) >= 300

    # Bars: as few requests as Alpaca's 10,000-bar pages can carry them (5 here; 50-symbol
    # chunks took 7), at most one page more, never a request per symbol.
    served = bars_served(fake, FRIDAY - timedelta(days=LOOKBACK_CALENDAR_DAYS), FRIDAY)
    chunks = math.ceil((len(SYMBOLS) + 1) / MAX_SYMBOLS_PER_REQUEST)
    fewest = max(math.ceil(served / PAGE_BARS), chunks)
    assert fewest <= fake.count(BARS) <= fewest + 1
    # Tradable and fractionable: one asset listing, no per-symbol asset reads.
    assert fake.count("GET /v2/assets") == 1
    assert fake.count("GET /v2/assets/*") == 0
    decision_requests = sum(fake.request_counts.values())
    assert decision_requests <= ALPACA_REQUESTS_PER_MINUTE // 4
    assert broker.limiter.waits == 0
    # The bar cache filled and read 321 symbols in a few bulk statements.
    assert len(statements) < len(SYMBOLS) // 4

    # Orders: the best signals Alpaca trades, within the risk caps, whole shares on the open.
    sent = {o["symbol"]: o for o in result.orders}
    assert HALTED not in sent
    assert 0 < len(sent) <= settings.risk_max_positions
    assert set(sent) <= set(BUYS)
    for symbol, order in sent.items():
        price = fake.price(symbol)
        assert price is not None
        assert order["status"] == "new"
        assert order["qty"] == int(order["qty"]) > 0
        assert order["qty"] * price <= settings.risk_max_position_size * fake.equity() + 1e-6
    assert {o.time_in_force for o in fake.orders.values()} == {"opg"}

    # The guards of the session that follows fit beside it in the same minute's budget.
    fake.reset_counts()
    fake.open_session(MONDAY)
    with app.app_context():
        guard = services().trading(FixedSignals({})).run_guard()
    assert guard.status == "done"
    guard_requests = sum(fake.request_counts.values())
    assert decision_requests + 4 * guard_requests <= ALPACA_REQUESTS_PER_MINUTE

    # The next decision reads the cache and asks upstream only for the last sessions.
    fake.close_session(MONDAY)
    fake.pre_open(TUESDAY)
    fake.reset_counts()
    with app.app_context(), sql_statements() as statements:
        nxt = services().trading(RecordingSignals(BUYS)).run_decision()
    assert (nxt.status, nxt.session) == ("done", MONDAY.isoformat())
    assert fake.count(BARS) == chunks
    assert fake.count("GET /v2/assets/*") == 0
    assert len(statements) < len(SYMBOLS) // 4
