"""Where the service trades: the broker, the market data and "today" for the configured mode.

One strategy, three clocks: sim mode gets the database-backed SimExchange over CSV or synthetic
bars with a replay clock; paper and live get Alpaca through alpaca-py with the bar cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date

from app.broker.alpaca import AlpacaBroker
from app.broker.alpaca_client import RetryPolicy
from app.broker.alpaca_data import AlpacaMarketData
from app.broker.rate_limit import SlidingWindowLimiter
from app.broker.sim_exchange import SimExchange
from app.config import Settings, TradingMode
from app.domain import Broker, MarketData
from app.errors import ConfigError
from app.market.cache import CachedMarketData
from app.market.calendar import NyseCalendar
from app.market.sessions import BrokerSessions
from app.market.sources import CsvMarketData, SyntheticMarketData
from app.store.database import Database


@dataclass
class Venue:
    name: str
    broker: Broker
    market: MarketData
    #: The session date decisions are made for: the replay session in sim; live, the New York
    #: date of the broker's clock (app/market/sessions.py: one date for cache, API and cycle).
    today: Callable[[], date]
    #: The price orders would fill at now.
    latest_price: Callable[[str], float]
    #: Whether the venue lists the symbol at all (the data source's files in sim, Alpaca's
    #: asset endpoint live); the API answers 404 for the rest instead of an empty result.
    knows_symbol: Callable[[str], bool]
    #: The last session whose daily bar is final (live: from the broker's clock, as the cache).
    last_closed_session: Callable[[], date]
    symbols: Callable[[], list[str]] | None = None
    #: Which of the symbols the broker trades today (live: Alpaca's asset listing, one
    #: request a day); None: every symbol with data (sim).
    tradable: Callable[[Iterable[str]], frozenset[str]] | None = None


def build_venue(settings: Settings, db: Database) -> Venue:
    if settings.trading_mode is TradingMode.SIM:
        return _sim_venue(settings, db)
    return _alpaca_venue(settings, db)


def _sim_source(settings: Settings) -> CsvMarketData | SyntheticMarketData:
    if settings.data_dir:
        return CsvMarketData(settings.data_dir)
    return SyntheticMarketData(
        symbols=settings.watchlist, end=date(2022, 12, 30), seed=settings.sim_seed
    )


def _sim_venue(settings: Settings, db: Database) -> Venue:
    calendar = NyseCalendar()
    exchange = SimExchange(
        db,
        _sim_source(settings),
        start_session=settings.sim_start_date,
        starting_cash=settings.sim_starting_cash,
        commission_bps=settings.sim_commission_bps,
        slippage_bps=settings.sim_slippage_bps,
        calendar=calendar,
    )
    reader = _sim_source(settings)  # the API's own copy: no replay cut-off shared with trading
    return Venue(
        name="sim",
        broker=exchange,
        market=reader,
        today=exchange.session,
        latest_price=exchange.latest_price,
        knows_symbol=lambda symbol: symbol in reader.available_symbols(),
        symbols=reader.available_symbols,
        last_closed_session=exchange.session,  # a replayed session is decided at its close
    )


def alpaca_market_data(
    settings: Settings, limiter: SlidingWindowLimiter | None = None
) -> AlpacaMarketData:
    """Alpaca's market data client as configured; one limiter per account budget."""
    if not (settings.alpaca_api_key and settings.alpaca_api_secret):  # Settings enforces it
        raise ConfigError("ALPACA_API_KEY and ALPACA_API_SECRET are required")
    return AlpacaMarketData(
        settings.alpaca_api_key,
        settings.alpaca_api_secret,
        data_url=settings.alpaca_data_url,
        feed=settings.alpaca_data_feed,
        latest_feed=settings.alpaca_latest_feed,
        timeout=settings.alpaca_timeout_seconds,
        limiter=limiter or account_limiter(settings),
        retry=RetryPolicy(max_total_wait=settings.alpaca_retry_seconds),
    )


def account_limiter(settings: Settings) -> SlidingWindowLimiter:
    """The account's request budget, shared through Redis by every process that has it."""
    return SlidingWindowLimiter(
        settings.alpaca_requests_per_minute, redis_client=settings.redis_url
    )


def _alpaca_venue(settings: Settings, db: Database) -> Venue:
    limiter = account_limiter(settings)
    data = alpaca_market_data(settings, limiter)
    assert settings.alpaca_api_key
    assert settings.alpaca_api_secret
    broker = AlpacaBroker(
        settings.alpaca_api_key,
        settings.alpaca_api_secret,
        paper=settings.alpaca_paper,
        base_url=settings.alpaca_base_url,
        timeout=settings.alpaca_timeout_seconds,
        limiter=limiter,
        retry=RetryPolicy(max_total_wait=settings.alpaca_retry_seconds),
        cancel_confirm_timeout=settings.cancel_confirm_timeout_seconds,
    )
    calendar = NyseCalendar()
    sessions = BrokerSessions(broker.get_clock, calendar)
    market = CachedMarketData(
        data,
        db,
        calendar,
        sessions=sessions,
        overlap_sessions=settings.bar_overlap_sessions,
        max_jump=settings.bar_max_jump,
    )
    return Venue(
        name="alpaca-paper" if settings.alpaca_paper else "alpaca-live",
        broker=broker,
        market=market,
        today=sessions.today,
        latest_price=data.get_latest_price,
        knows_symbol=lambda symbol: broker.get_asset(symbol) is not None,
        last_closed_session=sessions.last_closed_session,
        tradable=broker.tradable_symbols,
    )
