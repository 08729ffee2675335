"""Optuna trials per minute of the tuning objective on the 32-symbol watchlist data.

Why: the tuning budget (n_trials vs timeout) is only meaningful if we know what a trial costs.
Same objective as production tuning (``app.ai.tuning.optimize``): pooled mode, training
window 2016-01-01..2018-12-31 (bars from 2015-06 for the 120-bar warm-up), 4 expanding
walk-forward folds scored by mean daily rank IC, 1 LightGBM + 1 XGBoost member per fold, the
default search space (n_estimators 50..300), TPE + median pruning. Each run is a fresh study
in a fresh SQLite file (or, with --storage-url, a fresh study name there) with a fixed trial
budget; the figure is the median of the runs. Features are built once, outside the timing.

    .venv/bin/python -m bench.optuna_trials [--runs 3] [--n-trials 20] [--storage-url URL]

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

# Before lightgbm/xgboost load (see app/ai/__init__.py): spinning OpenMP threads on a shared box.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import optuna

from app.ai.features import build_features
from app.ai.params import SearchSpace
from app.ai.tuning import DEFAULT_N_FOLDS, optimize
from app.market.sources import CsvMarketData

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data" / "daily"
BARS_START, TRAIN_START, TRAIN_END = "2015-06-01", "2016-01-01", "2018-12-31"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n-trials", type=int, default=20)
    parser.add_argument("--storage-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    t0 = time.perf_counter()
    market = CsvMarketData(DATA_DIR)
    symbols = market.available_symbols()
    bars = market.get_daily_bars(symbols, BARS_START, TRAIN_END)
    features = build_features(bars, bars.get("SPY"))
    print(f"{len(symbols)} symbols, {len(features)} feature rows, {time.perf_counter() - t0:.1f}s")
    space = SearchSpace()
    print(
        f"settings: mode=pooled, train {TRAIN_START}..{TRAIN_END}, {DEFAULT_N_FOLDS} folds, "
        f"members 1 LightGBM + 1 XGBoost, n_estimators {space.n_estimators}, "
        f"{args.n_trials} trials per run, {args.runs} runs, TPE (seed = run) + MedianPruner, "
        f"storage {'SQLite (fresh file per run)' if args.storage_url is None else 'given URL'}, "
        f"{os.cpu_count()} CPUs"
    )

    rates: list[float] = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            url = args.storage_url or f"sqlite:///{Path(tmp) / 'optuna.db'}"
            summary = optimize(
                bars,
                bars.get("SPY"),
                mode="pooled",
                storage_url=url,
                study_name=f"bench-{uuid.uuid4().hex[:8]}",
                n_trials=args.n_trials,
                timeout=3600,
                train_start=TRAIN_START,
                train_end=TRAIN_END,
                best_params_dir=Path(tmp) / "best_params",
                seed=run,
                features=features,
            )
        rates.append(summary["trials_per_minute"])
        print(
            f"run {run}: {summary['n_trials_done']} trials ({summary['n_complete']} complete, "
            f"{summary['n_pruned']} pruned) in {summary['seconds']:.1f}s "
            f"(+{summary['setup_seconds']:.1f}s setup) = {summary['trials_per_minute']:.1f} "
            f"trials/min; best mean rank IC {summary['best_value']:.4f}"
        )
    print(f"median: {statistics.median(rates):.1f} trials/min over {args.runs} runs")


if __name__ == "__main__":
    main()
