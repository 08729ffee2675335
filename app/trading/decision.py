"""The body of the decision cycle: closed bars → signals → `strategy.decide` → risk gate →
market-on-open orders, each under its deterministic client_order_id, written PENDING first.

With protective exits on, every quantity is whole shares (OPG and OCO take no fractions) and
the protective OCO of a holding the decision sells is cancelled first, so the exit is not
refused for shares the OCO holds. The backtest (backtest/engine.py) does the same steps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from app import metrics
from app.broker.venue import Venue
from app.config import Settings
from app.domain import (
    BarFrame,
    Broker,
    Order,
    OrderRequest,
    OrderStatus,
    RiskDecision,
    Side,
    Signal,
    SignalAction,
    TimeInForce,
)
from app.market.universe import feature_universe
from app.store.database import Database
from app.trading.ledger import Ledger
from app.trading.missing_signals import report_missing_signals
from app.trading.notifier import Notifier
from app.trading.orders import OrderService, client_order_id, purpose_of
from app.trading.protection import exits_to_unblock
from app.trading.risk import ProposedOrder, RiskLimits, RiskStateStore
from app.trading.strategy import DecisionInputs, MarketSnapshot, StrategyConfig, decide

log = logging.getLogger(__name__)

LOOKBACK_CALENDAR_DAYS = 200  # covers the 120-session feature window with room for holidays


class SignalSource(Protocol):
    """Turns bars into signals; returns the signals and, when it cannot, why not."""

    def signals(
        self, bars: Mapping[str, BarFrame], session: date
    ) -> tuple[dict[str, Signal], str | None]: ...


@dataclass
class CycleResult:
    status: str
    session: str | None = None
    cycle_key: str | None = None
    orders: list[dict[str, Any]] = field(default_factory=list)
    denied: list[dict[str, Any]] = field(default_factory=list)
    signals: int = 0
    events: list[str] = field(default_factory=list)
    reconciled: list[str] = field(default_factory=list)
    protective: list[str] = field(default_factory=list)
    problem: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def split_for_the_open(
    order: ProposedOrder, tif: TimeInForce
) -> tuple[ProposedOrder | None, ProposedOrder | None]:
    """(whole shares, fraction) of `order`. Alpaca refuses fractional market-on-open (OPG)
    orders, and a holding can be fractional (bought with PROTECTIVE_ORDERS=false, or an
    external one the bot manages): the whole shares go on the open, the fraction as a DAY
    market order, queued for the open and filled just after it, under its own purpose
    (`<purpose>_fraction`, so its own client_order_id)."""
    if tif is not TimeInForce.OPG or order.qty == int(order.qty):
        return order, None
    whole = float(math.floor(order.qty))
    purpose, _, rest = order.reason.partition(":")
    fraction = replace(order, qty=round(order.qty - whole, 9), reason=f"{purpose}_fraction:{rest}")
    return (replace(order, qty=whole) if whole >= 1 else None), fraction


def _unique(orders: list[Order]) -> list[Order]:
    """Open orders seen by the broker and in the database, each once (by client_order_id)."""
    return list({o.client_order_id: o for o in reversed(orders)}.values())


class DecisionCycle:
    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        venue: Venue,
        broker: Broker,
        orders: OrderService,
        risk: RiskStateStore,
        ledger: Ledger,
        notifier: Notifier,
        signals: SignalSource,
        limits: RiskLimits,
        config: StrategyConfig,
    ) -> None:
        self._settings = settings
        self._db = db
        self._venue = venue
        self._broker = broker
        self._orders = orders
        self._risk = risk
        self._ledger = ledger
        self._notifier = notifier
        self._signals = signals
        self._limits = limits
        self._config = config

    def run(self, session: date, now: datetime, result: CycleResult) -> None:
        """Decide on the bars of the closed `session` and send what the gate approves."""
        broker = self._broker
        protective = self._settings.protective_orders
        account = broker.get_account()
        positions = broker.get_positions()
        working = broker.get_open_orders()
        symbols = feature_universe(self._settings.watchlist, (p.symbol for p in positions))
        bars = self._venue.market.get_daily_bars(
            symbols, session - timedelta(days=LOOKBACK_CALENDAR_DAYS), session
        )
        signals, problem = self._signals.signals(bars, session)
        report_missing_signals(self._db, self._notifier, symbols, bars, signals, session, problem)
        if problem:
            result.problem = problem
            self._notifier.notify("No trading signals", problem, "warning")
        result.signals = len(signals)
        metrics.record_signals(signals.values())
        # The last closes, the backtest's prices: not the broker's mark of a holding (Alpaca's
        # latest trade may be a pre-market print), which only stands in for a missing bar.
        prices = {s: float(f["close"].iloc[-1]) for s, f in bars.items() if len(f)}
        for p in positions:
            if p.current_price > 0:
                prices.setdefault(p.symbol, p.current_price)

        loaded = self._risk.load()
        held = {p.symbol for p in positions}
        held_since = self._ledger.held_since(held)
        candidates = {s for s, sig in signals.items() if sig.action is SignalAction.BUY} - held
        tradable = candidates | held
        inputs = DecisionInputs(
            account=account,
            positions=positions,
            open_orders=_unique(
                [*(o for o in working if not o.is_protective), *self._ledger.open_orders()]
            ),
            market=MarketSnapshot(bars=bars, prices=prices),
            signals=signals,
            risk_state=loaded,
            now=now,
            session=session,
            held_since=held_since,
            # The bot opened a holding when it has a filled buy since the symbol was last flat.
            unmanaged=frozenset()
            if self._settings.manage_external_positions
            else frozenset(held - held_since.keys()),
            whole_shares=frozenset(tradable)
            if protective
            else frozenset(s for s in tradable if not broker.is_fractionable(s)),
            no_entry=self._ledger.rejected_entries(session),
        )
        decision = decide(inputs, self._limits, self._config)
        state = self._risk.save(decision.risk_state, loaded=loaded)
        for event in decision.events:
            detail = decision.risk_state.halt_reason or event
            self._risk.record_event(event, detail)
            self._notifier.notify(f"Risk: {event}", detail, "error")
        result.events = list(decision.events)
        metrics.record_risk_events(decision.events)
        for order, verdict in decision.denied:
            _deny(result, order, verdict)
        sells = [o.symbol for o in decision.orders if o.side is Side.SELL]
        for guard in exits_to_unblock(sells, working):
            broker.cancel_order(guard.client_order_id)
            self._orders.sync(guard.client_order_id)
        tif = TimeInForce.OPG if protective else TimeInForce.DAY
        for order in decision.orders:
            # Re-read before each send: a halt written while this cycle ran stops its entries.
            if order.side is Side.BUY and not (now_state := self._risk.load()).allows_entries(now):
                why = f"trading is {now_state.state} since the decision: {now_state.halt_reason}"
                _deny(result, order, RiskDecision.deny(why, "trading_state"))
                continue
            self._send(order, session, tif, result)
        self._ledger.record(
            signals, session, broker.get_account(), broker.get_positions(), state, self._venue.name
        )
        log.info(
            "decision %s: %d signals, %d orders, %d denied",
            session,
            len(signals),
            len(result.orders),
            len(result.denied),
        )

    def _send(
        self, order: ProposedOrder, session: date, tif: TimeInForce, result: CycleResult
    ) -> None:
        whole, fraction = split_for_the_open(order, tif)
        if fraction is not None:
            self._send(fraction, session, TimeInForce.DAY, result)
            if whole is None:
                return
            order = whole
        purpose = purpose_of(order.reason)
        request = OrderRequest(
            symbol=order.symbol,
            side=order.side,
            client_order_id=client_order_id(session, purpose, order.symbol, order.side),
            qty=order.qty,
            time_in_force=tif,
        )
        placed = self._orders.place(
            request, reason=order.reason, session_date=session, cycle_id="decision"
        )
        result.orders.append(
            {
                "client_order_id": request.client_order_id,
                "symbol": order.symbol,
                "side": order.side.value,
                "qty": order.qty,
                "reason": order.reason,
                "status": placed.order.status.value if placed.order else "unknown",
                "sent": placed.sent,
                "error": placed.error,
            }
        )
        self._tell(order.reason, placed.order, placed.error, request)
        if purpose in {"stop_loss", "take_profit"} and placed.order is not None:
            self._risk.record_event(purpose, order.reason, order.symbol)
            metrics.record_risk_events([purpose])

    def _tell(
        self, reason: str, order: Order | None, error: str | None, request: OrderRequest
    ) -> None:
        kind = purpose_of(reason)
        if order is None:
            self._notifier.notify(
                f"Order {request.side.value} {request.symbol} not confirmed",
                error or "unknown outcome: reconciliation will settle it",
                "error",
            )
            return
        if order.status is OrderStatus.REJECTED:
            return
        level = "warning" if kind == "stop_loss" else "success"
        when = (
            "filled" if order.filled_qty > 0 else f"queued for the open ({request.time_in_force})"
        )
        self._notifier.notify(
            f"{kind.replace('_', ' ').title()}: {request.side.value} {request.symbol}",
            f"{request.qty:g} shares {when}. {reason}",
            level,
        )


def _deny(result: CycleResult, order: ProposedOrder, verdict: RiskDecision) -> None:
    metrics.record_order_rejected("risk", verdict.rule or "unspecified")
    denied: dict[str, Any] = {
        "symbol": order.symbol,
        "side": order.side.value,
        "reason": verdict.reason,
        "rule": verdict.rule,
    }
    result.denied.append(denied)
