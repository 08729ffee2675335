"""The backtest engine: same orders as the live cycle, no lookahead, risk caps, reports.

Real daily bars (tests/support.SHARED_DATA). Models here are deliberately small (one LightGBM
and one XGBoost member, few rounds): the tests are about the engine, not model quality.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from app.ai.signals import ModelSignalSource, Thresholds
from app.ai.store import ModelStore
from app.ai.training import train
from app.backtest.engine import run_backtest
from app.backtest.metrics import (
    buy_and_hold,
    compute_metrics,
    equity_metrics,
    trade_metrics,
)
from app.backtest.report import SEED_KEYS, to_report, write_png
from app.backtest.report_html import render_html
from app.backtest.results import BacktestConfig, BacktestResult, Trade
from app.backtest.signals import ModelSignals, SmaCrossSignals, from_signal_source
from app.backtest.walk_forward import WalkForwardConfig, WalkForwardPredictor
from app.backtest.window import (
    backtest_sessions,
    load_bars,
    resolve_window,
)
from app.broker.costs import CommissionModel, SlippageModel, protective_fill
from app.broker.sim import SimBroker
from app.domain import (
    BarFrame,
    OrderRequest,
    OrderStatus,
    Side,
    Signal,
    SignalAction,
    TimeInForce,
)
from app.errors import OrderRejected, ValidationError
from app.market.calendar import NyseCalendar
from app.market.sources import CsvMarketData
from app.trading.cycle import LOOKBACK_CALENDAR_DAYS
from app.trading.orders import client_order_id, purpose_of
from app.trading.protection import exits_to_unblock, plan_protection, protective_levels
from app.trading.risk import RiskLimits, RiskState
from app.trading.strategy import DecisionInputs, MarketSnapshot, StrategyConfig, decide
from tests import support
from tests.support import SHARED_DATA

UNIVERSE = ("AAPL", "MSFT", "KO", "PEP", "XOM", "JPM", "INTC", "WMT", "PFE", "HD", "SPY")
SMALL_MODEL: dict[str, Any] = {
    "lightgbm": {"num_boost_round": 60, "min_data_in_leaf": 50},
    "xgboost": {"num_boost_round": 60},
}
TRADING = Thresholds(0.0005, -0.0005, 0.5)


@pytest.fixture(scope="module")
def market() -> CsvMarketData:
    return CsvMarketData(SHARED_DATA)


@pytest.fixture(scope="module")
def bars(market: CsvMarketData) -> dict[str, BarFrame]:
    return load_bars(market, UNIVERSE, date(2013, 1, 1), date(2021, 12, 31))


class ScatterSignals:
    """Deterministic BUY / SELL / HOLD from a hash of (symbol, session): many entries, exits and
    rebalances, so every branch of the decision runs. A live SignalSource (signals, problem)."""

    def signals(
        self, bars: Mapping[str, BarFrame], session: date
    ) -> tuple[dict[str, Signal], str | None]:
        out = {}
        for symbol in sorted(bars):
            frame = bars[symbol]
            if not len(frame) or frame.index[-1].date() != session:
                continue
            rng = np.random.default_rng(zlib.crc32(f"{symbol}|{session}".encode()))
            u = rng.random()
            action = (
                SignalAction.BUY
                if u < 0.3
                else SignalAction.SELL
                if u < 0.42
                else SignalAction.HOLD
            )
            out[symbol] = Signal(
                symbol,
                action,
                float(rng.normal(0.004, 0.01)),
                float(rng.uniform(0.4, 0.95)),
                0.01,
                "scatter",
            )
        return out, None


@dataclass
class LiveReplay:
    orders: list[tuple[str, str, str, float, str]]
    equity: list[float]


def live_replay(
    market: CsvMarketData,
    symbols: Sequence[str],
    sessions: Sequence[date],
    source: Any,
    *,
    intraday_exits: bool,
    commission_bps: float,
    slippage_bps: float,
    capital: float = 100_000.0,
) -> LiveReplay:
    """The live cycle, day by day, over SimBroker: DecisionInputs built the way
    TradingService._run builds them (broker state, bars fetched from the market for the last
    LOOKBACK_CALENDAR_DAYS, closes as prices with held positions at their marks, the risk state
    saved by the previous cycle, held-since from filled orders); orders under the live ids."""
    calendar = NyseCalendar()
    clock = _Clock(calendar.session_open(sessions[0]))
    reference: dict[str, float] = {}
    broker = SimBroker(
        reference.__getitem__,
        starting_cash=capital,
        clock=clock,
        commission=CommissionModel(bps=commission_bps),
        slippage=SlippageModel(bps=slippage_bps),
        fill_immediately=False,
    )
    limits, config = RiskLimits(), StrategyConfig()
    risk_state = RiskState()
    decided_on: dict[str, date] = {}
    held_since: dict[str, date] = {}
    replay = LiveReplay([], [])

    def settle(orders: list[Any]) -> None:
        for order in orders:
            if order.status is not OrderStatus.FILLED:
                continue
            if order.side is Side.BUY:
                held_since.setdefault(order.symbol, decided_on[order.client_order_id])
            elif broker.get_position(order.symbol) is None:  # a trim keeps the date
                held_since.pop(order.symbol, None)

    for i, day in enumerate(sessions):
        today = market.get_daily_bars(symbols, day, day)
        clock.at = calendar.session_open(day)
        broker.start_day()
        reference.clear()
        reference.update({s: float(f["open"].iloc[0]) for s, f in today.items() if len(f)})
        settle(broker.process_pending())
        if intraday_exits:  # the guard cycle's plan, then the day's range
            plan = plan_protection(
                broker.get_positions(),
                broker.get_open_orders(),
                limits,
                day,
                known_ids=[o.client_order_id for o in broker.get_orders()],
            )
            for stale in plan.cancel:
                broker.cancel_order(stale.client_order_id)
            for guard in plan.place:
                broker.submit_protective_order(guard)
            ranges = {
                s: (float(f["open"].iloc[0]), float(f["high"].iloc[0]), float(f["low"].iloc[0]))
                for s, f in today.items()
                if len(f)
            }
            for order in broker.process_protective(ranges):
                replay.orders.append(
                    (
                        order.client_order_id,
                        order.symbol,
                        "sell",
                        order.filled_qty,
                        order.exit_kind or "",
                    )
                )
                if broker.get_position(order.symbol) is None:
                    held_since.pop(order.symbol, None)
        broker.mark({s: float(f["close"].iloc[0]) for s, f in today.items() if len(f)})
        clock.at = calendar.session_close(day)
        replay.equity.append(broker.get_account().equity)
        if i == len(sessions) - 1:
            break
        # --- TradingService._run, minus the database and the alerts ---
        account = broker.get_account()
        positions = broker.get_positions()
        working = broker.get_open_orders()
        open_orders = [o for o in working if not o.is_protective]
        wanted = sorted(set(symbols) | {p.symbol for p in positions})
        window = market.get_daily_bars(wanted, day - timedelta(days=LOOKBACK_CALENDAR_DAYS), day)
        signals, _problem = source.signals(window, day)
        prices = {s: float(f["close"].iloc[-1]) for s, f in window.items() if len(f)}
        prices.update({p.symbol: p.current_price for p in positions if p.current_price > 0})
        inputs = DecisionInputs(
            account=account,
            positions=positions,
            open_orders=open_orders,
            market=MarketSnapshot(bars=window, prices=prices),
            signals=signals,
            risk_state=risk_state,
            now=clock.now(),
            session=day,
            held_since={
                p.symbol: held_since[p.symbol] for p in positions if p.symbol in held_since
            },
            whole_shares=frozenset(set(symbols) | {p.symbol for p in positions})
            if intraday_exits
            else frozenset(),
        )
        decision = decide(inputs, limits, config)
        risk_state = decision.risk_state
        sells = [o.symbol for o in decision.orders if o.side is Side.SELL]
        for guard_order in exits_to_unblock(sells, working):
            broker.cancel_order(guard_order.client_order_id)
        tif = TimeInForce.OPG if intraday_exits else TimeInForce.DAY
        for order in decision.orders:
            cid = client_order_id(day, purpose_of(order.reason), order.symbol, order.side)
            decided_on[cid] = day
            replay.orders.append((cid, order.symbol, order.side.value, order.qty, order.reason))
            with contextlib.suppress(OrderRejected):  # the backtest records it as rejected
                broker.submit_market_order(
                    OrderRequest(order.symbol, order.side, cid, qty=order.qty, time_in_force=tif)
                )
    return replay


class _Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


def engine_orders(result: BacktestResult) -> list[tuple[str, str, str, float, str]]:
    out = []
    for o in result.orders:
        reason = o.reason if o.kind == "decision" else o.reason_kind
        out.append((o.client_order_id, o.symbol, o.side, o.qty, reason))
    return out


def _decided_qty(result: BacktestResult) -> list[tuple[str, str, str, float, str]]:
    """Orders as decided (the fill can change qty only for float dust on sells)."""
    return engine_orders(result)


# --------------------------------------------------------------------------------------------
# (a) the backtest places the live cycle's orders
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("intraday_exits", [False, True])
def test_same_orders_as_the_live_cycle(
    market: CsvMarketData, bars: dict[str, BarFrame], intraday_exits: bool
) -> None:
    start, end = date(2020, 1, 2), date(2020, 12, 31)  # the crash: stops, halts, rebalances
    config = BacktestConfig(
        symbols=UNIVERSE,
        start=start,
        end=end,
        commission_bps=1.0,
        slippage_bps=5.0,
        intraday_exits=intraday_exits,
    )
    result = run_backtest(bars, config, from_signal_source(ScatterSignals()))
    live = live_replay(
        market,
        UNIVERSE,
        result.sessions,
        ScatterSignals(),
        intraday_exits=intraday_exits,
        commission_bps=1.0,
        slippage_bps=5.0,
    )
    got = [(o.client_order_id, o.symbol, o.side, o.qty, o.reason) for o in result.orders]
    want = [o for o in live.orders if "-protect" not in o[0]]
    assert [g for g in got if "-protect" not in g[0]] == want
    intraday_got = [(g[0], g[1], g[3], g[4].split(":")[0]) for g in got if "-protect" in g[0]]
    intraday_want = [(o[0], o[1], o[3], o[4]) for o in live.orders if "-protect" in o[0]]
    assert intraday_got == intraday_want
    assert [d.equity for d in result.days] == pytest.approx(live.equity, rel=1e-12)
    kinds = {o.reason.split(":")[0] for o in result.orders}
    assert {"entry", "signal_sell", "rebalance"} <= kinds, kinds
    if intraday_exits:
        assert intraday_got, "2020 must trigger intraday stops"
    else:
        assert "stop_loss" in kinds
    assert any(e["event"] == "daily_loss_halt" for e in result.events)
    assert len(got) > 100


def test_same_orders_with_the_live_model_signal_source(
    market: CsvMarketData, bars: dict[str, BarFrame], tmp_path: Path
) -> None:
    """Model signals: the live ModelSignalSource (features from each day's fetched bars) and
    the backtest's precomputed features with one batched prediction give the same orders."""
    start, end = date(2021, 2, 1), date(2021, 4, 30)
    bundle = train(
        bars,
        bars["SPY"],
        "pooled",
        date(2021, 1, 29),
        SMALL_MODEL,
        train_start=date(2018, 1, 1),
        n_lgbm=1,
        n_xgb=1,
    )
    store = ModelStore(tmp_path / "models")
    store.save(bundle)
    saved = store.load_current()
    assert saved is not None
    source = ModelSignalSource(store, TRADING, max_age_days=7, now=lambda: datetime.now(UTC))
    config = BacktestConfig(symbols=UNIVERSE, start=start, end=end)
    sessions = backtest_sessions(bars, UNIVERSE, start, end)
    predictor = WalkForwardPredictor(bars, sessions, UNIVERSE, bundle=saved)
    result = run_backtest(bars, config, ModelSignals(predictor, TRADING))
    live = live_replay(
        market,
        UNIVERSE,
        result.sessions,
        source,
        intraday_exits=True,
        commission_bps=0.0,
        slippage_bps=5.0,
    )
    got = [
        (o.client_order_id, o.symbol, o.side, o.qty, o.reason if o.kind == "decision" else "")
        for o in result.orders
    ]
    want = [(c, s, d, q, r if "-protect" not in c else "") for c, s, d, q, r in live.orders]
    assert got == want
    assert sum(1 for o in result.orders if o.side == "buy") >= 5
    assert result.model["kind"] == "saved_model"
    assert result.model["signal_counts"]["BUY"] > 0


def test_precomputed_features_predict_like_live_features(bars: dict[str, BarFrame]) -> None:
    sessions = backtest_sessions(bars, UNIVERSE, date(2020, 6, 1), date(2020, 8, 31))
    cfg = {"train_years": 2.0, "n_lgbm": 1, "n_xgb": 1, "params": SMALL_MODEL}
    fast = WalkForwardPredictor(bars, sessions, UNIVERSE, WalkForwardConfig(**cfg))
    live = WalkForwardPredictor(bars, sessions, UNIVERSE, WalkForwardConfig(**cfg, features="live"))
    for day in sessions[::9]:
        window = {
            s: f.loc[
                pd.Timestamp(day) - pd.Timedelta(days=LOOKBACK_CALENDAR_DAYS) : pd.Timestamp(day)
            ]
            for s, f in bars.items()
        }
        a, _ = fast.predictions(day, window)
        b, _ = live.predictions(day, window)
        assert sorted(a) == sorted(b)
        for symbol in a:
            assert a[symbol].mean == pytest.approx(b[symbol].mean, abs=1e-12)
            assert a[symbol].confidence == pytest.approx(b[symbol].confidence, abs=1e-12)


# --------------------------------------------------------------------------------------------
# (b) no lookahead
# --------------------------------------------------------------------------------------------

NO_EXITS = RiskLimits(stop_loss_pct=-0.99, take_profit_pct=100.0, max_daily_loss=-0.99)


def _ranked(scores: Mapping[str, float], k: int = 3) -> dict[str, Signal]:
    """BUY the k best scores, SELL the k worst: selection driven by the scores alone."""
    order = sorted((s for s in scores if np.isfinite(scores[s])), key=lambda s: (-scores[s], s))
    out = {s: Signal(s, SignalAction.BUY, 0.01, 1.0, 0.0, "rank") for s in order[:k]}
    out.update({s: Signal(s, SignalAction.SELL, -0.01, 1.0, 0.0, "rank") for s in order[-k:]})
    return out


def _excess_per_trade(result: BacktestResult, bars: Mapping[str, BarFrame]) -> np.ndarray:
    """Each closed trade's return minus the equal-weight universe's over the same opens."""
    opens = {s: bars[s]["open"] for s in result.config.symbols}
    out = []
    for t in result.trades:
        if t.open:
            continue
        a, b = pd.Timestamp(t.entry_date), pd.Timestamp(t.exit_date)
        ew = np.mean([o[b] / o[a] - 1 for o in opens.values() if a in o.index and b in o.index])
        out.append(t.return_pct - ew)
    return np.array(out)


def test_shuffled_label_model_earns_nothing_and_a_leak_would_show(
    bars: dict[str, BarFrame],
) -> None:
    """Placebo: models trained on permuted labels pick stocks; before costs their trades beat
    the equal-weight universe by ~0. The same test on a signal that peeks at the next label
    (a deliberate leak) shows a large edge, so the test can see lookahead."""
    universe = (*(s for s in UNIVERSE if s != "SPY"), "CSCO", "VZ")
    data = {
        **bars,
        **load_bars(
            CsvMarketData(SHARED_DATA), ("CSCO", "VZ"), date(2013, 1, 1), date(2021, 12, 31)
        ),
    }
    labels = {s: f["open"].shift(-2) / f["open"].shift(-1) - 1 for s, f in data.items()}
    placebo, oracle = [], []
    windows = [
        (0, date(2017, 1, 1), date(2017, 6, 30)),
        (1, date(2019, 1, 1), date(2019, 6, 30)),
        (2, date(2021, 1, 1), date(2021, 6, 30)),
    ]
    for seed, start, end in windows:
        config = BacktestConfig(
            symbols=universe,
            start=start,
            end=end,
            commission_bps=0.0,
            slippage_bps=0.0,
            limits=NO_EXITS,
            intraday_exits=False,
        )
        sessions = backtest_sessions(data, universe, start, end)
        wf = WalkForwardConfig(
            train_years=2.0, n_lgbm=1, n_xgb=1, seed=seed, shuffle_labels=True, params=SMALL_MODEL
        )
        predictor = WalkForwardPredictor(data, sessions, universe, wf)

        def model_ranks(
            window: Mapping[str, BarFrame], day: date, predictor: WalkForwardPredictor = predictor
        ) -> dict[str, Signal]:
            predictions, _version = predictor.predictions(day, window)
            return _ranked({s: p.mean for s, p in predictions.items()})

        def peeking(window: Mapping[str, BarFrame], day: date) -> dict[str, Signal]:
            ts = pd.Timestamp(day)
            return _ranked({s: float(labels[s].get(ts, np.nan)) for s in universe})

        placebo.append(_excess_per_trade(run_backtest(data, config, model_ranks), data))
        oracle.append(_excess_per_trade(run_backtest(data, config, peeking), data))
        assert all(r["last_label_end"] < r["window_start"] for r in predictor.retrains)
    placebo_all, oracle_all = np.concatenate(placebo), np.concatenate(oracle)
    assert len(placebo_all) > 150
    standard_error = placebo_all.std() / np.sqrt(len(placebo_all))
    assert abs(placebo_all.mean()) < 0.005, (placebo_all.mean(), standard_error)
    assert abs(placebo_all.mean()) < 3 * standard_error + 1e-3
    assert oracle_all.mean() > 0.01  # a leak of one day's label is worth >1 % per trade


def _perturbed_after(bars: Mapping[str, BarFrame], cut: date, seed: int) -> dict[str, BarFrame]:
    rng = np.random.default_rng(seed)
    out = {}
    for symbol, frame in bars.items():
        frame = frame.copy()
        after = frame.index > pd.Timestamp(cut)
        factor = np.exp(np.cumsum(rng.normal(0.0, 0.04, after.sum())))
        for column in ("open", "high", "low", "close"):
            frame.loc[after, column] = frame.loc[after, column].to_numpy() * factor
        frame.loc[after, "volume"] = frame.loc[after, "volume"].to_numpy() * rng.uniform(
            0.2, 5.0, after.sum()
        )
        out[symbol] = frame
    return out


def test_prices_after_a_day_change_no_decision_up_to_it(bars: dict[str, BarFrame]) -> None:
    universe = ("AAPL", "MSFT", "KO", "PEP", "XOM", "JPM", "INTC", "WMT")
    start, end, cut = date(2019, 7, 1), date(2019, 12, 31), date(2019, 10, 15)
    config = BacktestConfig(symbols=universe, start=start, end=end)
    wf = WalkForwardConfig(retrain_every=42, train_years=2.0, n_lgbm=1, n_xgb=1, params=SMALL_MODEL)

    def run(data: Mapping[str, BarFrame]) -> tuple[BacktestResult, WalkForwardPredictor]:
        sessions = backtest_sessions(data, universe, start, end)
        predictor = WalkForwardPredictor(data, sessions, universe, wf)
        seen: list[tuple[date, date]] = []
        signals = ModelSignals(predictor, TRADING)

        def watched(window: Mapping[str, BarFrame], day: date) -> Mapping[str, Signal]:
            seen.append((day, max(f.index.max().date() for f in window.values() if len(f))))
            return signals(window, day)

        result = run_backtest(data, config, watched)
        assert all(last <= day for day, last in seen), "a decision saw a bar after its day"
        return result, predictor

    base, base_predictor = run(bars)
    moved, moved_predictor = run(_perturbed_after(bars, cut, seed=7))

    def decided(result: BacktestResult, up_to: bool) -> list[tuple[str, float, str]]:
        return [
            (o.client_order_id, o.qty, o.reason)
            for o in result.orders
            if (o.session <= cut) == up_to
        ]

    assert decided(base, True) == decided(moved, True)
    assert len(decided(base, True)) >= 10
    assert decided(base, False) != decided(moved, False), "the perturbation changed nothing"
    early = [r for r in base_predictor.retrains if r["train_end"] < cut.isoformat()]
    assert early == [
        r | {"seconds": early[i]["seconds"]}
        for i, r in enumerate(moved_predictor.retrains[: len(early)])
    ]
    equity = [(d.date, d.equity) for d in base.days if d.date <= cut]
    assert equity == [(d.date, d.equity) for d in moved.days if d.date <= cut]


def test_walk_forward_models_never_see_labels_of_their_window(bars: dict[str, BarFrame]) -> None:
    sessions = backtest_sessions(bars, UNIVERSE, date(2020, 1, 1), date(2020, 12, 31))
    wf = WalkForwardConfig(retrain_every=63, train_years=2.0, n_lgbm=1, n_xgb=1, params=SMALL_MODEL)
    predictor = WalkForwardPredictor(bars, sessions, UNIVERSE, wf)
    for day in sessions:
        predictor.predictions(day, {})
    starts = [r["window_start"] for r in predictor.retrains]
    assert starts == [d.isoformat() for d in sessions[::63]]
    calendar = NyseCalendar()
    for record in predictor.retrains:
        window_start = date.fromisoformat(record["window_start"])
        assert record["train_end"] == calendar.previous_session(window_start).isoformat()
        assert record["last_label_end"] <= record["train_end"]


# --------------------------------------------------------------------------------------------
# (c) risk caps hold every day
# --------------------------------------------------------------------------------------------


def test_risk_caps_hold_on_every_day(bars: dict[str, BarFrame]) -> None:
    config = BacktestConfig(
        symbols=UNIVERSE, start=date(2019, 6, 1), end=date(2020, 12, 31), commission_bps=1.0
    )
    result = run_backtest(bars, config, from_signal_source(ScatterSignals()))
    limits = config.limits
    days = {d.date: d for d in result.days}
    buys_by_day: dict[date, list[Any]] = {}
    for order in result.orders:
        if order.side == "buy":
            buys_by_day.setdefault(order.session, []).append(order)
    assert buys_by_day
    closes = {s: f["close"] for s, f in bars.items()}
    for day in result.days:
        assert day.positions <= limits.max_positions
        if day.planned_positions is not None:
            assert day.planned_positions <= limits.max_positions
        if day.date in buys_by_day:
            assert day.planned_exposure is not None
            assert day.planned_exposure <= limits.max_exposure + 1e-9, day
    for session, orders in buys_by_day.items():
        equity = days[session].equity
        for order in orders:
            value = order.qty * float(closes[order.symbol][pd.Timestamp(session)])
            assert value <= limits.max_position_size * equity + 1e-6, order
    # The caps were binding, not idle: full book, entries at the size cap, halted days.
    assert max(d.positions for d in result.days) == limits.max_positions
    assert any("size 10.00% of equity" in o.reason for o in result.orders)
    assert "trading_state" in {d["rule"] for d in result.denied}


# --------------------------------------------------------------------------------------------
# Rules, metrics, benchmarks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bar", "expected"),
    [
        ((100.0, 101.0, 99.0), None),
        ((94.0, 96.0, 93.0), ("stop_loss", 94.0)),  # gapped through the stop: the open
        ((112.0, 113.0, 111.0), ("take_profit", 112.0)),  # gapped through the target
        ((100.0, 101.0, 94.0), ("stop_loss", 95.0)),  # the stop level
        ((100.0, 111.0, 99.0), ("take_profit", 110.0)),  # the target level
        ((100.0, 111.0, 94.0), ("stop_loss", 95.0)),  # both in one bar: the stop
        ((95.0, 96.0, 94.0), ("stop_loss", 95.0)),  # opens exactly at the stop
    ],
)
def test_protective_fill_rule(
    bar: tuple[float, float, float], expected: tuple[str, float] | None
) -> None:
    stop, target = protective_levels(100.0, RiskLimits())
    assert (stop, target) == (95.0, 110.0)
    hit = protective_fill(*bar, stop, target)
    assert hit == (pytest.approx(expected) if expected else None)


