"""Fixtures of the trading tests: the loopback fake Alpaca and a paper app pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime

import pytest
from flask import Flask

from tests.api.test_market_api import PAPER
from tests.fakes.fake_alpaca import FakeAlpaca
from tests.support import SHARED_DATA

WATCH = "AAPL,MSFT,KO,PEP,SPY"
OPEN = datetime(2021, 11, 29, 15, 0, tzinfo=UTC)  # Monday, 10:00 in New York


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca(SHARED_DATA, today=date(2021, 11, 29)) as f:
        f.set_early_close(date(2021, 11, 26), "13:00")
        f.set_clock(OPEN)
        yield f


@pytest.fixture
def paper_app(make_app: Callable[..., Flask], fake: FakeAlpaca) -> Flask:
    return make_app(
        **PAPER, ALPACA_BASE_URL=fake.base_url, ALPACA_DATA_URL=fake.base_url, WATCHLIST=WATCH
    )
