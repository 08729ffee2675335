"""Pre-trade risk rules, the trading state machine, and its durable record.

Each rule is a small pure function returning RiskDecision(allowed, reason); the RiskManager runs
them in order and the first denial wins. Exits (orders that only reduce a position) are always
allowed: a halted bot must still be able to get out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum

from sqlalchemy import select

from app.config import Settings
from app.domain import Account, Order, Position, RiskDecision, Side, TradingState
from app.store.database import Database, upsert
from app.store.orm import RiskEvent, RiskStateRecord
from app.store.text import storable

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
    #: Entries are valued at price x (1 + margin): the gap to the next open plus slippage.
    entry_gap_margin: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RiskLimits:
        return cls(
            max_positions=settings.risk_max_positions,
            max_exposure=settings.risk_max_portfolio_exposure,
            max_position_size=settings.risk_max_position_size,
            stop_loss_pct=settings.risk_stop_loss_pct,
            take_profit_pct=settings.risk_take_profit_pct,
            max_daily_loss=settings.risk_max_daily_loss,
            entry_gap_margin=settings.risk_entry_gap_margin,
        )


@dataclass(frozen=True)
class RiskState:
    state: TradingState = TradingState.ACTIVE
    halted_until: datetime | None = None
    halt_reason: str | None = None
    session_date: date | None = None
    start_of_day_equity: float | None = None

    def __post_init__(self) -> None:
        # Kept in UTC: SQLite stores no offset and reads the wall time back as UTC, so an
        # instant carrying -04:00 would end the halt 4 h early after a round trip.
        if self.halted_until is not None:
            if self.halted_until.tzinfo is None:
                raise ValueError("halted_until must be timezone-aware")
            object.__setattr__(self, "halted_until", self.halted_until.astimezone(UTC))

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
    """The portfolio as the caps see it: positions plus every open or approved buy, valued at
    the worst fill the gate plans for; sells are not credited to exposure or buying power until
    they fill (only to the position count, as a swap).

    `values` holds what exposure and size are measured on; `qtys` what is (or will be) held,
    which decides whether a sell is an exit and how many positions count. Symbols in
    `unmanaged` (positions the bot did not open) count in exposure, not in the position cap.
    """

    equity: float
    buying_power: float
    values: dict[str, float]
    qtys: dict[str, float]
    margin: float = 0.0
    unmanaged: frozenset[str] = frozenset()
    #: Shares already promised to open sells: not available to a new sell.
    promised: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        account: Account,
        positions: Iterable[Position],
        open_orders: Iterable[Order] = (),
        prices: Mapping[str, float] | None = None,
        *,
        margin: float = 0.0,
        unmanaged: Iterable[str] = (),
    ) -> PortfolioView:
        held = [p for p in positions if p.qty > 0]
        view = cls(
            equity=account.equity,
            buying_power=account.buying_power,
            values={p.symbol: p.market_value for p in held},
            qtys={p.symbol: p.qty for p in held},
            margin=margin,
            unmanaged=frozenset(unmanaged),
        )
        marks = {p.symbol: p.current_price for p in held}
        marks.update(prices or {})
        seen: set[str] = set()
        for order in open_orders:
            if not order.status.is_open or order.client_order_id in seen:
                continue
            seen.add(order.client_order_id)
            price = marks.get(order.symbol, 0.0)
            if order.qty is not None:
                remaining = order.qty - order.filled_qty
            elif order.notional is not None and price > 0:
                remaining = order.notional / price - order.filled_qty
            else:
                continue
            if remaining <= EPS:
                continue
            if order.side is Side.BUY:
                # Bought shares already show in positions; the rest may still fill.
                view.qtys[order.symbol] = view.qtys.get(order.symbol, 0.0) + remaining
                view.values[order.symbol] = view.values.get(order.symbol, 0.0) + (
                    remaining * price * (1.0 + margin)
                )
            else:  # promised to a sell: not sellable again, but held (and exposed) until it fills
                view.promised[order.symbol] = view.promised.get(order.symbol, 0.0) + remaining
        return view

    @property
    def exposure(self) -> float:
        return sum(abs(v) for v in self.values.values())

    @property
    def count(self) -> int:
        """Positions held or being bought that take a slot."""
        return sum(1 for s, q in self.qtys.items() if q > EPS and s not in self.unmanaged)

    def worst_value(self, order: ProposedOrder) -> float:
        """An entry's value if it fills `margin` above its decision price."""
        return order.value * (1.0 + self.margin)

    def kind(self, order: ProposedOrder) -> OrderKind:
        held = self.qtys.get(order.symbol, 0.0) - self.promised.get(order.symbol, 0.0)
        if order.side is Side.SELL and order.qty <= held + EPS:
            return OrderKind.EXIT
        return OrderKind.ENTRY

    def apply(self, order: ProposedOrder) -> None:
        if order.side is Side.BUY:
            self.qtys[order.symbol] = self.qtys.get(order.symbol, 0.0) + order.qty
            self.values[order.symbol] = self.values.get(order.symbol, 0.0) + self.worst_value(order)
            self.buying_power -= self.worst_value(order)
            return
        # A sell frees its slot for a swap, but neither exposure nor cash until it fills.
        qty = self.qtys.get(order.symbol, 0.0) - order.qty
        if qty <= EPS:
            self.qtys.pop(order.symbol, None)
        else:
            self.qtys[order.symbol] = qty

    def copy(self) -> PortfolioView:
        return replace(
            self, values=dict(self.values), qtys=dict(self.qtys), promised=dict(self.promised)
        )


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
    if view.qtys.get(order.symbol, 0.0) > EPS or view.count < limits.max_positions:
        return RiskDecision.allow(rule="max_positions")
    return RiskDecision.deny(
        f"{view.count} positions open or being bought, the limit is {limits.max_positions}",
        "max_positions",
    )


