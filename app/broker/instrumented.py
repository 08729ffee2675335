"""InstrumentedBroker: a Broker that measures every call (requests, errors, latency) for any venue,
sim included.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import date
from typing import Any, TypeVar

from app.domain import (
    Account,
    Broker,
    MarketClock,
    Order,
    OrderRequest,
    Position,
    ProtectiveRequest,
    TradingSession,
)
from app.metrics import broker_call

T = TypeVar("T")


class InstrumentedBroker:
    """A Broker that measures every call: broker health for any venue, sim included.

    Alpaca's own HTTP attempts are measured in app/broker/alpaca_client.py (alpha_alpaca_*);
    this layer sees what the cycle sees, one call including its retries, and also works for
    SimExchange.
    Anything else is passed through to the wrapped broker.
    """

    def __init__(self, broker: Broker, venue: str) -> None:
        self.wrapped = broker
        self.venue = venue

    def _call(self, method: str, fn: Callable[[], T]) -> T:
        with broker_call(self.venue, method):
            return fn()

    def get_account(self) -> Account:
        return self._call("get_account", self.wrapped.get_account)

    def get_positions(self) -> list[Position]:
        return self._call("get_positions", self.wrapped.get_positions)

    def get_open_orders(self) -> list[Order]:
        return self._call("get_open_orders", self.wrapped.get_open_orders)

    def submit_market_order(self, request: OrderRequest) -> Order:
        return self._call(
            "submit_market_order", functools.partial(self.wrapped.submit_market_order, request)
        )

    def submit_protective_order(self, request: ProtectiveRequest) -> Order:
        return self._call(
            "submit_protective_order",
            functools.partial(self.wrapped.submit_protective_order, request),
        )

    def get_order_by_client_id(self, client_order_id: str) -> Order | None:
        return self._call(
            "get_order_by_client_id",
            functools.partial(self.wrapped.get_order_by_client_id, client_order_id),
        )

    def cancel_order(self, client_order_id: str) -> None:
        self._call("cancel_order", functools.partial(self.wrapped.cancel_order, client_order_id))

    def close_position(self, symbol: str, client_order_id: str) -> Order:
        return self._call(
            "close_position",
            functools.partial(self.wrapped.close_position, symbol, client_order_id),
        )

    def is_fractionable(self, symbol: str) -> bool:
        return self._call(
            "is_fractionable", functools.partial(self.wrapped.is_fractionable, symbol)
        )

    def get_clock(self) -> MarketClock:
        return self._call("get_clock", self.wrapped.get_clock)

    def get_calendar(self, start: date, end: date) -> list[TradingSession]:
        return self._call("get_calendar", functools.partial(self.wrapped.get_calendar, start, end))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


# ---------------------------------------------------------------------------- celery tasks
