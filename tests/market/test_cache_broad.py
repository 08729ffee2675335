"""The bar cache at a broad universe's size: symbols whose coverage ends at different days are
fetched together when that saves upstream requests, and a fill of many symbols is a few bulk
statements, not a round trip per symbol."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
from flask import Flask

from app.extensions import db
from app.market.cache import REQUEST_BARS, CachedMarketData, merge_spans
from app.market.calendar import NyseCalendar
from app.market.sources import CsvMarketData
from tests.conftest import sql_statements
from tests.market.test_cache import CountingSource, after_close
from tests.support import SHARED_DATA


@pytest.fixture
def source(app: Flask) -> CountingSource:
    return CountingSource()


def sessions_in(start: date, end: date) -> int:
    return len(NyseCalendar().sessions(start, end))


def test_stale_spans_merge_with_each_other_not_with_the_broad_one() -> None:
    broad = [f"S{i:03d}" for i in range(600)]
    missing = {
        (date(2021, 11, 19), date(2021, 11, 26)): broad,  # 5 sessions again + the new one
        (date(2021, 3, 1), date(2021, 11, 26)): ["OLD1"],  # last bars months ago
        (date(2021, 5, 3), date(2021, 11, 26)): ["OLD2"],
        (date(2021, 11, 1), date(2021, 11, 26)): ["HALT"],  # a few weeks behind
    }
    spans = merge_spans(missing, sessions_in)
    assert [(s.start, s.end, s.symbols) for s in spans] == [
        (date(2021, 3, 1), date(2021, 11, 26), ["OLD1", "OLD2", "HALT"]),
        (date(2021, 11, 19), date(2021, 11, 26), broad),
    ]
    # Merging the 600 into the stale fetch would add far more than a request's worth of bars.
    assert 600 * (sessions_in(date(2021, 3, 1), date(2021, 11, 26)) - 6) > REQUEST_BARS


def test_symbols_with_different_coverage_fill_in_one_request(source: CountingSource) -> None:
    cache = CachedMarketData(source, db, now=lambda: after_close(date(2022, 1, 3)))
    cache.get_daily_bars(["AAPL", "MSFT"], date(2021, 1, 4), date(2021, 6, 30))
    cache.get_daily_bars(["KO"], date(2021, 1, 4), date(2021, 3, 31))
    source.requests.clear()
    frames = cache.get_daily_bars(["AAPL", "MSFT", "KO"], date(2021, 1, 4), date(2021, 7, 9))
    # Without merging: one request from KO's last stored sessions, one from AAPL's and MSFT's.
    assert source.requests == [(("KO", "AAPL", "MSFT"), date(2021, 3, 25), date(2021, 7, 9))]
    expected = CsvMarketData(SHARED_DATA).get_daily_bars(
        ["AAPL", "MSFT", "KO"], date(2021, 1, 4), date(2021, 7, 9)
    )
    for symbol, frame in frames.items():
        pd.testing.assert_frame_equal(frame, expected[symbol], check_freq=False)
    assert cache.readjustments == []


def test_a_fill_of_many_symbols_is_a_few_statements(source: CountingSource) -> None:
    symbols = sorted(CsvMarketData(SHARED_DATA).available_symbols())
    cache = CachedMarketData(source, db, now=lambda: after_close(date(2022, 1, 3)))
    with sql_statements() as cold:
        frames = cache.get_daily_bars(symbols, date(2021, 1, 4), date(2021, 6, 30))
    with sql_statements() as warm:
        again = cache.get_daily_bars(symbols, date(2021, 1, 4), date(2021, 6, 30))
    assert len(frames) == len(symbols) >= 30
    assert all(len(f) == 124 for f in frames.values())  # sessions of 2021-H1
    for symbol in symbols:
        pd.testing.assert_frame_equal(again[symbol], frames[symbol])
    # Coverage read, re-adjustment check, bars upserted in batches, coverage upserted, read.
    assert len(cold) <= 8
    assert len(warm) <= 2  # coverage, bars
    assert len(source.requests) == 1
