"""The backtest engine alone (no model) against backtrader, same rule, same data, same costs.

Why: an independent engine is the cheapest check of the fill, cost and bookkeeping mechanics,
and it puts a number on our engine's speed. Rule: SMA 20/50 crossover on closes, long only;
after the close a cross above buys qty = floor(equity x 1/N / close, 4 decimals), a cross below
sells the whole position; orders fill at the next open with 5 bps slippage and 1 bps commission.

Ours runs it through the live decision (``strategy.decide``) with limits that never bind except
cash. The size cap is 2/N with a 100 % entry gap margin (``RISK_ENTRY_GAP_MARGIN``): entries are
still sized at 1/N, and the live rule that trims an entry which filled above the cap (a gap
wider than the margin) never fires (the largest open over the last close in these bars is
1.39x, NFLX 2013-01-24).
With a cap of 1/N and no margin, every entry that gapped up by a cent was trimmed the next
morning: 736 one-day round trips backtrader's rule does not have. The margin also values each
entry at twice its price against the cash, as the live buying-power rule does, so backtrader's
strategy applies the same cash rule: an entry must fit, at twice its value, in the cash (to the
cent) left after earlier entries of the same close; sizing sees equity to the cent too
(``strategy.closing_account``). 32 symbols of /work/shared/data/daily, 2004-01-01..2021-12-31.

    .venv/bin/python -m bench.backtest_vs_backtrader [--runs 3]

It prints IDENTICAL when both engines made the same round trips and fills (qty, price and
commission within 1e-9) and end at the same equity (1e-9 relative), and exits 1 otherwise.
Timing: wall seconds of each engine's run alone (bars loaded once, outside the clock; the
other engine's last run let go and collected first), median of `--runs`.

backtrader is a development requirement (requirements-dev.txt), never the service's.
tests/backtest/test_bench_rule.py runs this rule through both engines on a few symbols.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import backtrader as bt

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
#: Entries are valued at (1 + margin) x price against cash and caps; 1.0 keeps sizing exact
#: (a power of two: equity x 2/N / 2 is equity x 1/N to the last bit).
GAP_MARGIN = 1.0
#: What "identical" allows: float noise of two ledgers summing the same fills.
TOLERANCE = 1e-9

Fill = tuple[str, str, date, float, float, float]  # symbol, side, day, qty, price, commission
RoundTrip = tuple[str, date, date | None]  # symbol, entry fill day, exit fill day (None: open)


def ours(
    bars: Mapping[str, BarFrame],
    symbols: Sequence[str],
    start: date = START,
    end: date = END,
) -> BacktestResult:
    """The rule through our engine: the live decision with limits that bind only on cash."""
    weight = 1.0 / len(symbols)
    config = BacktestConfig(
        symbols=tuple(symbols),
        start=start,
        end=end,
        initial_capital=CAPITAL,
        commission_bps=COMMISSION_BPS,
        slippage_bps=SLIPPAGE_BPS,
        limits=RiskLimits(
            max_positions=len(symbols),
            # The buying-power rule is the one that binds: exposure counts entries at twice
            # their value too, and equity to the cent, so it could bind a cent earlier.
            max_exposure=2.0,
            max_position_size=weight * (1.0 + GAP_MARGIN),
            stop_loss_pct=-0.999,
            take_profit_pct=1e9,
            max_daily_loss=-0.999,
            entry_gap_margin=GAP_MARGIN,
        ),
        # A risk budget this large makes the volatility size always hit the size cap.
        strategy=StrategyConfig(risk_budget=1e9),
        intraday_exits=False,
    )
    return run_backtest(bars, config, SmaCrossSignals(bars, symbols, FAST, SLOW))


def _cents(amount: float) -> float:
    """Down to the cent, as ``strategy.closing_account`` counts equity and buying power."""
    return math.floor(amount * 100 + 1e-6) / 100


class SmaCross(bt.Strategy):  # type: ignore[misc]
    params = (("fast", FAST), ("slow", SLOW), ("weight", 1 / 32), ("margin", GAP_MARGIN))

    def __init__(self) -> None:
        self.averages = {
            d._name: (
                bt.indicators.SMA(d.close, period=self.p.fast),
                bt.indicators.SMA(d.close, period=self.p.slow),
            )
            for d in self.datas
        }
        self.by_name = sorted(self.datas, key=lambda d: d._name)
        self.fills: list[Fill] = []
        self.rejected = 0
        #: (close, symbol) of each entry the cash rule refused.
        self.skipped: list[tuple[date, str]] = []

    def prenext(self) -> None:  # symbols listed later (META 2012, ...) start without history
        self.next()

    def next(self) -> None:
        today = self.datetime.date(0)
        cash = self.broker.getcash()
        held_value = sum(
            self.getposition(d).size * float(d.close[0])
            for d in self.by_name
            if self.getposition(d).size and len(d)
        )
        equity = _cents(cash + held_value)
        cash = _cents(cash)
        sells, buys = [], []
        for d in self.by_name:
            if len(d) <= self.p.slow or d.datetime.date(0) != today:
                continue
            fast, slow = self.averages[d._name]
            held = self.getposition(d).size
            if fast[0] < slow[0] and fast[-1] >= slow[-1] and held > 0:
                sells.append(d)
            elif fast[0] > slow[0] and fast[-1] <= slow[-1] and held == 0:
                buys.append(d)
        for d in sells:
            self.close(data=d)
        for d in buys:
            price = float(d.close[0])
            qty = math.floor(equity * self.p.weight / price * QTY_SCALE) / QTY_SCALE
            worst = qty * price * (1.0 + self.p.margin)
            if worst > cash + 1e-6:  # the live risk gate's buying-power rule
                self.skipped.append((today, d._name))
                continue
            cash -= worst
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


@dataclass(frozen=True)
class TheirRun:
    """What backtrader's run leaves (its engine's objects are let go, so they weigh on no
    later run's garbage collection)."""

    fills: list[Fill]
    #: (close, symbol) of each entry the cash rule refused.
    skipped: list[tuple[date, str]]
    rejected: int
    final_equity: float