def test_protective_exits_fill_at_their_levels(bars: dict[str, BarFrame]) -> None:
    """Stops pay the slippage; take-profit limits fill at their price or a better open."""
    config = BacktestConfig(
        symbols=UNIVERSE, start=date(2020, 2, 3), end=date(2020, 4, 30), slippage_bps=10.0
    )
    result = run_backtest(bars, config, from_signal_source(ScatterSignals()))
    exits = [o for o in result.orders if o.kind == "protective" and o.status == "filled"]
    assert {o.reason_kind for o in exits} == {"stop_loss", "take_profit"}
    for order in exits:
        bar = bars[order.symbol].loc[pd.Timestamp(order.session)]
        assert order.fill_date == order.session
        assert order.fill_price is not None
        slip = 1 - 10.0 / 1e4 if order.reason_kind == "stop_loss" else 1.0
        reference = order.fill_price / slip
        assert bar["low"] - 1e-9 <= reference <= bar["high"] + 1e-9
        assert order.qty == int(order.qty)
    assert all(o.qty == int(o.qty) for o in result.orders)  # OPG and OCO: whole shares


def test_equity_and_trade_metrics() -> None:
    index = pd.DatetimeIndex(["2021-01-04", "2021-01-05", "2021-01-06", "2021-01-07"])
    figures = equity_metrics(pd.Series([100.0, 110.0, 99.0, 121.0], index=index))
    assert figures["total_return"] == pytest.approx(0.21)
    assert figures["max_drawdown"] == pytest.approx(99 / 110 - 1)
    assert figures["max_drawdown_duration_days"] == 1
    assert figures["max_drawdown_peak"] == "2021-01-05"
    assert figures["max_drawdown_recovery"] == "2021-01-07"
    assert figures["annualized_return"] == pytest.approx(1.21 ** (252 / 3) - 1)
    assert figures["calmar_ratio"] == pytest.approx(
        figures["annualized_return"] / abs(figures["max_drawdown"])
    )
    flat = equity_metrics(pd.Series([100.0, 100.0], index=index[:2]))
    assert flat["sharpe_ratio"] is None
    assert flat["sortino_ratio"] is None

    def trade(pnl: float, days: int, open_: bool = False) -> Trade:
        d = date(2021, 1, 4)
        return Trade(
            "X", 1, d, 100, "entry", d, 100 + pnl, "signal_sell", "", pnl, pnl / 100, days, 0, open_
        )

    t = trade_metrics([trade(10, 2), trade(-5, 4), trade(20, 6), trade(50, 1, open_=True)])
    assert t["num_trades"] == 3
    assert t["open_trades"] == 1
    assert t["win_rate"] == pytest.approx(2 / 3)
    assert t["profit_factor"] == pytest.approx(6.0)
    assert t["expectancy"] == pytest.approx(25 / 3)
    assert t["avg_holding_days"] == pytest.approx(4.0)


