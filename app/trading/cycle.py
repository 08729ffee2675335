"""The trading cycles: one decision cycle per session and guard cycles while the market is open.

**Decision cycle** (`run_decision`, task `smart_trading_pipeline`): once per session, before the
next open, on the last *closed* session's bars: reconcile → data → predict → decide → risk gate →
market-on-open orders (filled in the opening auction, at the open the backtest fills at) →
record → tell. Once the decision for a session is recorded, later triggers are no-ops; a
trigger that finds the market already open trades nothing (the next-open fill can no longer be
met) and reports a missed decision. The decision itself is `strategy.decide` (decision.py), a
pure function the backtester reuses unchanged.

**Guard cycles** (`run_guard`, task `guard_cycle`): every few minutes while the market is open:
reconcile, the daily-loss halt, and the protective exits at the broker (protection.py). They
never compute features or signals.

In sim mode one beat tick is one replayed session: the decision on the replay session's closed
bars, then the next session's open (the queued orders fill there), a guard, and its close (the
protective exits fill from its high and low): SimBroker's code, as in the backtest.

A lock keeps cycles apart; deterministic client_order_ids plus the open-order check make an
overlap, a redelivered task or a restart after a crash send no second order.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime

from sqlalchemy import select

from app import metrics
from app.ai.signals import NO_MODEL
from app.broker.instrumented import InstrumentedBroker
from app.broker.sim_exchange import SimExchange
from app.broker.venue import Venue
from app.config import Settings, TradingMode
from app.domain import MarketClock
from app.errors import AppError
from app.logging_setup import cycle_context
from app.market.sessions import NEW_YORK, session_today
from app.store.database import Database
from app.store.heartbeats import TRADING_CYCLE, HeartbeatStore
from app.store.orm import OrderRecord, RiskEvent
from app.trading.cycle_lock import CycleLock
from app.trading.day_signals import LOOKBACK_CALENDAR_DAYS
from app.trading.decision import (
    Cutoff,
    CycleResult,
    DecisionCycle,
    SignalSource,
)
from app.trading.ledger import Ledger
from app.trading.notifier import Notifier
from app.trading.orders import OrderService
from app.trading.protection import PURPOSE, plan_protection
from app.trading.risk import RiskLimits, RiskManager, RiskStateStore
from app.trading.strategy import StrategyConfig

log = logging.getLogger(__name__)

#: Alpaca queues market-on-open orders from 19:00 New York for the next opening auction and
#: refuses them from 09:28 until 19:00.
OPG_FROM = dtime(19, 0)
OPG_CUTOFF = timedelta(minutes=2)


def _advancing(start: datetime) -> Callable[[], datetime]:
    """A clock that reads `start` (the broker's time) plus the time elapsed since."""
    began = time.monotonic()
    return lambda: start + timedelta(seconds=time.monotonic() - began)


def cycle_key_for(now: datetime, interval_minutes: int) -> str:
    """The guard schedule slot (UTC, like the beat schedule) that `now` falls in."""
    now = now.astimezone(UTC)
    minute = now.minute - now.minute % interval_minutes
    return f"{now.hour:02d}{minute:02d}"


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
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """`clock`: what time it is while a live decision sends (default: the broker's clock
        at the decision's start, advanced by the elapsed time)."""
        self._settings = settings
        self._db = db
        self._clock = clock
        self._venue = venue
        self._notifier = notifier
        self._lock = lock
        # Every broker call the cycle makes is counted and timed, whatever the venue.
        self._broker = InstrumentedBroker(venue.broker, venue.name)
        self._orders = OrderService(db, self._broker)
        self._risk = RiskStateStore(db)
        self._ledger = Ledger(db)
        self._heartbeats = HeartbeatStore(db)
        self._limits = RiskLimits.from_settings(settings)
        self._sim = settings.trading_mode is TradingMode.SIM
        self._decision = DecisionCycle(
            settings=settings,
            db=db,
            venue=venue,
            broker=self._broker,
            orders=self._orders,
            risk=self._risk,
            ledger=self._ledger,
            notifier=notifier,
            signals=signal_source,
            limits=self._limits,
            config=StrategyConfig.from_settings(settings),
        )

    # -- entry points --------------------------------------------------------------------------
    def run_decision(self, *, now: datetime | None = None) -> CycleResult:
        """The once-per-session decision (sim: one whole replayed session)."""
        return self._locked(lambda: self._sim_tick() if self._sim else self._decide_live(now))

    def run_guard(self, *, now: datetime | None = None) -> CycleResult:
        """Reconcile, daily-loss halt, protective exits; a no-op while the market is closed."""
        return self._locked(lambda: self._guard_live(now))

    def _locked(self, body: Callable[[], CycleResult]) -> CycleResult:
        started = time.perf_counter()
        with cycle_context():  # every log line of this cycle carries its id
            try:
                with self._lock.hold() as owned:
                    if not owned:
                        log.info("another trading cycle is running: skipped")
                        metrics.record_cycle("skipped_locked", time.perf_counter() - started)
                        return CycleResult(status="skipped_locked")
                    result = body()
            except Exception:
                metrics.record_cycle("error", time.perf_counter() - started)
                raise
        result.seconds = round(time.perf_counter() - started, 3)
        metrics.record_cycle(result.status, result.seconds)
        # What /health and the cycle watch read: a cycle ran (a skipped or failed one did not).
        self._heartbeats.touch(TRADING_CYCLE, datetime.now(UTC), result.status[:64])
        return result

    # -- paper / live --------------------------------------------------------------------------
    def _decide_live(self, now: datetime | None) -> CycleResult:
        clock = self._broker.get_clock()
        now = now or clock.timestamp
        session = self._last_closed_session(clock)
        key = "decision"
        if session is not None and self._ledger.decided(session):
            log.info("the decision for %s is recorded: nothing to do", session)
            return CycleResult(status="already_decided", session=session.isoformat())
        if clock.is_open or now >= clock.next_open - OPG_CUTOFF:
            return self._missed(session, clock)
        if session is None:
            return CycleResult(status="market_closed")
        opg_from = datetime.combine(session, OPG_FROM, NEW_YORK)
        if now < opg_from:
            log.info("decision for %s waits for the OPG window (from %s)", session, opg_from)
            return CycleResult(status="before_opg_window", session=session.isoformat())
        result = CycleResult(status="done", session=session.isoformat(), cycle_key=key)
        result.reconciled = self.reconcile()
        cutoff = Cutoff(clock.next_open - OPG_CUTOFF, self._clock or _advancing(now))
        self._decision.run(session, now, result, cutoff)
        if result.unprotected and self._settings.protective_orders:
            # An exit that did not go out after its protective order was cancelled: put the
            # protection back now rather than at the first guard after the open.
            result.protective = self.protect(session, key)
        if result.problem is None or result.signals:
            self._ledger.mark_decided(session, len(result.orders))
        return result

    def _missed(self, session: date | None, clock: MarketClock) -> CycleResult:
        day = session.isoformat() if session else "?"
        why = f"the market opened before the decision for {day} was taken: nothing traded"
        log.warning("decision missed: %s", why)
        metrics.DECISIONS_MISSED.inc()
        self._risk.record_event("decision_missed", why)
        self._notifier.notify("Decision missed", why, "error")
        return CycleResult(status="decision_missed", session=day, problem=why)

    def _last_closed_session(self, clock: MarketClock) -> date | None:
        today = session_today(clock)
        sessions = self._broker.get_calendar(today - timedelta(days=14), today)
        closed = [s.day for s in sessions if s.close <= clock.timestamp]
        return closed[-1] if closed else None

    def _guard_live(self, now: datetime | None) -> CycleResult:
        clock = self._broker.get_clock()
        if not clock.is_open:
            log.info("market closed (next open %s): guard is a no-op", clock.next_open)
            return CycleResult(status="market_closed")
        now = now or clock.timestamp
        session = session_today(clock)  # the broker's clock decides
        key = cycle_key_for(now, self._settings.trading_cycle_minutes)
        return self._guard(session, now, key, check_risk=True)

    # -- sim -----------------------------------------------------------------------------------
    def _sim_tick(self) -> CycleResult:
        exchange = self._venue.broker
        assert isinstance(exchange, SimExchange)
        if exchange.is_mid_session():  # a tick died between the open and the close: finish
            opened = exchange.session()
            self._guard(opened, exchange.now(), "guard", check_risk=False)
            exchange.close_session(opened)
        session = exchange.session()
        result = CycleResult(status="done", session=session.isoformat(), cycle_key="decision")
        if not self._ledger.decided(session):
            result.reconciled = self.reconcile()
            self._decision.run(session, exchange.now(), result)
            if result.problem == NO_MODEL:  # the first model is training: the replay waits
                log.info("sim replay holds at %s until the first model is trained", session)
                return result
            self._ledger.mark_decided(session, len(result.orders))
        opened = exchange.open_next(from_session=session)
        guard = self._guard(opened, exchange.now(), "guard", check_risk=False)
        result.protective = guard.protective
        exchange.close_session(opened)
        return result

    # -- guard ---------------------------------------------------------------------------------
    def _guard(self, session: date, now: datetime, key: str, *, check_risk: bool) -> CycleResult:
        result = CycleResult(status="done", session=session.isoformat(), cycle_key=key)
        result.reconciled = self.reconcile()
        if check_risk:
            loaded = self._risk.load()
            account = self._broker.get_account()
            state, events = RiskManager(self._limits).update_state(loaded, account, session, now)
            state = self._risk.save(state, loaded=loaded)
            for event in events:
                self._risk.record_event(event, state.halt_reason or event)
                self._notifier.notify(f"Risk: {event}", state.halt_reason or event, "error")
            result.events = events
            metrics.record_risk_events(events)
        if self._settings.protective_orders:
            result.protective = self.protect(session, key)
        log.info(
            "guard %s %s: %d reconciled, %d protective changes",
            session,
            key,
            len(result.reconciled),
            len(result.protective),
        )
        return result

    def protect(self, session: date, key: str) -> list[str]:
        """Keep one protective OCO on every holding the bot manages (protection.py)."""
        positions = self._broker.get_positions()
        open_orders = self._broker.get_open_orders()
        held = {p.symbol for p in positions}
        leave_alone = (
            frozenset()
            if self._settings.manage_external_positions
            else frozenset(held - self._ledger.held_since(held).keys())
        )
        plan = plan_protection(
            positions,
            open_orders,
            self._limits,
            session,
            known_ids=self._ledger.protective_ids(held | {o.symbol for o in open_orders}),
            leave_alone=leave_alone,
        )
        changed = []
        stuck: set[str] = set()
        for stale in plan.cancel:
            try:
                self._broker.cancel_order(stale.client_order_id)
            except AppError as exc:
                # One holding's failure never leaves the others unprotected: record, alert,
                # go on. Its replacement waits (the old order still holds the shares).
                stuck.add(stale.symbol)
                why = f"cancel of {stale.client_order_id} failed: {exc.message}"
                log.warning("protective order of %s: %s", stale.symbol, why)
                self._risk.record_event("protective_cancel_failed", why, stale.symbol)
                self._notifier.notify(f"Protective order for {stale.symbol} stuck", why, "error")
                changed.append(f"cancel failed {stale.client_order_id}")
                continue
            finally:
                with contextlib.suppress(AppError):
                    self._orders.sync(stale.client_order_id)
            changed.append(f"cancel {stale.client_order_id}")
        for request in plan.place:
            if request.symbol in stuck:
                continue
            try:
                placed = self._orders.place_protective(request, session_date=session, cycle_id=key)
                error = placed.error
            except AppError as exc:
                error = exc.message
            if error:
                self._notifier.notify(
                    f"Protective order for {request.symbol} not placed", error, "error"
                )
            changed.append(f"place {request.client_order_id}")
        return changed

    # -- reconciliation ------------------------------------------------------------------------
    def reconcile(self) -> list[str]:
        """Bring the database in line with the broker (the truth); each change is counted.
        A protective exit found filled is reported as the stop-loss or take-profit it was."""
        changed = self._orders.reconcile_open_orders()
        unknown = 0
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
                unknown += 1
                metrics.record_reconcile("unknown_order")
                self._risk.record_event(
                    "reconcile_unknown_order",
                    f"open order {order.client_order_id} for {order.symbol} placed outside the bot",
                    order.symbol,
                )
        for cid in changed:
            filled = self._broker.get_order_by_client_id(cid) if f"-{PURPOSE}" in cid else None
            if filled is not None and (kind := filled.exit_kind) is not None:
                price = filled.filled_avg_price or 0.0
                detail = f"{kind}: protective exit of {filled.filled_qty:g} at {price:.2f}"
                self._risk.record_event(kind, detail, filled.symbol)
                metrics.record_risk_events([kind])
                level = "warning" if kind == "stop_loss" else "success"
                title = f"{kind.replace('_', ' ').title()}: sell {filled.symbol}"
                self._notifier.notify(title, detail, level)
        self._report_unknown_positions()
        if unknown:
            self._notifier.notify(
                "Reconciliation", f"{unknown} order(s) placed outside the bot", "warning"
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


__all__ = ["LOOKBACK_CALENDAR_DAYS", "CycleResult", "SignalSource", "TradingService"]
