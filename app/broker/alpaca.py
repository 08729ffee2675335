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
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from pydantic import ValidationError as PydanticValidationError

from app import domain, errors
from app.broker.alpaca_client import (
    LIVE_URL,
    NY,
    ORDERS_PAGE,
    PAPER_URL,
    Limiter,
    RetryPolicy,
    _AlpacaBase,
    _api_error,
    _check_keys,
    _enum_value,
    _f,
    _is_duplicate,
    _normalise_url,
)
from app.broker.alpaca_orders import MULTI_LEG, to_order

with warnings.catch_warnings():
    # alpaca.trading and alpaca.data import their websocket streams, which import the
    # deprecated `websockets.legacy`; we use neither stream, so silence exactly that warning
    # here instead of loosening the global warning filters.
    warnings.filterwarnings(
        "ignore", message=r"websockets\.legacy is deprecated", category=DeprecationWarning
    )
    from alpaca.common.exceptions import APIError
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import (
        AssetClass,
        AssetStatus,
        OrderClass,
        OrderSide,
        QueryOrderStatus,
        TimeInForce,
    )
    from alpaca.trading.requests import (
        GetAssetsRequest,
        GetCalendarRequest,
        GetOrderByIdRequest,
        GetOrdersRequest,
        LimitOrderRequest,
        MarketOrderRequest,
        StopLossRequest,
        TakeProfitRequest,
    )

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AssetInfo:
    """What the bot needs to know about an asset before ordering it."""

    symbol: str
    tradable: bool
    fractionable: bool
    shortable: bool
    status: str
    exchange: str


def _asset_info(a: Any) -> AssetInfo:
    return AssetInfo(
        symbol=a.symbol,
        tradable=bool(a.tradable),
        fractionable=bool(a.fractionable),
        shortable=bool(a.shortable),
        status=_enum_value(a.status),
        exchange=_enum_value(a.exchange),
    )


def _matching(order: domain.Order, cid: str, symbol: str, side: domain.Side) -> domain.Order:
    """The order found under the request's client_order_id, if it is the same trade.

    A client_order_id reused for a different symbol or side is a caller bug; returning that
    other order as if it were this one would corrupt the book, so it is rejected instead.
    """
    if order.symbol.upper() != symbol.upper() or order.side is not side:
        raise errors.OrderRejected(
            f"client_order_id {cid} already used for {order.side.value} {order.symbol}"
        )
    return order


