"""Backtests never use tuning from their future (issue 12, item 8): tuned params serve only
walk-forward windows whose training ends after the tuning's data did; earlier windows, and
every window when the file does not say what it was tuned on, train with the defaults."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from app.ai.params import best_params_tuned_through
from app.backtest.walk_forward import WalkForwardConfig, WalkForwardPredictor
from app.backtest.window import backtest_sessions, load_bars
from app.domain import BarFrame
from app.market.sources import CsvMarketData
from tests.backtest.test_backtest import SMALL_MODEL, UNIVERSE
from tests.support import SHARED_DATA


@pytest.fixture(scope="module")
def bars() -> dict[str, BarFrame]:
    return load_bars(CsvMarketData(SHARED_DATA), UNIVERSE, date(2018, 1, 1), date(2020, 12, 31))


def test_each_window_uses_only_tuning_that_ended_before_it(bars: dict[str, BarFrame]) -> None:
    sessions = backtest_sessions(bars, UNIVERSE, date(2020, 1, 1), date(2020, 6, 30))
    wf = WalkForwardConfig(
        retrain_every=63,
        train_years=1.0,
        n_lgbm=1,
        n_xgb=1,
        params=SMALL_MODEL,
        params_tuned_through=date(2020, 3, 1),  # tuned on data up to March 2020
    )
    predictor = WalkForwardPredictor(bars, sessions, UNIVERSE, wf)
    for day in sessions:
        predictor.predictions(day, {})
    used = {r["window_start"]: (r["train_end"], r["params"]) for r in predictor.retrains}
    assert [p for _, p in used.values()] == ["defaults", "tuned"]
    for train_end, params in used.values():
        assert (params == "tuned") == (date.fromisoformat(train_end) >= date(2020, 3, 1))


def test_tuning_without_a_recorded_window_is_not_trusted(tmp_path: Path) -> None:
    (tmp_path / "pooled.json").write_text(json.dumps({"mode": "pooled", "params": {}}))
    assert best_params_tuned_through(tmp_path, "pooled") is None
    record = {"mode": "pooled", "params": {}, "best_trial_window": {"train_end": "2021-06-30"}}
    (tmp_path / "pooled.json").write_text(json.dumps(record))
    assert best_params_tuned_through(tmp_path, "pooled") == date(2021, 6, 30)
