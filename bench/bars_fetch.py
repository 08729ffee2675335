"""Cold vs warm daily-bar fetch through CachedMarketData over AlpacaMarketData.

Why: the trading cycle asks for years of bars for the whole universe every day; the cache must
make that a handful of HTTP requests once (several symbols per request, paged like Alpaca) and
none afterwards. The real alpaca-py talks to the loopback fake Alpaca, so requests are counted
by the server, and each run gets a fresh SQLite database so every cold fetch is really cold.

    .venv/bin/python -m bench.bars_fetch [--runs 5]

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from app.broker.alpaca_data import AlpacaMarketData
from app.broker.rate_limit import SlidingWindowLimiter
from app.market.cache import CachedMarketData
from app.store import migrations
from app.store.database import Database
from tests.fakes.fake_alpaca import FakeAlpaca

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data" / "daily"
START, END = date(2017, 1, 1), date(2021, 12, 31)
#: After 2021-12-31's close (21:00 UTC), so every requested session is closed and cacheable.
NOW = datetime(2022, 1, 3, 12, 0, tzinfo=UTC)
#: Alpaca's largest bars page; the fake is told the same so paging matches the real API.
PAGE_SIZE = 10_000
BARS_ROUTE = "GET /v2/stocks/bars"


@dataclass(frozen=True)
class Fetch:
    """One get_daily_bars call as seen from both ends."""

    seconds: float
    http_requests: int
    bar_requests: int
    bars: int


def timed_fetch(cache: CachedMarketData, fake: FakeAlpaca, symbols: list[str]) -> Fetch:
    fake.reset_counts()
    t0 = time.perf_counter()
    frames = cache.get_daily_bars(symbols, START, END)
    seconds = time.perf_counter() - t0
    return Fetch(
        seconds=seconds,
        http_requests=sum(fake.request_counts.values()),
        bar_requests=fake.count(BARS_ROUTE),
        bars=sum(len(f) for f in frames.values()),
    )


def run_once(
    fake: FakeAlpaca, symbols: list[str], limiter: SlidingWindowLimiter
) -> tuple[Fetch, Fetch]:
    """Cold then warm fetch against a brand-new database."""
    with tempfile.TemporaryDirectory(prefix="bars-bench-") as tmp:
        url = f"sqlite:///{tmp}/bars.db"
        migrations.upgrade(url)
        db = Database()
        db.configure(url)
        market = AlpacaMarketData("key", "secret", data_url=fake.base_url, limiter=limiter)
        try:
            cache = CachedMarketData(market, db, now=lambda: NOW)
            cold = timed_fetch(cache, fake, symbols)
            warm = timed_fetch(cache, fake, symbols)
        finally:
            market.close()
            db.dispose()
    return cold, warm


def run_next_session(fake: FakeAlpaca, symbols: list[str], limiter: SlidingWindowLimiter) -> Fetch:
    """The daily update: a cache filled up to the session before END fetches END (one new
    session per symbol plus the overlap re-checked for re-adjusted history)."""
    before = date(2021, 12, 30)
    clock = {"now": datetime(2021, 12, 31, 1, 0, tzinfo=UTC)}  # after 2021-12-30's close
    with tempfile.TemporaryDirectory(prefix="bars-bench-") as tmp:
        url = f"sqlite:///{tmp}/bars.db"
        migrations.upgrade(url)
        db = Database()
        db.configure(url)
        market = AlpacaMarketData("key", "secret", data_url=fake.base_url, limiter=limiter)
        try:
            cache = CachedMarketData(market, db, now=lambda: clock["now"])
            fake.set_today(before)
            cache.get_daily_bars(symbols, START, before)
            fake.set_today(END)
            clock["now"] = NOW
            return timed_fetch(cache, fake, symbols)
        finally:
            fake.set_today(END)
            market.close()
            db.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="cold+warm repetitions (default 5)")
    args = parser.parse_args(argv)
    runs = max(1, args.runs)

    symbols = sorted(p.stem for p in DATA_DIR.glob("*.csv"))
    # Alpaca's documented budget, private to the bench so nothing else in the process shares it.
    limiter = SlidingWindowLimiter()
    print(
        f"bars fetch: {len(symbols)} symbols, {START}..{END} daily, fake page size {PAGE_SIZE}, "
        f"{runs} runs, fresh SQLite cache per run"
    )
    colds: list[Fetch] = []
    warms: list[Fetch] = []
    with FakeAlpaca(DATA_DIR, today=END, max_page_size=PAGE_SIZE) as fake:
        for i in range(1, runs + 1):
            cold, warm = run_once(fake, symbols, limiter)
            colds.append(cold)
            warms.append(warm)
            print(
                f"  run {i}: cold {cold.seconds:.3f}s {cold.http_requests} req "
                f"({cold.bar_requests} bars pages, {cold.bars} bars) | "
                f"warm {warm.seconds:.3f}s {warm.http_requests} req ({warm.bars} bars)"
            )

        nexts = [run_next_session(fake, symbols, limiter) for _ in range(runs)]

    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    cold_s, warm_s = med([f.seconds for f in colds]), med([f.seconds for f in warms])
    print(
        f"cold (median of {runs}): {cold_s:.3f} s, "
        f"{med([f.http_requests for f in colds]):g} HTTP requests, "
        f"{med([f.bars for f in colds]):g} bars"
    )
    print(
        f"warm (median of {runs}): {warm_s:.3f} s, "
        f"{med([f.http_requests for f in warms]):g} HTTP requests, "
        f"{med([f.bars for f in warms]):g} bars"
    )
    print(
        f"next session (median of {runs}): {med([f.seconds for f in nexts]):.3f} s, "
        f"{med([f.http_requests for f in nexts]):g} HTTP requests"
    )
    ratio = cold_s / warm_s if warm_s > 0 else float("inf")
    print(f"cold/warm time ratio: {ratio:.1f}x")
    print(f"rate limiter: {limiter.acquired} acquired, {limiter.waits} waits")


if __name__ == "__main__":
    main()
