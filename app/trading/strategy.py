"""The decision: a pure function from what we know to the orders we want, with reasons.

It never knows whether it runs live, in sim or in a backtest (one strategy, three clocks): the
same inputs give the same orders everywhere. Order of work: exits (stop-loss, take-profit, SELL
signals) → entries ranked by expected return x confidence (with STRATEGY_ENTRY_TOP_K, only the
day's k best-ranked names may be bought) → rebalancing (replace the weakest
holding when a candidate beats it by a margin and it has been held long enough) → volatility
sizing capped per position → the risk gate, order by order, on the running portfolio.

Sizing is a pure function of what live and the backtest provably share: the cash and share
counts the broker reports (fills are equal, so these are) and the decision's closing prices
from the same bars. Nothing the broker marks itself enters it (see `closing_account`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta

import numpy as np

from app.config import Settings
from app.domain import Account, BarFrame, Order, Position, RiskDecision, Side, Signal, SignalAction
from app.trading.book import book_candidates, book_leavers, rebalance_due
from app.trading.risk import (
    EPS,
    PortfolioView,
    ProposedOrder,
    RiskLimits,
    RiskManager,
    RiskState,
)

QTY_DECIMALS = 4


@dataclass(frozen=True)
class StrategyConfig:
    #: A candidate replaces the weakest holding only when its score (expected return x
    #: confidence) beats the holding's by this much...
    rebalance_margin: float = 0.002
    #: ...and the holding has been held at least this many sessions: no churn.
    min_holding_days: int = 3
    #: Position size = equity x budget / daily volatility, capped at RISK_MAX_POSITION_SIZE:
    #: each position's one-sigma daily move is about `risk_budget` of equity.
    risk_budget: float = 0.002
    vol_lookback: int = 20
    #: Orders worth less than this are not worth sending.
    min_order_value: float = 1.0
    #: Rank entries: only the `entry_top_k` best-scored of today's signals (held or not) may be
    #: bought, and only those that clear the BUY floors; 0: every BUY signal (the seed's rule).
    entry_top_k: int = 0
    #: signals: the seed's rule above; book: hold the best-predicted names (app.trading.book),
    #: sold when they fall out of the best 2 x entry_top_k at a rebalance every
    #: `rebalance_every` sessions.
    portfolio: str = "signals"
    rebalance_every: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> StrategyConfig:
        return cls(
            rebalance_margin=settings.strategy_rebalance_margin,
            min_holding_days=settings.strategy_min_holding_days,
            risk_budget=settings.strategy_risk_budget,
            entry_top_k=settings.strategy_entry_top_k,
            portfolio=settings.strategy_portfolio,
            rebalance_every=settings.strategy_rebalance_every
            or settings.ai_prediction_horizon_days,
        )


@dataclass(frozen=True)
class MarketSnapshot:
    """What the decision may see: bars up to the decision date and the prices orders fill at."""

    bars: Mapping[str, BarFrame]
    prices: Mapping[str, float]

    def volatility(self, symbol: str, lookback: int) -> float | None:
        """`daily_volatility` of the symbol's bars (a backtest reads the same closes from its
        arrays instead of slicing a frame per entry: the same figure, bit for bit)."""
        return daily_volatility(self.bars.get(symbol), lookback)


@dataclass(frozen=True)
class DecisionInputs:
    account: Account
    positions: Sequence[Position]
    open_orders: Sequence[Order]
    market: MarketSnapshot
    signals: Mapping[str, Signal]
    risk_state: RiskState
    now: datetime
    session: date
    #: Session each holding was first bought on (for the minimum holding period).
    held_since: Mapping[str, date] = field(default_factory=dict)
    #: Sessions between two dates, supplied by the caller's calendar.
    sessions_between: Mapping[str, int] = field(default_factory=dict)
    #: Holdings the bot did not open and must leave alone (MANAGE_EXTERNAL_POSITIONS=false):
    #: never sold or swapped, counted in exposure, not in the position cap.
    unmanaged: frozenset[str] = frozenset()
    #: Symbols the broker trades in whole shares only (not fractionable).
    whole_shares: frozenset[str] = frozenset()
    #: Symbols not to enter this session (an entry was already rejected by the broker).
    no_entry: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Decision:
    orders: list[ProposedOrder]
    denied: list[tuple[ProposedOrder, RiskDecision]]
    risk_state: RiskState
    events: list[str]


def decide(inputs: DecisionInputs, limits: RiskLimits, config: StrategyConfig) -> Decision:
    manager = RiskManager(limits)
    # The daily-loss rule watches the broker's own figures, as the guard cycles do.
    state, events = manager.update_state(
        inputs.risk_state, inputs.account, inputs.session, inputs.now
    )
    busy = {o.symbol for o in inputs.open_orders if o.status.is_open}
    marked = marked_at(inputs.positions, inputs.market.prices)
    account = closing_account(
        inputs.account, marked, inputs.open_orders, inputs.market.prices, limits.entry_gap_margin
    )
    held = {p.symbol: p for p in marked if p.qty > 0}
    positions = {s: p for s, p in held.items() if s not in inputs.unmanaged}
    view = PortfolioView.of(
        account,
        held.values(),
        inputs.open_orders,
        inputs.market.prices,
        margin=limits.entry_gap_margin,
        unmanaged=inputs.unmanaged & held.keys(),
    )
    approved: list[ProposedOrder] = []
    denied: list[tuple[ProposedOrder, RiskDecision]] = []

    def gate(order: ProposedOrder) -> RiskDecision:
        verdict = manager.check(order, view, state, inputs.now)
        if verdict.allowed:
            view.apply(order)
            approved.append(order)
        else:
            denied.append((order, verdict))
        return verdict

    book = config.portfolio == "book"
    exits = _exits(positions, inputs, limits, busy, signal_sells=not book)
    exits += _trims(positions, inputs, account.equity, limits, busy | {o.symbol for o in exits})
    if book and rebalance_due(inputs.session, config.rebalance_every):
        skip = busy | {o.symbol for o in exits}
        reason = f"rebalance: out of the best {2 * config.entry_top_k} predictions"
        leavers = book_leavers(inputs.signals, positions, skip, config.entry_top_k)
        exits += [_close(positions[s], inputs, reason) for s in leavers]
    for order in exits:
        gate(order)
    leaving = {o.symbol for o in exits}
    if book:
        _fill_book(inputs, held, busy, limits, config, view, account.equity, gate)
        return Decision(approved, denied, state, events)

    candidates = _ranked_candidates(
        inputs.signals, held, busy | inputs.no_entry, config.entry_top_k
    )
    remaining = [s for s in positions if s not in leaving]
    slots = limits.max_positions - view.count
    equity = account.equity
    for symbol in candidates[: max(0, slots)]:
        if (buy := _entry(symbol, inputs, equity, limits, config)) is not None:
            gate(buy)
    for candidate in candidates[max(0, slots) :]:
        swap = _rebalance(candidate, remaining, inputs, config, busy)
        if swap is None:
            break
        entry = _entry(candidate, inputs, equity, limits, config)
        if entry is None:
            continue  # nothing to buy: keep the holding
        sell = _close(positions[swap], inputs, rebalance_reason(candidate))
        # The SELL goes out only with an approved BUY: try the pair on a copy of the view.
        trial = view.copy()
        sell_verdict = manager.check(sell, trial, state, inputs.now)
        trial.apply(sell)
        verdict = manager.check(entry, trial, state, inputs.now)
        if not (sell_verdict.allowed and verdict.allowed):
            denied.append((entry, verdict))
            denied.append(
                (
                    sell,
                    RiskDecision.deny(
                        f"replacement {candidate} denied: {verdict.reason}", "rebalance"
                    ),
                )
            )
            continue
        view = trial
        view.apply(entry)
        approved.extend((sell, entry))
        remaining.remove(swap)
    return Decision(approved, denied, state, events)


def _fill_book(
    inputs: DecisionInputs,
    held: Mapping[str, Position],
    busy: set[str],
    limits: RiskLimits,
    config: StrategyConfig,
    view: PortfolioView,
    equity: float,
    gate: Callable[[ProposedOrder], RiskDecision],
) -> None:
    """Book entries, best first, at the position cap, while there are places and room: an
    entry the capital of unfilled sales would pay for waits for the next session (not tried
    and denied: the gate never counts an unfilled sale as cash)."""
    candidates = book_candidates(inputs.signals, held, busy | inputs.no_entry, config.entry_top_k)
    for symbol in candidates[: max(0, limits.max_positions - view.count)]:
        buy = _entry(symbol, inputs, equity, limits, config, at_cap=True)
        if buy is None:
            continue
        room = min(limits.max_exposure * view.equity - view.exposure, view.buying_power)
        if view.worst_value(buy) > room + EPS:
            break
        gate(buy)


def marked_at(positions: Iterable[Position], prices: Mapping[str, float]) -> list[Position]:
    """Holdings valued at the decision's prices (the last closes), not at the broker's mark."""
    return [
        replace(p, current_price=price)
        if (price := prices.get(p.symbol, 0.0)) > 0 and price != p.current_price
        else p
        for p in positions
    ]


def closing_account(
    account: Account,
    positions: Iterable[Position],
    open_orders: Iterable[Order],
    prices: Mapping[str, float],
    margin: float,
) -> Account:
    """The account as sizing and the caps see it: equity = cash + holdings at the closing
    prices, buying power = cash less open buys at their worst price, both down to the cent.

    Why not the broker's figures: real Alpaca marks equity and positions at the latest trade
    (a pre-market or after-hours print when the decision runs outside the session), and its
    `buying_power` is a margin account's (2x or 4x equity); the backtest's SimBroker marks at
    the close and has no margin. Cash and share counts are the same on both sides whenever the
    fills were, so this is the same number live and in the backtest; cents (rounded down, so
    no cap is overstated) absorb the float noise of two ledgers summing the same fills. Buying
    power is never more than the broker's own: the gate never approves what it would refuse.
    """
    equity = account.cash + sum(p.market_value for p in positions)
    reserved = 0.0
    for order in open_orders:
        price = prices.get(order.symbol, 0.0)
        if order.side is Side.BUY and order.status.is_open and order.qty is not None:
            reserved += (order.qty - order.filled_qty) * price * (1.0 + margin)
        elif order.side is Side.BUY and order.status.is_open and order.notional is not None:
            reserved += order.notional - order.filled_qty * (order.filled_avg_price or price)
    buying_power = max(0.0, _cents(min(account.buying_power, account.cash - reserved)))
    return replace(account, equity=_cents(equity), buying_power=buying_power)


def _cents(amount: float) -> float:
    """Down to the cent; an amount a float hair under a whole cent counts as that cent."""
    return math.floor(amount * 100 + 1e-6) / 100


def score(signal: Signal) -> float:
    return signal.predicted_return * signal.confidence


def _exits(
    positions: Mapping[str, Position],
    inputs: DecisionInputs,
    limits: RiskLimits,
    busy: set[str],
    *,
    signal_sells: bool = True,
) -> list[ProposedOrder]:
    orders = []
    for symbol, position in sorted(positions.items()):
        if symbol in busy:
            continue
        price = inputs.market.prices.get(symbol, position.current_price)
        change = price / position.avg_entry_price - 1.0 if position.avg_entry_price else 0.0
        if change <= limits.stop_loss_pct:
            reason = f"stop_loss: {change:.2%} from entry {position.avg_entry_price:.2f}"
        elif change >= limits.take_profit_pct:
            reason = f"take_profit: {change:+.2%} from entry {position.avg_entry_price:.2f}"
        elif (
            signal_sells
            and (signal := inputs.signals.get(symbol))
            and signal.action is SignalAction.SELL
        ):
            reason = f"signal_sell: predicted {signal.predicted_return:+.2%}"
        else:
            continue
        orders.append(_close(position, inputs, reason))
    return orders


def _trims(
    positions: Mapping[str, Position],
    inputs: DecisionInputs,
    equity: float,
    limits: RiskLimits,
    skip: set[str],
) -> list[ProposedOrder]:
    """Entries of the last decision that filled above the size cap (a gap wider than the
    margin) are cut back to it: the caps hold after the fill, not only at the decision price.
    Older holdings that grew through price moves are left alone."""
    orders = []
    cap = limits.max_position_size * equity
    for symbol, position in sorted(positions.items()):
        since = inputs.held_since.get(symbol)
        if symbol in skip or since is None:
            continue
        if position.cost_basis <= cap + EPS or position.avg_entry_price <= 0:
            continue
        if weekdays_between(since, inputs.session) > 1:  # the dearer test last
            continue
        decimals = 0 if symbol in inputs.whole_shares else QTY_DECIMALS
        keep = math.floor(cap / position.avg_entry_price * 10**decimals) / 10**decimals
        excess = round(position.qty - keep, QTY_DECIMALS)
        if excess <= 0:
            continue
        price = inputs.market.prices.get(symbol, position.current_price)
        reason = (
            f"trim: filled at {position.cost_basis / equity:.2%} of equity, "
            f"the limit is {limits.max_position_size:.0%}"
        )
        orders.append(ProposedOrder(symbol, Side.SELL, excess, price, reason))
    return orders


def rebalance_reason(candidate: str) -> str:
    """The reason of a rebalancing SELL: names the BUY it makes room for (its pair)."""
    return f"rebalance: replaced by {candidate}"


def _close(position: Position, inputs: DecisionInputs, reason: str) -> ProposedOrder:
    price = inputs.market.prices.get(position.symbol, position.current_price)
    return ProposedOrder(position.symbol, Side.SELL, position.qty, price, reason)


def _ranked_candidates(
    signals: Mapping[str, Signal],
    positions: Mapping[str, Position],
    busy: set[str],
    top_k: int = 0,
) -> list[str]:
    """BUY signals not held nor busy, best score first. With `top_k` > 0 only the top_k of all
    today's finite signals qualify: the rank among today's names decides, not a level whose
    meaning drifts with the regime, and held names in the top k use up their places."""
    ranked = sorted(
        (s for s in signals.values() if math.isfinite(score(s))),
        key=lambda s: (-score(s), s.symbol),
    )
    if top_k > 0:
        ranked = ranked[:top_k]
    return [
        s.symbol
        for s in ranked
        if s.action is SignalAction.BUY and s.symbol not in positions and s.symbol not in busy
    ]


def _rebalance(
    candidate: str,
    remaining: list[str],
    inputs: DecisionInputs,
    config: StrategyConfig,
    busy: set[str],
) -> str | None:
    """The weakest holding the candidate may replace, or None."""
    best = score(inputs.signals[candidate])

    def held_long_enough(symbol: str) -> bool:
        since = inputs.held_since.get(symbol)
        if since is None:
            return True
        held = inputs.sessions_between.get(symbol, weekdays_between(since, inputs.session))
        return held >= config.min_holding_days

    eligible = [s for s in remaining if s not in busy and held_long_enough(s)]
    if not eligible:
        return None
    weakest = min(
        eligible,
        key=lambda s: (score(inputs.signals[s]) if s in inputs.signals else 0.0, s),
    )
    weakest_score = score(inputs.signals[weakest]) if weakest in inputs.signals else 0.0
    return weakest if best > weakest_score + config.rebalance_margin else None


def _entry(
    symbol: str,
    inputs: DecisionInputs,
    equity: float,
    limits: RiskLimits,
    config: StrategyConfig,
    *,
    at_cap: bool = False,
) -> ProposedOrder | None:
    """A BUY sized by volatility under the position cap (`at_cap`: at the cap itself)."""
    price = inputs.market.prices.get(symbol)
    if not price or price <= 0 or not math.isfinite(price):
        return None
    vol = None if at_cap else inputs.market.volatility(symbol, config.vol_lookback)
    fraction = (
        limits.max_position_size
        if vol is None
        else min(limits.max_position_size, config.risk_budget / vol)
    )
    # Sized so that a fill up to `entry_gap_margin` above the price still fits the caps.
    target = equity * fraction / (1.0 + limits.entry_gap_margin)
    decimals = 0 if symbol in inputs.whole_shares else QTY_DECIMALS
    qty = math.floor(target / price * 10**decimals) / 10**decimals
    if qty <= 0 or qty * price < config.min_order_value:
        return None
    signal = inputs.signals[symbol]
    reason = (
        f"entry: predicted {signal.predicted_return:+.2%} at confidence {signal.confidence:.2f}, "
        f"size {fraction:.2%} of equity" + (f" (daily vol {vol:.2%})" if vol is not None else "")
    )
    return ProposedOrder(symbol, Side.BUY, qty, price, reason)


def weekdays_between(start: date, end: date) -> int:
    """Trading days from `start` to `end`, counted as weekdays (holidays are rare enough that
    the minimum holding period does not need the exchange calendar). numpy's busday_count
    in plain arithmetic: the decision asks it for every holding of every backtest session."""
    if end < start:  # busday_count counts (end, start] then, negated
        return -weekdays_between(end + timedelta(days=1), start + timedelta(days=1))
    weeks, rest = divmod((end - start).days, 7)
    first = start.weekday()  # the `rest` days run from `first` up to first + rest <= 12
    return weeks * 5 + max(0, min(5, first + rest) - first) + max(0, first + rest - 7)


def daily_volatility(bars: BarFrame | None, lookback: int) -> float | None:
    """Standard deviation (ddof 1) of the last `lookback` daily close-to-close returns.

    In numpy (the same figure as pandas' pct_change().dropna().std(), bit for bit): it runs
    for every entry of every backtest session, where pandas' overhead was the largest cost."""
    if bars is None or len(bars) < lookback + 1:
        return None
    return closes_volatility(bars["close"].to_numpy(dtype=float), lookback)


def closes_volatility(closes: np.ndarray, lookback: int) -> float | None:
    """`daily_volatility` of a window's closes (oldest first), the arithmetic itself."""
    if len(closes) < lookback + 1:
        return None
    close = closes[-(lookback + 1) :]
    with np.errstate(all="ignore"):
        returns = close[1:] / close[:-1] - 1.0
        returns = returns[~np.isnan(returns)]
        if len(returns) < 2:
            return None
        deviations = returns - returns.sum() / len(returns)  # np.std's own steps, unwrapped
        vol = math.sqrt(float((deviations * deviations).sum()) / (len(returns) - 1))
    return vol if math.isfinite(vol) and vol > 0 else None