class AlpacaBroker(_AlpacaBase):
    """domain.Broker over alpaca-py's TradingClient.

    `base_url` overrides the trading endpoint (the paper endpoint is used when `paper` and no
    URL is given, the live one when not `paper`). `timeout` is the per-request HTTP timeout in
    seconds. Pass the same `limiter` to every client of the account (default: the process-wide
    in-memory limiter; use a Redis-backed SlidingWindowLimiter to share the budget between
    processes). Orders are market orders, time in force DAY (what fractional and notional
    orders require). `cancel_confirm_timeout`: how long `cancel_order` waits for Alpaca to
    confirm a cancel (seconds). `now` tells the New York day the asset listing is kept for.
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
        cancel_confirm_timeout: float = 10.0,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        _check_keys(api_key, api_secret)
        super().__init__(timeout=timeout, limiter=limiter, retry=retry)
        if cancel_confirm_timeout <= 0:
            raise errors.ConfigError("the cancel confirmation timeout must be positive")
        self.cancel_confirm_timeout = float(cancel_confirm_timeout)
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
        self._now = now or (lambda: datetime.now(UTC))
        self._assets: tuple[date, dict[str, AssetInfo]] | None = None
        self._assets_lock = threading.Lock()

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
                status=QueryOrderStatus.OPEN, limit=ORDERS_PAGE, nested=True, until=until
            )
            page = self._read("get_orders", functools.partial(self._client.get_orders, req))
            fresh = [o for o in page if str(o.id) not in seen]
            for o in fresh:
                seen[str(o.id)] = to_order(o)
            if len(page) < ORDERS_PAGE or not fresh:
                return list(seen.values())
            until = min(o.submitted_at for o in page)

    def get_order_by_client_id(self, client_order_id: str) -> domain.Order | None:
        raw = self._lookup(client_order_id)
        return to_order(raw) if raw is not None else None

    def _lookup(self, client_order_id: str) -> Any | None:
        """The order under `client_order_id`. Alpaca lists an OCO's legs (where a stop fill
        shows) only in nested reads, which the lookup by client id cannot ask for: an order
        with legs is read again by id, nested."""
        try:
            raw = self._read(
                "get_order_by_client_id",
                functools.partial(self._client.get_order_by_client_id, client_order_id),
            )
        except errors.NotFoundError:
            return None
        if _enum_value(raw.order_class) in MULTI_LEG and not raw.legs:
            raw = self._read(
                "get_order_by_id",
                functools.partial(
                    self._client.get_order_by_id, raw.id, GetOrderByIdRequest(nested=True)
                ),
            )
        return raw

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

    def get_assets(self) -> dict[str, AssetInfo]:
        """Every active US equity Alpaca lists, by symbol: one GET /v2/assets (about 12,000
        assets) kept for the New York day, so a 650-symbol universe costs one request, not
        650 per-symbol asset reads."""
        today = self._now().astimezone(NY).date()
        with self._assets_lock:
            if self._assets is None or self._assets[0] != today:
                req = GetAssetsRequest(status=AssetStatus.ACTIVE, asset_class=AssetClass.US_EQUITY)
                rows = self._read(
                    "get_all_assets", functools.partial(self._client.get_all_assets, req)
                )
                self._assets = (today, {a.symbol: _asset_info(a) for a in rows})
            return self._assets[1]

    def get_asset(self, symbol: str) -> AssetInfo | None:
        """The asset's trading flags, or None when Alpaca does not know the symbol. From the
        day's listing; a symbol missing there (inactive or unknown) is asked for by itself."""
        symbol = symbol.upper()
        listed = self.get_assets().get(symbol)
        if listed is not None:
            return listed
        try:
            a = self._read("get_asset", functools.partial(self._client.get_asset, symbol))
        except errors.NotFoundError:
            return None
        return _asset_info(a)

    def is_fractionable(self, symbol: str) -> bool:
        """Alpaca's `fractionable` flag from the day's listing; a symbol missing there counts
        as whole shares only (the safe side)."""
        asset = self.get_assets().get(symbol.upper())
        return asset is not None and asset.fractionable

    def is_tradable(self, symbol: str) -> bool:
        return bool(self.tradable_symbols([symbol]))

    def tradable_symbols(self, symbols: Iterable[str]) -> frozenset[str]:
        """The symbols (upper-cased) Alpaca trades today: active and tradable in the listing."""
        listing = self.get_assets()
        wanted = {s.upper() for s in symbols}
        return frozenset(s for s in wanted if (a := listing.get(s)) is not None and a.tradable)

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
            "time_in_force": TimeInForce(request.time_in_force.value),
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
        return self._submit(sdk_request, request.client_order_id, request.symbol, request.side)

    def submit_protective_order(self, request: domain.ProtectiveRequest) -> domain.Order:
        """An OCO sell on a held position: take-profit limit (the parent) and stop-loss stop
        (its leg), GTC, whole shares; sent and looked up like any order (`_submit`)."""
        try:
            sdk_request = LimitOrderRequest(
                symbol=request.symbol.upper(),
                qty=request.qty,
                side=OrderSide.SELL,
                time_in_force=TimeInForce.GTC,
                order_class=OrderClass.OCO,
                take_profit=TakeProfitRequest(limit_price=request.take_profit),
                stop_loss=StopLossRequest(stop_price=request.stop_loss),
                client_order_id=request.client_order_id,
            )
        except (PydanticValidationError, ValueError) as exc:
            raise errors.OrderRejected(f"invalid order {request.client_order_id}: {exc}") from exc
        return self._submit(sdk_request, request.client_order_id, request.symbol, domain.Side.SELL)

    def _submit(self, sdk_request: Any, cid: str, symbol: str, side: domain.Side) -> domain.Order:
        resent = False
        attempt, waited = 0, 0.0
        while True:
            try:
                raw = self._attempt(
                    "submit_order", functools.partial(self._client.submit_order, sdk_request)
                )
                return to_order(raw)
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
                        return _matching(to_order(found), cid, symbol, side)
                    raise errors.BrokerUnavailable(
                        f"order {cid}: broker says the id is taken but cannot find it"
                    ) from exc
                if info.status is not None and 400 <= info.status < 500:
                    raise errors.OrderRejected(
                        f"{side.value} {symbol} ({cid}) rejected: {info.message}"
                    ) from exc
                cause: Exception = exc
            except requests.RequestException as exc:
                cause = exc
            except (PydanticValidationError, KeyError, TypeError, ValueError) as exc:
                cause = exc  # a 2xx we cannot parse: the order exists, the lookup shows it

            log.warning("order %s: outcome unknown (%s); looking it up", cid, cause)
            found = self._lookup(cid)  # raises BrokerUnavailable if the lookup fails too
            if found is not None:
                return _matching(to_order(found), cid, symbol, side)
            if resent:
                raise errors.BrokerUnavailable(
                    f"order {cid}: no answer and not on the books after two sends: {cause}"
                ) from cause
            resent = True
            log.warning("order %s: not on the books; sending again with the same id", cid)

    def cancel_order(self, client_order_id: str) -> None:
        """Cancel an open order and return once Alpaca confirms it ended (cancelled, or filled
        meanwhile); a no-op when it already ended. NotFoundError if unknown.

        Alpaca cancels asynchronously: the order stays `pending_cancel`, its shares held, and a
        sell needing them is refused ("insufficient qty available"). So the order's status is
        polled by id until it ends; CancelPending after `cancel_confirm_timeout` seconds. A
        cancel already pending is waited for, not sent again.
        """
        raw = self._lookup(client_order_id)
        if raw is None:
            raise errors.NotFoundError(f"no order with client_order_id {client_order_id}")
        if not to_order(raw).status.is_open:
            return
        if _enum_value(raw.status) != "pending_cancel":
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
        self._await_end(raw.id, client_order_id)

    def _await_end(self, order_id: Any, client_order_id: str) -> None:
        """Poll the order by id until it is no longer open, within the confirmation bound."""
        deadline = time.monotonic() + self.cancel_confirm_timeout
        delay = 0.05
        while True:
            raw = self._read(
                "get_order_by_id", functools.partial(self._client.get_order_by_id, order_id)
            )
            if not to_order(raw).status.is_open:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.CancelPending(
                    f"cancel {client_order_id}: still {_enum_value(raw.status)} after "
                    f"{self.cancel_confirm_timeout:g}s"
                )
            self._sleep(min(delay, left))
            delay = min(delay * 2, 1.0)

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
