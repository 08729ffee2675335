"""Backtests: the live decision (``strategy.decide``) and its risk gate replayed over SimBroker.

One strategy, three clocks: nothing here decides anything. Each session t runs the steps a
live day would, in this order:

1. **Open of t** - the orders decided after the close of t-1 fill at the open of t (SimBroker
   with ``fill_immediately=False`` + ``process_pending``: sells first, then buys; slippage and
   commission in bps). The account's ``last_equity`` (the daily-loss base) is the equity at the
   close of t-1, as Alpaca reports it.
2. **Intraday of t** - every held position is checked against the bar's high and low (live
   checks every few minutes; a daily bar only tells the range). Rule: with
   ``stop = entry x (1 + stop_loss_pct)`` and ``target = entry x (1 + take_profit_pct)``
   (entry = average fill price, as the live check uses): an open at or through a level fills
   at the open (a gap is not a fill at the level); otherwise a low at or under the stop fills at
   the stop, a high at or over the target fills at the target, and a bar touching both counts
   as the stop (we cannot know which came first: assume the worse). Slippage applies.
3. **Close of t** - positions are marked at the close; the equity curve gets its point.
4. **Decision after the close of t** - ``DecisionInputs`` are built exactly as
   ``TradingService`` builds them (account, positions, open orders from the broker; bars of the
   symbols for the last ``LOOKBACK_CALENDAR_DAYS`` up to t; prices = closes of t, held
   positions at their marks; the risk state carried from the previous decision; held-since from
   the filled orders; ``now`` = the close of t), ``decide`` runs unchanged, and each approved
   order is submitted under the live ``client_order_id`` (cycle key ``eod``, as in sim mode).
   No decision is taken after the last session: its orders could never fill inside the window.

Signals come from an injected ``signal_fn(bars, session)``: a walk-forward model
(``ModelSignals`` over ``WalkForwardPredictor``: retrained every N sessions on labels known
before each window), a saved ModelBundle used as is, a rule (``SmaCrossSignals``) or whatever a
test needs. Services never import flask: the API task, the CLI and the benches call this.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import pandas as pd

from app.ai.ensemble import Mode, ModelBundle, SymbolPrediction
from app.ai.features import LABEL_COLUMN, LABEL_END_COLUMN, build_features, latest_features
from app.ai.signals import SignalThresholds, Thresholds, make_signal
from app.ai.training import train
from app.broker.sim import CommissionModel, SimBroker, SlippageModel
from app.domain import (
    BarFrame,
    MarketData,
    Order,
    OrderRequest,
    OrderStatus,
    Side,
    Signal,
    SignalAction,
)
from app.errors import OrderRejected, ValidationError
from app.market.calendar import NyseCalendar
from app.trading.cycle import LOOKBACK_CALENDAR_DAYS, SignalSource, client_order_id
from app.trading.risk import PortfolioView, RiskLimits, RiskState
from app.trading.strategy import DecisionInputs, MarketSnapshot, StrategyConfig, decide

if TYPE_CHECKING:
    from app.config import Settings

__all__ = [
    "BENCHMARK_SYMBOL",
    "CYCLE_KEY",
    "INTRADAY_KEY",
    "BacktestConfig",
    "BacktestRequest",
    "BacktestResult",
    "DayRecord",
    "ModelSignals",
    "OrderLog",
    "SignalFn",
    "SmaCrossSignals",
    "Trade",
    "WalkForwardConfig",
    "WalkForwardPredictor",
    "backtest_sessions",
    "from_signal_source",
    "intraday_exit",
    "load_bars",
    "resolve_window",
    "run_backtest",
    "run_request",
]

log = logging.getLogger(__name__)

#: The cycle key sim mode uses: one decision per session, after the close.
CYCLE_KEY = "eod"
#: Cycle key of stop-loss / take-profit exits found inside a bar.
INTRADAY_KEY = "intraday"
BENCHMARK_SYMBOL = "SPY"
#: Calendar days of history loaded before the first session beyond the training window:
#: the 120-bar feature warm-up plus holidays.
WARMUP_CALENDAR_DAYS = 400

#: signal_fn(bars up to the session, session) -> signals by symbol.
SignalFn = Callable[[Mapping[str, BarFrame], date], Mapping[str, Signal]]
#: progress(done, total), called once per session.
ProgressFn = Callable[[int, int], None]


# --------------------------------------------------------------------------------------------
# Configuration and results
# --------------------------------------------------------------------------------------------


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
    #: Check stops/targets against each bar's high/low (see the module docstring); off, they
    #: are only checked by the decision on closes, as a once-a-day live cycle would.
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
    session: date  # decided after this session's close (intraday exits: the bar's session)
    symbol: str
    side: str
    qty: float
    reason: str
    kind: str  # "decision" | "intraday"
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
    exit_reason: str  # stop_loss | take_profit | signal_sell | rebalance | open
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
        """Trades by how they ended (stop_loss, take_profit, signal_sell, rebalance, open)."""
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


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def load_bars(
    market: MarketData, symbols: Sequence[str], start: date, end: date
) -> dict[str, BarFrame]:
    """The universe plus SPY (features and benchmark) from `start` to `end`; empty frames out."""
    wanted = sorted({s.upper() for s in symbols} | {BENCHMARK_SYMBOL})
    bars = market.get_daily_bars(wanted, start, end)
    return {s: f for s, f in bars.items() if len(f)}


def history_start(start: date, train_years: float | None) -> date:
    """First date to load so the first walk-forward model has its training window."""
    years = train_years or 0.0
    return start - timedelta(days=int(years * 365.25) + WARMUP_CALENDAR_DAYS)


def backtest_sessions(
    bars: Mapping[str, BarFrame],
    symbols: Sequence[str],
    start: date,
    end: date,
    calendar: NyseCalendar | None = None,
) -> list[date]:
    """NYSE sessions in [start, end] on which at least one universe symbol has a bar."""
    cal = calendar or NyseCalendar()
    present: set[pd.Timestamp] = set()
    for symbol in symbols:
        frame = bars.get(symbol)
        if frame is not None and len(frame):
            present.update(frame.index[(frame.index >= pd.Timestamp(start))])
    sessions = cal.sessions_index(start, end)
    return [ts.date() for ts in sessions if ts in present]


def resolve_window(
    *,
    days: int | None,
    start: date | None,
    end: date | None,
    last_session: date,
    calendar: NyseCalendar | None = None,
) -> tuple[date, date]:
    """(start, end) from either `days` sessions ending at `last_session`, or start/end."""
    cal = calendar or NyseCalendar()
    if days is not None and (start is not None or end is not None):
        raise ValidationError("give either days or start/end, not both", field="days")
    if days is not None:
        if not 1 <= days <= 10_000:
            raise ValidationError("must be between 1 and 10000", field="days")
        sessions = cal.sessions_index(last_session - timedelta(days=days * 2 + 30), last_session)
        if len(sessions) < days:
            raise ValidationError("the calendar does not reach that far back", field="days")
        return sessions[-days].date(), sessions[-1].date()
    if start is None:
        raise ValidationError("give days, or start (and optionally end)", field="start")
    end = end or last_session
    if start > end:
        raise ValidationError(f"start {start} is after end {end}", field="start")
    if start < cal.first_session:
        raise ValidationError(f"must be on or after {cal.first_session}", field="start")
    if end > cal.last_session:
        raise ValidationError(f"must be on or before {cal.last_session}", field="end")
    return start, end


class _SymbolIndex:
    """Per-symbol arrays aligned to the backtest's sessions: which bars each session may see."""

    def __init__(self, frame: BarFrame, sessions: pd.DatetimeIndex) -> None:
        frame = frame.sort_index()
        self.frame = frame
        dates = frame.index.to_numpy(dtype="datetime64[ns]")
        days = sessions.to_numpy(dtype="datetime64[ns]")
        lookback = np.timedelta64(LOOKBACK_CALENDAR_DAYS, "D")
        #: bars [lo[i], hi[i]) are what the live cycle fetches on session i (start..session).
        self.hi = np.searchsorted(dates, days, side="right")
        self.lo = np.searchsorted(dates, days - lookback, side="left")
        last = np.clip(self.hi - 1, 0, max(len(dates) - 1, 0))
        self.today = (self.hi > 0) & (dates[last] == days) if len(dates) else self.hi > 0
        self.open = frame["open"].to_numpy(dtype=float)
        self.high = frame["high"].to_numpy(dtype=float)
        self.low = frame["low"].to_numpy(dtype=float)
        self.close = frame["close"].to_numpy(dtype=float)

    def bar(self, i: int) -> int | None:
        """Row of session i's own bar, or None when the symbol has no bar that day."""
        return int(self.hi[i] - 1) if self.today[i] else None

    def last_close(self, i: int) -> float | None:
        """Close of the last bar in session i's lookback window (the live cycle's price)."""
        return float(self.close[self.hi[i] - 1]) if self.hi[i] > self.lo[i] else None


