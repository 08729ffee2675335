"""Walk-forward evaluation: training cut-offs, a shuffled-label placebo on real data, figures."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from app.ai import evaluation
from app.ai.ensemble import ModelBundle
from app.ai.features import LABEL_COLUMN, LABEL_END_COLUMN, build_features
from app.domain import BarFrame
from app.market.sources import CsvMarketData
from tests.support import SHARED_DATA

FAST = {
    "lightgbm": {"num_boost_round": 60, "learning_rate": 0.1, "early_stopping_rounds": 15},
    "xgboost": {"num_boost_round": 60, "eta": 0.1, "early_stopping_rounds": 15},
}


@pytest.fixture(scope="module")
def universe() -> tuple[dict[str, BarFrame], pd.DataFrame]:
    """All 32 symbols, 2013-2018: enough names for a cross-sectional IC to mean something."""
    market = CsvMarketData(SHARED_DATA)
    bars = market.get_daily_bars(market.available_symbols(), "2013-01-01", "2018-12-31")
    return bars, build_features(bars, bars["SPY"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shuffled_label_placebo_has_no_information(
    universe: tuple[dict[str, BarFrame], pd.DataFrame], seed: int
) -> None:
    bars, features = universe
    result = evaluation.evaluate(
        bars,
        bars["SPY"],
        "2017-01-01",
        "2018-12-31",
        "pooled",
        retrain_every=252,
        train_years=3,
        progress=False,
        params=FAST,
        n_lgbm=1,
        n_xgb=1,
        seed=seed,
        shuffle_labels=True,
        features=features,
    )
    metrics = result["metrics"]
    assert metrics["n_days"] >= 490
    assert metrics["n_symbols"] == 32
    assert abs(metrics["ic_mean"]) < 0.02, metrics["ic_mean"]
    assert abs(metrics["rank_ic_mean"]) < 0.02, metrics["rank_ic_mean"]


def test_each_window_trains_only_on_labels_known_before_it(
    universe: tuple[dict[str, BarFrame], pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, features = universe
    small = features[features.index.get_level_values("symbol").isin(["AAPL", "KO", "XOM", "JPM"])]
    seen: list[tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp]] = []
    real_train = evaluation.train

    def spy_train(*args: Any, **kwargs: Any) -> ModelBundle:
        rows = kwargs["features"]
        seen.append(
            (
                pd.Timestamp(args[3]),
                rows.index.get_level_values("date").max(),
                rows[LABEL_END_COLUMN].max(),
            )
        )
        return real_train(*args, **kwargs)

    monkeypatch.setattr(evaluation, "train", spy_train)
    result = evaluation.evaluate(
        {},
        None,
        "2018-01-01",
        "2018-06-29",
        "per_symbol",
        retrain_every=42,
        train_years=2,
        progress=False,
        params=FAST,
        n_lgbm=1,
        n_xgb=1,
        features=small,
    )
    sessions = pd.DatetimeIndex(np.unique(small.index.get_level_values("date")))
    windows = result["windows"]
    assert len(windows) == len(seen) == 3
    for window, (cutoff, last_row, last_label_end) in zip(windows, seen, strict=True):
        start = pd.Timestamp(window["test_start"])
        position = sessions.get_loc(start)
        assert cutoff == sessions[position - 1]
        assert last_label_end <= cutoff < start
        # Label at t needs open_{t+2}: the two sessions before the window are not trained on.
        assert last_row <= sessions[position - 3]
        assert pd.Timestamp(window["last_label_end"]) <= cutoff
        assert pd.Timestamp(window["train_start"]) >= start - pd.DateOffset(years=2)
    assert sum(w["test_sessions"] for w in windows) == result["metrics"]["n_days"]
    json.dumps(result, allow_nan=False)


def test_result_shape_and_json(universe: tuple[dict[str, BarFrame], pd.DataFrame]) -> None:
    bars, features = universe
    result = evaluation.evaluate(
        bars,
        bars["SPY"],
        "2018-07-01",
        "2018-09-28",
        "pooled",
        retrain_every=63,
        train_years=2,
        progress=False,
        params=FAST,
        n_lgbm=1,
        n_xgb=1,
        features=features,
    )
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text)["settings"]["mode"] == "pooled"
    metrics = result["metrics"]
    for key in ("ic_mean", "rank_ic_mean", "icir", "icir_annualised", "hit_rate", "reliability"):
        assert key in metrics
    assert metrics["icir_annualised"] == pytest.approx(metrics["icir"] * np.sqrt(252))
    assert sum(row["count"] for row in metrics["reliability"]) == metrics["n_rows"]
    assert len(result["daily_ic"]) == metrics["n_days"]
    assert {"train_seconds", "predict_seconds"} <= set(result["windows"][0])
    assert result["timings"]["wall_seconds"] > 0


def test_summarise_perfect_and_inverted_predictions() -> None:
    rng = np.random.default_rng(3)
    index = pd.MultiIndex.from_product(
        [pd.bdate_range("2021-01-04", periods=30), [f"S{i}" for i in range(10)]],
        names=["date", "symbol"],
    )
    label = rng.normal(0, 0.01, len(index))
    scored = pd.DataFrame(
        {"mean": label, "dispersion": 0.001, "confidence": 0.6, LABEL_COLUMN: label}, index=index
    )
    perfect = evaluation.summarise(scored)
    assert perfect["ic_mean"] == pytest.approx(1.0)
    assert perfect["rank_ic_mean"] == pytest.approx(1.0)
    assert perfect["hit_rate"] == 1.0
    assert perfect["top_minus_bottom_quintile_daily"] > 0
    inverted = evaluation.summarise(scored.assign(mean=-label))
    assert inverted["ic_mean"] == pytest.approx(-1.0)
    assert inverted["hit_rate"] == 0.0
    json.dumps(perfect, allow_nan=False)
