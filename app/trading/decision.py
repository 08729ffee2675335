"""The body of the decision cycle: closed bars → signals → `strategy.decide` → risk gate →
market-on-open orders, each under its deterministic client_order_id, written PENDING first.

With protective exits on, every quantity is whole shares (OPG and OCO take no fractions) and
the protective OCO of a holding the decision sells is cancelled first, so the exit is not
refused for shares the OCO holds. The backtest (backtest/engine.py) does the same steps.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
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
from app.errors import AppError
from app.store.database import Database
from app.trading.day_signals import day_signals
from app.trading.ledger import Ledger
from app.trading.notifier import Notifier
from app.trading.orders import OrderService, Placement, client_order_id, purpose_of
from app.trading.protection import exits_to_unblock
from app.trading.risk import (
    PortfolioView,
    ProposedOrder,
    RiskLimits,
    RiskStateStore,
    rule_max_positions,
)
from app.trading.strategy import (
    DecisionInputs,
    MarketSnapshot,
    StrategyConfig,
    decide,
    rebalance_reason,
)
from app.trading.untradable import report_untradable_holdings

log = logging.getLogger(__name__)


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
    #: Symbols whose order was not sent because the decision cutoff came first.
    late: list[str] = field(default_factory=list)
    #: Holdings whose protective order was cancelled for an exit that did not go out.
    unprotected: list[str] = field(default_factory=list)
    #: Holdings the broker no longer trades (inactive, delisted, halted): nothing sent for them.
    untradable: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Cutoff:
    """The last instant the decision's orders can go out (Alpaca refuses market-on-open orders
    from 09:28) and the clock that tells the time: checked before every cancel and send."""

    at: datetime
    clock: Callable[[], datetime]

    def seconds_left(self) -> float:
        return (self.at - self.clock()).total_seconds()

    def passed(self) -> bool:
        return self.seconds_left() <= 0


def dependent_buy(
    buy: ProposedOrder,
    inputs: DecisionInputs,
    limits: RiskLimits,
    accepted: Sequence[ProposedOrder],
    missed: Sequence[ProposedOrder],
) -> RiskDecision:
    """A BUY decided with SELLs that did not go out, checked again without them.

    The gate credits an exit's position slot to the entries decided with it, and a rebalancing
    BUY replaces its SELL. Sells are credited nothing else (exposure and cash count them only
    once filled), so only the swap and the slot can depend on them: a swap's BUY never goes
    without its SELL, and the position cap is counted on what the broker actually took.
    """
    for sell in missed:
        if sell.reason == rebalance_reason(buy.symbol):
            why = f"its rebalancing sell of {sell.symbol} did not go out"
            return RiskDecision.deny(why, "sell_not_accepted")
    held = {p.symbol for p in inputs.positions if p.qty > 0}
    view = PortfolioView.of(
        inputs.account,
        inputs.positions,
        inputs.open_orders,
        inputs.market.prices,
        unmanaged=inputs.unmanaged & held,
    )
    for order in accepted:
        view.apply(order)
    verdict = rule_max_positions(buy, view, inputs.risk_state, limits, inputs.now)
    if verdict.allowed:
        return verdict
    sells = ", ".join(sorted(o.symbol for o in missed))
    return RiskDecision.deny(f"{verdict.reason}: the sell of {sells} did not go out", verdict.rule)


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

    def run(
        self, session: date, now: datetime, result: CycleResult, cutoff: Cutoff | None = None
    ) -> None:
        """Decide on the bars of the closed `session` and send what the gate approves; with a
        `cutoff`, nothing is sent (or cancelled for a send) once it cannot go out in time."""
        broker = self._broker
        protective = self._settings.protective_orders
        account = broker.get_account()
        positions = broker.get_positions()
        working = broker.get_open_orders()
        held = {p.symbol for p in positions}
        today = day_signals(
            self._settings,
            self._venue,
            self._signals.signals,
            self._db,
            self._notifier,
            session,
            held,
        )
        bars, signals = today.bars, today.signals
        if today.problem:
            result.problem = today.problem
        result.signals = len(signals)
        metrics.record_signals(signals.values())
        # The last closes, the backtest's prices: not the broker's mark of a holding (Alpaca's
        # latest trade may be a pre-market print), which only stands in for a missing bar.
        prices = {s: float(f["close"].iloc[-1]) for s, f in bars.items() if len(f)}
        for p in positions:
            if p.current_price > 0:
                prices.setdefault(p.symbol, p.current_price)

        loaded = self._risk.load()
        held_since = self._ledger.held_since(held)
        candidates = {s for s, sig in signals.items() if sig.action is SignalAction.BUY} - held
        # No order where the broker does not trade the symbol today (inactive, halted): no
        # entry, and no exit of a holding (its protective orders at the broker stay).
        untradable = (
            frozenset((candidates | held) - self._venue.tradable(candidates | held))
            if self._venue.tradable is not None and (candidates or held)
            else frozenset()
        )
        result.untradable = sorted(untradable & held)
        report_untradable_holdings(
            self._db, self._risk, self._notifier, result.untradable, held_since
        )
        tradable = candidates - untradable | held
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
            no_entry=self._ledger.rejected_entries(session) | untradable,
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
        tif = TimeInForce.OPG if protective else TimeInForce.DAY
        accepted: list[ProposedOrder] = []
        missed: list[ProposedOrder] = []  # sells not accepted: the BUYs they freed room for wait
        for order in decision.orders:
            if cutoff is not None and cutoff.passed():
                why = f"the decision cutoff {cutoff.at:%H:%M} UTC passed before it was sent"
                _deny(result, order, RiskDecision.deny(why, "decision_cutoff"))
                result.late.append(order.symbol)
                if order.side is Side.SELL:
                    missed.append(order)
                continue
            if order.side is Side.SELL and order.symbol in untradable:
                why = f"the broker no longer trades {order.symbol}: its protective orders stay"
                _deny(result, order, RiskDecision.deny(why, "not_tradable"))
                missed.append(order)
                continue
            if order.side is Side.SELL:
                sent = self._exit(order, working, session, tif, result, cutoff)
                (accepted if sent else missed).append(order)
                continue
            if missed:  # a BUY goes only once the SELLs it counts on were accepted
                verdict = dependent_buy(order, inputs, self._limits, accepted, missed)
                if not verdict.allowed:
                    _deny(result, order, verdict)
                    continue
            # Re-read before each send: a halt written while this cycle ran stops its entries.
            if not (now_state := self._risk.load()).allows_entries(now):
                why = f"trading is {now_state.state} since the decision: {now_state.halt_reason}"
                _deny(result, order, RiskDecision.deny(why, "trading_state"))
                continue
            if self._send(order, session, tif, result).accepted:
                accepted.append(order)
        if result.late:
            why = (
                f"{len(result.late)} order(s) not sent: the decision cutoff passed "
                f"({', '.join(sorted(set(result.late)))})"
            )
            self._risk.record_event("decision_cutoff", why)
            self._notifier.notify("Decision cut off", why, "error")
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

    def _exit(
        self,
        order: ProposedOrder,
        working: list[Order],
        session: date,
        tif: TimeInForce,
        result: CycleResult,
        cutoff: Cutoff | None,
    ) -> bool:
        """Free the holding's shares, then send its exit; True when the broker took it.

        The protective OCO holds the shares: it is cancelled first and the exit goes only once
        the broker confirmed the cancel (Alpaca cancels asynchronously), never when there is no
        time left to confirm and send before the cutoff. An exit the broker refuses is sent
        once more after every cancel of its symbol is confirmed, then alerted. A holding whose
        protective order was cancelled but whose exit did not go out is listed in
        `result.unprotected`: the caller puts its protection back.
        """
        guards = exits_to_unblock([order.symbol], working)
        budget = self._settings.cancel_confirm_timeout_seconds
        if guards and cutoff is not None and cutoff.seconds_left() <= budget:
            why = (
                f"{cutoff.seconds_left():.0f}s to the decision cutoff, too little to confirm the "
                "protective order's cancel and send the exit: the protective order stays"
            )
            _deny(result, order, RiskDecision.deny(why, "decision_cutoff"))
            result.late.append(order.symbol)
            return False
        if not self._unblock(guards, order, result):
            return False
        sent = self._send_before(cutoff, order, session, tif, result)
        if sent is not None and sent.refused:
            # Retried once, after every cancel of the symbol is confirmed (a cancel an earlier
            # cycle sent may still be pending), under its own client_order_id.
            fresh = exits_to_unblock([order.symbol], self._broker.get_open_orders())
            if not self._unblock(fresh, order, result):
                return False
            sent = self._send_before(cutoff, order, session, tif, result, retry=True)
        if sent is not None and sent.accepted:
            return True
        if sent is not None and not sent.refused:  # unknown outcome: reconciled, never re-sent
            return False
        if guards:
            result.unprotected.append(order.symbol)
        if sent is not None:
            why = f"the exit of {order.symbol} was refused twice: {sent.error}"
            self._risk.record_event("exit_refused", why, order.symbol)
            self._notifier.notify(f"Exit {order.symbol} refused", why, "error")
            result.events.append("exit_refused")
        return False

    def _send_before(
        self,
        cutoff: Cutoff | None,
        order: ProposedOrder,
        session: date,
        tif: TimeInForce,
        result: CycleResult,
        *,
        retry: bool = False,
    ) -> Placement | None:
        """Send unless the cutoff passed (None: denied, listed in `result.late`)."""
        if cutoff is not None and cutoff.passed():
            why = f"the decision cutoff {cutoff.at:%H:%M} UTC passed before it was sent"
            _deny(result, order, RiskDecision.deny(why, "decision_cutoff"))
            result.late.append(order.symbol)
            return None
        return self._send(order, session, tif, result, retry=retry)

    def _unblock(self, guards: list[Order], order: ProposedOrder, result: CycleResult) -> bool:
        """Cancel the protective orders holding `order`'s shares and wait for the broker to
        confirm; False (recorded, alerted, the exit denied) when a cancel fails or stays
        pending."""
        for guard in guards:
            try:
                self._broker.cancel_order(guard.client_order_id)
            except AppError as exc:
                why = f"cancel of {guard.client_order_id} not confirmed: {exc.message}"
                log.warning("exit %s held back: %s", order.symbol, why)
                self._risk.record_event("cancel_not_confirmed", why, order.symbol)
                self._notifier.notify(f"Exit {order.symbol} not sent", why, "error")
                _deny(result, order, RiskDecision.deny(why, "cancel_pending"))
                result.events.append("cancel_not_confirmed")
                return False
            finally:
                with contextlib.suppress(AppError):
                    self._orders.sync(guard.client_order_id)
        return True

    def _send(
        self,
        order: ProposedOrder,
        session: date,
        tif: TimeInForce,
        result: CycleResult,
        *,
        retry: bool = False,
    ) -> Placement:
        whole, fraction = split_for_the_open(order, tif)
        if fraction is not None:
            placed = self._send(fraction, session, TimeInForce.DAY, result, retry=retry)
            if whole is None:
                return placed
            order = whole
        purpose = purpose_of(order.reason)
        request = OrderRequest(
            symbol=order.symbol,
            side=order.side,
            client_order_id=client_order_id(
                session, purpose + ("_retry" if retry else ""), order.symbol, order.side
            ),
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
        return placed

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