def test_buy_and_hold_buys_at_the_second_open() -> None:
    index = pd.DatetimeIndex(["2021-01-04", "2021-01-05", "2021-01-06"], name="date")
    frame = pd.DataFrame(
        {"open": [9.0, 10.0, 11.0], "high": 12.0, "low": 8.0, "close": [10.0, 11.0, 12.0]},
        index=index,
    )
    sessions = [d.date() for d in index]
    curve = buy_and_hold({"A": frame}, ["A"], sessions, 1000.0, commission_bps=0, slippage_bps=0)
    assert curve == pytest.approx([1000.0, 1100.0, 1200.0])
    costly = buy_and_hold({"A": frame}, ["A"], sessions, 1000.0, 10.0, 10.0)
    assert costly is not None
    assert costly[2] == pytest.approx(1200.0 / 1.001 / 1.001)


def test_resolve_window() -> None:
    start, end = resolve_window(days=5, start=None, end=None, last_session=date(2021, 1, 8))
    assert (start, end) == (date(2021, 1, 4), date(2021, 1, 8))
    with pytest.raises(ValidationError) as info:
        resolve_window(days=0, start=None, end=None, last_session=date(2021, 1, 8))
    assert info.value.field == "days"
    with pytest.raises(ValidationError):
        resolve_window(
            days=None, start=date(2021, 2, 1), end=date(2021, 1, 1), last_session=date(2021, 1, 8)
        )