def theirs(bars: Mapping[str, BarFrame], symbols: Sequence[str]) -> TheirRun:
    """The rule through backtrader: its strategy, its broker, the same costs."""
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
    return TheirRun(
        strategy.fills, strategy.skipped, strategy.rejected, float(cerebro.broker.getvalue())
    )


def round_trips(fills: Sequence[Fill]) -> list[RoundTrip]:
    """Entry and exit days of each holding from a fill list (whole-position sells)."""
    open_at: dict[str, date] = {}
    trips: list[RoundTrip] = []
    for symbol, side, day, _qty, _price, _comm in sorted(fills, key=lambda f: (f[2], f[1])):
        if side == "buy":
            open_at[symbol] = day
        else:
            trips.append((symbol, open_at.pop(symbol), day))
    trips.extend((symbol, day, None) for symbol, day in open_at.items())
    return sorted(trips, key=_trip_key)


def _trip_key(trip: RoundTrip) -> tuple[date, str, date]:
    return trip[1], trip[0], trip[2] or date.max


def our_fills(result: BacktestResult) -> list[Fill]:
    return sorted(
        (o.symbol, o.side, o.fill_date, o.qty, o.fill_price, o.commission)
        for o in result.orders
        if o.fill_date is not None and o.fill_price is not None
    )


def our_round_trips(result: BacktestResult) -> list[RoundTrip]:
    return sorted(
        ((t.symbol, t.entry_date, None if t.open else t.exit_date) for t in result.trades),
        key=_trip_key,
    )


@dataclass
class Comparison:
    """How far the two engines' trades are apart; `identical` when within `TOLERANCE`."""

    trips_ours: list[RoundTrip]
    trips_theirs: list[RoundTrip]
    fills_ours: list[Fill]
    fills_theirs: list[Fill]
    final_ours: float
    final_theirs: float
    #: Largest gaps over fills matched by (symbol, side, day): qty, relative price, commission.
    gaps: dict[str, float] = field(default_factory=dict)
    unmatched_fills: int = 0

    @property
    def equity_gap(self) -> float:
        return abs(self.final_ours / self.final_theirs - 1.0)

    @property
    def identical(self) -> bool:
        return (
            self.trips_ours == self.trips_theirs
            and self.unmatched_fills == 0
            and max(self.gaps.values(), default=0.0) <= TOLERANCE
            and self.equity_gap <= TOLERANCE
        )


