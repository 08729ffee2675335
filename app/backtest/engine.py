"""Backtests: the live decision (``strategy.decide``) and its risk gate replayed over SimBroker.

One strategy, three clocks: nothing here decides anything. Each session t runs the steps a
live day would, in this order:

1. **Open of t** - the orders decided after the close of t-1 (market-on-open, OPG, as the live
   decision cycle sends them before the open) fill at the open of t (SimBroker
   ``process_pending``: sells first, then buys; slippage and commission in bps). The account's
   ``last_equity`` (the daily-loss base) is the equity at the close of t-1, as Alpaca reports it.
   A holding whose symbol stopped trading (its bars end before the window does; t is the first
   session after its last bar) is then sold at that last bar's close, as a market sell (its
   slippage and commission apply), logged as a "delisting" order with the exit reason
   "delisted": it never sits in the book at a stale mark. Orders for it that were due at this
   open are rejected for want of a price, as a broker would refuse them.
2. **Session t** - with protective exits on (``intraday_exits``), the live guard cycle's plan
   (``trading.protection.plan_protection``: one OCO per holding, stop and target from the
   shared cent rounding, whole shares) is placed at SimBroker, and the day's open, high and low
   fill them (``SimBroker.process_protective`` / ``costs.protective_fill``: a gap through a
   level fills at the open, a bar touching both counts as the stop; the stop pays slippage, the
   take-profit limit fills at its price). Sim mode runs the same SimBroker code.
3. **Close of t** - positions are marked at the close; the equity curve gets its point.
4. **Decision after the close of t** - ``DecisionInputs`` are built exactly as the live decision
   cycle builds them (account, positions, open orders other than the protective ones; bars of
   the symbols for the last ``LOOKBACK_CALENDAR_DAYS`` up to t; prices = closes of t, held
   positions at their marks; the risk state carried from the previous decision; held-since from
   the filled orders; whole shares for every symbol when protective exits are on), ``decide``
   runs unchanged, the protective orders of the holdings it sells are cancelled, and each
   approved order is submitted under the live ``client_order_id``
   (``alpha-<t>-<purpose>-<symbol>-<side>``). No decision is taken after the last session: its
   orders could never fill inside the window.

Signals come from an injected ``signal_fn(bars, session)``: a walk-forward model
(``ModelSignals`` over ``WalkForwardPredictor``: retrained every N sessions on labels known
before each window), a saved ModelBundle used as is, a rule (``SmaCrossSignals``) or whatever a
test needs. Services never import flask: the API task, the CLI and the benches call this.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import time
from collections.abc import Mapping
from datetime import date
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from app.backtest.results import (
    BENCHMARK_SYMBOL,
    BacktestConfig,
    BacktestResult,
    DayRecord,
    OrderLog,
    ProgressFn,
    SignalFn,
    Trade,
)
from app.backtest.tape import SessionTape
from app.backtest.window import (
    _BarWindow,
    _ReplaySnapshot,
    _SteppedClock,
    _SymbolIndex,
    backtest_sessions,
)
from app.broker.costs import CommissionModel, SlippageModel
from app.broker.sim import SimBroker
from app.domain import (
    BarFrame,
    Order,
    OrderRequest,
    OrderStatus,
    Side,
    SignalAction,
    TimeInForce,
)
from app.errors import OrderRejected, ValidationError
from app.market.calendar import NyseCalendar
from app.trading.orders import client_order_id, purpose_of
from app.trading.protection import exits_to_unblock, plan_protection
from app.trading.risk import PortfolioView, RiskState
from app.trading.strategy import DecisionInputs, decide

if TYPE_CHECKING:
    pass

__all__ = [
    "BENCHMARK_SYMBOL",
    "BacktestConfig",
    "BacktestResult",
    "DayRecord",
    "OrderLog",
    "SignalFn",
    "Trade",
    "backtest_sessions",
    "run_backtest",
]

log = logging.getLogger(__name__)


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
        if lot is None:
            self.held_since.pop(symbol, None)
            return
        buy, held, price, held_fee = lot
        qty = min(order.filled_qty, held)
        buy_fee = held_fee * qty / held if held > 0 else held_fee
        if held - qty > 1e-9:  # a partial exit (a trim): the rest of the lot stays open
            self.open_lots[symbol] = (buy, held - qty, price, held_fee - buy_fee)
        else:
            self.held_since.pop(symbol, None)
        pnl = qty * entry.fill_price - qty * price - buy_fee - entry.commission
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
    session_index = pd.DatetimeIndex(np.array(sessions, dtype="datetime64[D]").astype("M8[s]"))
    index = {s: _SymbolIndex(bars[s], session_index) for s in sorted(visible)}

    tape = SessionTape(index, len(sessions))
    instants = {t.day: (t.open, t.close) for t in cal.trading_sessions(sessions[0], sessions[-1])}
    clock = _SteppedClock(instants[sessions[0]][0])
    broker = SimBroker(
        tape.open,
        starting_cash=config.initial_capital,
        clock=clock,
        calendar=cal,
        commission=CommissionModel(bps=config.commission_bps),
        slippage=SlippageModel(bps=config.slippage_bps),
        fill_immediately=False,
    )
    book = _Book(sessions)
    # Symbols whose bars end before the window does: delisted on the session after their last bar.
    last_bars = {
        s: (index[s].frame.index[-1].date(), float(index[s].close[-1])) for s in sorted(tradable)
    }
    delisted_on: dict[int, list[str]] = {}
    for symbol, (last_bar, _price) in last_bars.items():
        after = bisect.bisect_right(sessions, last_bar)
        if after < len(sessions):
            delisted_on.setdefault(after, []).append(symbol)
    fills_seen = 0
    #: Symbols held at the last close or bought since: a superset of the holdings, marked at
    #: each close (a mark of a symbol sold since is never read: SimBroker values holdings only,
    #: and no buy is pending at the close). Spares a position listing per session.
    may_hold: set[str] = set()

    def settle(orders: list[Order], day: date) -> None:
        nonlocal fills_seen
        if not orders:
            return
        fills = broker.fills_since(fills_seen)
        for fill in fills:
            book.fees[fill.client_order_id] = fill.commission
        fills_seen += len(fills)
        for order in orders:
            book.settled(order, day)
            if order.side is Side.BUY and order.status is OrderStatus.FILLED:
                may_hold.add(order.symbol)

    risk_state = RiskState()
    days: list[DayRecord] = []
    denied: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    last = len(sessions) - 1
    for i, day in enumerate(sessions):
        # 1. The open: the market-on-open orders decided after the last close fill.
        clock.at, close_at = instants[day]
        tape.at(i)
        broker.start_day()
        settle(broker.process_pending(), day)
        for symbol in delisted_on.get(i, ()):
            if (position := broker.get_position(symbol)) is None:
                continue
            # The symbol stopped trading (no bar after its last one): the holding is sold at
            # that bar's close instead of sitting in the book at a stale mark for ever.
            for guard_order in broker.get_open_orders():
                if guard_order.symbol == symbol:
                    broker.cancel_order(guard_order.client_order_id)
            last_bar, price = last_bars[symbol]
            cid = client_order_id(day, "delisted", symbol, Side.SELL)
            _submit(
                broker,
                book,
                OrderRequest(symbol, Side.SELL, cid, qty=position.qty),
                day,
                f"delisted: no bar after {last_bar}, sold at its last close {price:.2f}",
                "delisting",
            )
            settle(broker.process_pending({symbol: price}), day)

        # 2. The session: the guard cycles keep each holding's protective OCO in place (the
        # live plan, live rounding); the day's open, high and low fill them (SimBroker, as sim).
        if config.intraday_exits:
            plan = plan_protection(
                broker.get_positions(),
                broker.get_open_orders(),
                config.limits,
                day,
                known_ids=[o.client_order_id for o in broker.get_orders()],
            )
            for stale in plan.cancel:
                broker.cancel_order(stale.client_order_id)
            for guard in plan.place:
                with contextlib.suppress(OrderRejected):
                    broker.submit_protective_order(guard)
            guarded = {o.symbol for o in broker.get_open_orders() if o.is_protective}
            ranges = {s: r for s in sorted(guarded) if (r := tape.range(s)) is not None}
            filled = broker.process_protective(ranges)
            for exit_order in filled:
                book.submitted(_protective_log(exit_order, day))
            settle(filled, day)

        # 3. The close: mark and record.
        clock.at = close_at
        broker.mark(tape.closes(sorted(may_hold)))
        account = broker.get_account()
        positions = broker.get_positions()
        may_hold.clear()
        may_hold.update(p.symbol for p in positions)
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
            prices = tape.prices()
            for p in positions:  # a holding without a bar: its last mark, as live does
                if p.current_price > 0:
                    prices.setdefault(p.symbol, p.current_price)
            held_symbols = {p.symbol for p in positions}
            working = broker.get_open_orders()
            inputs = DecisionInputs(
                account=account,
                positions=positions,
                open_orders=[o for o in working if not o.is_protective],
                market=_ReplaySnapshot(bars=window, prices=prices),
                signals=signals,
                risk_state=risk_state,
                now=clock.at,
                session=day,
                held_since={s: d for s, d in book.held_since.items() if s in held_symbols},
                # OPG and OCO orders take whole shares only: with protective exits, all do.
                whole_shares=frozenset(tradable | held_symbols)
                if config.intraday_exits
                else frozenset(),
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
            sells = [o.symbol for o in decision.orders if o.side is Side.SELL]
            for guard_order in exits_to_unblock(sells, working):
                broker.cancel_order(guard_order.client_order_id)
            tif = TimeInForce.OPG if config.intraday_exits else TimeInForce.DAY
            for order in decision.orders:
                cid = client_order_id(day, purpose_of(order.reason), order.symbol, order.side)
                _submit(
                    broker,
                    book,
                    OrderRequest(order.symbol, order.side, cid, qty=order.qty, time_in_force=tif),
                    day,
                    order.reason,
                    "decision",
                )
            if decision.orders:
                view = PortfolioView.of(account, positions)
                for order in decision.orders:
                    view.apply(order)
                planned, record.planned_positions = view.exposure, len(view.qtys)
            else:  # what the view would say: the holdings as they are
                planned, record.planned_positions = gross, len(positions)
            record.planned_exposure = planned / account.equity if account.equity else 0.0
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


def _protective_log(order: Order, day: date) -> OrderLog:
    """A protective exit that filled, as the order log shows it (its leg is its purpose)."""
    return OrderLog(
        client_order_id=order.client_order_id,
        session=day,
        symbol=order.symbol,
        side=order.side.value,
        qty=order.filled_qty,
        reason=f"{order.exit_kind}: protective exit, stop {order.stop_price:.2f} / target "
        f"{order.limit_price:.2f}",
        kind="protective",
    )