class _BarWindow(Mapping[str, BarFrame]):
    """The bars the live cycle would fetch on one session, sliced only when asked for."""

    def __init__(self, index: Mapping[str, _SymbolIndex], i: int) -> None:
        self._index = index
        self._i = i
        self._cache: dict[str, BarFrame] = {}

    def __getitem__(self, symbol: str) -> BarFrame:
        cached = self._cache.get(symbol)
        if cached is None:
            ix = self._index[symbol]
            cached = ix.frame.iloc[int(ix.lo[self._i]) : int(ix.hi[self._i])]
            self._cache[symbol] = cached
        return cached

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


class _SteppedClock:
    """domain.Clock for SimBroker: the backtest sets the instant (an open, then the close)."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


# --------------------------------------------------------------------------------------------
# The intraday exit rule
# --------------------------------------------------------------------------------------------


def intraday_exit(
    bar_open: float, high: float, low: float, entry: float, limits: RiskLimits
) -> tuple[str, float, str] | None:
    """(kind, reference price, detail) when the bar hits the stop or the target, else None.

    Gap through a level: the open. Both touched in one bar: the stop (conservative).
    """
    if entry <= 0:
        return None
    stop = entry * (1.0 + limits.stop_loss_pct)
    target = entry * (1.0 + limits.take_profit_pct)
    if bar_open <= stop:
        return "stop_loss", bar_open, f"opened at {bar_open:.2f}, through the stop {stop:.2f}"
    if bar_open >= target:
        return (
            "take_profit",
            bar_open,
            f"opened at {bar_open:.2f}, through the target {target:.2f}",
        )
    if low <= stop:
        both = " (target touched too: stop assumed first)" if high >= target else ""
        return "stop_loss", stop, f"low {low:.2f} reached the stop {stop:.2f}{both}"
    if high >= target:
        return "take_profit", target, f"high {high:.2f} reached the target {target:.2f}"
    return None


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


class _Book:
    """Orders, fills and round trips as the broker reports them."""

    def __init__(self, sessions: list[date]) -> None:
        self.orders: dict[str, OrderLog] = {}
        self.trades: list[Trade] = []
        self.open_lots: dict[str, tuple[OrderLog, float, float, float]] = {}
        self.held_since: dict[str, date] = {}
        #: Commission of each fill, by client_order_id (SimBroker reports it on the Fill).
        self.fees: dict[str, float] = {}
        self._position = {day: i for i, day in enumerate(sessions)}

    def submitted(self, log_entry: OrderLog) -> None:
        self.orders[log_entry.client_order_id] = log_entry

    def settled(self, order: Order, day: date) -> None:
        """Record a fill or a rejection reported by SimBroker.process_pending()."""
        entry = self.orders[order.client_order_id]
        entry.status = order.status.value
        if order.status is not OrderStatus.FILLED or order.filled_avg_price is None:
            entry.reject_reason = order.reject_reason
            return
        entry.fill_date = day
        entry.fill_price = order.filled_avg_price
        entry.qty = order.filled_qty
        symbol = order.symbol
        if order.side is Side.BUY:
            entry.commission = self._commission(order)
            self.open_lots[symbol] = (entry, order.filled_qty, entry.fill_price, entry.commission)
            # Live: the session of the first filled buy since the holding was last flat.
            self.held_since.setdefault(symbol, entry.session)
            return
        entry.commission = self._commission(order)
        lot = self.open_lots.pop(symbol, None)
        self.held_since.pop(symbol, None)
        if lot is None:
            return
        buy, qty, price, buy_fee = lot
        pnl = order.filled_qty * entry.fill_price - qty * price - buy_fee - entry.commission
        self.trades.append(
            Trade(
                symbol=symbol,
                qty=qty,
                entry_date=buy.fill_date or buy.session,
                entry_price=price,
                entry_reason=buy.reason,
                exit_date=day,
                exit_price=entry.fill_price,
                exit_reason=entry.reason_kind,
                exit_detail=entry.reason,
                pnl=pnl,
                return_pct=pnl / (qty * price) if qty * price > 0 else 0.0,
                holding_days=self._position[day] - self._position[buy.fill_date or buy.session],
                commission=buy_fee + entry.commission,
            )
        )

    def _commission(self, order: Order) -> float:
        return self.fees.get(order.client_order_id, 0.0)

    def close_out(self, marks: Mapping[str, float], day: date) -> None:
        """Positions still open at the end become trades marked at the last close."""
        for symbol, (buy, qty, price, buy_fee) in sorted(self.open_lots.items()):
            mark = marks.get(symbol, price)
            pnl = qty * (mark - price) - buy_fee
            entered = buy.fill_date or buy.session
            self.trades.append(
                Trade(
                    symbol=symbol,
                    qty=qty,
                    entry_date=entered,
                    entry_price=price,
                    entry_reason=buy.reason,
                    exit_date=day,
                    exit_price=mark,
                    exit_reason="open",
                    exit_detail="still held at the end: marked at the last close",
                    pnl=pnl,
                    return_pct=pnl / (qty * price) if qty * price > 0 else 0.0,
                    holding_days=self._position[day] - self._position[entered],
                    commission=buy_fee,
                    open=True,
                )
            )


def run_backtest(
    bars: Mapping[str, BarFrame],
    config: BacktestConfig,
    signal_fn: SignalFn,
    *,
    progress: ProgressFn | None = None,
    calendar: NyseCalendar | None = None,
) -> BacktestResult:
    """Replay `config`'s window day by day; see the module docstring for the timeline."""
    started = time.perf_counter()
    cal = calendar or NyseCalendar()
    universe = tuple(dict.fromkeys(s.upper() for s in config.symbols))
    missing = [s for s in universe if s not in bars or not len(bars[s])]
    warnings: list[str] = []
    if missing:
        warnings.append(f"no bars for {missing}: they are never traded")
    visible = [s for s in universe if s not in missing]
    if BENCHMARK_SYMBOL in bars and BENCHMARK_SYMBOL not in visible and len(bars["SPY"]):
        visible.append(BENCHMARK_SYMBOL)  # the live watchlist carries SPY for the features
    tradable = set(universe) - set(missing)
    sessions = backtest_sessions(bars, sorted(tradable), config.start, config.end, cal)
    if not sessions:
        raise ValidationError(
            f"no bars for {list(universe)} between {config.start} and {config.end}",
            field="start",
        )
    session_index = pd.DatetimeIndex([pd.Timestamp(d) for d in sessions])
    index = {s: _SymbolIndex(bars[s], session_index) for s in sorted(visible)}

    clock = _SteppedClock(cal.session_open(sessions[0]))
    reference: dict[str, float] = {}
    broker = SimBroker(
        reference.__getitem__,
        starting_cash=config.initial_capital,
        clock=clock,
        calendar=cal,
        commission=CommissionModel(bps=config.commission_bps),
        slippage=SlippageModel(bps=config.slippage_bps),
        fill_immediately=False,
    )
    book = _Book(sessions)
    fills_seen = 0

    def settle(orders: list[Order], day: date) -> None:
        nonlocal fills_seen
        fills = broker.fills
        for fill in fills[fills_seen:]:
            book.fees[fill.client_order_id] = fill.commission
        fills_seen = len(fills)
        for order in orders:
            book.settled(order, day)

    risk_state = RiskState()
    days: list[DayRecord] = []
    denied: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    last = len(sessions) - 1
    for i, day in enumerate(sessions):
        # 1. The open: yesterday's decisions fill.
        clock.at = cal.session_open(day)
        broker.start_day()
        reference.clear()
        for symbol, ix in index.items():
            row = ix.bar(i)
            if row is not None:
                reference[symbol] = float(ix.open[row])
        settle(broker.process_pending(), day)

        # 2. Intraday: stops and targets against the bar's range.
        if config.intraday_exits:
            for position in broker.get_positions():
                held_ix = index.get(position.symbol)
                row = held_ix.bar(i) if held_ix is not None else None
                if held_ix is None or row is None:
                    continue
                hit = intraday_exit(
                    float(held_ix.open[row]),
                    float(held_ix.high[row]),
                    float(held_ix.low[row]),
                    position.avg_entry_price,
                    config.limits,
                )
                if hit is None:
                    continue
                kind, price, detail = hit
                reference[position.symbol] = price
                cid = client_order_id(day, INTRADAY_KEY, position.symbol, Side.SELL)
                _submit(
                    broker,
                    book,
                    OrderRequest(position.symbol, Side.SELL, cid, qty=position.qty),
                    day,
                    f"{kind}: intraday, {detail}",
                    "intraday",
                )
            settle(broker.process_pending(), day)

        # 3. The close: mark and record.
        clock.at = cal.session_close(day)
        closes = {s: float(ix.close[r]) for s, ix in index.items() if (r := ix.bar(i)) is not None}
        held = broker.get_positions()
        broker.mark({p.symbol: closes[p.symbol] for p in held if p.symbol in closes})
        account = broker.get_account()
        positions = broker.get_positions()
        gross = sum(abs(p.market_value) for p in positions)
        record = DayRecord(
            date=day,
            equity=account.equity,
            cash=account.cash,
            exposure=gross / account.equity if account.equity > 0 else 0.0,
            positions=len(positions),
            state=str(risk_state.state),
        )
        days.append(record)

        # 4. The decision after the close (none after the last session).
        if i < last:
            window = _BarWindow(index, i)
            signals = {s: sig for s, sig in signal_fn(window, day).items() if s in tradable}
            prices: dict[str, float] = {}
            for symbol, ix in index.items():
                last_close = ix.last_close(i)
                if last_close is not None:
                    prices[symbol] = last_close
            prices.update({p.symbol: p.current_price for p in positions if p.current_price > 0})
            held_symbols = {p.symbol for p in positions}
            inputs = DecisionInputs(
                account=account,
                positions=positions,
                open_orders=broker.get_open_orders(),
                market=MarketSnapshot(bars=window, prices=prices),
                signals=signals,
                risk_state=risk_state,
                now=clock.at,
                session=day,
                held_since={s: d for s, d in book.held_since.items() if s in held_symbols},
            )
            decision = decide(inputs, config.limits, config.strategy)
            risk_state = decision.risk_state
            for event in decision.events:
                events.append(
                    {"date": day, "event": event, "detail": risk_state.halt_reason or event}
                )
            for order, verdict in decision.denied:
                denied.append(
                    {
                        "date": day,
                        "symbol": order.symbol,
                        "side": order.side.value,
                        "rule": verdict.rule,
                        "reason": verdict.reason,
                    }
                )
            view = PortfolioView.of(account, positions)
            for order in decision.orders:
                view.apply(order)
                cid = client_order_id(day, CYCLE_KEY, order.symbol, order.side)
                _submit(
                    broker,
                    book,
                    OrderRequest(order.symbol, order.side, cid, qty=order.qty),
                    day,
                    order.reason,
                    "decision",
                )
            record.planned_exposure = view.exposure / account.equity if account.equity else 0.0
            record.planned_positions = len(view.qtys)
            record.buy_signals = sum(1 for s in signals.values() if s.action is SignalAction.BUY)
            record.orders = len(decision.orders)
            record.denied = len(decision.denied)
            record.state = str(risk_state.state)
        if progress is not None:
            progress(i + 1, len(sessions))

    final_marks = {p.symbol: p.current_price for p in broker.get_positions()}
    book.close_out(final_marks, sessions[-1])
    from app.backtest.metrics import buy_and_hold

    cost = (config.commission_bps, config.slippage_bps)
    benchmarks: dict[str, list[float]] = {}
    if BENCHMARK_SYMBOL in bars and len(bars[BENCHMARK_SYMBOL]):
        spy = buy_and_hold(bars, [BENCHMARK_SYMBOL], sessions, config.initial_capital, *cost)
        if spy is not None:
            benchmarks["spy_buy_and_hold"] = spy
    else:
        warnings.append("no SPY bars: the SPY benchmark is missing")
    ew = buy_and_hold(bars, sorted(tradable), sessions, config.initial_capital, *cost)
    if ew is not None:
        benchmarks["equal_weight_buy_and_hold"] = ew
    describe = getattr(signal_fn, "describe", None)
    model = describe() if callable(describe) else {"kind": type(signal_fn).__name__}
    warnings.extend(model.pop("warnings", []))
    return BacktestResult(
        config=config,
        sessions=sessions,
        days=days,
        orders=list(book.orders.values()),
        trades=sorted(book.trades, key=lambda t: (t.entry_date, t.symbol)),
        denied=denied,
        events=events,
        benchmarks=benchmarks,
        model=model,
        warnings=warnings,
        seconds=round(time.perf_counter() - started, 3),
    )


