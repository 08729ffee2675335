"""The deflated Sharpe ratio against the worked example of Bailey & López de Prado (2014)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.backtest.deflated_sharpe import (
    deflated_sharpe_ratio,
    expected_max_sharpe,
    probabilistic_sharpe_ratio,
)


def test_the_papers_numerical_example() -> None:
    # N = 100 trials, annualised V[SR] = 0.5, T = 1250 daily returns, skew -3, kurtosis 10,
    # annualised SR 2.5 (250 days a year): SR0 = 0.1132 (1.7907 annualised), DSR = 0.9004.
    sr0 = expected_max_sharpe(100, 0.5 / 250)
    assert sr0 == pytest.approx(0.1132, abs=5e-5)
    dsr = probabilistic_sharpe_ratio(2.5 / math.sqrt(250), sr0, 1250, -3.0, 10.0)
    assert dsr == pytest.approx(0.9004, abs=5e-5)


def test_one_trial_is_not_deflated_and_more_trials_deflate_more() -> None:
    assert expected_max_sharpe(1, 0.01) == 0.0
    assert expected_max_sharpe(10, 0.01) < expected_max_sharpe(100, 0.01)
    with pytest.raises(ValueError, match="n_trials"):
        expected_max_sharpe(0, 0.01)


def test_deflated_sharpe_of_returns_matches_an_independent_computation() -> None:
    rng = np.random.default_rng(3)
    returns = rng.standard_t(5, 1500) * 0.01 + 0.0008
    trials = [0.01, 0.03, 0.05, 0.02, 0.04, 0.06, 0.00, 0.035]
    out = deflated_sharpe_ratio(returns, n_trials=len(trials), trial_sharpes=trials)
    # Independent: moments by hand, the normal CDF through math.erf.
    sr = returns.mean() / returns.std(ddof=1)
    z = (returns - returns.mean()) / returns.std()
    skew, kurt = (z**3).mean(), (z**4).mean()
    e_max = math.sqrt(np.var(trials, ddof=1)) * (
        (1 - 0.5772156649) * 1.1503493803760079  # scipy.stats.norm.ppf(1 - 1/8)
        + 0.5772156649 * 1.6850969900384320  # scipy.stats.norm.ppf(1 - 1/(8e))
    )
    stat = (
        (sr - e_max)
        * math.sqrt(len(returns) - 1)
        / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2)
    )
    expected = 0.5 * (1 + math.erf(stat / math.sqrt(2)))
    assert out["expected_max_sharpe_per_period"] == pytest.approx(e_max, rel=1e-6)
    assert out["deflated_sharpe_ratio"] == pytest.approx(expected, rel=1e-6)
    assert out["psr_vs_zero"] > out["deflated_sharpe_ratio"]
    assert out["kurtosis"] > 3.5  # fat tails of the t(5) returns are measured


def test_flat_returns_are_refused() -> None:
    with pytest.raises(ValueError, match="variation"):
        deflated_sharpe_ratio(np.zeros(100), n_trials=3, trial_sharpes=[0.1, 0.2, 0.3])
