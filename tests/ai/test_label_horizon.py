"""The h-session label: what it is, that it never looks further than t+1+h, the cross-sectional
normalisation, and that training keeps only labels known before its cut-off."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app.ai.features import LABEL_COLUMN, LABEL_END_COLUMN, build_features, normalise_labels
from app.ai.training import train
from app.domain import BarFrame

N_BARS = 400


def synthetic(seed: int, n: int = N_BARS) -> BarFrame:
    rng = np.random.default_rng(seed)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0003, 0.015, n)))
    opens = close * np.exp(rng.normal(0, 0.004, n))
    index = pd.bdate_range("2015-01-02", periods=n, name="date")
    return pd.DataFrame(
        {
            "open": opens,
            "high": np.maximum(opens, close) * 1.01,
            "low": np.minimum(opens, close) * 0.99,
            "close": close,
            "volume": rng.uniform(1e6, 2e6, n),
        },
        index=index,
    )


@pytest.fixture(scope="module")
def bars() -> dict[str, BarFrame]:
    return {f"S{i}": synthetic(i) for i in range(6)}


@pytest.mark.parametrize("h", [1, 5, 10])
def test_label_is_the_open_to_open_return_over_h_sessions(
    bars: dict[str, BarFrame], h: int
) -> None:
    frame = build_features(bars, bars["S0"], horizon=h).xs("S1", level="symbol")
    opens = bars["S1"]["open"]
    day = frame.index[50]
    i = opens.index.get_loc(day)
    assert frame.loc[day, LABEL_COLUMN] == pytest.approx(
        opens.iloc[i + 1 + h] / opens.iloc[i + 1] - 1
    )
    assert frame.loc[day, LABEL_END_COLUMN] == opens.index[i + 1 + h]
    assert frame[LABEL_COLUMN].iloc[-(h + 1) :].isna().all()  # unknown yet: NaN
    assert frame[LABEL_END_COLUMN].iloc[-(h + 1) :].isna().all()
    assert frame[LABEL_COLUMN].iloc[: -(h + 1)].notna().all()


@pytest.mark.parametrize("how", ["raw", "excess", "rank"])
def test_labels_use_only_opens_up_to_t_plus_1_plus_h(bars: dict[str, BarFrame], how: str) -> None:
    h = 5
    full = build_features(bars, bars["S0"], horizon=h, normalisation=how)
    cut = bars["S0"].index[300]
    scrambled = {}
    for k, (symbol, frame) in enumerate(bars.items()):
        out = frame.copy()
        out.loc[out.index > cut, ["open", "high", "low", "close"]] *= 1.0 + 0.3 * k  # new future
        scrambled[symbol] = out
    other = build_features(scrambled, scrambled["S0"], horizon=h, normalisation=how)
    known = full[LABEL_END_COLUMN] <= cut
    assert known.sum() > 1000
    np.testing.assert_allclose(
        other.loc[known, LABEL_COLUMN].to_numpy(), full.loc[known, LABEL_COLUMN].to_numpy()
    )
    changed = ~np.isclose(other[LABEL_COLUMN], full[LABEL_COLUMN]) & full[LABEL_COLUMN].notna()
    assert (full.loc[changed, LABEL_END_COLUMN] > cut).all()
    assert changed.any()


def test_excess_and_rank_normalise_each_date_across_symbols(bars: dict[str, BarFrame]) -> None:
    raw = build_features(bars, bars["S0"], horizon=5)
    excess = build_features(bars, bars["S0"], horizon=5, normalisation="excess")
    rank = build_features(bars, bars["S0"], horizon=5, normalisation="rank")
    per_day = excess[LABEL_COLUMN].dropna().groupby(level="date")
    assert np.allclose(per_day.sum(), 0.0, atol=1e-12)
    demeaned = raw[LABEL_COLUMN] - raw[LABEL_COLUMN].groupby(level="date").transform("mean")
    np.testing.assert_allclose(excess[LABEL_COLUMN].dropna(), demeaned.dropna())
    ranks = rank[LABEL_COLUMN].dropna()
    assert ranks.min() == -0.5
    assert ranks.max() == 0.5
    day = ranks.index.get_level_values("date")[100]
    order_raw = raw.xs(day, level="date")[LABEL_COLUMN].sort_values().index.tolist()
    order_rank = rank.xs(day, level="date")[LABEL_COLUMN].sort_values().index.tolist()
    assert order_raw == order_rank


def test_a_date_with_one_known_label_has_no_normalised_label() -> None:
    index = pd.MultiIndex.from_tuples(
        [
            (pd.Timestamp("2020-01-02"), "A"),
            (pd.Timestamp("2020-01-02"), "B"),
            (pd.Timestamp("2020-01-03"), "A"),
            (pd.Timestamp("2020-01-03"), "B"),
        ],
        names=["date", "symbol"],
    )
    frame = pd.DataFrame(
        {
            LABEL_COLUMN: [0.02, -0.02, 0.01, np.nan],
            LABEL_END_COLUMN: pd.to_datetime(["2020-01-06", "2020-01-07", "2020-01-08", None]),
        },
        index=index,
    )
    out = normalise_labels(frame.copy(), "excess")
    assert out[LABEL_COLUMN].tolist()[:2] == pytest.approx([0.02, -0.02])
    assert np.isnan(out[LABEL_COLUMN].iloc[2])  # alone that date: nothing to compare with
    # The normalised label needs both labels of the date: known at the later end.
    assert (out[LABEL_END_COLUMN].iloc[:2] == pd.Timestamp("2020-01-07")).all()
    with pytest.raises(ValueError, match="normalisation"):
        normalise_labels(frame.copy(), "zscore")


@pytest.mark.parametrize("h", [1, 10])
def test_training_uses_only_labels_known_by_the_cut_off(bars: dict[str, BarFrame], h: int) -> None:
    features = build_features(bars, bars["S0"], horizon=h, normalisation="excess")
    cutoff = bars["S0"].index[330]
    bundle = train(
        None,
        None,
        "pooled",
        cutoff,
        features=features,
        n_lgbm=1,
        n_xgb=1,
        horizon=h,
        normalisation="excess",
    )
    meta = bundle.metadata
    assert pd.Timestamp(meta["last_label_end"]) <= cutoff
    assert meta["horizon"] == h
    assert meta["label_normalisation"] == "excess"
    sessions = list(bars["S0"].index)
    # No training label runs into the early-stopping period: a gap of h + 1 sessions.
    last_train = sessions.index(pd.Timestamp(meta["train_end"]))
    first_val = sessions.index(pd.Timestamp(meta["val_start"]))
    assert first_val - last_train == h + 2
    assert features.loc[
        features.index.get_level_values("date") == pd.Timestamp(meta["train_end"]),
        LABEL_END_COLUMN,
    ].max() < pd.Timestamp(meta["val_start"])