def _submit(
    broker: SimBroker,
    book: _Book,
    request: OrderRequest,
    day: date,
    reason: str,
    kind: str,
) -> None:
    assert request.qty is not None
    entry = OrderLog(
        client_order_id=request.client_order_id,
        session=day,
        symbol=request.symbol,
        side=request.side.value,
        qty=request.qty,
        reason=reason,
        kind=kind,
    )
    book.submitted(entry)
    try:
        broker.submit_market_order(request)
    except OrderRejected as exc:
        entry.status = OrderStatus.REJECTED.value
        entry.reject_reason = exc.message


# --------------------------------------------------------------------------------------------
# Signals: models, rules, adapters
# --------------------------------------------------------------------------------------------


class Predictor(Protocol):
    def predictions(
        self, session: date, bars: Mapping[str, BarFrame]
    ) -> tuple[dict[str, SymbolPrediction], str]: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class WalkForwardConfig:
    """How models are retrained during a backtest (ai_service.train's knobs)."""

    retrain_every: int = 63
    #: Years of rows each training uses (Settings.train_years); None: all history.
    train_years: float | None = 5.0
    mode: Mode = "pooled"
    params: Mapping[str, Any] | None = None
    n_lgbm: int = 3
    n_xgb: int = 3
    seed: int = 0
    val_fraction: float = 0.2
    #: Placebo: permute the training labels (a model that can know nothing; must earn ~0).
    shuffle_labels: bool = False
    #: "precomputed": feature rows computed once over the whole history (features are causal,
    #: so row t is the same as from bars <= t; one pass instead of one per session).
    #: "live": latest_features from the bars the cycle passes, exactly as ModelSignalSource
    #: does (about 0.25 s per session for 32 symbols).
    features: Literal["precomputed", "live"] = "precomputed"

    def __post_init__(self) -> None:
        if self.retrain_every < 1:
            raise ValidationError("must be >= 1", field="retrain_every")


