"""What a backtest takes and produces: its config, order log, trades, daily records and result,
plus the cycle keys and the signal-function type the engine and its callers share.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

import pandas as pd

from app.domain import (
    BarFrame,
    OrderStatus,
    Signal,
)
from app.errors import ValidationError
from app.market.universe import BENCHMARK
from app.trading.risk import RiskLimits
from app.trading.strategy import StrategyConfig

if TYPE_CHECKING:
    pass


BENCHMARK_SYMBOL = BENCHMARK
#: Calendar days of history loaded before the first session beyond the training window:
#: the 120-bar feature warm-up plus holidays.
WARMUP_CALENDAR_DAYS = 400

#: signal_fn(bars up to the session, session) -> signals by symbol.
SignalFn = Callable[[Mapping[str, BarFrame], date], Mapping[str, Signal]]
#: progress(done, total), called once per session.
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class BacktestConfig:
    """What a backtest replays: universe, window, money, costs, and the live rules."""

    symbols: tuple[str, ...]
    start: date
    end: date
    initial_capital: float = 100_000.0
    commission_bps: float = 0.0
    slippage_bps: float = 5.0
    limits: RiskLimits = field(default_factory=RiskLimits)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    #: Protective exits at the broker (PROTECTIVE_ORDERS): an OCO per holding filled from each
    #: bar's open/high/low, whole shares, market-on-open orders (see engine.py); off, stops and
    #: targets are only checked by the decision on closes.
    intraday_exits: bool = True

    def __post_init__(self) -> None:
        if not self.symbols:
            raise ValidationError("at least one symbol is needed", field="symbols")
        if not (math.isfinite(self.initial_capital) and self.initial_capital > 0):
            raise ValidationError("must be a positive amount", field="initial_capital")
        for name in ("commission_bps", "slippage_bps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValidationError("must be >= 0", field=name)
        if self.start > self.end:
            raise ValidationError(f"start {self.start} is after end {self.end}", field="start")


@dataclass
class OrderLog:
    """One order of the backtest, from decision to fill (or rejection)."""

    client_order_id: str
    session: date  # decided after this session's close (protective exits: the bar's session)
    symbol: str
    side: str
    qty: float
    reason: str
    kind: str  # "decision" | "protective" | "delisting"
    status: str = OrderStatus.NEW.value
    fill_date: date | None = None
    fill_price: float | None = None
    commission: float = 0.0
    reject_reason: str | None = None

    @property
    def reason_kind(self) -> str:
        return self.reason.split(":", 1)[0]


@dataclass
class Trade:
    """A round trip: one entry fill and the exit fill that closed it (or the mark at the end)."""

    symbol: str
    qty: float
    entry_date: date
    entry_price: float
    entry_reason: str
    exit_date: date
    exit_price: float
    exit_reason: str  # stop_loss | take_profit | signal_sell | rebalance | trim | delisted | open
    exit_detail: str
    pnl: float  # after both commissions
    return_pct: float  # pnl / entry notional
    holding_days: int  # sessions from the entry fill to the exit fill
    commission: float
    open: bool = False

    @property
    def entry_value(self) -> float:
        return self.qty * self.entry_price


@dataclass
class DayRecord:
    """The book at one session's close, and what the decision after it did."""

    date: date
    equity: float
    cash: float
    exposure: float  # gross market value / equity at the close
    positions: int
    #: Gross exposure / equity after the decision's orders, at decision prices (None: no
    #: decision). The risk gate keeps it <= max_exposure whenever the decision bought.
    planned_exposure: float | None = None
    planned_positions: int | None = None
    buy_signals: int = 0
    orders: int = 0
    denied: int = 0
    state: str = "ACTIVE"


@dataclass
class BacktestResult:
    config: BacktestConfig
    sessions: list[date]
    days: list[DayRecord]
    orders: list[OrderLog]
    trades: list[Trade]
    denied: list[dict[str, Any]]
    events: list[dict[str, Any]]
    benchmarks: dict[str, list[float]]
    model: dict[str, Any]
    warnings: list[str]
    seconds: float = 0.0

    def equity_series(self) -> pd.Series:
        return pd.Series(
            [d.equity for d in self.days], index=pd.DatetimeIndex(self.sessions), name="equity"
        )

    def exit_reasons(self) -> dict[str, int]:
        """Trades by how they ended (stop_loss, take_profit, signal_sell, rebalance, trim,
        delisted, open)."""
        return dict(sorted(Counter(t.exit_reason for t in self.trades).items()))

    def params(self) -> dict[str, Any]:
        c = self.config
        return {
            "symbols": list(c.symbols),
            "start": c.start.isoformat(),
            "end": c.end.isoformat(),
            "first_session": self.sessions[0].isoformat() if self.sessions else None,
            "last_session": self.sessions[-1].isoformat() if self.sessions else None,
            "sessions": len(self.sessions),
            "initial_capital": c.initial_capital,
            "commission_bps": c.commission_bps,
            "slippage_bps": c.slippage_bps,
            "intraday_exits": c.intraday_exits,
            "limits": asdict(c.limits),
            "strategy": asdict(c.strategy),
        }
