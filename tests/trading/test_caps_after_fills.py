"""Property: the caps hold after every fill, not only at the decision price.

Whatever the holdings, the open buys (partly filled or not), the open sells and the signals, the
approved orders are filled adversarially: every buy (new, and the rest of every open buy) fills
first, in part or in full, at a gapped open up to RISK_ENTRY_GAP_MARGIN above the decision price
(slippage included), and no sell fills until the buys are done. After each fill, against the
equity the decision saw:
- a position bought in this decision is at most RISK_MAX_POSITION_SIZE;
- gross exposure is at most RISK_MAX_PORTFOLIO_EXPOSURE when anything was bought, and otherwise
  no more than before (open buys valued at their worst fill);
- the positions held or being bought are at most RISK_MAX_POSITIONS (or as many as before), plus,
  only until its sell fills, one per exit of the same decision (an exit frees its slot for the
  entries decided with it: both fill at the same open; a rebalancing swap goes out as a pair);
- the buys never cost more than the buying power.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.domain import Account, Order, OrderStatus, Position, Side, Signal, SignalAction
from app.trading.risk import EPS, RiskLimits, RiskState
from app.trading.strategy import DecisionInputs, MarketSnapshot, StrategyConfig, decide
from tests.trading.test_strategy_properties import VOLS, unit_bars

SYMBOLS = [f"S{i:02d}" for i in range(16)]
NOW = datetime(2021, 6, 1, 20, 0, tzinfo=UTC)
SESSION = date(2021, 6, 1)
LIMITS = RiskLimits(entry_gap_margin=0.03)
CONFIG = StrategyConfig()
TOL = 1e-6


class Scenario(NamedTuple):
    inputs: DecisionInputs
    gap: dict[str, float]
    fraction: dict[str, float]

    def __repr__(self) -> str:  # without the bars: what a failing example needs
        i = self.inputs
        return (
            f"Scenario(account={i.account}, positions={i.positions}, open={i.open_orders}, "
            f"signals={i.signals}, prices={i.market.prices}, gap={self.gap}, "
            f"fraction={self.fraction}, held_since={i.held_since})"
        )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Inputs, each symbol's fill price factor and each buy's filled fraction."""
    prices = {s: draw(st.floats(1, 1000)) for s in SYMBOLS}
    symbols = draw(st.permutations(SYMBOLS))
    n_held, n_open = draw(st.integers(0, 8)), draw(st.integers(0, 5))
    held, opening = symbols[:n_held], symbols[n_held : n_held + n_open]
    positions = [
        Position(s, draw(st.floats(0.01, 300)), prices[s] * draw(st.floats(0.7, 1.3)), prices[s])
        for s in held
    ]
    orders: list[Order] = []
    for i, symbol in enumerate(opening):
        qty = draw(st.floats(0.1, 300))
        filled = qty * draw(st.sampled_from([0.0, 0.25, 0.5]))
        status = OrderStatus.PARTIALLY_FILLED if filled else OrderStatus.NEW
        orders.append(Order(f"b{i}", symbol, Side.BUY, status, qty=qty, filled_qty=filled))
        if filled:  # the filled part is a position already
            positions.append(Position(symbol, filled, prices[symbol], prices[symbol]))
    for i, position in enumerate(positions[: n_held // 2]):
        if draw(st.booleans()):
            orders.append(Order(f"s{i}", position.symbol, Side.SELL, OrderStatus.NEW, qty=1e-3))
    cash = draw(st.floats(0, 200_000))
    # Alpaca's buying power already sets aside cash for open buys.
    reserved = sum((o.qty or 0) - o.filled_qty for o in orders if o.side is Side.BUY)
    buying_power = max(0.0, cash - reserved * 1.03 * max(prices.values()))
    buying_power = draw(st.sampled_from([buying_power, cash]))
    equity = cash + sum(p.market_value for p in positions)
    signals = {}
    for symbol in draw(st.lists(st.sampled_from(SYMBOLS), unique=True, max_size=16)):
        action = draw(st.sampled_from(list(SignalAction)))
        ret = draw(st.floats(-0.05, 0.05))
        signals[symbol] = Signal(symbol, action, ret, draw(st.floats(0, 1)), 0.01, "v1")
    vols = {s: draw(st.sampled_from(VOLS)) for s in SYMBOLS}
    gap = {s: draw(st.sampled_from([-0.2, 0.0, 0.01, LIMITS.entry_gap_margin])) for s in SYMBOLS}
    fraction = {s: draw(st.sampled_from([0.3, 1.0])) for s in SYMBOLS}
    inputs = DecisionInputs(
        account=Account(cash, equity, buying_power, equity if equity > 0 else 1.0),
        positions=positions,
        open_orders=orders,
        market=MarketSnapshot(bars={s: unit_bars(vols[s]) for s in SYMBOLS}, prices=prices),
        signals=signals,
        risk_state=RiskState(session_date=SESSION, start_of_day_equity=equity or 1.0),
        now=NOW,
        session=SESSION,
        held_since={
            p.symbol: SESSION - timedelta(days=draw(st.integers(0, 10))) for p in positions
        },
    )
    return Scenario(inputs, gap, fraction)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(scenarios())
def test_caps_hold_after_every_fill_at_a_gapped_open(
    scenario: Scenario,
) -> None:
    inputs, gap, fraction = scenario
    decision = decide(inputs, LIMITS, CONFIG)
    equity = inputs.account.equity
    prices = inputs.market.prices
    values = {p.symbol: p.market_value for p in inputs.positions}
    qtys = {p.symbol: p.qty for p in inputs.positions}
    open_buys = [o for o in inputs.open_orders if o.side is Side.BUY]
    before_count = len({*qtys, *(o.symbol for o in open_buys)})
    before_exposure = sum(values.values()) + sum(
        ((o.qty or 0) - o.filled_qty) * prices[o.symbol] * (1 + LIMITS.entry_gap_margin)
        for o in open_buys
    )
    new_buys = [o for o in decision.orders if o.side is Side.BUY]
    # The decision's own exits free their slots for its entries: they fill at the same open.
    closing = sum(1 for o in decision.orders if o.side is Side.SELL)
    assert sum(o.value for o in new_buys) * (1 + LIMITS.entry_gap_margin) <= (
        inputs.account.buying_power + TOL
    )
    fills = [(o.symbol, (o.qty or 0) - o.filled_qty) for o in open_buys]
    fills += [(o.symbol, o.qty) for o in new_buys]
    for symbol, qty in fills:  # the rest of every open buy, then the new buys
        for part in (fraction[symbol], 1.0 - fraction[symbol]):
            if part <= 0:
                continue
            filled = qty * part
            qtys[symbol] = qtys.get(symbol, 0.0) + filled
            values[symbol] = values.get(symbol, 0.0) + filled * prices[symbol] * (1 + gap[symbol])
            exposure = sum(values.values())
            if new_buys:
                assert exposure <= LIMITS.max_exposure * equity + TOL
            else:
                assert exposure <= before_exposure + TOL
            for order in new_buys:
                assert values.get(order.symbol, 0.0) <= LIMITS.max_position_size * equity + TOL
            count = sum(1 for q in qtys.values() if q > EPS)
            assert count <= max(LIMITS.max_positions, before_count) + closing
    for order in decision.orders:  # now the sells fill
        if order.side is Side.SELL:
            qtys[order.symbol] -= order.qty
            assert qtys[order.symbol] >= -EPS, "never short"
    count = sum(1 for q in qtys.values() if q > EPS)
    assert count <= max(LIMITS.max_positions, before_count)
    if not decision.risk_state.allows_entries(NOW):
        assert not new_buys
