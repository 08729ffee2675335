"""The deflated Sharpe ratio (Bailey & López de Prado, 2014, "The Deflated Sharpe Ratio:
Correcting for Selection Bias, Backtest Overfitting and Non-Normality").

Why: the best of N backtests has a high Sharpe ratio even when none has skill. The DSR is the
probability that the true Sharpe ratio exceeds the one expected from the best of N unskilled
trials, given the sample length and the returns' skewness and kurtosis. All Sharpe ratios here
are per period (e.g. daily), not annualised. Standard library only (``statistics.NormalDist``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

__all__ = ["deflated_sharpe_ratio", "expected_max_sharpe", "probabilistic_sharpe_ratio"]

EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """SR0: the expected maximum Sharpe ratio of `n_trials` unskilled trials whose Sharpe ratios
    vary with `sharpe_variance` (the paper's eq. for E[max SR_n], via extreme value theory)."""
    if n_trials < 1:
        raise ValueError("n_trials must be >= 1")
    if n_trials == 1:
        return 0.0
    first = _NORMAL.inv_cdf(1.0 - 1.0 / n_trials)
    second = _NORMAL.inv_cdf(1.0 - 1.0 / (n_trials * math.e))
    return math.sqrt(sharpe_variance) * ((1.0 - EULER_GAMMA) * first + EULER_GAMMA * second)


def probabilistic_sharpe_ratio(
    sharpe: float, benchmark: float, n_obs: int, skewness: float, kurtosis: float
) -> float:
    """P(true SR > `benchmark`) for an estimated per-period `sharpe` over `n_obs` returns with
    the given skewness and (non-excess) kurtosis: Bailey & López de Prado's PSR."""
    if n_obs < 2:
        raise ValueError("n_obs must be >= 2")
    denominator = 1.0 - skewness * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if denominator <= 0:
        raise ValueError("skewness/kurtosis give a non-positive variance of the Sharpe ratio")
    z = (sharpe - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(denominator)
    return _NORMAL.cdf(z)


def deflated_sharpe_ratio(
    returns: npt.ArrayLike, n_trials: int, trial_sharpes: Sequence[float]
) -> dict[str, float]:
    """DSR of per-period `returns`, chosen among `n_trials` configurations whose per-period
    Sharpe ratios were `trial_sharpes` (their variance estimates V[SR_n])."""
    r = np.asarray(returns, dtype=np.float64)
    r = r[np.isfinite(r)]
    if len(r) < 3 or float(np.std(r)) == 0.0:
        raise ValueError("need at least 3 returns with some variation")
    sharpe = float(np.mean(r) / np.std(r, ddof=1))
    centred = r - r.mean()
    sd = float(np.sqrt(np.mean(centred**2)))
    skewness = float(np.mean(centred**3) / sd**3)
    kurtosis = float(np.mean(centred**4) / sd**4)
    variance = float(np.var(trial_sharpes, ddof=1)) if len(trial_sharpes) > 1 else 0.0
    benchmark = expected_max_sharpe(n_trials, variance)
    return {
        "sharpe_per_period": sharpe,
        "expected_max_sharpe_per_period": benchmark,
        "n_trials": float(n_trials),
        "n_obs": float(len(r)),
        "skewness": skewness,
        "kurtosis": kurtosis,
        "psr_vs_zero": probabilistic_sharpe_ratio(sharpe, 0.0, len(r), skewness, kurtosis),
        "deflated_sharpe_ratio": probabilistic_sharpe_ratio(
            sharpe, benchmark, len(r), skewness, kurtosis
        ),
    }
