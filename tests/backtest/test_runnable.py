"""The up-front check counts, from bar dates alone, the labelled sessions the first walk-forward
model trains on: the count must be the one the features give, or the API refuses runs that
would train (or accepts runs that would fail)."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from app.ai.features import LABEL_COLUMN, LABEL_END_COLUMN, build_features
from app.ai.training import train
from app.backtest.requests import labelled_sessions, min_training_sessions
from app.backtest.walk_forward import WalkForwardConfig
from app.backtest.window import load_bars
from app.market.sources import CsvMarketData
from tests.support import SHARED_DATA

# The shared CSVs of these start on 2004-01-02 (SPY earlier): the cutoffs cross that edge.
CUTOFFS = [date(2004, 7, 14), date(2004, 8, 31), date(2005, 6, 1), date(2006, 3, 1)]


@pytest.fixture(scope="module")
def bars() -> dict[str, pd.DataFrame]:
    return load_bars(
        CsvMarketData(SHARED_DATA), ["AAPL", "MSFT", "KO"], date(2003, 1, 1), date(2006, 12, 31)
    )


@pytest.mark.parametrize("normalisation", ["raw", "excess", "rank"])
@pytest.mark.parametrize("mode", ["pooled", "per_symbol"])
def test_labelled_sessions_match_the_training_pool(
    bars: dict[str, pd.DataFrame], normalisation: str, mode: str
) -> None:
    wf = WalkForwardConfig(train_years=1, horizon=5, label_normalisation=normalisation, mode=mode)  # type: ignore[arg-type]
    features = build_features(bars, bars["SPY"], horizon=5, normalisation=normalisation)
    for cutoff in CUTOFFS:
        end = pd.Timestamp(cutoff)
        pool = features[features[LABEL_COLUMN].notna() & (features[LABEL_END_COLUMN] <= end)]
        pool = pool[pool.index.get_level_values("date") > end - pd.DateOffset(days=365)]
        if mode == "pooled":
            expected = pool.index.get_level_values("date").nunique()
        else:
            expected = int(pool.groupby(level="symbol").size().max()) if len(pool) else 0
        assert labelled_sessions(bars, cutoff, wf) == expected, cutoff


def test_the_minimum_trains_and_the_refused_short_pools_did_not(
    bars: dict[str, pd.DataFrame],
) -> None:
    """What the 400 spares: a pool of 8 sessions (a run starting 2004-07-15) failed in train()."""
    need = min_training_sessions("pooled", 5, 0.2)
    features = build_features(bars, bars["SPY"], horizon=5, normalisation="excess")
    labelled = features[features[LABEL_COLUMN].notna()]
    dates = labelled.index.get_level_values("date").unique().sort_values()

    def fit(sessions: int) -> object:
        pool = labelled[labelled.index.get_level_values("date").isin(dates[:sessions])]
        end = pool[LABEL_END_COLUMN].max()
        return train(None, None, "pooled", end, features=pool, horizon=5, normalisation="excess")

    assert fit(need).metadata["n_train_rows"] > 0  # type: ignore[attr-defined]
    with pytest.raises((ValueError, IndexError)):
        fit(8)
