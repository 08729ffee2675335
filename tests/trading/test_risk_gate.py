"""The risk gate against issue 12: open orders, gapped fills, swaps, halts, external holdings and
whole shares, each reproduced by calling `strategy.decide` directly."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.domain import Account, Order, OrderStatus, Position, Side, Signal, SignalAction
from app.trading.risk import RiskLimits, RiskState
from app.trading.strategy import DecisionInputs, MarketSnapshot, StrategyConfig, decide

NOW = datetime(2021, 6, 1, 20, 0, tzinfo=UTC)
SESSION = date(2021, 6, 1)
LIMITS = RiskLimits(entry_gap_margin=0.03)
CONFIG = StrategyConfig()


def buy(symbol: str, ret: float = 0.02) -> Signal:
    return Signal(symbol, SignalAction.BUY, ret, 0.9, 0.01, "v1")


def inputs(
    positions: list[Position],
    *,
    cash: float,
    signals: dict[str, Signal],
    open_orders: list[Order] | None = None,
    last_equity: float | None = None,
    price: float = 100.0,
    **extra: object,
) -> DecisionInputs:
    equity = cash + sum(p.market_value for p in positions)
    held = positions
    symbols = {p.symbol for p in positions} | set(signals)
    symbols |= {o.symbol for o in open_orders or []}
    return DecisionInputs(
        account=Account(
            cash=cash, equity=equity, buying_power=cash, last_equity=last_equity or equity
        ),
        positions=positions,
        open_orders=open_orders or [],
        market=MarketSnapshot(
            bars={},
            prices={**dict.fromkeys(symbols, price), **{p.symbol: p.current_price for p in held}},
        ),
        signals=signals,
        risk_state=RiskState(),
        now=NOW,
        session=SESSION,
        held_since={p.symbol: SESSION - timedelta(days=10) for p in positions},
        **extra,  # type: ignore[arg-type]
    )


def test_open_buys_take_slots_and_exposure() -> None:
    """3 positions + 4 unfilled buys + 5 candidates: no more buys (7 slots taken)."""
    held = [Position(f"H{i}", 90, 100.0, 100.0) for i in range(3)]
    pending = [Order(f"cid-P{i}", f"P{i}", Side.BUY, OrderStatus.NEW, qty=90.0) for i in range(4)]
    candidates = {f"C{i}": buy(f"C{i}") for i in range(5)}
    keep = {p.symbol: Signal(p.symbol, SignalAction.HOLD, 0.05, 0.9, 0.01, "v1") for p in held}
    decision = decide(
        inputs(held, cash=73_000, signals={**keep, **candidates}, open_orders=pending),
        LIMITS,
        CONFIG,
    )
    assert [o for o in decision.orders if o.side is Side.BUY] == []


def test_a_partly_filled_open_buy_counts_only_its_remainder() -> None:
    """The filled part is in the position already; only the rest may still fill."""
    held = [Position("P0", 40, 100.0, 100.0)]
    partial = Order("cid-P0", "P0", Side.BUY, OrderStatus.PARTIALLY_FILLED, qty=90, filled_qty=40)
    limits = RiskLimits(max_positions=20, max_exposure=0.2, entry_gap_margin=0.0)
    decision = decide(
        inputs(held, cash=96_000, signals={"C0": buy("C0")}, open_orders=[partial]),
        limits,
        CONFIG,
    )
    # 4 000 held + 5 000 still to fill + 10 000 new = 19 % of 100 000: allowed, once.
    assert [(o.symbol, o.side) for o in decision.orders] == [("C0", Side.BUY)]


def test_pending_and_decided_sells_are_not_credited_to_exposure() -> None:
    """An exit decided now frees exposure only when it fills, not for today's entries."""
    held = [Position(f"H{i}", 97.5, 100.0, 100.0) for i in range(7)]
    held.append(Position("LOSS", 100, 100.0, 90.0))  # stop-loss, 9 000 still exposed
    limits = RiskLimits(max_positions=20, entry_gap_margin=0.0)
    decision = decide(inputs(held, cash=22_750, signals={"C0": buy("C0")}), limits, CONFIG)
    assert [(o.symbol, o.side) for o in decision.orders] == [("LOSS", Side.SELL)]
    assert decision.denied[0][1].rule == "max_exposure"
    pending_sell = Order("cid-H0", "H0", Side.SELL, OrderStatus.NEW, qty=97.5)
    keep = {p.symbol: Signal(p.symbol, SignalAction.HOLD, 0.05, 0.9, 0.01, "v1") for p in held}
    decision = decide(
        inputs(
            held[:7], cash=31_750, signals={**keep, "C0": buy("C0")}, open_orders=[pending_sell]
        ),
        RiskLimits(max_positions=7, entry_gap_margin=0.0),
        CONFIG,
    )
    assert decision.orders == []  # the open sell has not freed H0's slot yet


