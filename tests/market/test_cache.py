"""The incremental bar cache asks upstream only for what it lacks and stores only clean bars
of closed sessions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime

import pandas as pd
import pytest
from flask import Flask
from sqlalchemy import func, select

from app.domain import BarFrame
from app.extensions import db
from app.market.cache import CachedMarketData
from app.market.sources import CsvMarketData
from app.store.orm import BarRecord
from tests.support import SHARED_DATA


class CountingSource:
    """The real CSV source, recording every request it answers."""

    def __init__(self) -> None:
        self.csv = CsvMarketData(SHARED_DATA)
        self.requests: list[tuple[tuple[str, ...], date, date]] = []

    def get_daily_bars(self, symbols: Sequence[str], start: date, end: date) -> dict[str, BarFrame]:
        self.requests.append((tuple(symbols), start, end))
        return self.csv.get_daily_bars(symbols, start, end)

    def get_latest_price(self, symbol: str) -> float:
        return self.csv.get_latest_price(symbol)


def after_close(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 23, 0, tzinfo=UTC)


@pytest.fixture
def source(app: Flask) -> CountingSource:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data missing at {SHARED_DATA}")
    return CountingSource()


def test_second_fetch_hits_only_the_cache(source: CountingSource) -> None:
    cache = CachedMarketData(source, db, now=lambda: after_close(date(2022, 1, 3)))
    first = cache.get_daily_bars(["AAPL", "MSFT"], date(2020, 1, 1), date(2020, 12, 31))
    assert len(source.requests) == 1
    assert source.requests[0][0] == ("AAPL", "MSFT")  # several symbols in one request
    second = cache.get_daily_bars(["AAPL", "MSFT"], date(2020, 3, 1), date(2020, 6, 30))
    assert len(source.requests) == 1
    expected = source.csv.get_daily_bars(["AAPL"], date(2020, 3, 1), date(2020, 6, 30))["AAPL"]
    pd.testing.assert_frame_equal(second["AAPL"], expected, check_freq=False)
    assert len(first["AAPL"]) == 253  # NYSE sessions in 2020


def test_extension_fetches_only_the_missing_days(source: CountingSource) -> None:
    cache = CachedMarketData(source, db, now=lambda: after_close(date(2022, 1, 3)))
    cache.get_daily_bars(["AAPL"], date(2020, 1, 1), date(2020, 6, 30))
    cache.get_daily_bars(["AAPL"], date(2020, 1, 1), date(2020, 12, 31))
    # The missing days, plus the last 5 stored sessions again (re-adjusted history check).
    assert source.requests[1] == (("AAPL",), date(2020, 6, 24), date(2020, 12, 31))
    assert cache.readjustments == []
    frame = cache.get_daily_bars(["AAPL"], date(2020, 1, 1), date(2020, 12, 31))["AAPL"]
    assert len(frame) == 253
    assert len(source.requests) == 2


def test_placeholder_bar_is_rejected_not_stored(source: CountingSource) -> None:
    cache = CachedMarketData(source, db, now=lambda: after_close(date(2022, 1, 3)))
    frame = cache.get_daily_bars(["AMD"], date(2014, 12, 29), date(2015, 1, 9))["AMD"]
    assert pd.Timestamp("2015-01-02") not in frame.index
    assert pd.Timestamp("2015-01-05") in frame.index
    with db.session() as session:
        stored = session.scalar(
            select(func.count()).select_from(BarRecord).where(BarRecord.day == date(2015, 1, 2))
        )
    assert stored == 0


def test_unclosed_session_is_served_but_not_stored(source: CountingSource) -> None:
    # 2021-12-31 at 15:00 UTC: that session is still open.
    cache = CachedMarketData(source, db, now=lambda: datetime(2021, 12, 31, 15, 0, tzinfo=UTC))
    frame = cache.get_daily_bars(["AAPL"], date(2021, 12, 20), date(2021, 12, 31))["AAPL"]
    assert frame.index[-1] == pd.Timestamp("2021-12-31")
    with db.session() as session:
        last = session.scalar(select(func.max(BarRecord.day)).where(BarRecord.symbol == "AAPL"))
    assert last == date(2021, 12, 30)