def compare(result: BacktestResult, run: TheirRun) -> Comparison:
    mine, theirs_ = our_fills(result), sorted(run.fills)
    comparison = Comparison(
        trips_ours=our_round_trips(result),
        trips_theirs=round_trips(run.fills),
        fills_ours=mine,
        fills_theirs=theirs_,
        final_ours=result.days[-1].equity,
        final_theirs=run.final_equity,
        gaps={"qty": 0.0, "price": 0.0, "commission": 0.0},
    )
    keyed = {f[:3]: f for f in theirs_}
    comparison.unmatched_fills = len(set(keyed) ^ {f[:3] for f in mine}) + abs(
        len(mine) - len(theirs_)
    )
    gaps = comparison.gaps
    for a in mine:
        b = keyed.get(a[:3])
        if b is not None:
            gaps["qty"] = max(gaps["qty"], abs(a[3] - b[3]))
            gaps["price"] = max(gaps["price"], abs(a[4] - b[4]) / b[4])
            gaps["commission"] = max(gaps["commission"], abs(a[5] - b[5]))
    return comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    market = CsvMarketData(DATA_DIR)
    symbols = tuple(market.available_symbols())
    bars = {s: f for s, f in market.get_daily_bars(symbols, START, END).items() if len(f)}
    bars_count = sum(len(f) for f in bars.values())
    print(f"{len(symbols)} symbols, {bars_count} bars, {START}..{END}")

    our_times, their_times = [], []
    result: BacktestResult | None = None
    run: TheirRun | None = None
    for n in range(args.runs):
        # Each engine starts from a clean heap: the other's last run is let go first.
        result = None
        gc.collect()
        t0 = time.perf_counter()
        result = ours(bars, symbols)
        our_times.append(time.perf_counter() - t0)
        run = None
        gc.collect()
        t0 = time.perf_counter()
        run = theirs(bars, symbols)
        their_times.append(time.perf_counter() - t0)
        print(f"run {n + 1}: ours {our_times[-1]:.2f}s, backtrader {their_times[-1]:.2f}s")
    assert result is not None
    assert run is not None

    c = compare(result, run)
    same = set(c.trips_ours) & set(c.trips_theirs)
    only_ours = sorted(set(c.trips_ours) - set(c.trips_theirs), key=str)
    only_theirs = sorted(set(c.trips_theirs) - set(c.trips_ours), key=str)
    ratio = statistics.median(their_times) / statistics.median(our_times)
    print()
    print(
        f"round trips: ours {len(c.trips_ours)}, backtrader {len(c.trips_theirs)}, "
        f"identical {len(same)}; exits by reason (ours): {result.exit_reasons()}"
    )
    print(f"  only ours: {len(only_ours)} {only_ours[:5]}")
    print(f"  only backtrader: {len(only_theirs)} {only_theirs[:5]}")
    print(
        f"fills: ours {len(c.fills_ours)}, backtrader {len(c.fills_theirs)}, unmatched "
        f"{c.unmatched_fills}; largest gaps on matching fills: qty {c.gaps['qty']:.2e}, "
        f"price {c.gaps['price']:.2e} (relative), commission {c.gaps['commission']:.2e}"
    )
    print(
        f"orders refused: ours {len(result.denied)} by the risk gate + "
        f"{sum(o.status == 'rejected' for o in result.orders)} at the fill; backtrader "
        f"{len(run.skipped)} skipped for cash + {run.rejected} rejected"
    )
    print(
        f"final equity: ours {c.final_ours:,.2f}, backtrader {c.final_theirs:,.2f} "
        f"(relative difference {c.equity_gap:.2e})"
    )
    verdict = "IDENTICAL" if c.identical else "DIFFERENT"
    print(
        f"trades: {verdict} (same round trips, every fill's symbol, side and day, qty, price "
        f"and commission within {TOLERANCE:g}, final equity within {TOLERANCE:g} relative)"
    )
    print(
        f"wall seconds, median of {args.runs}: ours {statistics.median(our_times):.2f}, "
        f"backtrader {statistics.median(their_times):.2f}; ours is {ratio:.1f}x backtrader's "
        "speed"
    )
    if not c.identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
