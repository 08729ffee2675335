"""Reading and validating every file of ../shared/data/broad (646 stocks, 46 ETFs) cold.

Why: a broad backtest, and every worker its walk-forward windows fan out to, starts by loading
the whole universe; CsvMarketData parses and validates each file once per instance, so this is
the start-up cost each of them pays.

    .venv/bin/python -m bench.broad_data [--runs 3]

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections import Counter
from pathlib import Path

from app.market.sources import CsvMarketData

BROAD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "broad"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # one line per defect file: not what is measured
    seconds: list[float] = []
    for _ in range(args.runs):
        started = time.perf_counter()
        source = CsvMarketData(BROAD)
        results = [source.validation(s) for s in source.available_symbols()]
        seconds.append(time.perf_counter() - started)
    codes = Counter(code for r in results for rejection in r.rejected for code in rejection.codes)
    kept = sum(len(r.clean_frame) for r in results)
    rejected = sum(len(r.rejected) for r in results)
    print(f"files: {len(results)}, bars kept: {kept}, bars rejected: {rejected}")
    print("rejection codes: " + ", ".join(f"{k}={v}" for k, v in sorted(codes.items())))
    print(
        f"read + validate, {args.runs} runs: median {statistics.median(seconds):.2f} s "
        f"({', '.join(f'{s:.2f}' for s in seconds)})"
    )


if __name__ == "__main__":
    main()
