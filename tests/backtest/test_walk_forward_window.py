"""A walk-forward window is a pure work unit: what it returns depends on the bars, the window and
the config only (not on the other windows, their order or the process), and it travels through a
task message exactly."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date

import numpy as np
import pytest

from app.backtest.feature_source import SourceData, load_source, source_of
from app.backtest.walk_forward import WalkForwardPredictor
from app.backtest.walk_forward_window import (
    WalkForwardConfig,
    WindowResult,
    plan_windows,
    run_window,
)
from app.backtest.window import backtest_sessions, load_bars
from app.domain import BarFrame
from app.market.sources import CsvMarketData
from tests.backtest.test_backtest import SMALL_MODEL
from tests.support import SHARED_DATA

SYMBOLS = ("AAPL", "KO", "XOM", "JPM")
PLACEBO = WalkForwardConfig(
    retrain_every=21, train_years=1.0, n_lgbm=1, n_xgb=1, params=SMALL_MODEL, shuffle_labels=True
)


@pytest.fixture(scope="module")
def bars() -> dict[str, BarFrame]:
    return load_bars(CsvMarketData(SHARED_DATA), SYMBOLS, date(2018, 6, 1), date(2020, 3, 31))


def test_a_window_alone_equals_the_same_window_after_the_others(
    bars: dict[str, BarFrame],
) -> None:
    sessions = backtest_sessions(bars, SYMBOLS, date(2020, 1, 2), date(2020, 3, 31))
    in_order = WalkForwardPredictor(bars, sessions, SYMBOLS, PLACEBO)
    for day in sessions:
        in_order.predictions(day, {})
    last = len(in_order.plan) - 1
    assert last >= 2
    alone = run_window(in_order.plan[last], SourceData(bars))
    got, want = alone, in_order.window(last)
    assert got.sessions == want.sessions
    assert got.symbols == want.symbols
    assert np.array_equal(got.values, want.values)
    # and the shuffle did something: the placebo differs from the real model's window
    real = run_window(
        replace(in_order.plan[last], config=replace(PLACEBO, shuffle_labels=False)),
        SourceData(bars),
    )
    assert not np.array_equal(real.values, got.values)


def test_results_and_configs_round_trip_through_json_exactly() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(0, 1e-3, (5, 3)) * 10.0 ** rng.integers(-12, 3, (5, 3))
    days = [
        date(2020, 1, 3),
        date(2020, 1, 2),
        date(2020, 1, 3),
        date(2020, 1, 2),
        date(2020, 1, 6),
    ]
    result = WindowResult(4, "wf-2019-12-31", {"seconds": 1.0}, days, list("ABCDE"), values)
    back = WindowResult.from_dict(json.loads(json.dumps(result.as_dict())))
    assert np.array_equal(back.values, result.values)
    assert back.at(date(2020, 1, 2)) == result.at(date(2020, 1, 2))
    assert sorted(result.at(date(2020, 1, 3))) == ["A", "C"]
    assert result.at(date(2020, 1, 7)) == {}
    config = replace(PLACEBO, params_tuned_through=date(2019, 6, 28), horizon=5)
    assert WalkForwardConfig.from_dict(json.loads(json.dumps(config.as_dict()))) == config
    window = plan_windows([date(2020, 1, 2), date(2020, 1, 3)], SYMBOLS, config)[0]
    assert window.from_dict(json.loads(json.dumps(window.as_dict()))) == window


def test_a_worker_with_other_bars_refuses_the_window(bars: dict[str, BarFrame]) -> None:
    market = CsvMarketData(SHARED_DATA)
    source = source_of(bars, SYMBOLS, date(2018, 6, 1), date(2020, 3, 31), str(SHARED_DATA))
    assert load_source(source, market).bars.keys() == bars.keys()
    moved = replace(source, end=date(2020, 3, 30))  # one bar fewer than the planner loaded
    with pytest.raises(ValueError, match="not the ones the run was planned on"):
        load_source(moved, market)
