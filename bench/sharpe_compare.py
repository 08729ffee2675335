"""How sure is "A's Sharpe is higher than B's"? A paired block bootstrap of backtest reports.

Reads the JSON of ``flask --app app backtest --output``. The first report, A, is compared with
every other report given (another model, momentum, a placebo...) and with its own SPY and
equal-weight buy-and-hold curves. Each pair of equity curves is taken on the dates both have;
their daily returns are resampled in circular blocks of ``--block`` sessions (keeping
autocorrelation and volatility clusters), the same blocks for both (keeping their correlation).
Prints each Sharpe (daily, annualised, rf = 0), the gap, a 90 % interval of the gap and the
share of resamples in which A's Sharpe is higher (a tie counts half: identical curves give 50 %).

    python -m bench.sharpe_compare A.json [B.json C.json ...] [--placebo P.json] [--resamples 5000]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
ANNUAL = np.sqrt(252.0)
BENCHMARKS = ("spy_buy_and_hold", "equal_weight_buy_and_hold")


def equity_curves(path: Path) -> pd.DataFrame:
    """The report's equity curve and its benchmarks' (NaN where a benchmark has no value),
    indexed by session."""
    rows = json.loads(path.read_text())["equity_curve"]
    columns = [key for key in ("equity", *BENCHMARKS) if rows and key in rows[0]]
    return pd.DataFrame(
        {key: [np.nan if r[key] is None else float(r[key]) for r in rows] for key in columns},
        index=pd.DatetimeIndex([r["date"] for r in rows]),
    )


def sharpe(returns: FloatArray, axis: int = -1) -> FloatArray:
    """Annualised Sharpe ratio along `axis`; 0 for a series that never moves."""
    mean, std = returns.mean(axis=axis), returns.std(axis=axis, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.where(std > 0, ANNUAL * mean / std, 0.0))


def block_indices(n: int, block: int, resamples: int, rng: np.random.Generator) -> IntArray:
    """Circular block bootstrap: `resamples` rows of n indices built from random blocks."""
    starts = rng.integers(0, n, size=(resamples, -(-n // block)))
    idx = (starts[:, :, None] + np.arange(block)[None, None, :]) % n
    return np.asarray(idx.reshape(resamples, -1)[:, :n], dtype=np.int64)


@dataclass(frozen=True)
class Comparison:
    """A's Sharpe against B's over their common sessions, and the bootstrap's verdict."""

    name: str
    sharpe_a: float
    sharpe_b: float
    returns: int  # paired daily returns
    share_a_higher: float  # of the resamples, a tie counted half
    low: float  # 5th percentile of the resampled gap
    high: float  # 95th

    @property
    def gap(self) -> float:
        return self.sharpe_a - self.sharpe_b


def compare(
    a: pd.Series,
    b: pd.Series,
    name: str,
    *,
    block: int = 20,
    resamples: int = 5000,
    seed: int = 0,
) -> Comparison:
    """Paired circular block bootstrap of two equity curves on the sessions both have."""
    paired = pd.concat([a, b], axis=1, join="inner").dropna()
    returns = paired.pct_change().iloc[1:].to_numpy(dtype=np.float64)
    if len(returns) < 2:
        raise ValueError(f"{name}: fewer than 2 paired daily returns")
    ra, rb = returns[:, 0], returns[:, 1]
    idx = block_indices(len(ra), block, resamples, np.random.default_rng(seed))
    gap = sharpe(ra[idx]) - sharpe(rb[idx])
    low, high = np.percentile(gap, [5, 95])
    return Comparison(
        name=name,
        sharpe_a=float(sharpe(ra)),
        sharpe_b=float(sharpe(rb)),
        returns=len(ra),
        share_a_higher=float((gap > 0).mean() + 0.5 * (gap == 0).mean()),
        low=float(low),
        high=float(high),
    )


def _names(paths: Sequence[Path]) -> list[str]:
    """Each report's file stem, or its whole path where two stems are alike."""
    stems = [p.stem for p in paths]
    return [s if stems.count(s) == 1 else str(p) for s, p in zip(stems, paths, strict=True)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("reports", type=Path, nargs="+", help="A, then the reports to compare")
    parser.add_argument("--placebo", type=Path, help="one more report, named placebo")
    parser.add_argument("--resamples", type=int, default=5000)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = _names(args.reports)
    first = equity_curves(args.reports[0])
    others = [
        (name, equity_curves(path)["equity"])
        for name, path in zip(names[1:], args.reports[1:], strict=True)
    ]
    if args.placebo:
        others.append(("placebo", equity_curves(args.placebo)["equity"]))
    others += [(key, first[key]) for key in BENCHMARKS if key in first]
    a = names[0]
    returns = first["equity"].pct_change().iloc[1:].to_numpy(dtype=np.float64)
    print(f"{a} Sharpe {float(sharpe(returns)):.3f} ({len(returns)} daily returns)")
    for name, curve in others:
        c = compare(
            first["equity"], curve, name, block=args.block, resamples=args.resamples, seed=args.seed
        )
        print(
            f"{a} vs {name}: Sharpe {c.sharpe_a:.3f} vs {c.sharpe_b:.3f}, gap {c.gap:+.3f}, "
            f"90 % interval [{c.low:+.2f}, {c.high:+.2f}], {a} higher in "
            f"{c.share_a_higher * 100:.1f} % of {args.resamples} block resamples "
            f"(block {args.block}, {c.returns} paired daily returns)"
        )


if __name__ == "__main__":
    main()
