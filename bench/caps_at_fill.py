"""How many entries end above RISK_MAX_POSITION_SIZE at their fill, with and without the gap
margin (issue 12, item 6).

Why: entries are decided on the close and fill at the next open plus slippage; sized exactly at
the cap, any gap up puts them over it. Runs the live strategy (SMA-cross signals, no model) over
the seeded synthetic market and over the real bars of /work/shared/data/daily, once with
RISK_ENTRY_GAP_MARGIN=0 (the old sizing) and once with the default, and prints for each the
number of filled entries, how many were above 10 % of the equity the decision saw, and the
largest. Asserts nothing.

    .venv/bin/python -m bench.caps_at_fill
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path

from app.backtest.engine import BacktestConfig, run_backtest
from app.backtest.signals import SmaCrossSignals
from app.config import Settings
from app.market.sources import CsvMarketData, SyntheticMarketData
from app.trading.risk import RiskLimits

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "daily"


def measure(name: str, bars: dict, symbols: tuple[str, ...], start: date, end: date) -> None:  # type: ignore[type-arg]
    base = RiskLimits.from_settings(Settings())
    for margin in (0.0, base.entry_gap_margin):
        config = BacktestConfig(
            symbols=symbols, start=start, end=end, limits=replace(base, entry_gap_margin=margin)
        )
        result = run_backtest(bars, config, SmaCrossSignals(bars, symbols))
        equity = {d.date: d.equity for d in result.days}
        buys = [
            o
            for o in result.orders
            if o.side == "buy" and o.kind == "decision" and o.fill_price is not None
        ]
        shares = [o.qty * (o.fill_price or 0.0) / equity[o.session] for o in buys]
        over = sum(1 for s in shares if s > base.max_position_size + 1e-9)
        print(
            f"{name:9s} margin {margin:.2f}: {len(buys)} entries filled, {over} above "
            f"{base.max_position_size:.0%} of equity at fill, max {max(shares, default=0):.2%}"
        )


def main() -> None:
    start, end = date(2019, 1, 2), date(2021, 12, 31)
    synthetic = SyntheticMarketData(start=date(2018, 1, 2), end=end)
    symbols = tuple(s for s in synthetic.available_symbols() if s != "SPY")
    bars = synthetic.get_daily_bars([*symbols, "SPY"], date(2018, 1, 2), end)
    measure("synthetic", bars, symbols, start, end)
    real = CsvMarketData(DATA_DIR)
    symbols = tuple(s for s in real.available_symbols() if s != "SPY")
    bars = real.get_daily_bars([*symbols, "SPY"], date(2018, 1, 2), end)
    measure("real", bars, symbols, start, end)


if __name__ == "__main__":
    main()
