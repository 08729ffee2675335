"""Six-year walk-forward backtest of the live strategy on the real daily bars, 2016-2021.

Why: the only honest figure of the whole system (model, thresholds, decision, risk gate, costs)
is a walk-forward replay where every model saw only labels known before its window. Two runs:

- "defaults": everything from Settings' defaults, as the service runs out of the box: pooled
  model, TRAIN_YEARS=5, retrained every 63 sessions, a 10-session label, the day's top 3 names
  bought above the floors (predicted >= +0.01 %, confidence >= 0.5; SELL <= -0.5 %; chosen on
  2008-2015, docs/research.md), SIM_COMMISSION_BPS=0, SIM_SLIPPAGE_BPS=5, the seed's risk caps
  (7 positions, 80 % exposure, 10 % per position, -5 % stop, +10 % target, -2 % day).
- "trading": the same with the README's former loosened floors: buy >= +0.1 %,
  sell <= -0.1 %, confidence >= 0.53.

All 32 symbols of /work/shared/data/daily. Writes bench/out/backtest_2016_2021.{json,html,png}
(defaults) and bench/out/backtest_2016_2021_trading.{json,html,png}; prints the figures beside
SPY and equal-weight buy-and-hold, wall seconds and peak RSS. Asserts nothing.

    .venv/bin/python -m bench.backtest_walkforward

`--fanout`: the walk-forward windows of a medium run (all 32 symbols, 2016-2021, retrained every
63 sessions: 24 windows, Settings' defaults otherwise) trained in-process, then on 1 and on 2 Celery
worker processes (one slot each, as two machines would be) against Redis (BENCH_REDIS_URL,
default db 7, flushed) and a scratch SQLite database. Workers start fresh for every run (each
loads and featurises the bars once, as for any new run); their start-up is not timed. Prints
the median of `--repeats` runs per path (windows and whole run) and whether each run's orders
and equity equal the in-process run's.

    .venv/bin/python -m bench.backtest_walkforward --fanout --repeats 3

`--broad`: the same on the broad universe (646 stocks of /work/shared/data/broad, its ETFs as
features), 2008-01-01..2021-12-31, the default cadence (56 windows): the issue's "one worker"
and "two workers" figures. `--paths` picks the paths, e.g. `--paths "1 worker,2 workers"`.

    .venv/bin/python -m bench.backtest_walkforward --fanout --broad --repeats 1 \
        --paths "1 worker,2 workers"
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from datetime import date
from pathlib import Path
from typing import Any

# Before lightgbm/xgboost load (see app/ai/__init__.py): spinning OpenMP threads on a shared box.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from app.backtest.report import write_reports
from app.backtest.requests import BacktestRequest, run_request
from app.config import Settings
from app.market.sources import CsvMarketData
from bench.walkforward_fanout import BROAD, MEDIUM, PATHS, fanout

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data" / "daily"
OUT_DIR = ROOT / "bench" / "out"
START, END = date(2016, 1, 1), date(2021, 12, 31)
TRADING_THRESHOLDS = {
    "buy_threshold": 0.001,
    "sell_threshold": -0.001,
    "confidence_threshold": 0.53,
}

ROWS: list[tuple[str, str, str]] = [
    ("Total return", "total_return", "pct"),
    ("CAGR", "annualized_return", "pct"),
    ("Annualised volatility", "annualized_volatility", "pct"),
    ("Sharpe", "sharpe_ratio", "num"),
    ("Sortino", "sortino_ratio", "num"),
    ("Calmar", "calmar_ratio", "num"),
    ("Max drawdown", "max_drawdown", "pct"),
    ("Longest drawdown (sessions)", "max_drawdown_duration_days", "int"),
    ("Final equity", "final_equity", "num0"),
    ("Trades (closed)", "num_trades", "int"),
    ("Open at the end", "open_trades", "int"),
    ("Win rate", "win_rate", "pct"),
    ("Profit factor", "profit_factor", "num"),
    ("Expectancy per trade", "expectancy", "num"),
    ("Expectancy per trade (%)", "expectancy_pct", "pct"),
    ("Average holding (sessions)", "avg_holding_days", "num"),
    ("Average exposure", "exposure", "pct"),
    ("Time in market", "time_in_market", "pct"),
    ("Turnover (x equity / year)", "turnover", "num"),
    ("Commission paid", "commission_paid", "num0"),
]


def fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{value * 100:.2f}%"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "num0":
        return f"{value:,.0f}"
    return f"{value:.2f}"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(name: str, settings: Settings, market: CsvMarketData, **overrides: Any) -> dict[str, Any]:
    symbols = tuple(market.available_symbols())
    request = BacktestRequest(symbols=symbols, start=START, end=END, **overrides)
    started = time.perf_counter()
    result = run_request(request, settings, market)
    backtest_seconds = time.perf_counter() - started
    stem = "backtest_2016_2021" + ("" if name == "defaults" else f"_{name}")
    report = write_reports(
        result,
        json_path=OUT_DIR / f"{stem}.json",
        html_path=OUT_DIR / f"{stem}.html",
        png_path=OUT_DIR / f"{stem}.png",
        title=f"Alpha Trader walk-forward backtest 2016-2021 ({name})",
    )
    wall = time.perf_counter() - started
    report["timings"].update(
        wall_seconds=round(wall, 2),
        backtest_seconds=round(backtest_seconds, 2),
        peak_rss_mb=round(peak_rss_mb(), 1),
    )
    (OUT_DIR / f"{stem}.json").write_text(json.dumps(report, indent=1))
    model = report["model"]
    print(
        f"[{name}] {len(symbols)} symbols, {report['params']['sessions']} sessions, "
        f"{len(model['retrains'])} retrains ({model['train_seconds']:.1f}s training), "
        f"signals {model['signal_counts']}, thresholds {model['thresholds']}"
    )
    print(
        f"[{name}] wall {wall:.1f}s (backtest {backtest_seconds:.1f}s incl. training, "
        f"engine {result.seconds:.1f}s), peak RSS so far {peak_rss_mb():.0f} MB; "
        f"written {OUT_DIR / stem}.json/.html/.png"
    )
    return report


def print_table(reports: dict[str, dict[str, Any]]) -> None:
    first = next(iter(reports.values()))
    columns: list[tuple[str, dict[str, Any]]] = [
        (f"strategy ({name})", report["performance"]) for name, report in reports.items()
    ]
    columns += [
        ("SPY buy&hold", first["benchmarks"].get("spy_buy_and_hold", {})),
        ("EW buy&hold", first["benchmarks"].get("equal_weight_buy_and_hold", {})),
    ]
    width = max(len(label) for label, _k, _f in ROWS) + 2
    print()
    print(" " * width + "".join(f"{name:>22}" for name, _ in columns))
    for label, key, kind in ROWS:
        cells = "".join(f"{fmt(col.get(key), kind):>22}" for _name, col in columns)
        print(f"{label:<{width}}{cells}")
    for bench_key, bench_label in (
        ("spy_buy_and_hold", "SPY"),
        ("equal_weight_buy_and_hold", "EW"),
    ):
        for what, kind in (("total_return", "total"), ("annualized_return", "CAGR")):
            cells = "".join(
                f"{fmt(report['excess_return'][bench_key][what], 'pct'):>22}"
                for report in reports.values()
            )
            print(f"{f'Excess {kind} vs {bench_label}':<{width}}{cells}")
    for name, report in reports.items():
        print(f"[{name}] exit reasons {report['exit_reasons']}; denied {report['denied_by_rule']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["defaults", "trading"], help="run one configuration")
    parser.add_argument("--fanout", action="store_true", help="time the windows' fan-out")
    parser.add_argument("--repeats", type=int, default=3, help="runs per path with --fanout")
    parser.add_argument(
        "--broad", action="store_true", help="--fanout on the broad universe, 2008-2021"
    )
    parser.add_argument(
        "--paths",
        default=",".join(PATHS),
        help="--fanout paths to time, comma-separated (first one is the ratios' base)",
    )
    args = parser.parse_args()
    if args.fanout:
        paths = [p.strip() for p in args.paths.split(",")]
        if unknown := set(paths) - set(PATHS):
            parser.error(f"--paths: unknown {sorted(unknown)}; choose from {list(PATHS)}")
        fanout(args.repeats, BROAD if args.broad else MEDIUM, paths)
        return
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    market = CsvMarketData(DATA_DIR)
    reports: dict[str, dict[str, Any]] = {}
    if args.only in (None, "defaults"):
        reports["defaults"] = run("defaults", settings, market)
    if args.only in (None, "trading"):
        reports["trading"] = run("trading", settings, market, **TRADING_THRESHOLDS)
    print_table(reports)


if __name__ == "__main__":
    main()
