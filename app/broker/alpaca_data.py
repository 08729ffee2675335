"""Alpaca market data: domain.MarketData over alpaca-py's StockHistoricalDataClient (daily bars,
latest trade/quote). alpaca-py types stop in app/broker/.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any

import numpy as np
import pandas as pd

from app import domain, errors
from app.broker.alpaca_client import (
    DATA_URL,
    NY,
    Limiter,
    RetryPolicy,
    _AlpacaBase,
    _check_keys,
    _chunks,
    _normalise_url,
    _symbols,
)

with warnings.catch_warnings():
    # alpaca.trading and alpaca.data import their websocket streams, which import the
    # deprecated `websockets.legacy`; we use neither stream, so silence exactly that warning
    # here instead of loosening the global warning filters.
    warnings.filterwarnings(
        "ignore", message=r"websockets\.legacy is deprecated", category=DeprecationWarning
    )
    from alpaca.data.enums import Adjustment, DataFeed
    from alpaca.data.historical.stock import StockHistoricalDataClient
    from alpaca.data.requests import (
        StockBarsRequest,
        StockLatestQuoteRequest,
        StockLatestTradeRequest,
    )
    from alpaca.data.timeframe import TimeFrame


#: Alpaca's free plan serves SIP data only once it is 15 minutes old; a request whose end is
#: later is refused (403), so SIP requests end this long before `now` at the latest.
SIP_DELAY = timedelta(minutes=16)
#: Bars per page of /v2/stocks/bars, counted across the request's symbols: Alpaca's maximum
#: `limit`, which alpaca-py asks for (DATA_V2_MAX_LIMIT) before following next_page_token.
PAGE_BARS = 10_000
#: Symbols per bars request at most: Alpaca's old documented cap for multi-symbol bars; the
#: query string stays near 1.5 kB (a comma is sent as %2C), far from any URL limit.
MAX_SYMBOLS_PER_REQUEST = 200


class AlpacaMarketData(_AlpacaBase):
    """domain.MarketData over alpaca-py's StockHistoricalDataClient.

    `feed` ("sip", "iex" or "delayed_sip") serves the daily bars: SIP by default, the
    consolidated tape the models are trained on (IEX's volume is a small, varying share of it
    and its open and close are not the official auction prints); a closed session's bars are
    free on SIP once 15 minutes old. `latest_feed` serves the latest trade and quote: IEX by
    default, the free real-time one. Daily bars are split- and dividend-adjusted
    (Adjustment.ALL), fetched at most `chunk_size` symbols per request in chunks sized to fill
    Alpaca's pages (`plan_chunks`): 650 symbols x 138 sessions take 10 requests. `now` is the
    clock that keeps SIP requests out of the last 15 minutes.
    """

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        *,
        data_url: str | None = None,
        feed: str = "sip",
        latest_feed: str = "iex",
        timeout: float = 10.0,
        limiter: Limiter | None = None,
        retry: RetryPolicy | None = None,
        chunk_size: int = MAX_SYMBOLS_PER_REQUEST,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        _check_keys(api_key, api_secret)
        super().__init__(timeout=timeout, limiter=limiter, retry=retry)
        self.feed = _feed(feed)
        self.latest_feed = _feed(latest_feed)
        self._now = now or (lambda: datetime.now(UTC))
        if chunk_size < 1:
            raise errors.ConfigError("chunk_size must be at least 1")
        self.chunk_size = chunk_size
        self.data_url = _normalise_url(data_url) or DATA_URL
        self._client: Any = StockHistoricalDataClient(
            api_key, api_secret, url_override=self.data_url
        )
        self._harden(self._client)

    def get_daily_bars(
        self, symbols: Sequence[str], start: date, end: date
    ) -> dict[str, domain.BarFrame]:
        """Daily bars in [start, end] for each requested symbol (upper-cased).

        Each frame is indexed by a tz-naive DatetimeIndex named "date" holding the session
        dates (New York) at midnight, ascending and unique, with float64 columns open, high,
        low, close, volume: the BarFrame shape of app/market/calendar.py. A symbol with
        no bars maps to an empty frame of that shape. The SDK follows next_page_token.
        """
        wanted = _symbols(symbols)
        out = {s: _empty_frame() for s in wanted}
        start_ts = datetime.combine(start, dtime(0), NY)
        end_ts = datetime.combine(end, dtime(23, 59, 59), NY)
        if self.feed is DataFeed.SIP:
            end_ts = min(end_ts, self._now() - SIP_DELAY)
            if end_ts < start_ts:
                return out
        sessions = _weekdays(start_ts, end_ts)
        for chunk in plan_chunks(wanted, sessions, self.chunk_size):
            req = StockBarsRequest(
                symbol_or_symbols=chunk,
                timeframe=TimeFrame.Day,
                start=start_ts,
                end=end_ts,
                adjustment=Adjustment.ALL,
                feed=self.feed,
            )
            barset = self._read(
                "get_stock_bars", functools.partial(self._client.get_stock_bars, req)
            )
            for symbol, bars in barset.data.items():
                if symbol in out and bars:
                    out[symbol] = _bars_frame(bars)
        return out

    def get_latest_price(self, symbol: str) -> float:
        """Price of the latest trade. NotFoundError when the feed has none for the symbol."""
        symbol = symbol.upper()
        prices = self.get_latest_prices([symbol])
        if symbol not in prices:
            raise errors.NotFoundError(f"no latest trade for {symbol}")
        return prices[symbol]

    def get_latest_prices(self, symbols: Sequence[str]) -> dict[str, float]:
        """Latest trade prices, several symbols per request; unknown symbols are left out."""
        out: dict[str, float] = {}
        for chunk in _chunks(_symbols(symbols), self.chunk_size):
            req = StockLatestTradeRequest(symbol_or_symbols=chunk, feed=self.latest_feed)
            trades = self._read(
                "get_stock_latest_trade",
                functools.partial(self._client.get_stock_latest_trade, req),
            )
            out.update({s: float(t.price) for s, t in trades.items()})
        return out

    def get_quote(self, symbol: str) -> domain.Quote:
        """Latest bid/ask. NotFoundError when the feed has none for the symbol."""
        symbol = symbol.upper()
        req = StockLatestQuoteRequest(symbol_or_symbols=[symbol], feed=self.latest_feed)
        quotes = self._read(
            "get_stock_latest_quote", functools.partial(self._client.get_stock_latest_quote, req)
        )
        q = quotes.get(symbol)
        if q is None:
            raise errors.NotFoundError(f"no latest quote for {symbol}")
        return domain.Quote(
            symbol=symbol,
            bid=float(q.bid_price),
            ask=float(q.ask_price),
            bid_size=float(q.bid_size),
            ask_size=float(q.ask_size),
            timestamp=q.timestamp,
        )


def plan_chunks(
    symbols: Sequence[str], sessions: int, max_symbols: int, page: int = PAGE_BARS
) -> list[list[str]]:
    """`symbols` split into requests of at most `max_symbols`, as few HTTP requests as can be.

    A request for n symbols over `sessions` sessions takes ceil(n * sessions / page) pages
    (Alpaca counts a page's bars across symbols); a partly filled last page is a request
    wasted per chunk. Chunk sizes that fill whole pages (multiples of page // sessions) and
    the largest allowed are tried, each split evenly, and the fewest requests win (then the
    fewest chunks). `sessions` may overestimate: chunks then come out a little small.
    """
    n = len(symbols)
    if n == 0:
        return []
    per_page = max(1, page // max(sessions, 1))
    sizes = {min(max_symbols, n)} | set(range(per_page, min(max_symbols, n), per_page))

    def cost(size: int) -> tuple[int, int]:
        count = math.ceil(n / size)
        small, extra = divmod(n, count)  # `extra` chunks of small + 1, the rest of small
        pages = extra * math.ceil((small + 1) * sessions / page)
        pages += (count - extra) * math.ceil(small * sessions / page)
        return max(pages, count), count

    count = min(cost(size) for size in sizes)[1]
    bounds = np.linspace(0, n, count + 1).round().astype(int)
    return [list(symbols[a:b]) for a, b in itertools.pairwise(bounds)]


def _weekdays(start: datetime, end: datetime) -> int:
    """Weekdays in [start, end] (New York dates): at least the sessions, holidays counted."""
    first, last = start.astimezone(NY).date(), end.astimezone(NY).date()
    return int(np.busday_count(first, last + timedelta(days=1)))


def _feed(name: str) -> DataFeed:
    try:
        return DataFeed(name.lower())
    except ValueError:
        raise errors.ConfigError(f"unknown Alpaca data feed {name!r}") from None


def _empty_frame() -> pd.DataFrame:
    index = pd.DatetimeIndex([], name="date").as_unit("us")
    return pd.DataFrame({c: pd.Series(dtype="float64") for c in domain.BAR_COLUMNS}, index=index)


def _bars_frame(bars: Sequence[Any]) -> pd.DataFrame:
    """alpaca-py Bars -> BarFrame; a bar's date is its timestamp's New York date."""
    days = [b.timestamp.astimezone(NY).date().isoformat() for b in bars]
    index = pd.DatetimeIndex(pd.to_datetime(days), name="date").as_unit("us")
    frame = pd.DataFrame(
        {
            "open": [b.open for b in bars],
            "high": [b.high for b in bars],
            "low": [b.low for b in bars],
            "close": [b.close for b in bars],
            "volume": [b.volume for b in bars],
        },
        index=index,
        dtype="float64",
    )
    frame = frame[~frame.index.duplicated(keep="last")]
    return frame.sort_index(kind="mergesort")
