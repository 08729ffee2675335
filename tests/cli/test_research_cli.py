"""`flask --app app backtest` prints turnover and average holding beside the benchmarks and
refuses a placebo it cannot run; `evaluate` reports rank IC, its t-statistics and the
reliability table for the label horizon it was given."""

from __future__ import annotations

import json
from pathlib import Path

from flask import Flask

from tests.support import SHARED_DATA


def test_backtest_prints_turnover_holding_and_benchmarks(app: Flask, tmp_path: Path) -> None:
    out = tmp_path / "bt.json"
    args = [
        "backtest",
        "--data-dir",
        str(SHARED_DATA),
        "--symbols",
        "AAPL,KO,XOM,JPM",
        "--start",
        "2019-01-01",
        "--end",
        "2019-12-31",
        "--model",
        "sma_cross",
        "--output",
        str(out),
    ]
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 0, result.output
    perf = json.loads(out.read_text())["performance"]
    assert perf["num_trades"] > 0
    assert f"turnover={perf['turnover']}" in result.output
    assert f"avg_holding_days={perf['avg_holding_days']}" in result.output
    assert "spy_buy_and_hold: total_return=" in result.output
    assert "equal_weight_buy_and_hold: total_return=" in result.output
    placebo = app.test_cli_runner().invoke(args=[*args, "--placebo"])
    assert placebo.exit_code != 0
    assert "placebo needs walk-forward retraining" in placebo.output


def test_evaluate_reports_rank_ic_t_and_reliability(app: Flask, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    result = app.test_cli_runner().invoke(
        args=[
            "evaluate",
            "--data-dir",
            str(SHARED_DATA),
            "--symbols",
            "AAPL,KO,XOM,JPM,MSFT,PG",
            "--start",
            "2019-01-02",
            "--end",
            "2019-04-30",
            "--train-years",
            "3",
            "--retrain-every",
            "126",
            "--horizon",
            "5",
            "--label-normalisation",
            "excess",
            "--output",
            str(out),
        ]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["horizon"] == 5
    assert "pooled (h=5 excess)" in result.output
    assert f"rank IC t {metrics['rank_ic_t']:.4f}" in result.output
    assert "rank IC t (non-overlapping)" in result.output
    rows = [line for line in result.output.splitlines() if line.startswith("  0.")]
    assert rows
    assert len(rows) == len(metrics["reliability"])
