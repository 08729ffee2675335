"""How sure is "higher Sharpe than SPY"? A paired block bootstrap of two backtest reports.

Reads the JSON of ``flask --app app backtest --output`` (the strategy, with its SPY and
equal-weight curves) and, optionally, a placebo's report. Daily returns are resampled in
blocks of ``--block`` sessions (keeping autocorrelation and volatility clusters), the same
blocks for every series (keeping their correlation). Prints each Sharpe, the bootstrap share
of resamples where the strategy's Sharpe exceeds the other's, and a 90 % interval of the gap.

    python -m bench.sharpe_compare bt.json [--placebo bt_placebo.json] [--resamples 5000]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
ANNUAL = np.sqrt(252.0)


def curves(path: Path) -> dict[str, FloatArray]:
    """Daily returns of the report's equity curve and of its two benchmarks."""
    rows = json.loads(path.read_text())["equity_curve"]
    out = {}
    for key in ("equity", "spy_buy_and_hold", "equal_weight_buy_and_hold"):
        values = np.asarray([float(r[key]) for r in rows])
        out[key] = values[1:] / values[:-1] - 1.0
    return out


def sharpe(returns: FloatArray, axis: int = -1) -> FloatArray:
    return np.asarray(ANNUAL * returns.mean(axis=axis) / returns.std(axis=axis, ddof=1))


def block_indices(n: int, block: int, resamples: int, rng: np.random.Generator) -> FloatArray:
    """Circular block bootstrap: `resamples` rows of n indices built from random blocks."""
    starts = rng.integers(0, n, size=(resamples, -(-n // block)))
    idx = (starts[:, :, None] + np.arange(block)[None, None, :]) % n
    return np.asarray(idx.reshape(resamples, -1)[:, :n])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--placebo", type=Path)
    parser.add_argument("--resamples", type=int, default=5000)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    series = curves(args.report)
    strategy = series.pop("equity")
    if args.placebo:
        series["placebo"] = curves(args.placebo)["equity"]
    rng = np.random.default_rng(args.seed)
    idx = block_indices(len(strategy), args.block, args.resamples, rng).astype(int)
    boot = sharpe(strategy[idx])
    print(f"strategy Sharpe {float(sharpe(strategy)):.3f} ({len(strategy)} daily returns)")
    for name, other in series.items():
        gap = boot - sharpe(other[idx])
        low, high = np.percentile(gap, [5, 95])
        print(
            f"vs {name}: Sharpe {float(sharpe(other)):.3f}, gap "
            f"{float(sharpe(strategy) - sharpe(other)):+.3f}, 90 % interval [{low:+.2f}, "
            f"{high:+.2f}], strategy higher in {float((gap > 0).mean()) * 100:.1f} % of "
            f"{args.resamples} block resamples (block {args.block})"
        )


if __name__ == "__main__":
    main()
