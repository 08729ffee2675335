"""Pre-trade risk rules, the trading state machine, and its durable record.

Each rule is a small pure function returning RiskDecision(allowed, reason); the RiskManager runs
them in order and the first denial wins. Exits (orders that only reduce a position) are always
allowed: a halted bot must still be able to get out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum

from sqlalchemy import select

from app.config import Settings
from app.domain import Account, Position, RiskDecision, Side, TradingState
from app.store.database import Database
from app.store.orm import RiskEvent, RiskStateRecord

log = logging.getLogger(__name__)

#: Money compared with this slack, so rounding never turns an allowed order into a breach.
EPS = 1e-6


@dataclass(frozen=True)
class RiskLimits:
    max_positions: int = 7
    max_exposure: float = 0.80
    max_position_size: float = 0.10
    stop_loss_pct: float = -0.05
    take_profit_pct: float = 0.10
    max_daily_loss: float = -0.02
    halt_hours: float = 24.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RiskLimits:
        return cls(
            max_positions=settings.risk_max_positions,
            max_exposure=settings.risk_max_portfolio_exposure,
            max_position_size=settings.risk_max_position_size,
            stop_loss_pct=settings.risk_stop_loss_pct,
            take_profit_pct=settings.risk_take_profit_pct,
            max_daily_loss=settings.risk_max_daily_loss,
        )


@dataclass(frozen=True)
class RiskState:
    state: TradingState = TradingState.ACTIVE
    halted_until: datetime | None = None
    halt_reason: str | None = None
    session_date: date | None = None
    start_of_day_equity: float | None = None

    def halted(self, now: datetime) -> bool:
        if self.state is not TradingState.HALTED:
            return False
        return self.halted_until is None or now < self.halted_until

    def allows_entries(self, now: datetime) -> bool:
        return self.state is TradingState.ACTIVE or (
            self.state is TradingState.HALTED and not self.halted(now)
        )


class OrderKind(StrEnum):
    ENTRY = "entry"
    EXIT = "exit"


@dataclass(frozen=True)
class ProposedOrder:
    symbol: str
    side: Side
    qty: float
    price: float
    reason: str

    @property
    def value(self) -> float:
        return self.qty * self.price


@dataclass
class PortfolioView:
    """Positions by market value after the orders approved so far in this decision."""

    equity: float
    buying_power: float
    values: dict[str, float]
    qtys: dict[str, float]

    @classmethod
    def of(cls, account: Account, positions: Iterable[Position]) -> PortfolioView:
        held = list(positions)
        return cls(
            equity=account.equity,
            buying_power=account.buying_power,
            values={p.symbol: p.market_value for p in held},
            qtys={p.symbol: p.qty for p in held},
        )

    @property
    def exposure(self) -> float:
        return sum(abs(v) for v in self.values.values())

    def kind(self, order: ProposedOrder) -> OrderKind:
        held = self.qtys.get(order.symbol, 0.0)
        if order.side is Side.SELL and order.qty <= held + EPS:
            return OrderKind.EXIT
        return OrderKind.ENTRY

    def apply(self, order: ProposedOrder) -> None:
        sign = 1.0 if order.side is Side.BUY else -1.0
        qty = self.qtys.get(order.symbol, 0.0) + sign * order.qty
        value = self.values.get(order.symbol, 0.0) + sign * order.value
        if abs(qty) <= EPS:
            self.qtys.pop(order.symbol, None)
            self.values.pop(order.symbol, None)
        else:
            self.qtys[order.symbol] = qty
            self.values[order.symbol] = value
        if order.side is Side.BUY:
            self.buying_power -= order.value


Rule = Callable[[ProposedOrder, PortfolioView, RiskState, RiskLimits, datetime], RiskDecision]


def rule_trading_state(
    order: ProposedOrder, view: PortfolioView, state: RiskState, limits: RiskLimits, now: datetime
) -> RiskDecision:
    if state.allows_entries(now):
        return RiskDecision.allow(rule="trading_state")
    until = f" until {state.halted_until:%Y-%m-%d %H:%M} UTC" if state.halted_until else ""
    return RiskDecision.deny(
        f"trading is {state.state}{until}: {state.halt_reason or 'no entries'}", "trading_state"
    )


def rule_max_positions(
    order: ProposedOrder, view: PortfolioView, state: RiskState, limits: RiskLimits, now: datetime
) -> RiskDecision:
    if order.symbol in view.qtys or len(view.qtys) < limits.max_positions:
        return RiskDecision.allow(rule="max_positions")
    return RiskDecision.deny(
        f"{len(view.qtys)} positions open, the limit is {limits.max_positions}", "max_positions"
    )


def rule_position_size(
    order: ProposedOrder, view: PortfolioView, state: RiskState, limits: RiskLimits, now: datetime
) -> RiskDecision:
    after = view.values.get(order.symbol, 0.0) + order.value
    cap = limits.max_position_size * view.equity
    if after <= cap + EPS:
        return RiskDecision.allow(rule="max_position_size")
    return RiskDecision.deny(
        f"{order.symbol} would be {after / view.equity:.2%} of equity, the limit is "
        f"{limits.max_position_size:.0%}",
        "max_position_size",
    )


def rule_exposure(
    order: ProposedOrder, view: PortfolioView, state: RiskState, limits: RiskLimits, now: datetime
) -> RiskDecision:
    after = view.exposure + order.value
    cap = limits.max_exposure * view.equity
    if after <= cap + EPS:
        return RiskDecision.allow(rule="max_exposure")
    return RiskDecision.deny(
        f"gross exposure would be {after / view.equity:.2%}, the limit is "
        f"{limits.max_exposure:.0%}",
        "max_exposure",
    )


def rule_buying_power(
    order: ProposedOrder, view: PortfolioView, state: RiskState, limits: RiskLimits, now: datetime
) -> RiskDecision:
    if order.value <= view.buying_power + EPS:
        return RiskDecision.allow(rule="buying_power")
    return RiskDecision.deny(
        f"needs {order.value:.2f}, buying power is {view.buying_power:.2f}", "buying_power"
    )


ENTRY_RULES: tuple[Rule, ...] = (
    rule_trading_state,
    rule_max_positions,
    rule_position_size,
    rule_exposure,
    rule_buying_power,
)


class RiskManager:
    def __init__(self, limits: RiskLimits) -> None:
        self.limits = limits

    def check(
        self, order: ProposedOrder, view: PortfolioView, state: RiskState, now: datetime
    ) -> RiskDecision:
        if order.qty <= 0 or order.price <= 0:
            return RiskDecision.deny("order quantity and price must be positive", "sanity")
        if view.kind(order) is OrderKind.EXIT:
            return RiskDecision.allow("exits are always allowed", "exit")
        if order.side is Side.SELL:
            return RiskDecision.deny("short selling is not allowed", "no_shorting")
        if view.equity <= 0:
            return RiskDecision.deny("equity is not positive", "sanity")
        for rule in ENTRY_RULES:
            decision = rule(order, view, state, self.limits, now)
            if not decision.allowed:
                return decision
        return RiskDecision.allow("within every limit", "all")

    def update_state(
        self, state: RiskState, account: Account, session: date, now: datetime
    ) -> tuple[RiskState, list[str]]:
        """Roll the start-of-day equity at a new session, expire a finished halt, and halt
        for `halt_hours` when the day's loss reaches the limit. Returns the new state and the
        events that happened."""
        events: list[str] = []
        if state.session_date != session:
            base = account.last_equity if account.last_equity > 0 else account.equity
            state = replace(state, session_date=session, start_of_day_equity=base)
        if state.state is TradingState.HALTED and state.halted_until and now >= state.halted_until:
            state = replace(state, state=TradingState.ACTIVE, halted_until=None, halt_reason=None)
            events.append("halt_expired")
        start = state.start_of_day_equity or account.equity
        daily = account.equity / start - 1.0 if start > 0 else 0.0
        if daily <= self.limits.max_daily_loss and not state.halted(now):
            reason = f"daily loss {daily:.2%} reached the limit {self.limits.max_daily_loss:.0%}"
            state = replace(
                state,
                state=TradingState.HALTED,
                halted_until=now + timedelta(hours=self.limits.halt_hours),
                halt_reason=reason,
            )
            events.append("daily_loss_halt")
        return state, events


def daily_pnl(state: RiskState, account: Account) -> float:
    start = state.start_of_day_equity or account.last_equity or account.equity
    return account.equity - start


class RiskStateStore:
    """The one durable risk state row, updated in a transaction; survives every restart."""

    ROW_ID = 1

    def __init__(self, db: Database) -> None:
        self._db = db

    def load(self) -> RiskState:
        with self._db.session() as session:
            row = session.get(RiskStateRecord, self.ROW_ID)
            return _from_row(row) if row else RiskState()

    def save(self, state: RiskState) -> None:
        with self._db.session() as session:
            row = session.get(RiskStateRecord, self.ROW_ID, with_for_update=True)
            if row is None:
                row = RiskStateRecord(id=self.ROW_ID, state=state.state.value)
                session.add(row)
            row.state = state.state.value
            row.halted_until = state.halted_until
            row.halt_reason = state.halt_reason
            row.session_date = state.session_date
            row.start_of_day_equity = state.start_of_day_equity

    def record_event(self, kind: str, detail: str, symbol: str | None = None) -> None:
        log.warning("risk event %s: %s", kind, detail)
        with self._db.session() as session:
            session.add(RiskEvent(kind=kind, detail=detail[:2000], symbol=symbol))

    def halt(self, reason: str, now: datetime, hours: float | None = None) -> RiskState:
        """The kill switch: HALTED now, until a resume (or `hours` when given)."""
        state = replace(
            self.load(),
            state=TradingState.HALTED,
            halted_until=now + timedelta(hours=hours) if hours else None,
            halt_reason=reason,
        )
        self.save(state)
        self.record_event("halt", reason)
        return state

    def resume(self, reason: str = "resumed by an operator") -> RiskState:
        state = replace(self.load(), state=TradingState.ACTIVE, halted_until=None, halt_reason=None)
        self.save(state)
        self.record_event("resume", reason)
        return state

    def recent_events(self, limit: int = 20) -> list[dict[str, str | None]]:
        with self._db.session() as session:
            rows = session.scalars(
                select(RiskEvent).order_by(RiskEvent.id.desc()).limit(limit)
            ).all()
            return [
                {
                    "kind": r.kind,
                    "detail": r.detail,
                    "symbol": r.symbol,
                    "at": r.created_at.isoformat(),
                }
                for r in rows
            ]


def _from_row(row: RiskStateRecord) -> RiskState:
    until = row.halted_until
    if until is not None and until.tzinfo is None:  # SQLite drops the zone; we store UTC
        until = until.replace(tzinfo=UTC)
    return RiskState(
        state=TradingState(row.state),
        halted_until=until,
        halt_reason=row.halt_reason,
        session_date=row.session_date,
        start_of_day_equity=row.start_of_day_equity,
    )