def test_config_validates_money() -> None:
    with pytest.raises(ValidationError) as info:
        BacktestConfig(
            symbols=("A",), start=date(2021, 1, 1), end=date(2021, 2, 1), initial_capital=0
        )
    assert info.value.field == "initial_capital"


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sma_report(bars: dict[str, BarFrame]) -> dict[str, Any]:
    universe = tuple(s for s in UNIVERSE if s != "SPY")
    config = BacktestConfig(symbols=universe, start=date(2018, 1, 1), end=date(2021, 12, 31))
    result = run_backtest(bars, config, SmaCrossSignals(bars, universe))
    return to_report(result, compute_metrics(result))


def test_json_report_keeps_the_seed_shape(sma_report: dict[str, Any]) -> None:
    assert sma_report["status"] == "success"
    assert list(sma_report["performance"])[: len(SEED_KEYS)] == list(SEED_KEYS)
    assert set(sma_report["benchmarks"]) == {"spy_buy_and_hold", "equal_weight_buy_and_hold"}
    assert set(sma_report["excess_return"]["spy_buy_and_hold"]) == {
        "total_return",
        "annualized_return",
    }
    assert sma_report["performance"]["num_trades"] > 50
    assert sum(sma_report["exit_reasons"].values()) == len(sma_report["trades"])
    json.dumps(sma_report, allow_nan=False)  # strict JSON: no NaN anywhere
    first = sma_report["equity_curve"][0]
    assert first["equity"] == first["spy_buy_and_hold"] == 100_000.0


