"""bench/sharpe_compare.py: the paired block bootstrap's share of resamples in which A's Sharpe
is higher is 100 % when A dominates B on every day's noise, 50 % for identical curves, and the
command compares any reports on the sessions they share, besides SPY and equal weight."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.sharpe_compare import compare, main

SESSIONS = pd.bdate_range("2019-01-02", periods=750)


def curve(returns: np.ndarray, index: pd.DatetimeIndex = SESSIONS) -> pd.Series:
    return pd.Series(100_000.0 * np.cumprod(1.0 + returns), index=index)


def noise(seed: int, mean: float = 0.0003) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, 0.01, len(SESSIONS))


def test_a_curve_that_earns_more_on_the_same_noise_is_higher_in_every_resample() -> None:
    base = noise(1)
    better, worse = curve(base + 0.001), curve(base)
    result = compare(better, worse, "worse", resamples=500)
    assert result.share_a_higher == 1.0
    assert result.gap > 0
    assert result.low > 0
    assert compare(worse, better, "better", resamples=500).share_a_higher == 0.0


def test_identical_curves_are_a_tie() -> None:
    same = curve(noise(2))
    result = compare(same, same.copy(), "same", resamples=500)
    assert result.share_a_higher == 0.5
    assert result.gap == 0.0
    assert result.low == result.high == 0.0


def test_independent_curves_the_clearly_better_one_wins_most_resamples() -> None:
    strong, weak = curve(noise(3, mean=0.002)), curve(noise(4, mean=0.0))
    forward = compare(strong, weak, "weak", resamples=1000)
    backward = compare(weak, strong, "strong", resamples=1000)
    assert forward.share_a_higher > 0.95
    assert forward.share_a_higher + backward.share_a_higher == pytest.approx(1.0)


def write_report(path: Path, equity: pd.Series) -> Path:
    rows = [
        {
            "date": day.date().isoformat(),
            "equity": value,
            "spy_buy_and_hold": 100_000.0 * (1.0 + 0.0001 * i),
            "equal_weight_buy_and_hold": None if i == 0 else 100_000.0 * (1.0 + 0.0002 * i),
        }
        for i, (day, value) in enumerate(equity.items())
    ]
    path.write_text(json.dumps({"equity_curve": rows}))
    return path


def test_the_command_compares_a_with_every_report_and_its_benchmarks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = noise(5)
    a = write_report(tmp_path / "model.json", curve(base + 0.001))
    b = write_report(tmp_path / "momentum.json", curve(base))
    # A report over part of A's sessions: paired on the 500 they share (499 returns).
    c = write_report(tmp_path / "late.json", curve(base[250:] + 0.002, SESSIONS[250:]))
    main([str(a), str(b), str(c), "--resamples", "300"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("model Sharpe ")
    by_name = {line.split(":")[0]: line for line in lines[1:]}
    assert set(by_name) == {
        "model vs momentum",
        "model vs late",
        "model vs spy_buy_and_hold",
        "model vs equal_weight_buy_and_hold",
    }
    assert "model higher in 100.0 % of 300 block resamples" in by_name["model vs momentum"]
    assert "model higher in 0.0 %" in by_name["model vs late"]
    assert "499 paired daily returns" in by_name["model vs late"]
    assert "748 paired daily returns" in by_name["model vs equal_weight_buy_and_hold"]
