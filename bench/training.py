"""Full training of the 32-symbol watchlist on this machine, and prediction latency.

    .venv/bin/python -m bench.training [--runs 3]

Each run trains the default pooled ensemble (3 LightGBM + 3 XGBoost members) in a fresh
process on 5 years of real daily bars ending 2021-12-31, and reports wall seconds and the
process's peak RSS; then times predicting all 32 symbols for one day (features + ensemble).
Prints medians; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

CHILD = r"""
import json, resource, time
from datetime import date
from app.config import DEFAULT_WATCHLIST
from app.ai.ensemble import train
from app.ai.features import latest_features
from app.market.calendar import CsvMarketData
from tests.support import SHARED_DATA
symbols = DEFAULT_WATCHLIST.split(",")
bars = CsvMarketData(SHARED_DATA).get_daily_bars(symbols, date(2016, 6, 1), date(2021, 12, 31))
t0 = time.perf_counter()
bundle = train(bars, bars["SPY"], "pooled", date(2021, 12, 29))
train_s = time.perf_counter() - t0
latencies = []
for _ in range(20):
    t1 = time.perf_counter()
    bundle.predict(latest_features(bars, bars["SPY"], date(2021, 12, 31)))
    latencies.append(time.perf_counter() - t1)
latencies.sort()
print(json.dumps({
    "train_seconds": train_s,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "predict_p50_ms": latencies[len(latencies) // 2] * 1000,
    "predict_p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        started = time.perf_counter()
        out = (
            subprocess.run(
                [sys.executable, "-c", CHILD],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        result = json.loads(out)
        result["process_seconds"] = time.perf_counter() - started
        runs.append(result)
        print(
            f"run {i + 1}: train {result['train_seconds']:.1f} s, peak RSS "
            f"{result['peak_rss_mb']:.0f} MB, predict 32 symbols p50 "
            f"{result['predict_p50_ms']:.1f} ms / p95 {result['predict_p95_ms']:.1f} ms"
        )
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(
        f"median of {args.runs}: full training of 32 symbols x 5.5 years (pooled, 3+3 members, "
        f"{os.cpu_count()} cores) {med['train_seconds']:.1f} s wall, peak RSS "
        f"{med['peak_rss_mb']:.0f} MB; prediction for 32 symbols p50 "
        f"{med['predict_p50_ms']:.1f} ms, p95 {med['predict_p95_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
