"""Rank entries (STRATEGY_ENTRY_TOP_K): only the k best-scored of today's signals may be bought,
each still clearing the BUY floors, and positions, busy symbols and caps are respected."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

from app.domain import Account, Order, OrderStatus, Position, Side, Signal, SignalAction
from app.trading.risk import RiskLimits, RiskState
from app.trading.strategy import DecisionInputs, MarketSnapshot, StrategyConfig, decide

NOW = datetime(2021, 6, 1, 20, 0, tzinfo=UTC)
SESSION = date(2021, 6, 1)
LIMITS = RiskLimits()
SYMBOLS = [f"S{i:02d}" for i in range(10)]


def signal(symbol: str, predicted: float, action: SignalAction = SignalAction.BUY) -> Signal:
    return Signal(symbol, action, predicted, 0.6, 0.01, "v1")


def inputs(
    signals: dict[str, Signal],
    positions: list[Position] | None = None,
    open_orders: list[Order] | None = None,
) -> DecisionInputs:
    return DecisionInputs(
        account=Account(cash=100_000, equity=100_000, buying_power=100_000, last_equity=100_000),
        positions=positions or [],
        open_orders=open_orders or [],
        market=MarketSnapshot(bars={}, prices={s: 100.0 for s in SYMBOLS}),
        signals=signals,
        risk_state=RiskState(),
        now=NOW,
        session=SESSION,
        # Held since today: too briefly to be swapped out by a rebalance.
        held_since={p.symbol: SESSION for p in positions or []},
    )


def bought(decision_inputs: DecisionInputs, top_k: int, limits: RiskLimits = LIMITS) -> list[str]:
    decision = decide(decision_inputs, limits, StrategyConfig(entry_top_k=top_k))
    return [o.symbol for o in decision.orders if o.side is Side.BUY]


# S00 best ... S09 worst; S02 is scored high but does not clear the BUY floors (HOLD).
SIGNALS = {
    s: signal(s, 0.01 - 0.001 * i, SignalAction.HOLD if s == "S02" else SignalAction.BUY)
    for i, s in enumerate(SYMBOLS)
}


def test_only_the_top_k_that_clear_the_floors_are_bought() -> None:
    assert bought(inputs(SIGNALS), top_k=3) == ["S00", "S01"]  # S02 ranks 3rd but is HOLD
    assert bought(inputs(SIGNALS), top_k=5) == ["S00", "S01", "S03", "S04"]


def test_without_top_k_every_buy_signal_competes_for_the_slots() -> None:
    assert bought(inputs(SIGNALS), top_k=0) == ["S00", "S01", "S03", "S04", "S05", "S06", "S07"]


def test_held_and_busy_names_use_up_their_places_in_the_top_k() -> None:
    held = [Position("S00", 10, 100.0, 100.0)]
    pending = Order("c1", "S01", Side.BUY, OrderStatus.NEW, qty=5)
    assert bought(inputs(SIGNALS, held, [pending]), top_k=4) == ["S03"]


def test_top_k_respects_the_position_cap() -> None:
    held = [Position(s, 10, 100.0, 100.0) for s in SYMBOLS[5:10]]
    limits = replace(LIMITS, max_positions=6)
    assert bought(inputs(SIGNALS, held), top_k=5, limits=limits) == ["S00"]


def test_a_non_finite_prediction_is_never_ranked() -> None:
    signals = {**SIGNALS, "S09": signal("S09", float("nan"), SignalAction.HOLD)}
    assert bought(inputs(signals), top_k=3) == ["S00", "S01"]
