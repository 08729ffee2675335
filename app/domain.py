"""Domain values and the protocols every mode shares.

Frozen dataclasses keep decisions reproducible: the same inputs give the same orders in live,
sim and backtest. Broker SDK types never get past the adapters; these are what the rest sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Protocol, TypeAlias, runtime_checkable

import pandas as pd

#: Daily bars of one symbol: a DataFrame indexed by session date (ascending, unique) with float
#: columns open, high, low, close, volume.
BarFrame: TypeAlias = pd.DataFrame
BAR_COLUMNS = ("open", "high", "low", "close", "volume")


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderStatus(StrEnum):
    """Our view of an order's life; PENDING means written locally but not yet acknowledged."""

    PENDING = "pending"
    NEW = "new"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def is_open(self) -> bool:
        return self in (OrderStatus.PENDING, OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED)


class TimeInForce(StrEnum):
    """DAY: fill now (fractional allowed); OPG: market-on-open, filled in the next opening
    auction (whole shares); GTC: protective orders that stay until filled or cancelled."""

    DAY = "day"
    OPG = "opg"
    GTC = "gtc"


class TradingState(StrEnum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


class SignalAction(StrEnum):
    BUY = "BUY"
    SELL = "SELL"
    HOLD = "HOLD"


@dataclass(frozen=True)
class Bar:
    symbol: str
    day: date
    open: float
    high: float
    low: float
    close: float
    volume: float


@dataclass(frozen=True)
class Quote:
    symbol: str
    bid: float
    ask: float
    bid_size: float
    ask_size: float
    timestamp: datetime

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) / 2


@dataclass(frozen=True)
class Account:
    cash: float
    equity: float
    buying_power: float
    #: Equity at the previous close: the base of the daily-loss rule.
    last_equity: float
    currency: str = "USD"
    status: str = "ACTIVE"


@dataclass(frozen=True)
class Position:
    symbol: str
    qty: float
    avg_entry_price: float
    current_price: float

    @property
    def market_value(self) -> float:
        return self.qty * self.current_price

    @property
    def cost_basis(self) -> float:
        return self.qty * self.avg_entry_price

    @property
    def unrealized_pl(self) -> float:
        return self.market_value - self.cost_basis

    @property
    def unrealized_plpc(self) -> float:
        return (self.current_price / self.avg_entry_price - 1.0) if self.avg_entry_price else 0.0


@dataclass(frozen=True)
class OrderRequest:
    """A market order to send; exactly one of qty and notional is set."""

    symbol: str
    side: Side
    client_order_id: str
    qty: float | None = None
    notional: float | None = None
    time_in_force: TimeInForce = TimeInForce.DAY

    def __post_init__(self) -> None:
        if (self.qty is None) == (self.notional is None):
            raise ValueError("exactly one of qty and notional must be set")
        amount = self.qty if self.qty is not None else self.notional
        if amount is None or amount <= 0:
            raise ValueError("order amount must be positive")
        if self.time_in_force is not TimeInForce.DAY and (
            self.qty is None or self.qty != int(self.qty)
        ):
            raise ValueError(f"{self.time_in_force} orders need a whole number of shares")


#: Order class of a protective exit: a take-profit limit and a stop-loss stop, one cancels other.
OCO = "oco"


@dataclass(frozen=True)
class ProtectiveRequest:
    """A broker-side exit guarding a held position (freqtrade's stoploss_on_exchange): an OCO
    sell, GTC, of whole shares: a take-profit limit and a stop-loss stop; one fill cancels the
    other. It protects the position when no worker runs."""

    symbol: str
    client_order_id: str
    qty: float
    take_profit: float
    stop_loss: float

    def __post_init__(self) -> None:
        if self.qty <= 0 or self.qty != int(self.qty):
            raise ValueError("a protective order needs a positive whole number of shares")
        if not 0 < self.stop_loss < self.take_profit:
            raise ValueError("need 0 < stop_loss < take_profit")


