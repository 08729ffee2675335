"""The book rule (STRATEGY_PORTFOLIO=book): invested in the best-predicted names at the cap,
sold at a rebalance when they fall out of the best 2 x k, rebalances on NYSE session counts."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, date, datetime, time

from app.config import Settings
from app.domain import Account, Position, Side, Signal, SignalAction
from app.market.calendar import NyseCalendar
from app.trading.book import REBALANCE_ANCHOR, rebalance_due
from app.trading.risk import RiskLimits, RiskState
from app.trading.strategy import DecisionInputs, MarketSnapshot, StrategyConfig, decide

LIMITS = RiskLimits()
SYMBOLS = [f"S{i:02d}" for i in range(20)]
BOOK = StrategyConfig(portfolio="book", entry_top_k=7, rebalance_every=5)
CAL = NyseCalendar()
#: 2021-06-07 is a rebalance session of a 5-session book; the next session is not.
DUE = date(2021, 6, 7)
NOT_DUE = date(2021, 6, 8)


def signal(symbol: str, predicted: float, action: SignalAction = SignalAction.HOLD) -> Signal:
    # Confidence under any floor: the book rule reads the prediction's sign, not the action.
    return Signal(symbol, action, predicted, 0.40, 0.01, "v1")


def ranked(*negative: str) -> dict[str, Signal]:
    """S00 best ... S19 worst, all predicted above 0 except `negative`."""
    return {
        s: signal(s, -0.01 if s in negative else 0.02 - 0.001 * i) for i, s in enumerate(SYMBOLS)
    }


def inputs(
    signals: dict[str, Signal], positions: list[Position] | None = None, session: date = DUE
) -> DecisionInputs:
    held = positions or []
    prices = {s: 100.0 for s in SYMBOLS} | {p.symbol: p.current_price for p in held}
    cash = 100_000 - sum(p.market_value for p in held)
    return DecisionInputs(
        account=Account(cash=cash, equity=100_000, buying_power=cash, last_equity=100_000),
        positions=held,
        open_orders=[],
        market=MarketSnapshot(bars={}, prices=prices),
        signals=signals,
        risk_state=RiskState(),
        now=datetime.combine(session, time(20), tzinfo=UTC),
        session=session,
        held_since={p.symbol: date(2021, 1, 4) for p in held},
    )


def holding(symbol: str, price: float = 100.0) -> Position:
    return Position(symbol, 110, 100.0, price)  # 11 % of equity: grown past the cap


def orders(decision_inputs: DecisionInputs, config: StrategyConfig = BOOK) -> dict[str, list[str]]:
    decision = decide(decision_inputs, LIMITS, config)
    assert not decision.denied, decision.denied
    out: dict[str, list[str]] = {"buy": [], "sell": []}
    for order in decision.orders:
        out[order.side.value].append(order.symbol)
    return out


def test_rebalances_fall_every_k_nyse_sessions_from_the_anchor_holidays_included() -> None:
    sessions = CAL.sessions(date(2020, 11, 1), date(2021, 12, 31))  # Thanksgiving, Christmas...
    due = [d for d in sessions if rebalance_due(d, 5)]
    assert rebalance_due(REBALANCE_ANCHOR, 5)
    assert rebalance_due(REBALANCE_ANCHOR, 21)
    assert [sessions.index(b) - sessions.index(a) for a, b in itertools.pairwise(due)] == [5] * (
        len(due) - 1
    )
    assert all((len(CAL.sessions(REBALANCE_ANCHOR, d)) - 1) % 5 == 0 for d in due)
    assert rebalance_due(DUE, 5)
    assert not rebalance_due(NOT_DUE, 5)
    assert all(rebalance_due(d, 1) for d in sessions[:10])


def test_an_empty_book_buys_the_top_k_predicted_above_zero_at_the_cap() -> None:
    decision = decide(inputs(ranked(*SYMBOLS[5:])), LIMITS, BOOK)
    buys = [o for o in decision.orders if o.side is Side.BUY]
    # Only five names are predicted above 0: the other two places stay empty.
    assert [o.symbol for o in buys] == ["S00", "S01", "S02", "S03", "S04"]
    cap = 100_000 * LIMITS.max_position_size / (1 + LIMITS.entry_gap_margin)
    assert all(o.qty == math.floor(cap / 100.0 * 10**4) / 10**4 for o in buys)
    assert not decision.denied


def test_holdings_out_of_the_best_2k_are_sold_only_at_a_rebalance() -> None:
    held = [holding(s) for s in ("S01", "S15", "S16")]  # S15, S16 rank below the best 14
    assert orders(inputs(ranked(), held, NOT_DUE)) == {
        "buy": ["S00", "S02", "S03", "S04"],
        "sell": [],
    }
    got = orders(inputs(ranked(), held, DUE))
    assert got["sell"] == ["S15", "S16"]
    # Their sale frees no cash before it fills: no entry is tried beyond the room left.
    assert got["buy"] == ["S00", "S02", "S03", "S04"]


def test_a_sale_s_place_is_refilled_when_it_has_freed_the_capital() -> None:
    held = [holding(s) for s in ("S00", "S01", "S02", "S04", "S05", "S06", "S15")]
    first = decide(inputs(ranked(), held, DUE), LIMITS, BOOK)
    assert [(o.symbol, o.side) for o in first.orders] == [("S15", Side.SELL)]
    assert not first.denied  # S03 waits: seven holdings of 11 % leave no room for it
    after = [p for p in held if p.symbol != "S15"]
    assert orders(inputs(ranked(), after, NOT_DUE)) == {"buy": ["S03"], "sell": []}


def test_a_sell_signal_does_not_close_a_book_holding_but_the_stop_does() -> None:
    signals = ranked()
    signals["S01"] = signal("S01", -0.02, SignalAction.SELL)
    held = [holding("S01"), holding("S02", price=94.0)]  # S02 is 6 % under its entry
    got = orders(inputs(signals, held, NOT_DUE))
    assert got["sell"] == ["S02"]
    seed = orders(inputs(signals, held, NOT_DUE), StrategyConfig(entry_top_k=7))
    assert "S01" in seed["sell"]  # the seed's rule does close on the SELL signal


def test_a_holding_without_a_prediction_is_kept_at_a_rebalance() -> None:
    signals = {s: v for s, v in ranked().items() if s != "S01"}
    assert orders(inputs(signals, [holding("S01")], DUE))["sell"] == []


def test_settings_select_the_book_and_the_horizon_is_the_default_cadence() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        strategy_portfolio="book",
        ai_prediction_horizon_days=21,
    )
    config = StrategyConfig.from_settings(settings)
    assert (config.portfolio, config.rebalance_every) == ("book", 21)
    explicit = Settings(
        _env_file=None,  # type: ignore[call-arg]
        strategy_portfolio="book",
        strategy_rebalance_every=5,
    )
    assert StrategyConfig.from_settings(explicit).rebalance_every == 5
    default = Settings(_env_file=None)  # type: ignore[call-arg]
    assert StrategyConfig.from_settings(default).portfolio == "signals"
