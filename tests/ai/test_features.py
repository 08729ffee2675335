"""Features: causality (truncation and future-perturbation), finite lookback, label definition."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app.ai.features import (
    FEATURE_COLUMNS,
    LABEL_COLUMN,
    LABEL_END_COLUMN,
    MAX_LOOKBACK,
    build_features,
    latest_features,
)
from app.domain import BarFrame
from app.market.sources import CsvMarketData
from tests.support import SHARED_DATA

SYMBOLS = ("AAPL", "JPM", "XOM", "AMD", "KO")
CHECK_DATES = ("2016-03-01", "2016-11-09", "2017-06-30", "2018-02-05", "2018-12-24")


@pytest.fixture(scope="module")
def real_bars() -> tuple[dict[str, BarFrame], BarFrame]:
    market = CsvMarketData(SHARED_DATA)
    bars = market.get_daily_bars([*SYMBOLS, "SPY"], "2015-01-01", "2019-06-30")
    spy = bars.pop("SPY")
    return bars, spy


@pytest.fixture(scope="module")
def full_features(real_bars: tuple[dict[str, BarFrame], BarFrame]) -> pd.DataFrame:
    bars, spy = real_bars
    return build_features(bars, spy)


def _rows_at(frame: pd.DataFrame, day: str) -> pd.DataFrame:
    return frame.xs(pd.Timestamp(day), level="date")[FEATURE_COLUMNS].sort_index()


@pytest.mark.parametrize("day", CHECK_DATES)
def test_truncating_at_t_leaves_features_at_t_unchanged(
    real_bars: tuple[dict[str, BarFrame], BarFrame], full_features: pd.DataFrame, day: str
) -> None:
    bars, spy = real_bars
    cut = pd.Timestamp(day)
    truncated = build_features({s: f.loc[:cut] for s, f in bars.items()}, spy.loc[:cut])
    assert truncated.index.get_level_values("date").max() == cut
    expected, got = _rows_at(full_features, day), _rows_at(truncated, day)
    assert list(got.index) == sorted(SYMBOLS)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-12, atol=1e-12)


def test_changing_future_bars_changes_no_past_feature(
    real_bars: tuple[dict[str, BarFrame], BarFrame], full_features: pd.DataFrame
) -> None:
    bars, spy = real_bars
    cut = pd.Timestamp("2017-06-30")
    rng = np.random.default_rng(7)

    def scramble(frame: BarFrame) -> BarFrame:
        out = frame.copy()
        future = out.index > cut
        out.loc[future, ["open", "high", "low", "close"]] *= rng.uniform(
            0.5, 1.5, (future.sum(), 1)
        )
        out.loc[future, "volume"] *= rng.uniform(0.1, 10.0, future.sum())
        return out

    scrambled = build_features({s: scramble(f) for s, f in bars.items()}, scramble(spy))
    past = full_features.index.get_level_values("date") <= cut
    np.testing.assert_allclose(
        scrambled.loc[past, FEATURE_COLUMNS].to_numpy(),
        full_features.loc[past, FEATURE_COLUMNS].to_numpy(),
        rtol=1e-12,
        atol=1e-12,
    )
    # Labels of the last two rows before the cut do look ahead (by definition), earlier ones not.
    known = full_features[LABEL_END_COLUMN] <= cut
    pd.testing.assert_series_equal(
        scrambled.loc[known, LABEL_COLUMN], full_features.loc[known, LABEL_COLUMN]
    )


@pytest.mark.parametrize("day", CHECK_DATES)
def test_latest_features_from_last_120_bars_equal_full_history(
    real_bars: tuple[dict[str, BarFrame], BarFrame], full_features: pd.DataFrame, day: str
) -> None:
    bars, spy = real_bars
    latest = latest_features(bars, spy, day).sort_index()
    expected = _rows_at(full_features, day)
    # Different start points only change rolling-sum rounding.
    np.testing.assert_allclose(latest.to_numpy(), expected.to_numpy(), rtol=1e-8, atol=1e-10)


def test_label_is_next_open_to_following_open(full_features: pd.DataFrame) -> None:
    market = CsvMarketData(SHARED_DATA)
    bars = market.get_daily_bars(["JPM"], "2015-01-01", "2019-06-30")["JPM"]
    rows = full_features.xs("JPM", level="symbol")
    opens = bars["open"]
    expected = (opens.shift(-2) / opens.shift(-1) - 1.0).loc[rows.index]
    np.testing.assert_allclose(rows[LABEL_COLUMN].to_numpy(), expected.to_numpy(), rtol=1e-12)
    assert rows[LABEL_COLUMN].iloc[-2:].isna().all()
    assert rows[LABEL_COLUMN].iloc[:-2].notna().all()
    two_later = pd.Series(bars.index, index=bars.index).shift(-2).loc[rows.index]
    pd.testing.assert_series_equal(
        rows[LABEL_END_COLUMN].iloc[:-2], two_later.iloc[:-2], check_names=False
    )


def test_shape_warm_up_and_finiteness(
    real_bars: tuple[dict[str, BarFrame], BarFrame], full_features: pd.DataFrame
) -> None:
    bars, _ = real_bars
    assert full_features.index.names == ["date", "symbol"]
    assert list(full_features.columns) == [*FEATURE_COLUMNS, LABEL_COLUMN, LABEL_END_COLUMN]
    assert full_features.index.is_monotonic_increasing
    first = full_features.xs("AAPL", level="symbol").index[0]
    assert first == bars["AAPL"].index[MAX_LOOKBACK - 1]
    values = full_features[FEATURE_COLUMNS].to_numpy()
    assert not np.isinf(values).any()
    assert np.isfinite(values).mean() > 0.999
    ranks = full_features[[c for c in FEATURE_COLUMNS if c.startswith("cs_rank_")]]
    assert ranks.min().min() == 0.0
    assert ranks.max().max() == 1.0


def test_features_are_float32_and_labels_exact(full_features: pd.DataFrame) -> None:
    """Models read float32; the label (and when it is known) keep their full precision."""
    assert set(full_features[FEATURE_COLUMNS].dtypes) == {np.dtype(np.float32)}
    assert full_features[LABEL_COLUMN].dtype == np.float64
    assert full_features[LABEL_END_COLUMN].dtype == np.dtype("datetime64[ns]")
    assert build_features({}, None)[FEATURE_COLUMNS].dtypes.eq(np.float32).all()


def test_a_symbol_among_others_gets_the_rows_it_gets_alone(
    real_bars: tuple[dict[str, BarFrame], BarFrame], full_features: pd.DataFrame
) -> None:
    """Symbols are computed side by side; histories of other lengths and gaps change nothing
    but the cross-sectional columns."""
    bars, spy = real_bars
    mixed = dict(bars)
    mixed["AMD"] = bars["AMD"].loc["2016-07-01":]  # starts later
    mixed["JPM"] = bars["JPM"].drop(index=bars["JPM"].index[300:310])  # ten bars missing
    own = [c for c in FEATURE_COLUMNS if not c.startswith("cs_rank_")] + [LABEL_COLUMN]
    together = build_features(mixed, spy)
    for symbol, frame in mixed.items():
        alone = build_features({symbol: frame}, spy).xs(symbol, level="symbol")
        pd.testing.assert_frame_equal(together.xs(symbol, level="symbol")[own], alone[own])
    expected = full_features.xs("KO", level="symbol")[own]
    pd.testing.assert_frame_equal(together.xs("KO", level="symbol")[own], expected)


def test_without_spy_relative_features_are_nan_and_single_symbol_ranks_are_half(
    real_bars: tuple[dict[str, BarFrame], BarFrame],
) -> None:
    bars, _ = real_bars
    frame = build_features({"KO": bars["KO"]}, None)
    assert frame[["rel_ret_20_spy", "corr_spy_60", "beta_spy_60"]].isna().all().all()
    assert frame["ret_20"].notna().all()
    assert (frame["cs_rank_ret_5"] == 0.5).all()


def test_latest_features_skips_symbols_without_a_bar_that_day(
    real_bars: tuple[dict[str, BarFrame], BarFrame],
) -> None:
    bars, spy = real_bars
    day = pd.Timestamp("2018-03-01")
    gappy = dict(bars)
    gappy["KO"] = bars["KO"].drop(index=day)
    rows = latest_features(gappy, spy, day)
    assert "KO" not in rows.index
    assert set(rows.index) == set(SYMBOLS) - {"KO"}
    assert list(rows.columns) == FEATURE_COLUMNS


def test_too_short_history_gives_no_rows(real_bars: tuple[dict[str, BarFrame], BarFrame]) -> None:
    bars, spy = real_bars
    frame = build_features({"KO": bars["KO"].iloc[: MAX_LOOKBACK - 1]}, spy)
    assert frame.empty
    assert list(frame.columns) == [*FEATURE_COLUMNS, LABEL_COLUMN, LABEL_END_COLUMN]