@dataclass(frozen=True)
class Order:
    client_order_id: str
    symbol: str
    side: Side
    status: OrderStatus
    qty: float | None = None
    notional: float | None = None
    filled_qty: float = 0.0
    filled_avg_price: float | None = None
    broker_order_id: str | None = None
    submitted_at: datetime | None = None
    reject_reason: str | None = None
    #: "simple", or OCO for a protective exit (limit_price = take-profit, stop_price = stop).
    order_class: str = "simple"
    limit_price: float | None = None
    stop_price: float | None = None
    #: When the (last) fill happened, as the broker reports it: the fill's session.
    filled_at: datetime | None = None
    #: The leg of a protective OCO that filled, as the broker reports it: "stop_loss" (the stop
    #: leg) or "take_profit" (the limit leg); None while nothing filled.
    filled_leg: str | None = None

    @property
    def is_protective(self) -> bool:
        return self.order_class == OCO

    @property
    def exit_kind(self) -> str | None:
        """Which leg of a filled protective order filled: stop_loss or take_profit. Taken from
        the leg, never from the price: a stop can fill above its stop price (a rebound while
        its market order works), which a price rule would report as a take-profit."""
        if not self.is_protective or not self.filled_qty:
            return None
        return self.filled_leg


@dataclass(frozen=True)
class Fill:
    client_order_id: str
    symbol: str
    side: Side
    qty: float
    price: float
    timestamp: datetime
    commission: float = 0.0


@dataclass(frozen=True)
class MarketClock:
    timestamp: datetime
    is_open: bool
    next_open: datetime
    next_close: datetime


@dataclass(frozen=True)
class TradingSession:
    """One exchange session; early closes show as an earlier `close`."""

    day: date
    open: datetime
    close: datetime


@dataclass(frozen=True)
class Signal:
    symbol: str
    action: SignalAction
    predicted_return: float
    confidence: float
    dispersion: float
    model_version: str


@dataclass(frozen=True)
class RiskDecision:
    allowed: bool
    reason: str
    rule: str = field(default="")

    @classmethod
    def allow(cls, reason: str = "ok", rule: str = "") -> RiskDecision:
        return cls(True, reason, rule)

    @classmethod
    def deny(cls, reason: str, rule: str = "") -> RiskDecision:
        return cls(False, reason, rule)


@runtime_checkable
class Broker(Protocol):
    """What the trading cycle needs from a venue; AlpacaBroker and SimBroker implement it."""

    def get_account(self) -> Account: ...

    def get_positions(self) -> list[Position]: ...

    def get_open_orders(self) -> list[Order]: ...

    def submit_market_order(self, request: OrderRequest) -> Order: ...

    def submit_protective_order(self, request: ProtectiveRequest) -> Order:
        """Place an OCO exit; the same client_order_id again returns the order booked."""
        ...

    def get_order_by_client_id(self, client_order_id: str) -> Order | None: ...

    def cancel_order(self, client_order_id: str) -> None:
        """Return once the order has ended (cancelled, or filled meanwhile) and its shares are
        free; errors.CancelPending when the venue did not confirm in time."""
        ...

    def close_position(self, symbol: str, client_order_id: str) -> Order: ...

    def is_fractionable(self, symbol: str) -> bool:
        """False when the venue takes only whole shares of `symbol` (Alpaca's `fractionable`)."""
        ...

    def get_clock(self) -> MarketClock: ...

    def get_calendar(self, start: date, end: date) -> list[TradingSession]: ...


@runtime_checkable
class MarketData(Protocol):
    """A source of daily bars and latest prices."""

    def get_daily_bars(
        self, symbols: Sequence[str], start: date, end: date
    ) -> dict[str, BarFrame]: ...

    def get_latest_price(self, symbol: str) -> float: ...


class Clock(Protocol):
    """Where 'now' comes from: the wall clock live, a replay clock in sim and backtests."""

    def now(self) -> datetime: ...