def rule_position_size(
    order: ProposedOrder, view: PortfolioView, state: RiskState, limits: RiskLimits, now: datetime
) -> RiskDecision:
    after = view.values.get(order.symbol, 0.0) + view.worst_value(order)
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
    after = view.exposure + view.worst_value(order)
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
    if view.worst_value(order) <= view.buying_power + EPS:
        return RiskDecision.allow(rule="buying_power")
    return RiskDecision.deny(
        f"needs {view.worst_value(order):.2f}, buying power is {view.buying_power:.2f}",
        "buying_power",
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

    def save(self, state: RiskState, *, loaded: RiskState | None = None) -> RiskState:
        """Write `state`. With `loaded` (what a cycle read when it started), a halt or resume
        written since then by someone else (the kill switch, an operator) wins over the
        cycle's view of the trading state: a halt is never overwritten by an older cycle.
        Returns what was written."""
        with self._db.session() as session:
            # The first save of an install: the default row, inserted unless a concurrent
            # cycle did it first (a read-then-insert raced on the primary key), then locked.
            session.execute(
                upsert(session.get_bind().dialect.name, RiskStateRecord, ["id"], []),
                [{"id": self.ROW_ID, "state": RiskState().state.value}],
            )
            row = session.get(
                RiskStateRecord, self.ROW_ID, with_for_update=True, populate_existing=True
            )
            assert row is not None  # inserted above
            if loaded is not None:
                current = _from_row(row)
                if _trading_state(current) != _trading_state(loaded):
                    state = replace(
                        state,
                        state=current.state,
                        halted_until=current.halted_until,
                        halt_reason=current.halt_reason,
                    )
            row.state = state.state.value
            row.halted_until = state.halted_until
            row.halt_reason = state.halt_reason
            row.session_date = state.session_date
            row.start_of_day_equity = state.start_of_day_equity
        return state

    def record_event(self, kind: str, detail: str, symbol: str | None = None) -> None:
        detail = storable(detail)
        log.warning("risk event %s: %s", kind, detail)
        with self._db.session() as session:
            session.add(RiskEvent(kind=kind, detail=detail[:2000], symbol=symbol))

    def halt(self, reason: str, now: datetime, hours: float | None = None) -> RiskState:
        """The kill switch: HALTED now, until a resume (or `hours` when given). Its text is
        made storable first: no reason can keep a halt from being recorded."""
        reason = storable(reason)
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


def _trading_state(state: RiskState) -> tuple[TradingState, datetime | None, str | None]:
    return state.state, state.halted_until, state.halt_reason


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
