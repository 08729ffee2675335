"""A broad universe over the wire: one asset listing a day instead of a request per symbol, and
daily bars for hundreds of symbols in as few paginated multi-symbol requests as Alpaca allows.
The real alpaca-py against the loopback fake, serving the shared broad-universe bars.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest

from app.broker.alpaca import AlpacaBroker
from app.broker.alpaca_data import PAGE_BARS, AlpacaMarketData, plan_chunks
from tests.broker.test_alpaca import FAST, roomy_limiter
from tests.fakes.broad import broad_data_dir, broad_symbols
from tests.fakes.fake_alpaca import FakeAlpaca

TODAY = date(2021, 11, 29)
BARS = "GET /v2/stocks/bars"


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeAlpaca]:
    with FakeAlpaca(broad_data_dir(tmp_path_factory.mktemp("broad")), today=TODAY) as f:
        yield f


@pytest.fixture
def clock() -> list[datetime]:
    return [datetime(2021, 11, 29, 14, 0, tzinfo=UTC)]


@pytest.fixture
def broker(fake: FakeAlpaca, clock: list[datetime]) -> Iterator[AlpacaBroker]:
    fake.reset_counts()
    b = AlpacaBroker(
        "key",
        "secret",
        base_url=fake.base_url,
        timeout=5.0,
        limiter=roomy_limiter(),
        retry=FAST,
        now=lambda: clock[0],
    )
    yield b
    b.close()
    fake.untradable.clear()
    fake.non_fractionable.clear()


@pytest.fixture
def market(fake: FakeAlpaca) -> Iterator[AlpacaMarketData]:
    fake.reset_counts()
    m = AlpacaMarketData(
        "key", "secret", data_url=fake.base_url, feed="iex", timeout=10.0, limiter=roomy_limiter()
    )
    yield m
    m.close()


def test_tradable_and_fractionable_come_from_one_listing_a_day(
    fake: FakeAlpaca, broker: AlpacaBroker, clock: list[datetime]
) -> None:
    symbols = broad_symbols()
    fake.untradable.add(symbols[0])
    fake.non_fractionable.add(symbols[1])
    tradable = broker.tradable_symbols([*symbols, "ZZZZ"])
    assert tradable == frozenset(symbols[1:])  # inactive and unknown symbols are left out
    assert not broker.is_fractionable(symbols[1])
    assert all(broker.is_fractionable(s) for s in symbols[2:])
    assert not broker.is_fractionable("ZZZZ")  # unknown: whole shares, the safe side
    assert [broker.is_tradable(s) for s in symbols[:2]] == [False, True]
    assert fake.count("GET /v2/assets") == 1
    assert fake.count("GET /v2/assets/*") == 0
    ((_, query),) = [q for q in fake.request_queries if q[0] == "GET /v2/assets"]
    assert (query["status"], query["asset_class"]) == ("active", "us_equity")

    # Only a symbol missing from the active listing is asked for by itself.
    inactive = broker.get_asset(symbols[0])
    assert inactive is not None
    assert (inactive.tradable, inactive.status) == (False, "inactive")
    assert broker.get_asset("ZZZZ") is None
    assert fake.count("GET /v2/assets/*") == 2

    fake.untradable.clear()  # seen the next New York day, not before
    assert not broker.is_tradable(symbols[0])
    clock[0] += timedelta(days=1)
    assert broker.is_tradable(symbols[0])
    assert fake.count("GET /v2/assets") == 2


def test_chunks_fill_whole_pages_within_the_symbol_cap() -> None:
    symbols = [f"S{i:03d}" for i in range(650)]
    chunks = plan_chunks(symbols, 143, 200)
    assert [s for chunk in chunks for s in chunk] == symbols  # each once, order kept
    assert max(len(c) for c in chunks) <= 200
    pages = sum(math.ceil(len(c) * 143 / PAGE_BARS) for c in chunks)
    assert pages == math.ceil(650 * 143 / PAGE_BARS)  # no page half empty: the fewest
    # A short span is limited by the symbols per request, not by pages.
    assert len(plan_chunks(symbols, 5, 200)) == math.ceil(650 / 200)
    assert plan_chunks(symbols[:3], 261, 2) == [["S000", "S001"], ["S002"]]
    assert plan_chunks([], 10, 200) == []


def test_daily_bars_for_hundreds_of_symbols_page_like_alpaca(
    fake: FakeAlpaca, market: AlpacaMarketData
) -> None:
    symbols = broad_symbols()
    start, end = date(2020, 11, 2), date(2021, 11, 26)  # a year: several pages a chunk
    frames = market.get_daily_bars(symbols, start, end)
    assert sorted(frames) == sorted(symbols)
    served = 0
    for symbol in symbols:
        csv = pd.read_csv(fake.data_dir / f"{symbol}.csv", index_col="date")
        expected = csv.loc[str(start) : str(end)]
        assert frames[symbol]["close"].tolist() == pytest.approx(expected["close"].tolist())
        served += len(expected)
    chunks = market.calls["get_stock_bars"]
    requests = fake.count(BARS)
    queries = [q for r, q in fake.request_queries if r == BARS]
    # alpaca-py asks for Alpaca's largest page and follows next_page_token; a page's bars
    # are counted across the request's symbols.
    assert {q["limit"] for q in queries} == {str(PAGE_BARS)}
    assert sum(1 for q in queries if q.get("page_token")) == requests - chunks > 0
    assert max(len(q["symbols"].split(",")) for q in queries) <= 200
    # The fewest requests that can carry the bars, plus at most one part-filled page a chunk.
    assert math.ceil(served / PAGE_BARS) <= requests <= math.ceil(served / PAGE_BARS) + chunks
    assert chunks < len(symbols) / 50  # fewer requests than the former 50-symbol chunks
