"""Property tests: whatever the portfolio, prices and signals, a decision never breaks a cap,
under the seed's rule and the book rule alike.

After applying the approved orders at the decision prices: at most RISK_MAX_POSITIONS positions
(or as many as before, if more were already open: the bot never adds to an excess), gross
exposure at most 80 % of equity (or no more than before), every position bought in this
decision at most 10 % of equity, and no entry at all while HALTED. Tolerance: positions that
drifted above 10 % through price moves are not trimmed (the caps bind what we buy, not what the
market does), so the size check covers the symbols bought in the decision.
"""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.domain import Account, Position, Side, Signal, SignalAction, TradingState
from app.trading.risk import EPS, RiskLimits, RiskState
from app.trading.strategy import DecisionInputs, MarketSnapshot, StrategyConfig, decide

SYMBOLS = [f"S{i:02d}" for i in range(20)]
NOW = datetime(2021, 6, 1, 20, 0, tzinfo=UTC)
SESSION = date(2021, 6, 1)
LIMITS = RiskLimits()
CONFIG = StrategyConfig()


VOLS = (0.003, 0.008, 0.015, 0.03, 0.06)


@functools.cache
def unit_bars(vol: float) -> pd.DataFrame:
    """30 daily bars with daily volatility `vol`, ending at a close of 1."""
    rng = np.random.default_rng(int(vol * 1e6))
    closes = np.exp(np.cumsum(rng.normal(0, vol, 30)))
    closes /= closes[-1]
    index = pd.date_range("2021-04-20", periods=30, freq="B", name="date")
    frame = {"open": closes, "high": closes * 1.01, "low": closes * 0.99, "close": closes}
    return pd.DataFrame({**frame, "volume": 1e6}, index=index)


def bars_for(vol: float, price: float) -> pd.DataFrame:
    return unit_bars(vol) * [price, price, price, price, 1.0]


@st.composite
def scenarios(draw: st.DrawFn) -> DecisionInputs:
    cash = draw(st.floats(0, 200_000))
    n_held = draw(st.integers(0, 10))
    held = draw(st.lists(st.sampled_from(SYMBOLS), min_size=n_held, max_size=n_held, unique=True))
    prices = {s: draw(st.floats(1, 1000)) for s in SYMBOLS}
    positions = []
    for symbol in held:
        qty = draw(st.floats(0.01, 500))
        entry = prices[symbol] * draw(st.floats(0.7, 1.3))
        positions.append(Position(symbol, qty, entry, prices[symbol]))
    equity = cash + sum(p.market_value for p in positions)
    signals = {}
    for symbol in draw(st.lists(st.sampled_from(SYMBOLS), unique=True, max_size=20)):
        action = draw(st.sampled_from(list(SignalAction)))
        ret = draw(st.floats(-0.05, 0.05))
        signals[symbol] = Signal(symbol, action, ret, draw(st.floats(0, 1)), 0.01, "v1")
    state = draw(st.sampled_from(list(TradingState)))
    halted_until = NOW + timedelta(hours=draw(st.integers(-30, 30))) if state == "HALTED" else None
    last_equity = equity * draw(st.floats(0.9, 1.1)) if equity > 0 else 1.0
    vols = {s: draw(st.sampled_from(VOLS)) for s in SYMBOLS}
    return DecisionInputs(
        account=Account(cash=cash, equity=equity, buying_power=cash, last_equity=last_equity),
        positions=positions,
        open_orders=[],
        market=MarketSnapshot(
            # sizing reads only returns, which do not depend on the price level
            bars={s: unit_bars(vols[s]) for s in SYMBOLS},
            prices=prices,
        ),
        signals=signals,
        risk_state=RiskState(
            state=TradingState(state),
            halted_until=halted_until,
            session_date=SESSION,
            start_of_day_equity=last_equity,
        ),
        now=NOW,
        session=SESSION,
        held_since={s: SESSION - timedelta(days=draw(st.integers(0, 10))) for s in held},
    )


#: The book rule (STRATEGY_PORTFOLIO=book), rebalancing every session so that its sales at a
#: rebalance are drawn too: the caps bind it exactly as they bind the seed's rule.
BOOK = StrategyConfig(portfolio="book", entry_top_k=7, rebalance_every=1)


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(scenarios(), st.sampled_from([CONFIG, BOOK]))
def test_no_decision_breaks_a_cap(inputs: DecisionInputs, config: StrategyConfig) -> None:
    decision = decide(inputs, LIMITS, config)
    equity = inputs.account.equity
    values = {p.symbol: p.market_value for p in inputs.positions}
    qtys = {p.symbol: p.qty for p in inputs.positions}
    before_count = len(values)
    before_exposure = sum(values.values())
    cash = inputs.account.cash
    bought = set()
    for order in decision.orders:
        sign = 1 if order.side is Side.BUY else -1
        qtys[order.symbol] = qtys.get(order.symbol, 0.0) + sign * order.qty
        values[order.symbol] = values.get(order.symbol, 0.0) + sign * order.value
        assert qtys[order.symbol] >= -EPS, "never short"
        if abs(qtys[order.symbol]) <= EPS:
            del qtys[order.symbol], values[order.symbol]
        if order.side is Side.BUY:
            bought.add(order.symbol)
            cash -= order.value
    assert cash >= -EPS * max(1.0, equity), "never spends cash it does not have"
    assert len(values) <= max(LIMITS.max_positions, before_count)
    exposure = sum(values.values())
    if bought:
        assert exposure <= LIMITS.max_exposure * equity + 1e-6
        for symbol in bought:
            assert values[symbol] <= LIMITS.max_position_size * equity + 1e-6
    else:
        assert exposure <= before_exposure + 1e-6
    if not decision.risk_state.allows_entries(NOW):
        assert not bought, "no entry while HALTED"
    for order in decision.orders:
        assert order.reason


