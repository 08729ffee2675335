"""SimBroker: an in-process paper exchange implementing domain.Broker for sim mode and backtests.

It is deliberately strict, so a strategy that works here does not meet surprises live:
cash only (no margin), no shorting, market orders only, and one order per client_order_id
(re-submitting an id returns the order already booked under it, never a second fill).

Prices come from a callable ``symbol -> price``: the backtester and sim mode pass the session's
open when ``process_pending()`` fills the orders queued for it. Orders fill at that price moved
against the trader by the slippage model, and pay the commission model's fee in cash. DAY orders
fill on submission unless ``fill_immediately=False``; OPG orders (market-on-open) always wait for
``process_pending()``, the next open. Protective OCO exits (``submit_protective_order``) wait for
``process_protective()`` with each session's open, high and low (``costs.protective_fill``).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import date, datetime
from typing import Any

from app.broker.costs import CommissionModel, SlippageModel, protective_fill
from app.broker.sim_state import (
    _QTY_EPS,
    _QTY_SCALE,
    QTY_DECIMALS,
    _Holding,
    dump_book,
    load_book,
    settle_fill,
)
from app.domain import (
    OCO,
    Account,
    Clock,
    Fill,
    MarketClock,
    Order,
    OrderRequest,
    OrderStatus,
    Position,
    ProtectiveRequest,
    Side,
    TimeInForce,
    TradingSession,
)
from app.errors import NotFoundError, OrderRejected
from app.market.calendar import NyseCalendar, WallClock

__all__ = ["CommissionModel", "PriceSource", "SimBroker", "SlippageModel"]

logger = logging.getLogger(__name__)

#: Where fill prices come from: symbol -> price (must be finite and > 0).
PriceSource = Callable[[str], float]


def _floor_qty(qty: float) -> float:
    """Round down to the quantity grid, so a notional buy never costs more than asked."""
    return math.floor(qty * _QTY_SCALE + 1e-6) / _QTY_SCALE


class SimBroker:
    """An in-process broker: cash, positions at average cost, fills, commission and slippage.

    Thread-safe: one re-entrant lock guards all state, so the API and a worker can share an
    instance. The price source is called under that lock and must not call back into the broker.
    """

    def __init__(
        self,
        price_source: PriceSource,
        *,
        starting_cash: float = 100_000.0,
        clock: Clock | None = None,
        calendar: NyseCalendar | None = None,
        commission: CommissionModel | None = None,
        slippage: SlippageModel | None = None,
        fill_immediately: bool = True,
        fractional: bool = True,
        whole_shares_only: frozenset[str] = frozenset(),
    ) -> None:
        if not math.isfinite(starting_cash) or starting_cash < 0:
            raise ValueError("starting_cash must be a finite amount >= 0")
        self._price_source = price_source
        self._clock: Clock = clock or WallClock()
        self._calendar = calendar or NyseCalendar()
        self._commission = commission or CommissionModel()
        self._slippage = slippage or SlippageModel()
        self._fill_immediately = fill_immediately
        self._fractional = fractional
        #: Symbols that trade in whole shares only, like Alpaca's non-fractionable assets.
        self._whole_shares_only = frozenset(s.upper() for s in whole_shares_only)
        self._lock = threading.RLock()
        self._cash = float(starting_cash)
        self._last_equity = float(starting_cash)
        self._holdings: dict[str, _Holding] = {}
        self._marks: dict[str, float] = {}
        self._orders: dict[str, Order] = {}
        self._requests: dict[str, OrderRequest] = {}
        self._pending: list[str] = []
        #: Open protective OCO exits, in submission order, and their requests.
        self._guards: list[str] = []
        self._protective: dict[str, ProtectiveRequest] = {}
        self._fills: list[Fill] = []
        self._realized_pl = 0.0
        self._commission_paid = 0.0
        self._seq = 0

    # -- state views ---------------------------------------------------------------------------
    @property
    def cash(self) -> float:
        with self._lock:
            return self._cash

    @property
    def fill_immediately(self) -> bool:
        """False: orders stay NEW until process_pending() (the backtester's next-open fill)."""
        with self._lock:
            return self._fill_immediately

    @fill_immediately.setter
    def fill_immediately(self, value: bool) -> None:
        with self._lock:
            self._fill_immediately = value

    @property
    def fills(self) -> list[Fill]:
        """Every fill so far, oldest first (a copy)."""
        with self._lock:
            return list(self._fills)

    def fills_since(self, start: int) -> list[Fill]:
        """The fills after the first `start` (a replay reads each fill once, not the list)."""
        with self._lock:
            return self._fills[start:]

    @property
    def realized_pl(self) -> float:
        """Realised P&L against average cost, before commissions."""
        with self._lock:
            return self._realized_pl

    @property
    def commission_paid(self) -> float:
        with self._lock:
            return self._commission_paid

    def _equity(self) -> float:
        return self._cash + sum(
            h.qty * self._marks.get(sym, h.avg_price) for sym, h in self._holdings.items()
        )

    def get_account(self) -> Account:
        """Equity marks positions at the last known prices; buying power is cash not yet
        promised to pending buys (no margin)."""
        with self._lock:
            reserved = 0.0
            for cid in self._pending:
                req = self._requests[cid]
                if req.side is Side.BUY:
                    if req.notional is not None:
                        reserved += req.notional
                    elif req.qty is not None:
                        reserved += req.qty * self._marks.get(req.symbol, 0.0)
            return Account(
                cash=self._cash,
                equity=self._equity(),
                buying_power=max(0.0, self._cash - reserved),
                last_equity=self._last_equity,
            )

    def get_positions(self) -> list[Position]:
        with self._lock:  # `_position` inlined: a backtest asks once per session
            holdings, marks = self._holdings, self._marks
            return [
                Position(sym, h.qty, h.avg_price, marks.get(sym, h.avg_price))
                for sym, h in sorted(holdings.items())
            ]

    def get_position(self, symbol: str) -> Position | None:
        with self._lock:
            sym = symbol.upper()
            return self._position(sym) if sym in self._holdings else None

    def _position(self, symbol: str) -> Position:
        h = self._holdings[symbol]
        return Position(
            symbol=symbol,
            qty=h.qty,
            avg_entry_price=h.avg_price,
            current_price=self._marks.get(symbol, h.avg_price),
        )

    def get_orders(self) -> list[Order]:
        """All orders in submission order, whatever their status."""
        with self._lock:
            return list(self._orders.values())

    def get_open_orders(self) -> list[Order]:
        with self._lock:
            return [self._orders[cid] for cid in self._pending + self._guards]

    def get_order_by_client_id(self, client_order_id: str) -> Order | None:
        with self._lock:
            return self._orders.get(client_order_id)

    # -- day bookkeeping -----------------------------------------------------------------------
    def mark(self, prices: Mapping[str, float]) -> None:
        """Set current prices (e.g. today's closes) used for equity and positions."""
        with self._lock:
            for symbol, price in prices.items():
                p = float(price)
                if not math.isfinite(p) or p <= 0:
                    raise ValueError(f"bad mark price for {symbol}: {price!r}")
                self._marks[symbol.upper()] = p

    def start_day(self) -> float:
        """Begin a trading day: today's equity becomes last_equity (the daily-loss base)."""
        with self._lock:
            self._last_equity = self._equity()
            return self._last_equity

    # -- orders --------------------------------------------------------------------------------
    def submit_market_order(self, request: OrderRequest) -> Order:
        """Book a market order; fill it now unless fills are deferred to process_pending().

        Raises OrderRejected (after recording the order as REJECTED) for insufficient cash,
        selling more than held, a missing price or a fractional order the broker does not
        allow. The same client_order_id again returns the booked order, whatever its status.
        """
        symbol = request.symbol.upper()
        with self._lock:
            existing = self._orders.get(request.client_order_id)
            if existing is not None:
                return self._resubmitted(existing, request)
            self._seq += 1
            order = Order(
                client_order_id=request.client_order_id,
                symbol=symbol,
                side=request.side,
                status=OrderStatus.NEW,
                qty=request.qty,
                notional=request.notional,
                broker_order_id=f"sim-{self._seq:08d}",
                submitted_at=self._clock.now(),
            )
            req = request if request.symbol == symbol else replace(request, symbol=symbol)
            self._orders[order.client_order_id] = order
            self._requests[order.client_order_id] = req
            problem = self._precheck(req)
            if problem is not None:
                self._reject(order.client_order_id, problem)
                raise OrderRejected(problem)
            if not self._fill_immediately or req.time_in_force is TimeInForce.OPG:
                self._pending.append(order.client_order_id)
                return order
            result = self._execute(order.client_order_id)
            if result.status is OrderStatus.REJECTED:
                raise OrderRejected(result.reject_reason or "rejected")
            return result

    def _resubmitted(self, existing: Order, request: OrderRequest) -> Order:
        if existing.symbol != request.symbol.upper() or existing.side is not request.side:
            raise OrderRejected(
                f"client_order_id {request.client_order_id!r} is already used by a "
                f"{existing.side} {existing.symbol} order"
            )
        if (existing.qty, existing.notional) != (request.qty, request.notional):
            logger.warning(
                "resubmitted %s with a different amount; returning the booked order",
                request.client_order_id,
            )
        return existing

    def is_fractionable(self, symbol: str) -> bool:
        return self._fractional and symbol.upper() not in self._whole_shares_only

    def _precheck(self, req: OrderRequest) -> str | None:
        """Rules that need no price: fractional permission and selling what is held."""
        if not self.is_fractionable(req.symbol):
            if req.notional is not None:
                return "notional orders need fractional trading, which is disabled"
            if req.qty is not None and abs(req.qty - round(req.qty)) > _QTY_EPS:
                return f"fractional qty {req.qty} not allowed"
        if req.side is Side.SELL and req.qty is not None:
            held = self._holdings.get(req.symbol)
            available = (held.qty if held else 0.0) - self._pending_sell_qty(req.symbol)
            if req.qty > available + _QTY_EPS:
                return (
                    f"insufficient qty: selling {req.qty:g} {req.symbol} but only "
                    f"{max(available, 0.0):g} available (no shorting)"
                )
        return None

    def _pending_sell_qty(self, symbol: str) -> float:
        """Shares already promised to open qty sells and protective exits (notional sells are
        judged at fill): like Alpaca, shares an OCO holds cannot be sold by another order."""
        return sum(
            self._requests[cid].qty or 0.0
            for cid in self._pending
            if self._requests[cid].side is Side.SELL and self._requests[cid].symbol == symbol
        ) + sum(
            self._protective[cid].qty
            for cid in self._guards
            if self._protective[cid].symbol == symbol
        )

    def submit_protective_order(self, request: ProtectiveRequest) -> Order:
        """Book an OCO exit (GTC) on shares held and not promised to other sells."""
        symbol = request.symbol.upper()
        with self._lock:
            existing = self._orders.get(request.client_order_id)
            if existing is not None:
                return existing
            self._seq += 1
            order = Order(
                client_order_id=request.client_order_id,
                symbol=symbol,
                side=Side.SELL,
                status=OrderStatus.NEW,
                qty=request.qty,
                broker_order_id=f"sim-{self._seq:08d}",
                submitted_at=self._clock.now(),
                order_class=OCO,
                limit_price=request.take_profit,
                stop_price=request.stop_loss,
            )
            self._orders[order.client_order_id] = order
            held = self._holdings.get(symbol)
            available = (held.qty if held else 0.0) - self._pending_sell_qty(symbol)
            if request.qty > available + _QTY_EPS:
                problem = (
                    f"insufficient qty: protecting {request.qty:g} {symbol} but only "
                    f"{max(available, 0.0):g} available"
                )
                self._reject(order.client_order_id, problem)
                raise OrderRejected(problem)
            self._protective[order.client_order_id] = replace(request, symbol=symbol)
            self._guards.append(order.client_order_id)
            return order

    def process_protective(self, ranges: Mapping[str, tuple[float, float, float]]) -> list[Order]:
        """Fill the protective exits a session's (open, high, low) reaches, by
        ``costs.protective_fill``; the other leg is cancelled with it. Never raises."""
        done: list[Order] = []
        with self._lock:
            for cid in list(self._guards):
                req = self._protective[cid]
                if req.symbol not in ranges:
                    continue
                hit = protective_fill(*ranges[req.symbol], req.stop_loss, req.take_profit)
                if hit is None:
                    continue
                leg, ref = hit
                self._guards.remove(cid)
                price = self._slippage.apply(ref, Side.SELL) if leg == "stop_loss" else ref
                order = self._settle(cid, req.symbol, Side.SELL, req.qty, price, ref)
                if order.status is OrderStatus.FILLED:
                    order = self._orders[cid] = replace(order, filled_leg=leg)
                done.append(order)
        return done

    def _reject(self, cid: str, reason: str) -> Order:
        order = replace(self._orders[cid], status=OrderStatus.REJECTED, reject_reason=reason)
        self._orders[cid] = order
        logger.info("sim order %s rejected: %s", cid, reason)
        return order

    def _price(self, symbol: str) -> float | str:
        """The reference price, or the reason there is none."""
        try:
            price = float(self._price_source(symbol))
        except (NotFoundError, LookupError, ValueError) as exc:
            return f"no price for {symbol}: {exc}"
        if not math.isfinite(price) or price <= 0:
            return f"no usable price for {symbol}: {price!r}"
        return price

    def _execute(self, cid: str) -> Order:
        """Fill one booked order at the current price, or reject it; never raises."""
        req = self._requests[cid]
        ref = self._price(req.symbol)
        if isinstance(ref, str):
            return self._reject(cid, ref)
        price = self._slippage.apply(ref, req.side)
        if req.qty is not None:
            qty = round(req.qty, QTY_DECIMALS)
        else:
            assert req.notional is not None
            qty = _floor_qty(req.notional / price)
        return self._settle(cid, req.symbol, req.side, qty, price, ref)

    def _settle(
        self, cid: str, symbol: str, side: Side, qty: float, price: float, ref: float
    ) -> Order:
        """Book a fill of `qty` at `price` (slippage included) or reject it; never raises."""
        return settle_fill(self, cid, symbol, side, qty, price, ref)

    def process_pending(self, prices: Mapping[str, float] | None = None) -> list[Order]:
        """Fill every queued order at `prices` (the session's opens; default: the price
        source): sells first (they free cash), then buys, each in submission order. Orders
        that no longer fit end REJECTED; none raise."""
        with self._lock:
            if prices is not None:
                source = self._price_source
                self._price_source = lambda symbol: prices[symbol.upper()]
                try:
                    return self.process_pending()
                finally:
                    self._price_source = source
            queue = list(self._pending)
            self._pending.clear()
            sells = [cid for cid in queue if self._requests[cid].side is Side.SELL]
            buys = [cid for cid in queue if self._requests[cid].side is Side.BUY]
            return [self._execute(cid) for cid in sells + buys]

    def cancel_order(self, client_order_id: str) -> None:
        """Cancel an open order; cancelling a cancelled one is a no-op, a filled one refused."""
        with self._lock:
            order = self._orders.get(client_order_id)
            if order is None:
                raise NotFoundError(f"no order {client_order_id!r}", field="client_order_id")
            if order.status is OrderStatus.CANCELED:
                return
            if not order.status.is_open:
                raise OrderRejected(f"order {client_order_id!r} is {order.status}, not cancelable")
            queue = self._guards if client_order_id in self._guards else self._pending
            queue.remove(client_order_id)
            self._orders[client_order_id] = replace(order, status=OrderStatus.CANCELED)

    def close_position(self, symbol: str, client_order_id: str) -> Order:
        """Sell the whole position (NotFoundError if there is none)."""
        with self._lock:
            existing = self._orders.get(client_order_id)
            if existing is not None:
                return existing
            sym = symbol.upper()
            held = self._holdings.get(sym)
            if held is None:
                raise NotFoundError(f"no position in {sym}", field="symbol")
            available = held.qty - self._pending_sell_qty(sym)
            if available <= _QTY_EPS:
                raise OrderRejected(f"{sym} is already being sold by open orders")
            request = OrderRequest(
                symbol=sym, side=Side.SELL, client_order_id=client_order_id, qty=available
            )
            return self.submit_market_order(request)

    # -- clock ---------------------------------------------------------------------------------
    def get_clock(self) -> MarketClock:
        """The NYSE clock at the injected clock's now; the close instant counts as open, so a
        ReplayClock (which sits on the close) sees a tradable market."""
        return self._calendar.clock(self._clock.now(), include_close=True)

    def get_calendar(self, start: date, end: date) -> list[TradingSession]:
        return self._calendar.trading_sessions(start, end)

    def now(self) -> datetime:
        return self._clock.now()

    # -- persistence ---------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Everything the book holds, as JSON-ready data (sim mode keeps it in the database so
        the API and the workers see one exchange)."""
        with self._lock:
            return dump_book(self)

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Replace the book with one saved by `to_state`."""
        with self._lock:
            load_book(self, state)