def test_rebalance_sells_only_with_an_approved_buy() -> None:
    """7 holdings, a -2.9 % day, 3 candidates: the halt refuses the buys, so no swap sells."""
    held = [Position(f"H{i}", 100, 100.0, 100.0) for i in range(7)]
    weak = {p.symbol: Signal(p.symbol, SignalAction.HOLD, 0.0, 0.5, 0.01, "v1") for p in held}
    strong = {f"C{i}": buy(f"C{i}", 0.03) for i in range(3)}
    decision = decide(
        inputs(held, cash=30_000, signals={**weak, **strong}, last_equity=103_000),
        LIMITS,
        CONFIG,
    )
    assert decision.events == ["daily_loss_halt"]
    assert decision.orders == []
    assert {v.rule for _, v in decision.denied} == {"trading_state", "rebalance"}


def test_an_unsizeable_entry_sells_nothing() -> None:
    held = [Position(f"H{i}", 100, 100.0, 100.0) for i in range(7)]
    weak = {p.symbol: Signal(p.symbol, SignalAction.HOLD, 0.0, 0.5, 0.01, "v1") for p in held}
    decision = decide(
        inputs(
            held,
            cash=30_000,
            signals={**weak, "BIG": buy("BIG", 0.03)},
            whole_shares=frozenset({"BIG"}),
            price=100.0,
        ),
        RiskLimits(max_position_size=0.0009, max_exposure=0.8, entry_gap_margin=0.0),
        CONFIG,
    )
    assert decision.orders == []  # 0.09 % of equity < one share: no entry, no swap


def test_entries_leave_room_for_the_gap_to_the_next_open() -> None:
    decision = decide(inputs([], cash=100_000, signals={"C0": buy("C0")}), LIMITS, CONFIG)
    (order,) = decision.orders
    assert order.value * (1 + LIMITS.entry_gap_margin) <= 0.10 * 100_000 + 1e-6
    assert order.value > 0.09 * 100_000


def test_external_holdings_are_left_alone_but_fill_the_exposure() -> None:
    manual = Position("HAND", 500, 100.0, 158.0)  # up 58 %: take_profit if it were ours
    decision = decide(
        inputs([manual], cash=20_000, signals={"C0": buy("C0")}, unmanaged=frozenset({"HAND"})),
        RiskLimits(max_positions=1, entry_gap_margin=0.0),
        CONFIG,
    )
    assert all(o.symbol != "HAND" for o in decision.orders)
    # 79 000 of 99 000 is 79.8 % exposure: the 10 % entry would pass 80 %.
    assert decision.denied[0][1].rule == "max_exposure"
    roomy = decide(
        inputs([manual], cash=400_000, signals={"C0": buy("C0")}, unmanaged=frozenset({"HAND"})),
        RiskLimits(max_positions=1, entry_gap_margin=0.0),
        CONFIG,
    )
    assert [(o.symbol, o.side) for o in roomy.orders] == [("C0", Side.BUY)]  # no slot taken


def test_whole_shares_for_symbols_that_are_not_fractionable() -> None:
    signals = {"C0": buy("C0"), "C1": buy("C1")}
    decision = decide(
        inputs([], cash=100_000, signals=signals, price=333.0, whole_shares=frozenset({"C0"})),
        LIMITS,
        CONFIG,
    )
    qty = {o.symbol: o.qty for o in decision.orders}
    assert qty["C0"] == 29  # floor(100 000 x 10 % / 1.03 / 333)
    assert qty["C1"] != int(qty["C1"])


def test_no_entry_for_a_symbol_rejected_this_session() -> None:
    decision = decide(
        inputs([], cash=100_000, signals={"C0": buy("C0")}, no_entry=frozenset({"C0"})),
        LIMITS,
        CONFIG,
    )
    assert decision.orders == []


def test_halt_instants_are_kept_in_utc() -> None:
    noon = datetime(2021, 11, 30, 12, 0, tzinfo=ZoneInfo("America/New_York"))
    state = RiskState(halted_until=noon)
    assert state.halted_until is not None
    assert state.halted_until.utcoffset() == timedelta(0)
    assert state.halted_until == noon
    with pytest.raises(ValueError, match="timezone-aware"):
        RiskState(halted_until=datetime(2021, 11, 30, 12, 0))


def test_an_entry_that_filled_above_the_cap_is_trimmed_back() -> None:
    """A gap wider than the margin: the next decision cuts the new holding to 10 %."""
    gapped = Position("G", 100, 106.0, 106.0)  # 10 600 of 100 000 after a +6 % open
    older = Position("OLD", 100, 115.0, 120.0)  # 11 % of equity, held 30 days: left alone
    base = inputs([gapped], cash=89_400, signals={})
    fresh = replace(
        base,
        positions=[gapped, older],
        account=replace(base.account, cash=77_400, equity=100_000, buying_power=77_400),
        held_since={"G": SESSION - timedelta(days=1), "OLD": SESSION - timedelta(days=30)},
        market=MarketSnapshot(bars={}, prices={"G": 106.0, "OLD": 120.0}),
    )
    decision = decide(fresh, LIMITS, CONFIG)
    (trim,) = decision.orders
    assert (trim.symbol, trim.side) == ("G", Side.SELL)
    assert trim.reason.startswith("trim")
    left = (gapped.qty - trim.qty) * gapped.avg_entry_price
    assert left <= 0.10 * fresh.account.equity + 1e-6
