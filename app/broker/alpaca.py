"""Alpaca adapters: `AlpacaBroker` (domain.Broker) and `AlpacaMarketData` (domain.MarketData).

Both wrap the official alpaca-py clients and convert everything to `app.domain` types; no
alpaca-py object leaves this module. alpaca-py has three hazards for an unattended bot, handled
here (details in /work/shared/ALPACA_NOTES.md):

* It sets no HTTP timeout, so a hung server hangs the caller. Each client's `requests` session
  (`RESTClient._session`) is replaced by `_GuardedSession`, which adds a default timeout, takes
  a slot from the shared rate limiter and counts requests.
* It retries every request, order submission included, on 429/504 with a fixed 3 s sleep and
  ignores the rate-limit headers. That retry is switched off (private `_retry = 0`) and replaced:
  reads are retried with exponential backoff plus jitter that honours `Retry-After` /
  `X-RateLimit-Reset`, within a bounded total wait; orders are never re-sent blindly.
* A 504 or a timeout can arrive after Alpaca booked the order. After any answer with an unknown
  outcome (timeout, dropped connection, 5xx) or a "client_order_id must be unique" rejection,
  the order is looked up by client_order_id and the broker's record is returned.

Errors: timeouts, connection failures and 5xx raise `errors.BrokerUnavailable`; 429s that outlast
the retry budget raise `errors.RateLimited`; a 4xx answer to an order raises
`errors.OrderRejected`; other 4xx answers raise `errors.BrokerError` (404 -> `NotFoundError`
where "not found" is not an answer in itself).
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from datetime import time as dtime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pandas as pd
import requests
from pydantic import ValidationError as PydanticValidationError

from app import domain, errors, metrics
from app.broker.rate_limit import process_limiter

with warnings.catch_warnings():
    # alpaca.trading and alpaca.data import their websocket streams, which import the
    # deprecated `websockets.legacy`; we use neither stream, so silence exactly that warning
    # here instead of loosening the global warning filters.
    warnings.filterwarnings(
        "ignore", message=r"websockets\.legacy is deprecated", category=DeprecationWarning
    )
    from alpaca.common.exceptions import APIError
    from alpaca.common.rest import RESTClient
    from alpaca.data.enums import Adjustment, DataFeed
    from alpaca.data.historical.stock import StockHistoricalDataClient
    from alpaca.data.requests import (
        StockBarsRequest,
        StockLatestQuoteRequest,
        StockLatestTradeRequest,
    )
    from alpaca.data.timeframe import TimeFrame
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderSide, QueryOrderStatus, TimeInForce
    from alpaca.trading.requests import GetCalendarRequest, GetOrdersRequest, MarketOrderRequest

log = logging.getLogger(__name__)

NY = ZoneInfo("America/New_York")
PAPER_URL = "https://paper-api.alpaca.markets"
LIVE_URL = "https://api.alpaca.markets"
DATA_URL = "https://data.alpaca.markets"
#: Alpaca answers 422 with this message when a client_order_id was used before.
DUPLICATE_MESSAGE = "client_order_id must be unique"
#: GET /v2/orders returns at most this many orders per request.
ORDERS_PAGE = 500

T = TypeVar("T")

# Alpaca order states -> ours. Anything still working at the venue counts as NEW (upgraded to
# PARTIALLY_FILLED when it has fills); done_for_day ends a day order, like expiry.
_STATUS = {
    "new": domain.OrderStatus.NEW,
    "accepted": domain.OrderStatus.NEW,
    "pending_new": domain.OrderStatus.NEW,
    "accepted_for_bidding": domain.OrderStatus.NEW,
    "pending_review": domain.OrderStatus.NEW,
    "held": domain.OrderStatus.NEW,
    "calculated": domain.OrderStatus.NEW,
    "stopped": domain.OrderStatus.NEW,
    "suspended": domain.OrderStatus.NEW,
    "pending_cancel": domain.OrderStatus.NEW,
    "pending_replace": domain.OrderStatus.NEW,
    "partially_filled": domain.OrderStatus.PARTIALLY_FILLED,
    "filled": domain.OrderStatus.FILLED,
    "canceled": domain.OrderStatus.CANCELED,
    "replaced": domain.OrderStatus.CANCELED,
    "expired": domain.OrderStatus.EXPIRED,
    "done_for_day": domain.OrderStatus.EXPIRED,
    "rejected": domain.OrderStatus.REJECTED,
}


class Limiter(Protocol):
    """Anything that blocks until one more request may be sent (see rate_limit.py)."""

    def acquire(self) -> float: ...


@dataclass(frozen=True)
class RetryPolicy:
    """How reads (and rate-limited order sends) are retried.

    Delay before retry n (0-based) is `backoff_base * 2**n`, capped at `backoff_max`, with
    equal jitter, and at least what Retry-After / X-RateLimit-Reset ask for. Retrying stops
    after `max_retries` retries or when the next sleep would take the call's total sleeping
    past `max_total_wait`, so no call blocks for long whatever the broker does.
    """

    max_retries: int = 6
    backoff_base: float = 0.25
    backoff_max: float = 8.0
    max_total_wait: float = 30.0


@dataclass(frozen=True)
class AssetInfo:
    """What the bot needs to know about an asset before ordering it."""

    symbol: str
    tradable: bool
    fractionable: bool
    shortable: bool
    status: str
    exchange: str


class _GuardedSession(requests.Session):
    """The session alpaca-py sends through: default timeout, rate limiter, request counter."""

    def __init__(
        self, timeout: float, limiter: Limiter, on_request: Callable[[str, str], None]
    ) -> None:
        super().__init__()
        self.default_timeout = timeout
        self._limiter = limiter
        self._on_request = on_request

    def request(  # type: ignore[override]
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        self._limiter.acquire()
        m = method.decode() if isinstance(method, bytes) else method
        u = url.decode() if isinstance(url, bytes) else url
        self._on_request(m.upper(), u)
        return super().request(m, u, *args, **kwargs)


@dataclass(frozen=True)
class _ApiErrorInfo:
    status: int | None
    code: Any
    message: str


def _api_error(exc: APIError) -> _ApiErrorInfo:
    """Status, code and message of an APIError without letting a non-JSON body raise."""
    try:
        code, message = exc.code, str(exc.message)
    except (ValueError, KeyError, TypeError):
        code, message = None, str(exc)[:200]
    return _ApiErrorInfo(exc.status_code, code, message)


def _is_duplicate(info: _ApiErrorInfo) -> bool:
    # Alpaca's 40010001 is a generic validation code, so the message is what identifies it.
    return info.status == 422 and DUPLICATE_MESSAGE in info.message.lower()


def _hinted_wait(response: requests.Response | None) -> float | None:
    """Seconds the server asked us to wait (Retry-After or X-RateLimit-Reset), if any."""
    if response is None:
        return None
    retry_after = response.headers.get("Retry-After")
    if retry_after:
        try:
            return max(float(retry_after), 0.0)
        except ValueError:
            try:
                return max(parsedate_to_datetime(retry_after).timestamp() - time.time(), 0.0)
            except (TypeError, ValueError):
                pass
    reset = response.headers.get("X-RateLimit-Reset")
    if reset:
        try:
            return max(float(reset) - time.time(), 0.0)
        except ValueError:
            return None
    return None


def _f(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


def _enum_value(value: Any) -> str:
    return str(getattr(value, "value", value))


def _to_order(o: Any) -> domain.Order:
    """An alpaca-py Order as a domain.Order."""
    raw_status = _enum_value(o.status)
    status = _STATUS.get(raw_status, domain.OrderStatus.NEW)
    filled = _f(o.filled_qty) or 0.0
    if status is domain.OrderStatus.NEW and filled > 0:
        status = domain.OrderStatus.PARTIALLY_FILLED
    # Alpaca may report filled_avg_price 0 before the first fill: that is "no price yet".
    avg = _f(o.filled_avg_price) if filled > 0 else None
    return domain.Order(
        client_order_id=o.client_order_id,
        symbol=o.symbol or "",
        side=domain.Side(_enum_value(o.side)),
        status=status,
        qty=_f(o.qty),
        notional=_f(o.notional),
        filled_qty=filled,
        filled_avg_price=avg,
        broker_order_id=str(o.id),
        submitted_at=o.submitted_at,
        reject_reason=raw_status if status is domain.OrderStatus.REJECTED else None,
    )


def _matching(order: domain.Order, request: domain.OrderRequest) -> domain.Order:
    """The order found under the request's client_order_id, if it is the same trade.

    A client_order_id reused for a different symbol or side is a caller bug; returning that
    other order as if it were this one would corrupt the book, so it is rejected instead.
    """
    if order.symbol.upper() != request.symbol.upper() or order.side is not request.side:
        raise errors.OrderRejected(
            f"client_order_id {request.client_order_id} already used for "
            f"{order.side.value} {order.symbol}"
        )
    return order


def _check_keys(api_key: str, api_secret: str) -> None:
    if not api_key or not api_secret:
        raise errors.ConfigError("the Alpaca API key and secret are both required")


def _normalise_url(url: str | None) -> str | None:
    """alpaca-py appends "/v2" itself: accept a URL with or without it or a trailing slash."""
    if not url:
        return None
    url = url.rstrip("/")
    return url.removesuffix("/v2")


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _symbols(symbols: Sequence[str]) -> list[str]:
    """Upper-cased, stripped, de-duplicated, order kept."""
    return list(dict.fromkeys(s.strip().upper() for s in symbols if s and s.strip()))


class _AlpacaBase:
    """Shared plumbing: session hardening, counters and the retry loop for reads."""

    def __init__(
        self, *, timeout: float, limiter: Limiter | None, retry: RetryPolicy | None
    ) -> None:
        if timeout <= 0:
            raise errors.ConfigError("the Alpaca timeout must be positive")
        self.timeout = float(timeout)
        self.limiter: Limiter = limiter if limiter is not None else process_limiter()
        self.retry = retry or RetryPolicy()
        #: alpaca-py calls made, per SDK method (every attempt counts): what benches report.
        self.calls: Counter[str] = Counter()
        #: HTTP requests sent (pagination and retries included).
        self.http_requests = 0
        #: Sleeps spent waiting to retry (429 backoff and friends), and their total seconds.
        self.retry_sleeps = 0
        self.retry_wait_seconds = 0.0
        self._stats_lock = threading.Lock()
        self._sleep: Callable[[float], None] = time.sleep
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography
        self._sessions: list[requests.Session] = []

    def _harden(self, client: RESTClient) -> None:
        """Give an alpaca-py client our session and switch its built-in retry off."""
        if not isinstance(getattr(client, "_session", None), requests.Session) or not hasattr(
            client, "_retry"
        ):
            raise RuntimeError(
                "alpaca-py internals changed (RESTClient._session/_retry missing): re-check "
                "timeouts and retries before upgrading it"
            )
        client._session.close()
        session = _GuardedSession(self.timeout, self.limiter, self._count_request)
        client._session = session
        self._sessions.append(session)
        # alpaca-py would re-send every request, POST /v2/orders included, 3 more times on
        # 429/504 after a fixed 3 s sleep, ignoring the rate-limit headers; that retry is only
        # reachable through this private attribute. We retry ourselves (see _read and
        # AlpacaBroker.submit_market_order).
        client._retry = 0

    def close(self) -> None:
        """Close the HTTP sessions (connection pools)."""
        for session in self._sessions:
            session.close()

    def _count_request(self, _method: str, _url: str) -> None:
        with self._stats_lock:
            self.http_requests += 1

    def _attempt(self, op: str, fn: Callable[[], T]) -> T:
        with self._stats_lock:
            self.calls[op] += 1
        with metrics.alpaca_call(op):  # per attempt: status, latency
            return fn()

    def _delay(self, attempt: int, response: requests.Response | None) -> float:
        p = self.retry
        backoff = min(p.backoff_max, p.backoff_base * 2.0**attempt)
        delay = backoff / 2 + self._rng.uniform(0, backoff / 2)
        hinted = _hinted_wait(response)
        if hinted is not None:
            # A little jitter past the reset so processes sharing the account do not stampede.
            delay = max(delay, hinted + self._rng.uniform(0, min(p.backoff_base, 0.25)))
        return delay

    def _wait_to_retry(self, attempt: int, waited: float, delay: float) -> bool:
        """Sleep `delay` if the retry budget allows it; False means give up."""
        p = self.retry
        if attempt >= p.max_retries or waited + delay > p.max_total_wait:
            return False
        self._sleep(delay)
        with self._stats_lock:
            self.retry_sleeps += 1
            self.retry_wait_seconds += delay
        metrics.record_alpaca_retry(delay)
        return True

    def _read(
        self, op: str, fn: Callable[[], T], *, passthrough: frozenset[int] = frozenset()
    ) -> T:
        """Run an idempotent SDK call, retrying 429, 5xx and connection failures.

        A timeout is not retried: the endpoint is hung, and another full timeout would only
        stretch the caller's cycle; the next cycle tries again. APIErrors whose status is in
        `passthrough` are re-raised as they are for the caller to interpret.
        """
        attempt, waited = 0, 0.0
        while True:
            try:
                return self._attempt(op, fn)
            except APIError as exc:
                info = _api_error(exc)
                status = info.status
                if status in passthrough:
                    raise
                retryable = status == 429 or status is None or status >= 500
                if not retryable:
                    if status == 404:
                        raise errors.NotFoundError(f"{op}: {info.message}") from exc
                    raise errors.BrokerError(f"{op}: HTTP {status}: {info.message}") from exc
                delay = self._delay(attempt, exc.response)
                if not self._wait_to_retry(attempt, waited, delay):
                    if status == 429:
                        raise errors.RateLimited(
                            f"{op}: still rate limited after {attempt} retries"
                        ) from exc
                    raise errors.BrokerUnavailable(f"{op}: HTTP {status}: {info.message}") from exc
                log.info("alpaca %s: HTTP %s, retrying in %.2fs", op, status, delay)
            except requests.Timeout as exc:
                raise errors.BrokerUnavailable(f"{op}: no answer within {self.timeout:g}s") from exc
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                delay = self._delay(attempt, None)
                if not self._wait_to_retry(attempt, waited, delay):
                    raise errors.BrokerUnavailable(f"{op}: connection failed: {exc}") from exc
                log.info("alpaca %s: connection failed (%s), retrying in %.2fs", op, exc, delay)
            except requests.RequestException as exc:
                raise errors.BrokerUnavailable(f"{op}: {exc}") from exc
            except (PydanticValidationError, ValueError, KeyError, TypeError) as exc:
                raise errors.BrokerError(f"{op}: unexpected response: {exc}") from exc
            waited += delay
            attempt += 1


class AlpacaBroker(_AlpacaBase):
    """domain.Broker over alpaca-py's TradingClient.

    `base_url` overrides the trading endpoint (the paper endpoint is used when `paper` and no
    URL is given, the live one when not `paper`). `timeout` is the per-request HTTP timeout in
    seconds. Pass the same `limiter` to every client of the account (default: the process-wide
    in-memory limiter; use a Redis-backed SlidingWindowLimiter to share the budget between
    processes). Orders are market orders, time in force DAY (what fractional and notional
    orders require).
    """

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        *,
        paper: bool = True,
        base_url: str | None = None,
        timeout: float = 10.0,
        limiter: Limiter | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        _check_keys(api_key, api_secret)
        super().__init__(timeout=timeout, limiter=limiter, retry=retry)
        url = _normalise_url(base_url) or (PAPER_URL if paper else LIVE_URL)
        host = urlsplit(url).hostname or ""
        if paper and host == urlsplit(LIVE_URL).hostname:
            raise errors.ConfigError("paper trading is on but the base URL is the live endpoint")
        if not paper and host == urlsplit(PAPER_URL).hostname:
            raise errors.ConfigError("paper trading is off but the base URL is the paper endpoint")
        self.paper = paper
        self.base_url = url
        # Typed Any: with raw_data=False the SDK always returns models, but its signatures say
        # "model | raw dict", which would need a cast on every call.
        self._client: Any = TradingClient(api_key, api_secret, paper=paper, url_override=url)
        self._harden(self._client)

    # ------------------------------------------------------------------ reads

    def get_account(self) -> domain.Account:
        a = self._read("get_account", self._client.get_account)
        cash = _f(a.cash) or 0.0
        equity = _f(a.equity) or _f(a.portfolio_value) or cash
        return domain.Account(
            cash=cash,
            equity=equity,
            buying_power=_f(a.buying_power) or 0.0,
            last_equity=_f(a.last_equity) or equity,
            currency=a.currency or "USD",
            status=_enum_value(a.status),
        )

    def get_positions(self) -> list[domain.Position]:
        rows = self._read("get_all_positions", self._client.get_all_positions)
        return [self._to_position(p) for p in rows]

    @staticmethod
    def _to_position(p: Any) -> domain.Position:
        qty = float(p.qty)
        if _enum_value(p.side) == "short" and qty > 0:
            qty = -qty
        avg = float(p.avg_entry_price)
        price = _f(p.current_price)
        if price is None:
            market_value = _f(p.market_value)
            price = market_value / qty if market_value is not None and qty else avg
        return domain.Position(symbol=p.symbol, qty=qty, avg_entry_price=avg, current_price=price)

    def get_open_orders(self) -> list[domain.Order]:
        """Every open order, newest first, paging past Alpaca's 500-per-request cap."""
        seen: dict[str, domain.Order] = {}
        until: datetime | None = None
        while True:
            req = GetOrdersRequest(
                status=QueryOrderStatus.OPEN, limit=ORDERS_PAGE, nested=False, until=until
            )
            page = self._read("get_orders", functools.partial(self._client.get_orders, req))
            fresh = [o for o in page if str(o.id) not in seen]
            for o in fresh:
                seen[str(o.id)] = _to_order(o)
            if len(page) < ORDERS_PAGE or not fresh:
                return list(seen.values())
            until = min(o.submitted_at for o in page)

    def get_order_by_client_id(self, client_order_id: str) -> domain.Order | None:
        raw = self._lookup(client_order_id)
        return _to_order(raw) if raw is not None else None

    def _lookup(self, client_order_id: str) -> Any | None:
        try:
            return self._read(
                "get_order_by_client_id",
                functools.partial(self._client.get_order_by_client_id, client_order_id),
            )
        except errors.NotFoundError:
            return None

    def get_clock(self) -> domain.MarketClock:
        c = self._read("get_clock", self._client.get_clock)
        return domain.MarketClock(
            timestamp=c.timestamp,
            is_open=bool(c.is_open),
            next_open=c.next_open,
            next_close=c.next_close,
        )

    def get_calendar(self, start: date, end: date) -> list[domain.TradingSession]:
        """Sessions in [start, end]; open and close are tz-aware New York times."""
        req = GetCalendarRequest(start=start, end=end)
        rows = self._read("get_calendar", functools.partial(self._client.get_calendar, req))
        return [
            domain.TradingSession(
                day=r.date, open=r.open.replace(tzinfo=NY), close=r.close.replace(tzinfo=NY)
            )
            for r in rows
        ]

    def get_asset(self, symbol: str) -> AssetInfo | None:
        """The asset's trading flags, or None when Alpaca does not know the symbol."""
        try:
            a = self._read("get_asset", functools.partial(self._client.get_asset, symbol.upper()))
        except errors.NotFoundError:
            return None
        return AssetInfo(
            symbol=a.symbol,
            tradable=bool(a.tradable),
            fractionable=bool(a.fractionable),
            shortable=bool(a.shortable),
            status=_enum_value(a.status),
            exchange=_enum_value(a.exchange),
        )

    def is_tradable(self, symbol: str) -> bool:
        asset = self.get_asset(symbol)
        return asset is not None and asset.tradable and asset.status == "active"

    # ------------------------------------------------------------------ orders

    def submit_market_order(self, request: domain.OrderRequest) -> domain.Order:
        """Send a market order at most twice and return the broker's record of it.

        Never blindly re-sent. When the outcome is unknown (timeout, dropped connection, 5xx
        including a 504 that may come after Alpaca booked the order) or Alpaca says the
        client_order_id is taken, the order is looked up by client_order_id and that record is
        returned. If a lookup after an unknown outcome finds nothing, the order is sent once
        more with the same client_order_id: Alpaca accepts each client_order_id once, so if
        the first request was in fact booked (or lands late), the second is rejected as a
        duplicate and the lookup path returns the first; it can never make two orders. If the
        lookup itself fails, or the second send is lost too, BrokerUnavailable is raised: the
        caller keeps the order pending and reconciles it by client_order_id later.
        A 429 is refused before processing, so it is waited out and re-sent like a read.
        """
        kwargs: dict[str, Any] = {
            "symbol": request.symbol.upper(),
            "side": OrderSide(request.side.value),
            "time_in_force": TimeInForce.DAY,
            "client_order_id": request.client_order_id,
        }
        if request.qty is not None:
            kwargs["qty"] = request.qty
        else:
            kwargs["notional"] = request.notional
        try:
            sdk_request = MarketOrderRequest(**kwargs)
        except (PydanticValidationError, ValueError) as exc:
            raise errors.OrderRejected(f"invalid order {request.client_order_id}: {exc}") from exc

        cid = request.client_order_id
        resent = False
        attempt, waited = 0, 0.0
        while True:
            try:
                raw = self._attempt(
                    "submit_order", functools.partial(self._client.submit_order, sdk_request)
                )
                return _to_order(raw)
            except APIError as exc:
                info = _api_error(exc)
                if info.status == 429:
                    delay = self._delay(attempt, exc.response)
                    if not self._wait_to_retry(attempt, waited, delay):
                        raise errors.RateLimited(f"order {cid}: still rate limited") from exc
                    waited += delay
                    attempt += 1
                    continue
                if _is_duplicate(info):
                    found = self._lookup(cid)
                    if found is not None:
                        log.info("order %s already at the broker; returning its record", cid)
                        return _matching(_to_order(found), request)
                    raise errors.BrokerUnavailable(
                        f"order {cid}: broker says the id is taken but cannot find it"
                    ) from exc
                if info.status is not None and 400 <= info.status < 500:
                    raise errors.OrderRejected(
                        f"{request.side.value} {request.symbol} ({cid}) rejected: {info.message}"
                    ) from exc
                cause: Exception = exc
            except requests.RequestException as exc:
                cause = exc
            except (PydanticValidationError, KeyError, TypeError, ValueError) as exc:
                cause = exc  # a 2xx we cannot parse: the order exists, the lookup shows it

            log.warning("order %s: outcome unknown (%s); looking it up", cid, cause)
            found = self._lookup(cid)  # raises BrokerUnavailable if the lookup fails too
            if found is not None:
                return _matching(_to_order(found), request)
            if resent:
                raise errors.BrokerUnavailable(
                    f"order {cid}: no answer and not on the books after two sends: {cause}"
                ) from cause
            resent = True
            log.warning("order %s: not on the books; sending again with the same id", cid)

    def cancel_order(self, client_order_id: str) -> None:
        """Cancel an open order; a no-op when it already ended. NotFoundError if unknown."""
        raw = self._lookup(client_order_id)
        if raw is None:
            raise errors.NotFoundError(f"no order with client_order_id {client_order_id}")
        if not _to_order(raw).status.is_open:
            return
        try:
            self._read(
                "cancel_order_by_id",
                functools.partial(self._client.cancel_order_by_id, raw.id),
                passthrough=frozenset({422}),
            )
        except APIError as exc:  # 422: not cancelable any more, e.g. filled meanwhile
            now = self.get_order_by_client_id(client_order_id)
            if now is not None and not now.status.is_open:
                return
            raise errors.OrderRejected(
                f"cancel {client_order_id}: {_api_error(exc).message}"
            ) from exc

    def close_position(self, symbol: str, client_order_id: str) -> domain.Order:
        """Flatten `symbol` with a market order carrying `client_order_id`.

        Not DELETE /v2/positions/{symbol}: that request cannot carry a client_order_id, so a
        timeout on it could not be reconciled. Retrying with the same id returns the first
        order. Shares held by other open orders must be freed (cancelled) first.
        """
        symbol = symbol.upper()
        try:
            p = self._read(
                "get_open_position", functools.partial(self._client.get_open_position, symbol)
            )
        except errors.NotFoundError:
            existing = self.get_order_by_client_id(client_order_id)
            if existing is not None:
                return existing
            raise errors.NotFoundError(f"no open position in {symbol}") from None
        position = self._to_position(p)
        side = domain.Side.SELL if position.qty > 0 else domain.Side.BUY
        return self.submit_market_order(
            domain.OrderRequest(
                symbol=symbol, side=side, client_order_id=client_order_id, qty=abs(position.qty)
            )
        )