def test_png_is_written(sma_report: dict[str, Any], tmp_path: Path) -> None:
    from matplotlib.image import imread

    path = write_png(sma_report, tmp_path / "equity.png")
    image = imread(path)
    assert image.shape[0] > 400
    assert image.shape[1] > 800
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _chromium() -> str | None:
    return shutil.which("chromium") or (
        "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
    )


def _near(image: np.ndarray, hex_colour: str, tolerance: float = 0.12) -> np.ndarray:
    rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return np.abs(image[..., :3] - rgb).max(axis=-1) < tolerance


def test_html_report_renders_in_headless_chromium(
    sma_report: dict[str, Any], tmp_path: Path
) -> None:
    from matplotlib.image import imread

    from app.backtest.report_html import DRAWDOWN_COLOUR, SERIES

    page = render_html(sma_report)
    lowered = page.lower()
    for needle in ("<script", "src=", "href=", "@import", "url("):
        assert needle not in lowered, needle
    assert lowered.count("http") == lowered.count('xmlns="http://www.w3.org/2000/svg"')
    chromium = _chromium()
    if chromium is None:
        support.unavailable("chromium is not installed (apt-get install -y chromium)")
    assert chromium is not None
    html_path = tmp_path / "report.html"
    html_path.write_text(page, encoding="utf-8")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,900",
            html_path.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    image = imread(shot)
    assert image.shape[:2] == (900, 1200)
    chart = image[60:480, 60:1150]  # the equity chart sits under the title
    non_white = (chart[..., :3] < 0.95).any(axis=-1).mean()
    assert non_white > 0.02, non_white
    for _key, label, colour in SERIES:
        assert _near(chart, colour).sum() > 800, label  # a drawn line, not just the legend
    drawdown = image[460:700, 60:1150]
    assert _near(drawdown, DRAWDOWN_COLOUR, 0.2).sum() > 300
