"""The bar cache survives splits, dividends and feed outages, through the real alpaca-py against
the loopback fake, and its session dates come from the broker's clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from flask import Flask
from prometheus_client import REGISTRY
from sqlalchemy import select

from app.ai.features import latest_features
from app.broker.alpaca import AlpacaBroker
from app.broker.alpaca_data import AlpacaMarketData
from app.broker.rate_limit import SlidingWindowLimiter
from app.extensions import db
from app.market.cache import CachedMarketData
from app.market.calendar import NyseCalendar
from app.market.sessions import BrokerSessions, last_closed_session, session_today
from app.market.sources import CsvMarketData
from app.market.validation import recent_rejection
from app.store.orm import BarCoverage, BarRecord
from tests.fakes.corporate_actions import BarFeed, Dividend, Split
from tests.fakes.fake_alpaca import FakeAlpaca
from tests.support import SHARED_DATA

NY = ZoneInfo("America/New_York")
SYMBOLS = ["KO", "NVDA", "SPY"]
START = date(2020, 11, 2)  # enough history for the 120-bar features
SPLIT_DAY = date(2021, 6, 10)  # NVDA's 10:1 of 2024-06-10, rebuilt on real 2021 bars
EX_DATE = date(2021, 6, 14)  # a KO dividend of $0.42 (about 0.8 %)


def after_close(day: date) -> datetime:
    return datetime.combine(day, time(21, 0), NY)  # 01:00 UTC the next day


@pytest.fixture
def fake(app: Flask) -> Iterator[FakeAlpaca]:
    with FakeAlpaca(SHARED_DATA) as f:
        yield f


@pytest.fixture
def broker(fake: FakeAlpaca) -> Iterator[AlpacaBroker]:
    b = AlpacaBroker(
        "key", "secret", base_url=fake.base_url, limiter=SlidingWindowLimiter(100_000, 60.0)
    )
    yield b
    b.close()


@pytest.fixture
def cache(fake: FakeAlpaca, broker: AlpacaBroker) -> Iterator[CachedMarketData]:
    data = AlpacaMarketData(
        "key", "secret", data_url=fake.base_url, limiter=SlidingWindowLimiter(100_000, 60.0)
    )
    sessions = BrokerSessions(broker.get_clock, max_age=0.0)
    yield CachedMarketData(data, db, sessions=sessions)
    data.close()


def clean_features(day: date) -> pd.DataFrame:
    """Features from the adjusted CSVs (what the history is once every action is known)."""
    bars = CsvMarketData(SHARED_DATA).get_daily_bars(SYMBOLS, START, day)
    return latest_features(bars, bars["SPY"], day)


def readjusted_total(kind: str) -> float:
    value = REGISTRY.get_sample_value("alpha_bars_readjusted_total", {"kind": kind})
    return value or 0.0


def test_split_and_dividend_readjust_the_cached_history(
    fake: FakeAlpaca, cache: CachedMarketData
) -> None:
    fake.bars_hook = BarFeed([Split("NVDA", SPLIT_DAY, 10.0), Dividend("KO", EX_DATE, 0.42)])
    fake.set_clock(after_close(date(2021, 6, 9)))
    before = cache.get_daily_bars(SYMBOLS, START, date(2021, 6, 9))
    nvda_csv = CsvMarketData(SHARED_DATA).get_daily_bars(["NVDA"], START, date(2021, 6, 9))
    # Warmed before the split: the cache holds the pre-split (raw) prices, 10x the adjusted.
    assert before["NVDA"]["close"].iloc[-1] == pytest.approx(
        10 * nvda_csv["NVDA"]["close"].iloc[-1]
    )
    splits, dividends = readjusted_total("split"), readjusted_total("dividend")

    fake.set_clock(after_close(date(2021, 6, 16)))
    after = cache.get_daily_bars(SYMBOLS, START, date(2021, 6, 16))

    assert {r.symbol: r.kind for r in cache.readjustments} == {"NVDA": "split", "KO": "dividend"}
    assert "a split re-adjusted the history" in cache.readjustments[1].reason
    assert readjusted_total("split") == splits + 1
    assert readjusted_total("dividend") == dividends + 1
    live = latest_features(after, after["SPY"], date(2021, 6, 16))
    expected = clean_features(date(2021, 6, 16))
    pd.testing.assert_frame_equal(live, expected, check_exact=True)
    assert live.loc["NVDA", "ret_5"] == pytest.approx(expected.loc["NVDA", "ret_5"])
    assert abs(live.loc["NVDA", "ret_5"]) < 0.2  # not the -90 % of a split-corrupted history


def test_a_raw_bar_after_a_split_is_rejected_until_the_history_is_adjusted(
    fake: FakeAlpaca, cache: CachedMarketData
) -> None:
    # The feed serves the new bars at the post-split price two sessions before it re-adjusts.
    fake.bars_hook = BarFeed([Split("NVDA", SPLIT_DAY, 10.0)], lag_sessions=2)
    fake.set_clock(after_close(date(2021, 6, 9)))
    cache.get_daily_bars(SYMBOLS, START, date(2021, 6, 9))

    fake.set_clock(after_close(SPLIT_DAY))
    frames = cache.get_daily_bars(SYMBOLS, START, SPLIT_DAY)
    assert frames["NVDA"].index[-1] == pd.Timestamp("2021-06-09")  # the split day is not served
    reason = recent_rejection("NVDA", SPLIT_DAY)
    assert reason is not None
    assert reason.startswith("break: NVDA 2021-06-10")  # 10:1 is beyond any real session
    with db.session() as session:
        assert session.get(BarCoverage, "NVDA").last_day == date(2021, 6, 9)  # asked again

    fake.set_clock(after_close(date(2021, 6, 14)))  # adjusted two sessions after the split
    after = cache.get_daily_bars(SYMBOLS, START, date(2021, 6, 14))
    assert [r.symbol for r in cache.readjustments] == ["NVDA"]
    live = latest_features(after, after["SPY"], date(2021, 6, 14))
    pd.testing.assert_frame_equal(live, clean_features(date(2021, 6, 14)), check_exact=True)


def test_sessions_missing_upstream_are_fetched_again(
    fake: FakeAlpaca, cache: CachedMarketData
) -> None:
    feed = BarFeed()
    feed.drop("KO", [date(2021, 6, 14), date(2021, 6, 15), date(2021, 6, 16)])
    fake.bars_hook = feed
    fake.set_clock(after_close(date(2021, 6, 16)))
    first = cache.get_daily_bars(SYMBOLS, START, date(2021, 6, 16))
    assert first["KO"].index[-1] == pd.Timestamp("2021-06-11")
    with db.session() as session:
        assert session.get(BarCoverage, "KO").last_day == date(2021, 6, 11)
        assert session.get(BarCoverage, "SPY").last_day == date(2021, 6, 16)

    feed.restore("KO")
    again = cache.get_daily_bars(SYMBOLS, START, date(2021, 6, 16))
    expected = CsvMarketData(SHARED_DATA).get_daily_bars(["KO"], START, date(2021, 6, 16))["KO"]
    pd.testing.assert_frame_equal(again["KO"], expected, check_freq=False, check_index_type=False)
    with db.session() as session:
        stored = session.scalars(
            select(BarRecord.day).where(BarRecord.symbol == "KO", BarRecord.day > date(2021, 6, 11))
        ).all()
    assert sorted(stored) == [date(2021, 6, 14), date(2021, 6, 15), date(2021, 6, 16)]


def test_session_dates_come_from_the_broker_clock_in_new_york(
    fake: FakeAlpaca, broker: AlpacaBroker, cache: CachedMarketData
) -> None:
    calendar = NyseCalendar()
    sessions = BrokerSessions(broker.get_clock, calendar, max_age=0.0)
    fake.set_clock(after_close(date(2021, 6, 16)))  # 01:00 UTC on the 17th
    clock = broker.get_clock()
    assert clock.timestamp.astimezone(NY).hour == 21
    assert session_today(clock) == sessions.today() == date(2021, 6, 16)
    assert last_closed_session(clock, calendar) == sessions.last_closed_session()
    assert sessions.last_closed_session() == date(2021, 6, 16)

    fake.set_clock(datetime(2021, 6, 16, 10, 0, tzinfo=NY))  # open: the 16th is not closed
    assert sessions.today() == date(2021, 6, 16)
    assert sessions.last_closed_session() == date(2021, 6, 15)
    frames = cache.get_daily_bars(["AAPL"], date(2021, 6, 1), date(2021, 6, 16))
    assert frames["AAPL"].index[-1] == pd.Timestamp("2021-06-16")  # served, not stored
    with db.session() as session:
        assert session.get(BarCoverage, "AAPL").last_day == date(2021, 6, 15)

    fake.set_clock(datetime(2021, 6, 19, 12, 0, tzinfo=NY))  # Saturday
    assert sessions.today() == date(2021, 6, 19)
    assert sessions.last_closed_session() == date(2021, 6, 18)
