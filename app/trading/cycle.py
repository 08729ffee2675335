"""The trading cycle: reconcile → data → predict → decide → risk gate → act → record → tell.

The decision itself is `strategy.decide`, a pure function the backtester reuses unchanged; this
module wires it to the broker, the database and the alerts, and makes it safe to run twice: a
lock keeps cycles apart, and deterministic client_order_ids plus the open-order check make an
overlap, a redelivered task or a restart after a crash send no second order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from app import metrics
from app.ai.signals import NO_MODEL
from app.broker.instrumented import InstrumentedBroker
from app.broker.sim_exchange import SimExchange
from app.broker.venue import Venue
from app.config import Settings, TradingMode
from app.domain import (
    BarFrame,
    Order,
    OrderRequest,
    OrderStatus,
    RiskDecision,
    Side,
    Signal,
    SignalAction,
)
from app.logging_setup import cycle_context
from app.market.universe import feature_universe
from app.store.database import Database
from app.store.orm import EquitySnapshot, FillRecord, OrderRecord, RiskEvent, SignalRecord
from app.trading.cycle_lock import CycleLock
from app.trading.missing_signals import report_missing_signals
from app.trading.notifier import Notifier
from app.trading.orders import OPEN_STATUSES, OrderService
from app.trading.risk import ProposedOrder, RiskLimits, RiskStateStore, daily_pnl
from app.trading.strategy import DecisionInputs, MarketSnapshot, StrategyConfig, decide

log = logging.getLogger(__name__)

STRATEGY = "alpha"
NEW_YORK = ZoneInfo("America/New_York")
LOOKBACK_CALENDAR_DAYS = 200  # covers the 120-session feature window with room for holidays


class SignalSource(Protocol):
    """Turns bars into signals; returns the signals and, when it cannot, why not."""

    def signals(
        self, bars: Mapping[str, BarFrame], session: date
    ) -> tuple[dict[str, Signal], str | None]: ...


def client_order_id(session: date, cycle_key: str, symbol: str, side: Side) -> str:
    """The same order of the same cycle always gets the same id, so it is never sent twice."""
    return f"{STRATEGY}-{session:%Y%m%d}-{cycle_key}-{symbol}-{side.value}"


def _unique(orders: list[Order]) -> list[Order]:
    """Open orders seen by the broker and in the database, each once (by client_order_id)."""
    return list({o.client_order_id: o for o in reversed(orders)}.values())


def cycle_key_for(now: datetime, interval_minutes: int) -> str:
    """The schedule slot (UTC, like the beat schedule) that `now` falls in."""
    now = now.astimezone(UTC)
    minute = now.minute - now.minute % interval_minutes
    return f"{now.hour:02d}{minute:02d}"


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
    problem: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class TradingService:
    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        venue: Venue,
        signal_source: SignalSource,
        notifier: Notifier,
        lock: CycleLock,
    ) -> None:
        self._settings = settings
        self._db = db
        self._venue = venue
        self._signals = signal_source
        self._notifier = notifier
        self._lock = lock
        # Every broker call the cycle makes is counted and timed, whatever the venue.
        self._broker = InstrumentedBroker(venue.broker, venue.name)
        self._orders = OrderService(db, self._broker)
        self._risk = RiskStateStore(db)
        self._limits = RiskLimits.from_settings(settings)
        self._config = StrategyConfig.from_settings(settings)

    def run_cycle(
        self, *, now: datetime | None = None, cycle_key: str | None = None
    ) -> CycleResult:
        started = time.perf_counter()
        with cycle_context():  # every log line of this cycle carries its id
            try:
                with self._lock.hold() as owned:
                    if not owned:
                        log.info("another trading cycle is running: skipped")
                        metrics.record_cycle("skipped_locked", time.perf_counter() - started)
                        return CycleResult(status="skipped_locked")
                    result = self._run(now, cycle_key)
            except Exception:
                metrics.record_cycle("error", time.perf_counter() - started)
                raise
        result.seconds = round(time.perf_counter() - started, 3)
        metrics.record_cycle(result.status, result.seconds)
        return result

    def _run(self, now: datetime | None, cycle_key: str | None) -> CycleResult:
        broker = self._broker
        clock = broker.get_clock()
        if not clock.is_open:
            log.info("market closed (next open %s): cycle is a no-op", clock.next_open)
            return CycleResult(status="market_closed")
        now = now or clock.timestamp
        session = clock.timestamp.astimezone(NEW_YORK).date()  # the broker's clock decides
        sim = self._settings.trading_mode is TradingMode.SIM
        key = cycle_key or (
            "eod" if sim else cycle_key_for(now, self._settings.trading_cycle_minutes)
        )
        result = CycleResult(status="done", session=session.isoformat(), cycle_key=key)

        result.reconciled = self.reconcile()
        account = broker.get_account()
        positions = broker.get_positions()
        open_orders = broker.get_open_orders()
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
        prices = {s: float(f["close"].iloc[-1]) for s, f in bars.items() if len(f)}
        prices.update({p.symbol: p.current_price for p in positions if p.current_price > 0})

        loaded = self._risk.load()
        held = {p.symbol for p in positions}
        held_since = self._held_since(held)
        candidates = {s for s, sig in signals.items() if sig.action is SignalAction.BUY} - held
        inputs = DecisionInputs(
            account=account,
            positions=positions,
            open_orders=_unique([*open_orders, *self._open_orders_in_database()]),
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
            whole_shares=frozenset(s for s in candidates | held if not broker.is_fractionable(s)),
            no_entry=self._rejected_entries(session),
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
            self._deny(result, order, verdict)
        for order in decision.orders:
            # Re-read before each send: a halt written while this cycle ran stops its entries.
            if order.side is Side.BUY and not (now_state := self._risk.load()).allows_entries(now):
                why = f"trading is {now_state.state} since the decision: {now_state.halt_reason}"
                self._deny(result, order, RiskDecision.deny(why, "trading_state"))
                continue
            request = OrderRequest(
                symbol=order.symbol,
                side=order.side,
                client_order_id=client_order_id(session, key, order.symbol, order.side),
                qty=order.qty,
            )
            placed = self._orders.place(
                request, reason=order.reason, session_date=session, cycle_id=key
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
            self._tell_order(order.reason, placed.order, placed.error, request)
            kind = order.reason.split(":")[0]
            if kind in {"stop_loss", "take_profit"} and placed.order is not None:
                self._risk.record_event(kind, order.reason, order.symbol)
                metrics.record_risk_events([kind])
        self._record(signals, session, account, positions, state)
        exchange = self._venue.broker
        if sim and isinstance(exchange, SimExchange):
            if problem == NO_MODEL:  # the first model is training: the replay waits for it
                log.info("sim replay holds at %s until the first model is trained", session)
            else:
                exchange.advance(from_session=session)
        log.info(
            "cycle %s %s: %d signals, %d orders, %d denied",
            session,
            key,
            len(signals),
            len(result.orders),
            len(result.denied),
        )
        return result

    @staticmethod
    def _deny(result: CycleResult, order: ProposedOrder, verdict: RiskDecision) -> None:
        metrics.record_order_rejected("risk", verdict.rule or "unspecified")
        result.denied.append(
            {
                "symbol": order.symbol,
                "side": order.side.value,
                "reason": verdict.reason,
                "rule": verdict.rule,
            }
        )

    def _rejected_entries(self, session_day: date) -> frozenset[str]:
        """Symbols whose buy the broker rejected this session: not re-sent until the next."""
        with self._db.session() as session:
            rows = session.scalars(
                select(OrderRecord.symbol).where(
                    OrderRecord.session_date == session_day,
                    OrderRecord.side == Side.BUY.value,
                    OrderRecord.status == OrderStatus.REJECTED.value,
                )
            )
            return frozenset(rows)

    def reconcile(self) -> list[str]:
        """Bring the database in line with the broker (the truth); each change is counted."""
        changed = self._orders.reconcile_open_orders()
        for order in self._broker.get_open_orders():
            with self._db.session() as session:
                known = session.scalar(
                    select(OrderRecord.id).where(
                        OrderRecord.client_order_id == order.client_order_id
                    )
                )
            if known is None:
                self._orders.sync(order.client_order_id)
                changed.append(order.client_order_id)
                metrics.record_reconcile("unknown_order")
                self._risk.record_event(
                    "reconcile_unknown_order",
                    f"open order {order.client_order_id} for {order.symbol} placed outside the bot",
                    order.symbol,
                )
        self._report_unknown_positions()
        if changed:
            self._notifier.notify(
                "Reconciliation", f"{len(changed)} order(s) updated from the broker", "warning"
            )
        return changed

    def _report_unknown_positions(self) -> None:
        """A position the bot never traded was opened by hand: report it once."""
        held = {p.symbol for p in self._broker.get_positions()}
        if not held:
            return
        with self._db.session() as session:
            traded = set(
                session.scalars(select(OrderRecord.symbol).where(OrderRecord.symbol.in_(held)))
            )
            reported = set(
                session.scalars(
                    select(RiskEvent.symbol).where(
                        RiskEvent.kind == "reconcile_unknown_position", RiskEvent.symbol.in_(held)
                    )
                )
            )
        for symbol in sorted(held - traded - reported):
            metrics.record_reconcile("unknown_position")
            self._risk.record_event(
                "reconcile_unknown_position",
                f"position in {symbol} was not opened by the bot",
                symbol,
            )

    def _open_orders_in_database(self) -> list[Order]:
        with self._db.session() as session:
            rows = session.scalars(
                select(OrderRecord).where(OrderRecord.status.in_(OPEN_STATUSES))
            ).all()
        return [
            Order(r.client_order_id, r.symbol, Side(r.side), OrderStatus(r.status), qty=r.qty)
            for r in rows
        ]

    def _held_since(self, held: set[str]) -> dict[str, date]:
        """Session of the first buy since each holding was last flat (a partial sell, such as
        a trim, keeps the date; a sell of everything bought clears it)."""
        since: dict[str, date] = {}
        net: dict[str, float] = {}
        with self._db.session() as session:
            rows = session.execute(
                select(
                    OrderRecord.symbol,
                    OrderRecord.side,
                    OrderRecord.session_date,
                    OrderRecord.filled_qty,
                )
                .where(OrderRecord.symbol.in_(held), OrderRecord.filled_qty > 0)
                .order_by(OrderRecord.created_at)
            ).all()
        for symbol, side, day, qty in rows:
            if day is None:
                continue
            if side == Side.SELL.value:
                net[symbol] = net.get(symbol, 0.0) - qty
                if net[symbol] <= 1e-9:
                    since.pop(symbol, None)
                    net.pop(symbol)
            else:
                net[symbol] = net.get(symbol, 0.0) + qty
                since.setdefault(symbol, day)
        return since

    def _record(
        self,
        signals: Mapping[str, Signal],
        session_day: date,
        account: Any,
        positions: list[Any],
        state: Any,
    ) -> None:
        with self._db.session() as session:
            session.add_all(
                SignalRecord(
                    symbol=s.symbol,
                    action=s.action.value,
                    predicted_return=s.predicted_return,
                    confidence=s.confidence,
                    dispersion=s.dispersion,
                    model_version=s.model_version,
                    as_of=session_day,
                )
                for s in signals.values()
                if s.action is not SignalAction.HOLD or len(signals) <= 64
            )
            account = self._broker.get_account()
            held = self._broker.get_positions()
            session.add(
                EquitySnapshot(
                    taken_at=datetime.now(UTC),
                    equity=account.equity,
                    cash=account.cash,
                    exposure=sum(abs(p.market_value) for p in held) / account.equity
                    if account.equity > 0
                    else 0.0,
                    positions=len(held),
                    daily_pnl=daily_pnl(state, account),
                )
            )
            rows = session.execute(
                select(
                    FillRecord.symbol, FillRecord.side, FillRecord.qty, FillRecord.price
                ).order_by(FillRecord.id)
            ).all()
            fills = [(symbol, side, qty, price) for symbol, side, qty, price in rows]
            realized = metrics.realized_pnl(fills) - (
                session.scalar(select(func.coalesce(func.sum(FillRecord.commission), 0.0))) or 0.0
            )
        metrics.record_portfolio(
            self._venue.name,
            account,
            held,
            state=state.state,
            daily_pnl=daily_pnl(state, account),
            realized_pnl=realized,
        )

    def _tell_order(
        self, reason: str, order: Order | None, error: str | None, request: OrderRequest
    ) -> None:
        kind = reason.split(":")[0]
        if order is None:
            self._notifier.notify(
                f"Order {request.side.value} {request.symbol} not confirmed",
                error or "unknown outcome: reconciliation will settle it",
                "error",
            )
            return
        if order.status is OrderStatus.FILLED or order.filled_qty > 0:
            level = "warning" if kind == "stop_loss" else "success"
            price = f" at {order.filled_avg_price:.2f}" if order.filled_avg_price else ""
            self._notifier.notify(
                f"{kind.replace('_', ' ').title()}: {request.side.value} {request.symbol}",
                f"{order.filled_qty:g} shares{price}. {reason}",
                level,
            )
