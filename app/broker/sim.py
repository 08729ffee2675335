"""SimBroker: an in-process paper exchange implementing domain.Broker for sim mode and backtests.

It is deliberately strict, so a strategy that works here does not meet surprises live:
cash only (no margin), no shorting, market orders only, and one order per client_order_id
(re-submitting an id returns the order already booked under it, never a second fill).

Prices come from a callable ``symbol -> price``: the backtester passes the next bar's open and
sim mode the latest price. Orders fill at that price moved against the trader by the slippage
model, and pay the commission model's fee in cash. By default orders fill on submission; with
``fill_immediately=False`` they stay NEW until ``process_pending()`` (the backtester's "fill at
the next open").
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

from app.broker.costs import CommissionModel, SlippageModel
from app.broker.sim_state import (
    _fill_from,
    _fill_state,
    _order_from,
    _order_state,
    _request_from,
    _request_state,
)
from app.domain import (
    Account,
    Clock,
    Fill,
    MarketClock,
    Order,
    OrderRequest,
    OrderStatus,
    Position,
    Side,
    TradingSession,
)
from app.errors import NotFoundError, OrderRejected
from app.market.calendar import NyseCalendar, WallClock

__all__ = ["CommissionModel", "PriceSource", "SimBroker", "SlippageModel"]

logger = logging.getLogger(__name__)

#: Where fill prices come from: symbol -> price (must be finite and > 0).
PriceSource = Callable[[str], float]

#: Share quantities are kept to 9 decimals, as Alpaca does for fractional orders.
QTY_DECIMALS = 9
_QTY_SCALE = 1_000_000_000  # 10 ** QTY_DECIMALS
_QTY_EPS = 1.0 / _QTY_SCALE
#: Float slack when comparing money, so qty = cash / price is not refused over one ulp.
_CASH_EPS = 1e-9


@dataclass
class _Holding:
    qty: float
    avg_price: float


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
        with self._lock:
            return [self._position(sym) for sym in sorted(self._holdings)]

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
            return [self._orders[cid] for cid in self._pending]

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
            req = replace(request, symbol=symbol)
            self._orders[order.client_order_id] = order
            self._requests[order.client_order_id] = req
            problem = self._precheck(req)
            if problem is not None:
                self._reject(order.client_order_id, problem)
                raise OrderRejected(problem)
            if not self._fill_immediately:
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
        """Shares already promised to open qty sells (notional sells are judged at fill)."""
        return sum(
            self._requests[cid].qty or 0.0
            for cid in self._pending
            if self._requests[cid].side is Side.SELL and self._requests[cid].symbol == symbol
        )

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
        held = self._holdings.get(req.symbol)
        held_qty = held.qty if held else 0.0

        if req.qty is not None:
            qty = round(req.qty, QTY_DECIMALS)
        else:
            assert req.notional is not None
            qty = _floor_qty(req.notional / price)
        if req.side is Side.SELL and qty > held_qty:
            if qty > held_qty + _QTY_EPS * max(1.0, held_qty):
                return self._reject(
                    cid,
                    f"insufficient qty: selling {qty:g} {req.symbol} but only {held_qty:g} "
                    "held (no shorting)",
                )
            qty = held_qty  # float dust: sell exactly what is held
        if qty <= 0:
            return self._reject(cid, f"order too small: {qty:g} shares at {price:.4f}")

        notional = qty * price
        fee = self._commission.cost(qty, price)
        if req.side is Side.BUY:
            total = notional + fee
            if total > self._cash + _CASH_EPS * max(1.0, self._cash):
                return self._reject(
                    cid,
                    f"insufficient buying power: needs {total:.2f}, cash {self._cash:.2f}",
                )
            self._cash = max(0.0, self._cash - total)
            new_qty = round(held_qty + qty, QTY_DECIMALS)
            cost = (held.avg_price * held_qty if held else 0.0) + notional
            self._holdings[req.symbol] = _Holding(qty=new_qty, avg_price=cost / new_qty)
        else:
            assert held is not None
            if self._cash + notional - fee < 0:
                return self._reject(
                    cid, f"insufficient cash for commission {fee:.2f} on a {notional:.2f} sale"
                )
            self._cash = self._cash + notional - fee
            self._realized_pl += (price - held.avg_price) * qty
            remaining = held_qty - qty
            if remaining <= _QTY_EPS:
                del self._holdings[req.symbol]
            else:
                held.qty = round(remaining, QTY_DECIMALS)
        self._commission_paid += fee
        self._marks[req.symbol] = ref
        now = self._clock.now()
        self._fills.append(
            Fill(
                client_order_id=cid,
                symbol=req.symbol,
                side=req.side,
                qty=qty,
                price=price,
                timestamp=now,
                commission=fee,
            )
        )
        order = replace(
            self._orders[cid],
            status=OrderStatus.FILLED,
            filled_qty=qty,
            filled_avg_price=price,
        )
        self._orders[cid] = order
        return order

    def process_pending(self) -> list[Order]:
        """Fill every open order at the current prices: sells first (they free cash), then
        buys, each in submission order. Orders that no longer fit end REJECTED; none raise."""
        with self._lock:
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
            self._pending.remove(client_order_id)
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
            return {
                "cash": self._cash,
                "last_equity": self._last_equity,
                "holdings": {s: [h.qty, h.avg_price] for s, h in self._holdings.items()},
                "marks": dict(self._marks),
                "orders": [_order_state(o) for o in self._orders.values()],
                "requests": [_request_state(r) for r in self._requests.values()],
                "pending": list(self._pending),
                "fills": [_fill_state(f) for f in self._fills],
                "realized_pl": self._realized_pl,
                "commission_paid": self._commission_paid,
                "seq": self._seq,
            }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Replace the book with one saved by `to_state`."""
        with self._lock:
            self._cash = float(state["cash"])
            self._last_equity = float(state["last_equity"])
            self._holdings = {s: _Holding(q, p) for s, (q, p) in state["holdings"].items()}
            self._marks = {s: float(p) for s, p in state["marks"].items()}
            orders = [_order_from(o) for o in state["orders"]]
            self._orders = {o.client_order_id: o for o in orders}
            requests = [_request_from(r) for r in state["requests"]]
            self._requests = {r.client_order_id: r for r in requests}
            self._pending = list(state["pending"])
            self._fills = [_fill_from(f) for f in state["fills"]]
            self._realized_pl = float(state["realized_pl"])
            self._commission_paid = float(state["commission_paid"])
            self._seq = int(state["seq"])
