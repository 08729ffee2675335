"""The backtest engine alone (no model) against backtrader, same rule, same data, same costs.

Why: an independent engine is the cheapest check of the fill, cost and bookkeeping mechanics,
and it puts a number on our engine's speed. Rule: SMA 20/50 crossover on closes, long only;
after the close a cross above buys qty = floor(equity x 1/N / close, 4 decimals), a cross below
sells the whole position; orders fill at the next open with 5 bps slippage and 1 bps commission.
Ours runs it through the live decision (``strategy.decide``) with limits that never bind except
cash (N positions, 100 % exposure, 1/N per position, no stops, no daily-loss halt); backtrader's
strategy applies the same cash rule (an entry must fit the cash left after earlier entries of the
same close). 32 symbols of /work/shared/data/daily, 2004-01-01..2021-12-31.

    .venv/bin/python -m bench.backtest_vs_backtrader [--runs 3]

backtrader is needed for this benchmark only (not a dependency of the service):
    .venv/bin/pip install backtrader
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

try:
    import backtrader as bt
except ImportError:  # pragma: no cover - an optional tool
    sys.exit(
        "backtrader is not installed; it is needed for this benchmark only:\n"
        "    .venv/bin/pip install backtrader\n"
        "(do not add it to requirements.txt)"
    )

from app.backtest.engine import run_backtest
from app.backtest.results import BacktestConfig, BacktestResult
from app.backtest.signals import SmaCrossSignals
from app.domain import BarFrame
from app.market.sources import CsvMarketData
from app.trading.risk import RiskLimits
from app.trading.strategy import StrategyConfig

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data" / "daily"
START, END = date(2004, 1, 1), date(2021, 12, 31)
FAST, SLOW = 20, 50
CAPITAL = 100_000.0
COMMISSION_BPS, SLIPPAGE_BPS = 1.0, 5.0
QTY_SCALE = 10**4  # strategy.QTY_DECIMALS


def ours(bars: Mapping[str, BarFrame], symbols: tuple[str, ...]) -> BacktestResult:
    weight = 1.0 / len(symbols)
    config = BacktestConfig(
        symbols=symbols,
        start=START,
        end=END,
        initial_capital=CAPITAL,
        commission_bps=COMMISSION_BPS,
        slippage_bps=SLIPPAGE_BPS,
        limits=RiskLimits(
            max_positions=len(symbols),
            max_exposure=1.0,
            max_position_size=weight,
            stop_loss_pct=-0.999,
            take_profit_pct=1e9,
            max_daily_loss=-0.999,
        ),
        # A risk budget this large makes the volatility size always hit the 1/N cap.
        strategy=StrategyConfig(risk_budget=1e9),
        intraday_exits=False,
    )
    return run_backtest(bars, config, SmaCrossSignals(bars, symbols, FAST, SLOW))


class SmaCross(bt.Strategy):  # type: ignore[misc]
    params = (("fast", FAST), ("slow", SLOW), ("weight", 1 / 32))

    def __init__(self) -> None:
        self.averages = {
            d._name: (
                bt.indicators.SMA(d.close, period=self.p.fast),
                bt.indicators.SMA(d.close, period=self.p.slow),
            )
            for d in self.datas
        }
        self.fills: list[tuple[str, str, date, float, float, float]] = []
        self.rejected = 0
        self.skipped_for_cash = 0

    def prenext(self) -> None:  # symbols listed later (META 2012, ...) start without history
        self.next()

    def next(self) -> None:
        today = self.datetime.date(0)
        value = self.broker.getvalue()
        cash = self.broker.getcash()
        sells, buys = [], []
        for d in self.datas:
            if len(d) <= self.p.slow or d.datetime.date(0) != today:
                continue
            fast, slow = self.averages[d._name]
            held = self.getposition(d).size
            if fast[0] < slow[0] and fast[-1] >= slow[-1] and held > 0:
                sells.append(d)
            elif fast[0] > slow[0] and fast[-1] <= slow[-1] and held == 0:
                buys.append(d)
        for d in sorted(sells, key=lambda x: x._name):
            self.close(data=d)
        for d in sorted(buys, key=lambda x: x._name):
            price = float(d.close[0])
            qty = math.floor(value * self.p.weight / price * QTY_SCALE) / QTY_SCALE
            if qty * price > cash + 1e-6:  # the live risk gate's buying-power rule
                self.skipped_for_cash += 1
                continue
            cash -= qty * price
            self.buy(data=d, size=qty)

    def notify_order(self, order: Any) -> None:
        if order.status == order.Completed:
            self.fills.append(
                (
                    order.data._name,
                    "buy" if order.isbuy() else "sell",
                    bt.num2date(order.executed.dt).date(),
                    abs(order.executed.size),
                    order.executed.price,
                    order.executed.comm,
                )
            )
        elif order.status in (order.Margin, order.Rejected):
            self.rejected += 1


def theirs(bars: Mapping[str, BarFrame], symbols: tuple[str, ...]) -> tuple[SmaCross, float]:
    cerebro = bt.Cerebro(stdstats=False)
    for symbol in symbols:
        frame = bars[symbol][["open", "high", "low", "close", "volume"]]
        cerebro.adddata(bt.feeds.PandasData(dataname=frame, openinterest=None), name=symbol)
    cerebro.addstrategy(SmaCross, weight=1.0 / len(symbols))
    cerebro.broker.setcash(CAPITAL)
    cerebro.broker.setcommission(commission=COMMISSION_BPS / 1e4)
    # slip_out: the whole 5 bps even when the open is the bar's high/low, as SimBroker does.
    cerebro.broker.set_slippage_perc(SLIPPAGE_BPS / 1e4, slip_open=True, slip_out=True)
    strategy = cerebro.run()[0]
    return strategy, float(cerebro.broker.getvalue())


def round_trips(
    fills: list[tuple[str, str, date, float, float, float]],
) -> list[tuple[str, date, date | None]]:
    open_at: dict[str, date] = {}
    trips = []
    for symbol, side, day, _qty, _price, _comm in fills:
        if side == "buy":
            open_at[symbol] = day
        else:
            trips.append((symbol, open_at.pop(symbol), day))
    trips.extend((symbol, day, None) for symbol, day in open_at.items())
    return sorted(trips, key=lambda t: (t[1], t[0], t[2] or date.max))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    market = CsvMarketData(DATA_DIR)
    symbols = tuple(market.available_symbols())
    bars = {s: f for s, f in market.get_daily_bars(symbols, START, END).items() if len(f)}
    bars_count = sum(len(f) for f in bars.values())
    print(f"{len(symbols)} symbols, {bars_count} bars, {START}..{END}")

    our_times, their_times = [], []
    result: BacktestResult | None = None
    strategy: SmaCross | None = None
    final_theirs = 0.0
    for run in range(args.runs):
        t0 = time.perf_counter()
        result = ours(bars, symbols)
        our_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        strategy, final_theirs = theirs(bars, symbols)
        their_times.append(time.perf_counter() - t0)
        print(f"run {run + 1}: ours {our_times[-1]:.2f}s, backtrader {their_times[-1]:.2f}s")
    assert result is not None
    assert strategy is not None

    our_trips = sorted(
        ((t.symbol, t.entry_date, None if t.open else t.exit_date) for t in result.trades),
        key=lambda t: (t[1], t[0], t[2] or date.max),
    )
    bt_trips = round_trips(strategy.fills)
    same = set(our_trips) & set(bt_trips)
    only_ours = sorted(set(our_trips) - set(bt_trips), key=str)
    only_theirs = sorted(set(bt_trips) - set(our_trips), key=str)
    our_fills = sorted(
        (o.symbol, o.side, o.fill_date, o.qty, o.fill_price, o.commission)
        for o in result.orders
        if o.fill_date is not None
    )
    their_fills = sorted(strategy.fills)
    price_gap = qty_gap = fee_gap = 0.0
    if len(our_fills) == len(their_fills):
        for a, b in zip(our_fills, their_fills, strict=True):
            if a[:3] == b[:3]:
                qty_gap = max(qty_gap, abs(a[3] - b[3]))
                price_gap = max(price_gap, abs(a[4] - b[4]) / b[4])
                fee_gap = max(fee_gap, abs(a[5] - b[5]))
    final_ours = result.days[-1].equity
    ratio = statistics.median(our_times) / statistics.median(their_times)
    print()
    print(f"round trips: ours {len(our_trips)}, backtrader {len(bt_trips)}, identical {len(same)}")
    print(f"  only ours: {len(only_ours)} {only_ours[:5]}")
    print(f"  only backtrader: {len(only_theirs)} {only_theirs[:5]}")
    print(
        f"fills: ours {len(our_fills)}, backtrader {len(their_fills)}; largest gaps on matching "
        f"fills: qty {qty_gap:.2e}, price {price_gap:.2e} (relative), commission {fee_gap:.2e}"
    )
    print(
        f"orders refused: ours {len(result.denied)} by the risk gate + "
        f"{sum(o.status == 'rejected' for o in result.orders)} at the fill; backtrader "
        f"{strategy.skipped_for_cash} skipped for cash + {strategy.rejected} rejected"
    )
    print(
        f"final equity: ours {final_ours:,.2f}, backtrader {final_theirs:,.2f} "
        f"(difference {final_ours / final_theirs - 1:+.2e})"
    )
    print(
        f"wall seconds, median of {args.runs}: ours {statistics.median(our_times):.2f}, "
        f"backtrader {statistics.median(their_times):.2f}; ours / backtrader = {ratio:.2f}"
    )


if __name__ == "__main__":
    main()