class AlpacaMarketData(_AlpacaBase):
    """domain.MarketData over alpaca-py's StockHistoricalDataClient.

    `feed` is "iex" (free), "sip" or "delayed_sip". Daily bars are split- and
    dividend-adjusted (Adjustment.ALL), fetched `chunk_size` symbols per request.
    """

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        *,
        data_url: str | None = None,
        feed: str = "iex",
        timeout: float = 10.0,
        limiter: Limiter | None = None,
        retry: RetryPolicy | None = None,
        chunk_size: int = 50,
    ) -> None:
        _check_keys(api_key, api_secret)
        super().__init__(timeout=timeout, limiter=limiter, retry=retry)
        try:
            self.feed = DataFeed(feed.lower())
        except ValueError:
            raise errors.ConfigError(f"unknown Alpaca data feed {feed!r}") from None
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
        for chunk in _chunks(wanted, self.chunk_size):
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
            req = StockLatestTradeRequest(symbol_or_symbols=chunk, feed=self.feed)
            trades = self._read(
                "get_stock_latest_trade",
                functools.partial(self._client.get_stock_latest_trade, req),
            )
            out.update({s: float(t.price) for s, t in trades.items()})
        return out

    def get_quote(self, symbol: str) -> domain.Quote:
        """Latest bid/ask. NotFoundError when the feed has none for the symbol."""
        symbol = symbol.upper()
        req = StockLatestQuoteRequest(symbol_or_symbols=[symbol], feed=self.feed)
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