def test_daily_loss_halts_for_24_hours_and_exits_still_flow() -> None:
    position = Position("S01", 100, 100.0, 90.0)  # -10 %: stop-loss
    inputs = DecisionInputs(
        account=Account(cash=50_000, equity=59_000, buying_power=50_000, last_equity=61_000),
        positions=[position],
        open_orders=[],
        market=MarketSnapshot(bars={}, prices={"S01": 90.0, "S02": 50.0}),
        signals={"S02": Signal("S02", SignalAction.BUY, 0.02, 0.9, 0.01, "v1")},
        risk_state=RiskState(),
        now=NOW,
        session=SESSION,
    )
    decision = decide(inputs, LIMITS, CONFIG)
    assert decision.risk_state.state is TradingState.HALTED
    assert decision.risk_state.halted_until == NOW + timedelta(hours=24)
    assert "daily_loss_halt" in decision.events
    assert [(o.symbol, o.side) for o in decision.orders] == [("S01", Side.SELL)]
    assert decision.orders[0].reason.startswith("stop_loss")
    assert decision.denied[0][1].rule == "trading_state"


def test_take_profit_and_sell_signal_exit() -> None:
    inputs = DecisionInputs(
        account=Account(cash=80_000, equity=102_000, buying_power=80_000, last_equity=102_000),
        positions=[Position("S01", 100, 100.0, 111.0), Position("S02", 100, 100.0, 99.0)],
        open_orders=[],
        market=MarketSnapshot(bars={}, prices={"S01": 111.0, "S02": 99.0}),
        signals={"S02": Signal("S02", SignalAction.SELL, -0.01, 0.9, 0.01, "v1")},
        risk_state=RiskState(),
        now=NOW,
        session=SESSION,
    )
    reasons = {o.symbol: o.reason.split(":")[0] for o in decide(inputs, LIMITS, CONFIG).orders}
    assert reasons == {"S01": "take_profit", "S02": "signal_sell"}


def test_rebalance_respects_margin_and_holding_period() -> None:
    held = [Position(f"S{i:02d}", 10, 100.0, 100.0) for i in range(7)]
    weak = {p.symbol: Signal(p.symbol, SignalAction.HOLD, 0.001, 0.8, 0.01, "v1") for p in held}
    strong = Signal("S10", SignalAction.BUY, 0.03, 0.9, 0.01, "v1")
    base = DecisionInputs(
        account=Account(cash=93_000, equity=100_000, buying_power=93_000, last_equity=100_000),
        positions=held,
        open_orders=[],
        market=MarketSnapshot(bars={}, prices={**{p.symbol: 100.0 for p in held}, "S10": 50.0}),
        signals={**weak, "S10": strong},
        risk_state=RiskState(),
        now=NOW,
        session=SESSION,
        held_since={p.symbol: SESSION - timedelta(days=10) for p in held},
    )
    orders = decide(base, LIMITS, CONFIG).orders
    assert [(o.symbol, o.side) for o in orders] == [("S00", Side.SELL), ("S10", Side.BUY)]
    assert orders[0].reason.startswith("rebalance")
    recent = DecisionInputs(**{**base.__dict__, "held_since": {p.symbol: SESSION for p in held}})
    assert decide(recent, LIMITS, CONFIG).orders == []  # held too briefly: no churn
    small = Signal("S10", SignalAction.BUY, 0.003, 0.9, 0.01, "v1")
    close_call = DecisionInputs(**{**base.__dict__, "signals": {**weak, "S10": small}})
    assert decide(close_call, LIMITS, CONFIG).orders == []  # beats it by less than the margin


def test_volatility_sizing_is_capped() -> None:
    calm = bars_for(0.003, 100.0)
    wild = bars_for(0.06, 100.0)
    signals = {s: Signal(s, SignalAction.BUY, 0.02, 0.9, 0.01, "v1") for s in ("S01", "S02")}
    inputs = DecisionInputs(
        account=Account(cash=100_000, equity=100_000, buying_power=100_000, last_equity=100_000),
        positions=[],
        open_orders=[],
        market=MarketSnapshot(bars={"S01": calm, "S02": wild}, prices={"S01": 100.0, "S02": 100.0}),
        signals=signals,
        risk_state=RiskState(),
        now=NOW,
        session=SESSION,
    )
    sizes = {o.symbol: o.value / 100_000 for o in decide(inputs, LIMITS, CONFIG).orders}
    assert abs(sizes["S01"] - 0.10) < 1e-3  # capped at RISK_MAX_POSITION_SIZE
    assert sizes["S02"] < 0.06  # a volatile name gets a smaller slice