class WalkForwardPredictor:
    """Predictions per session from models that only saw labels known before their window.

    Windows of `retrain_every` sessions start at the first session; the model of a window
    starting at session S is trained with ``train_end`` = the session before S, on rows whose
    label ended by then (``label_end <= train_end``). Alternatively a saved bundle is used as
    is for every session (a warning says so when its labels reach into the window).
    """

    def __init__(
        self,
        bars: Mapping[str, BarFrame],
        sessions: Sequence[date],
        symbols: Sequence[str],
        config: WalkForwardConfig | None = None,
        *,
        bundle: ModelBundle | None = None,
        calendar: NyseCalendar | None = None,
        on_retrain: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not sessions:
            raise ValueError("no sessions to predict")
        self.config = config or WalkForwardConfig()
        self._bars = bars
        self._sessions = list(sessions)
        self._symbols = sorted(set(symbols))
        self._calendar = calendar or NyseCalendar()
        self._bundle_given = bundle
        self._on_retrain = on_retrain
        self._features: pd.DataFrame | None = None
        every = len(self._sessions) if bundle is not None else self.config.retrain_every
        self._window_of = {day: i // every for i, day in enumerate(self._sessions)}
        self._starts = self._sessions[::every]
        self._models: dict[int, ModelBundle] = {}
        self._cache: dict[int, dict[date, dict[str, SymbolPrediction]]] = {}
        self.retrains: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self._rng = np.random.default_rng(self.config.seed)
        if bundle is not None:
            last = bundle.metadata.get("last_label_end") or bundle.metadata.get("train_end")
            if last is None or date.fromisoformat(str(last)[:10]) >= self._sessions[0]:
                self.warnings.append(
                    f"saved model {bundle.version or 'unversioned'} learned labels up to {last}, "
                    f"not before the first session {self._sessions[0]}: possible lookahead"
                )

    @property
    def features(self) -> pd.DataFrame:
        if self._features is None:
            t0 = time.perf_counter()
            spy = self._bars.get(BENCHMARK_SYMBOL)
            self._features = build_features(self._bars, spy)
            log.info("features for the backtest in %.1fs", time.perf_counter() - t0)
        return self._features

    def model_for(self, window: int) -> ModelBundle:
        if self._bundle_given is not None:
            return self._bundle_given
        model = self._models.get(window)
        if model is None:
            model = self._train(window)
            self._models = {window: model}  # one live model at a time, like production
        return model

    def _train(self, window: int) -> ModelBundle:
        first = self._starts[window]
        cutoff = pd.Timestamp(self._calendar.previous_session(first))
        cfg = self.config
        feats = self.features
        pool = feats[feats[LABEL_COLUMN].notna() & (feats[LABEL_END_COLUMN] <= cutoff)]
        if cfg.train_years:
            since = cutoff - pd.DateOffset(days=int(cfg.train_years * 365.25))
            pool = pool[pool.index.get_level_values("date") > since]
        if cfg.shuffle_labels:
            pool = pool.copy()
            pool[LABEL_COLUMN] = self._rng.permutation(pool[LABEL_COLUMN].to_numpy())
        t0 = time.perf_counter()
        bundle = train(
            None,
            None,
            cfg.mode,
            cutoff,
            cfg.params,
            features=pool,
            n_lgbm=cfg.n_lgbm,
            n_xgb=cfg.n_xgb,
            seed=cfg.seed,
            val_fraction=cfg.val_fraction,
        )
        seconds = time.perf_counter() - t0
        meta = bundle.metadata
        last_label = meta.get("last_label_end")
        if last_label is None or date.fromisoformat(last_label) >= first:
            raise RuntimeError(f"lookahead: labels up to {last_label} for a window from {first}")
        bundle.version = f"wf-{cutoff.date().isoformat()}"
        record = {
            "window_start": first.isoformat(),
            "train_end": cutoff.date().isoformat(),
            "train_start": meta.get("train_start"),
            "last_label_end": last_label,
            "n_train_rows": meta.get("n_train_rows"),
            "n_val_rows": meta.get("n_val_rows"),
            "validation": meta.get("validation"),
            "seconds": round(seconds, 2),
        }
        self.retrains.append(record)
        log.info("walk-forward model %s trained in %.1fs", bundle.version, seconds)
        if self._on_retrain is not None:
            self._on_retrain(record)
        return bundle

    def predictions(
        self, session: date, bars: Mapping[str, BarFrame]
    ) -> tuple[dict[str, SymbolPrediction], str]:
        """Predictions for `session` (a session of the backtest) and the model's version."""
        window = self._window_of[session]
        model = self.model_for(window)
        version = model.version or "saved"
        if self.config.features == "live":
            rows = latest_features(bars, bars.get(BENCHMARK_SYMBOL), session)
            wanted = set(self._symbols)
            found = model.predict(rows)
            return {s: p for s, p in found.items() if s in wanted}, version
        cached = self._cache.get(window)
        if cached is None:
            cached = self._predict_window(window, model)
            self._cache = {window: cached}
        return cached.get(session, {}), version

    def _predict_window(
        self, window: int, model: ModelBundle
    ) -> dict[date, dict[str, SymbolPrediction]]:
        """Every session of the window at once (rows are independent): far fewer calls."""
        days = [d for d, w in self._window_of.items() if w == window]
        feats = self.features
        dates = feats.index.get_level_values("date")
        symbols = feats.index.get_level_values("symbol")
        mask = (
            (dates >= pd.Timestamp(days[0]))
            & (dates <= pd.Timestamp(days[-1]))
            & symbols.isin(self._symbols)
        )
        rows = feats[mask]
        out: dict[date, dict[str, SymbolPrediction]] = {}
        if rows.empty:
            return out
        scored = model.predict_frame(rows[model.feature_columns]).dropna(subset=["mean"])
        for (day, symbol), mean, disp, conf in zip(
            scored.index,
            scored["mean"].to_numpy(),
            scored["dispersion"].to_numpy(),
            scored["confidence"].to_numpy(),
            strict=True,
        ):
            out.setdefault(pd.Timestamp(day).date(), {})[str(symbol)] = SymbolPrediction(
                float(mean), float(disp), float(conf)
            )
        return out

    def describe(self) -> dict[str, Any]:
        if self._bundle_given is not None:
            return {
                "kind": "saved_model",
                "version": self._bundle_given.version,
                "metadata": {
                    k: self._bundle_given.metadata.get(k)
                    for k in ("mode", "train_start", "train_end", "last_label_end")
                },
                "warnings": list(self.warnings),
            }
        cfg = self.config
        return {
            "kind": "walk_forward",
            "mode": cfg.mode,
            "retrain_every": cfg.retrain_every,
            "train_years": cfg.train_years,
            "members": {"lightgbm": cfg.n_lgbm, "xgboost": cfg.n_xgb},
            "seed": cfg.seed,
            "shuffle_labels": cfg.shuffle_labels,
            "features": cfg.features,
            "params": dict(cfg.params or {}),
            "retrains": list(self.retrains),
            "train_seconds": round(sum(r["seconds"] for r in self.retrains), 2),
            "warnings": list(self.warnings),
        }


class ModelSignals:
    """signal_fn from a predictor: make_signal with the given thresholds, as live does."""

    def __init__(self, predictor: Predictor, thresholds: SignalThresholds) -> None:
        self.predictor = predictor
        self.thresholds = thresholds
        self.counts: Counter[str] = Counter()

    def __call__(self, bars: Mapping[str, BarFrame], session: date) -> dict[str, Signal]:
        predictions, version = self.predictor.predictions(session, bars)
        signals = {
            symbol: make_signal(symbol, prediction, self.thresholds, version)
            for symbol, prediction in predictions.items()
        }
        self.counts.update(s.action.value for s in signals.values())
        return signals

    def describe(self) -> dict[str, Any]:
        t = self.thresholds
        return {
            **self.predictor.describe(),
            "thresholds": {
                "buy": t.ai_signal_buy_threshold,
                "sell": t.ai_signal_sell_threshold,
                "confidence": t.ai_confidence_threshold,
            },
            "signal_counts": {a.value: self.counts.get(a.value, 0) for a in SignalAction},
        }


class SmaCrossSignals:
    """Long-only moving-average crossover: BUY on the close the fast SMA crosses above the slow
    one, SELL on the close it crosses below. A model-free rule for tests and benchmarks.

    Averages are causal (closes <= t), computed once over the whole history.
    """

    def __init__(
        self,
        bars: Mapping[str, BarFrame],
        symbols: Sequence[str],
        fast: int = 20,
        slow: int = 50,
        predicted_return: float = 0.01,
    ) -> None:
        if not 1 <= fast < slow:
            raise ValueError("need 1 <= fast < slow")
        self.fast, self.slow = fast, slow
        self._by_day: dict[date, dict[str, Signal]] = {}
        for symbol in sorted(set(symbols)):
            frame = bars.get(symbol)
            if frame is None or len(frame) <= slow:
                continue
            close = frame["close"].astype(float)
            f = close.rolling(fast, min_periods=fast).mean().to_numpy()
            s = close.rolling(slow, min_periods=slow).mean().to_numpy()
            above = f > s
            not_above_before = np.r_[False, f[:-1] <= s[:-1]]
            below = f < s
            not_below_before = np.r_[False, f[:-1] >= s[:-1]]
            for ts, action in _crossings(
                frame.index, above & not_above_before, below & not_below_before
            ):
                self._by_day.setdefault(ts, {})[symbol] = Signal(
                    symbol,
                    action,
                    predicted_return if action is SignalAction.BUY else -predicted_return,
                    1.0,
                    0.0,
                    f"sma{fast}x{slow}",
                )

    def __call__(self, bars: Mapping[str, BarFrame], session: date) -> dict[str, Signal]:
        return dict(self._by_day.get(session, {}))

    def describe(self) -> dict[str, Any]:
        return {"kind": "sma_cross", "fast": self.fast, "slow": self.slow}


def _crossings(
    index: pd.Index, up: np.ndarray, down: np.ndarray
) -> Iterator[tuple[date, SignalAction]]:
    for i in np.flatnonzero(up | down):
        yield pd.Timestamp(index[i]).date(), (SignalAction.BUY if up[i] else SignalAction.SELL)


def from_signal_source(source: SignalSource) -> SignalFn:
    """A live SignalSource (e.g. ModelSignalSource) as a signal_fn; its problems are dropped."""

    def signals(bars: Mapping[str, BarFrame], session: date) -> Mapping[str, Signal]:
        found, _problem = source.signals(bars, session)
        return found

    return signals


# --------------------------------------------------------------------------------------------
# A run from a request (the API task and the CLI)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BacktestRequest:
    """What a user asks for; everything else comes from Settings (the live defaults)."""

    symbols: tuple[str, ...]
    start: date
    end: date
    initial_capital: float = 100_000.0
    commission_bps: float | None = None  # None: SIM_COMMISSION_BPS
    slippage_bps: float | None = None  # None: SIM_SLIPPAGE_BPS
    retrain_every: int = 63
    #: walk_forward: retrain during the run; current: the saved current model as is;
    #: sma_cross: the model-free SMA 20/50 rule.
    model: Literal["walk_forward", "current", "sma_cross"] = "walk_forward"
    buy_threshold: float | None = None
    sell_threshold: float | None = None
    confidence_threshold: float | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            symbols=list(self.symbols), start=self.start.isoformat(), end=self.end.isoformat()
        )
        return data


def run_request(
    request: BacktestRequest,
    settings: Settings,
    market: MarketData,
    *,
    bundle: ModelBundle | None = None,
    progress: ProgressFn | None = None,
) -> BacktestResult:
    """Load the bars, build the strategy from Settings, run. `bundle` is the saved model for
    ``model="current"``. Tuned parameters in BEST_PARAMS_DIR are used, as live training does."""
    from app.ai.params import load_best_params, to_train_params

    symbols = tuple(dict.fromkeys(s.upper() for s in request.symbols))
    config = BacktestConfig(
        symbols=symbols,
        start=request.start,
        end=request.end,
        initial_capital=request.initial_capital,
        commission_bps=settings.sim_commission_bps
        if request.commission_bps is None
        else request.commission_bps,
        slippage_bps=settings.sim_slippage_bps
        if request.slippage_bps is None
        else request.slippage_bps,
        limits=RiskLimits.from_settings(settings),
        strategy=StrategyConfig.from_settings(settings),
    )
    model_years = settings.train_years if request.model == "walk_forward" else 0.0
    bars = load_bars(market, symbols, history_start(request.start, model_years), request.end)
    calendar = NyseCalendar()
    signal_fn: SignalFn
    if request.model == "sma_cross":
        signal_fn = SmaCrossSignals(bars, symbols)
    else:
        thresholds = Thresholds(
            ai_signal_buy_threshold=_pick(request.buy_threshold, settings.ai_signal_buy_threshold),
            ai_signal_sell_threshold=_pick(
                request.sell_threshold, settings.ai_signal_sell_threshold
            ),
            ai_confidence_threshold=_pick(
                request.confidence_threshold, settings.ai_confidence_threshold
            ),
        )
        sessions = backtest_sessions(bars, symbols, config.start, config.end, calendar)
        if not sessions:
            raise ValidationError(
                f"no bars for {list(symbols)} between {config.start} and {config.end}",
                field="start",
            )
        if request.model == "current":
            if bundle is None:
                raise ValidationError("there is no trained model to use", field="model")
            predictor = WalkForwardPredictor(bars, sessions, symbols, bundle=bundle)
        else:
            mode = settings.ai_mode
            tuned = load_best_params(settings.best_params_dir, mode)
            wf = WalkForwardConfig(
                retrain_every=request.retrain_every,
                train_years=settings.train_years,
                mode=mode,  # type: ignore[arg-type]
                params=to_train_params(tuned) if tuned else None,
            )
            predictor = WalkForwardPredictor(bars, sessions, symbols, wf, calendar=calendar)
        signal_fn = ModelSignals(predictor, thresholds)
    return run_backtest(bars, config, signal_fn, progress=progress, calendar=calendar)


def _pick(value: float | None, default: float) -> float:
    return default if value is None else value
