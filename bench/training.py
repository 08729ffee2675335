"""Training one model on this machine (the watchlist or a broad universe), and prediction latency.

    .venv/bin/python -m bench.training [--runs 3]
    .venv/bin/python -m bench.training --data-dir ../shared/data/broad [--years 5] [--runs 3]

Each run, in a fresh process: loads the bars (validated), builds the features with the
settings' label (AI_PREDICTION_HORIZON_DAYS=5, excess), trains the default pooled ensemble
(3 LightGBM + 3 XGBoost members) on every row labelled by 2021-12-29 (from `--years` before;
default 5.5 for the watchlist, all history for a broad directory), then times predicting every
symbol for one day (features from the last bars + ensemble) 20 times (5 for a broad directory).
A broad directory holds daily/ (stocks) and etf/ (SPY among them); both are loaded. Prints wall
seconds per stage, the process's peak RSS and the training matrix's rows x features, and their
medians; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
WATCHLIST_DIR = ROOT.parent / "shared" / "data" / "daily"

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import pandas as pd
from app.ai.features import FEATURE_COLUMNS, build_features, latest_features
from app.ai.training import train
from app.market.sources import CsvMarketData
data_dir, years, repeats = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
end = pd.Timestamp("2021-12-29")
start = end - pd.DateOffset(days=int(years * 365.25))
folders = [data_dir / "daily", data_dir / "etf"] if (data_dir / "daily").is_dir() else [data_dir]
t0 = time.perf_counter()
bars = {}
for folder in folders:
    market = CsvMarketData(folder)
    history_start = start - pd.DateOffset(days=200)  # warm-up of the first feature rows
    bars.update(market.get_daily_bars(market.available_symbols(), history_start, "2021-12-31"))
bars = {s: f for s, f in bars.items() if len(f)}
load_s = time.perf_counter() - t0
t1 = time.perf_counter()
features = build_features(bars, bars["SPY"], horizon=5, normalisation="excess")
features_s = time.perf_counter() - t1
t2 = time.perf_counter()
bundle = train(
    None, None, "pooled", end, features=features, train_start=start, horizon=5,
    normalisation="excess",
)
fit_s = time.perf_counter() - t2
latencies = []
for _ in range(repeats):
    t3 = time.perf_counter()
    bundle.predict(latest_features(bars, bars["SPY"], "2021-12-31"))
    latencies.append(time.perf_counter() - t3)
latencies.sort()
meta = bundle.metadata
print(json.dumps({
    "symbols": len(bars),
    "rows": meta["n_train_rows"] + meta["n_val_rows"] + meta["n_calibration_rows"],
    "features": len(FEATURE_COLUMNS),
    "load_seconds": load_s,
    "features_seconds": features_s,
    "fit_seconds": fit_s,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "predict_p50_ms": latencies[len(latencies) // 2] * 1000,
    "predict_p95_ms": latencies[max(int(len(latencies) * 0.95) - 1, 0)] * 1000,
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=WATCHLIST_DIR)
    parser.add_argument("--years", type=float, help="years of rows to train on")
    args = parser.parse_args()
    broad = (args.data_dir / "daily").is_dir()
    years = args.years if args.years is not None else (18.0 if broad else 5.5)
    repeats = 5 if broad else 20  # predictions timed per run
    runs = []
    for i in range(args.runs):
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(args.data_dir), str(years), str(repeats)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        ).stdout.strip()
        result = json.loads(out.splitlines()[-1])
        result["process_seconds"] = time.perf_counter() - started
        runs.append(result)
        print(
            f"run {i + 1}: {_line(result)}; predict {result['symbols']} symbols p50 "
            f"{result['predict_p50_ms']:.0f} ms / p95 {result['predict_p95_ms']:.0f} ms",
            flush=True,
        )
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(
        f"median of {args.runs} ({args.data_dir.name}, {years:g} years, pooled, 3+3 members, "
        f"{os.cpu_count()} cores): {_line(med)}; prediction for {med['symbols']:.0f} symbols "
        f"p50 {med['predict_p50_ms']:.0f} ms, p95 {med['predict_p95_ms']:.0f} ms"
    )


def _line(r: dict[str, float]) -> str:
    return (
        f"{r['rows']:,.0f} rows x {r['features']:.0f} features; load {r['load_seconds']:.1f} s, "
        f"features {r['features_seconds']:.1f} s, fit {r['fit_seconds']:.1f} s "
        f"(features + fit {r['features_seconds'] + r['fit_seconds']:.1f} s); "
        f"peak RSS {r['peak_rss_mb']:,.0f} MB"
    )


if __name__ == "__main__":
    main()
