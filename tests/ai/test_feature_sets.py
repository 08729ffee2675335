"""Feature sets (AI_FEATURE_SET): the seed's output is unchanged, the extended set is point in
time, its sectors are the ones a human would name, and a model only trades under its own set."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.ai.champion import judge
from app.ai.ensemble import ModelBundle
from app.ai.features import (
    FEATURE_COLUMNS,
    MAX_LOOKBACK,
    build_features,
    feature_columns,
    latest_features,
    max_lookback,
    trained_feature_set,
)
from app.ai.features_extended import CONTEXT_COLUMNS, EXTENDED_LOOKBACK, SECTOR_ETFS
from app.ai.signals import ModelSignalSource, Thresholds, missing_signal_reasons
from app.ai.store import ModelStore
from app.ai.training import train
from app.backtest.feature_source import FeatureSource, SourceData, fingerprint, source_of
from app.backtest.walk_forward_window import (
    WalkForwardConfig,
    WalkForwardWindow,
    plan_windows,
    run_window,
)
from app.backtest.window import backtest_sessions
from app.config import load_settings
from app.domain import BarFrame, SignalAction
from app.errors import ConfigError, ValidationError
from app.market.sources import CsvMarketData
from tests.fakes.broad import BROAD_DATA

STOCKS = ("AAPL", "MSFT", "NVDA", "XOM", "CVX", "JPM", "KO")
LOADED = (*STOCKS, *SECTOR_ETFS, "TLT", "SPY")
#: The seed's output on these bars before feature sets existed (sha256 of the frame's hash).
SEED_SHA256 = {
    (1, "raw"): "504c8b0ef805ac8242a581624b650bf7d5337e1afc3b263f17b341fa683b535c",
    (5, "excess"): "efe0878eeb952e3fdccd75206cdb8402d4dd5deb5af214effe0a2bb246fcc999",
}
SEED_LATEST_SHA256 = "42bfc9d71227db7b30efe3018225b9204da52c847dc30f1e2879025ec689bf64"
CUTS = ("2019-03-01", "2019-06-28", "2019-10-31")
FAST = {
    "lightgbm": {"num_boost_round": 40, "learning_rate": 0.1, "early_stopping_rounds": 10},
    "xgboost": {"num_boost_round": 40, "eta": 0.1, "early_stopping_rounds": 10},
}


def _sha256(frame: pd.DataFrame) -> str:
    hashed = pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes()
    return hashlib.sha256(hashed).hexdigest()


@pytest.fixture(scope="module")
def seed_bars() -> dict[str, BarFrame]:
    symbols = ("AAPL", "MSFT", "XOM", "CVX", "JPM", "KO", "NVDA", *SECTOR_ETFS, "TLT", "SPY")
    return CsvMarketData(BROAD_DATA).get_daily_bars(list(symbols), "2017-01-01", "2019-12-31")


@pytest.fixture(scope="module")
def bars() -> dict[str, BarFrame]:
    return CsvMarketData(BROAD_DATA).get_daily_bars(list(LOADED), "2016-01-01", "2019-12-31")


@pytest.fixture(scope="module")
def extended(bars: dict[str, BarFrame]) -> pd.DataFrame:
    return build_features(bars, bars["SPY"], feature_set="extended")


def test_the_seed_set_is_unchanged(seed_bars: dict[str, BarFrame]) -> None:
    assert feature_columns("seed") == FEATURE_COLUMNS
    assert len(FEATURE_COLUMNS) == 30
    assert FEATURE_COLUMNS[-1] == "cs_rank_rsi_14"
    assert max_lookback("seed") == MAX_LOOKBACK == 120
    for (horizon, how), expected in SEED_SHA256.items():
        frame = build_features(seed_bars, seed_bars["SPY"], horizon=horizon, normalisation=how)
        assert _sha256(frame) == expected
    latest = latest_features(seed_bars, seed_bars["SPY"], "2019-06-28")
    assert _sha256(latest) == SEED_LATEST_SHA256


def test_the_extended_set_adds_columns_after_the_seeds(
    bars: dict[str, BarFrame], extended: pd.DataFrame
) -> None:
    columns = feature_columns("extended")
    assert columns[: len(FEATURE_COLUMNS)] == FEATURE_COLUMNS
    assert {"mom_12_1", "dist_high_252", "rel_ret_63_sector", "cs_rank_mom_12_1"} <= set(columns)
    assert list(extended.columns[: len(columns)]) == columns
    assert set(extended[columns].dtypes) == {np.dtype(np.float32)}
    # A symbol enters with the history the set needs, not the seed's 120 bars.
    assert max_lookback("extended") == EXTENDED_LOOKBACK == 276
    first = extended.xs("AAPL", level="symbol").index[0]
    assert first == bars["AAPL"].index[EXTENDED_LOOKBACK - 1]
    assert extended[columns].notna().all().all()
    with pytest.raises(ValueError, match="feature set"):
        build_features(bars, bars["SPY"], feature_set="huge")


@pytest.mark.parametrize("day", CUTS)
def test_extended_rows_at_t_ignore_every_bar_after_t(
    bars: dict[str, BarFrame], extended: pd.DataFrame, day: str
) -> None:
    cut = pd.Timestamp(day)
    columns = feature_columns("extended")
    clipped = {s: f.loc[:cut] for s, f in bars.items()}
    truncated = build_features(clipped, clipped["SPY"], feature_set="extended")
    expected = extended.xs(cut, level="date")[columns].sort_index()
    got = truncated.xs(cut, level="date")[columns].sort_index()
    assert list(got.index) == sorted(LOADED)
    np.testing.assert_array_equal(got.to_numpy(), expected.to_numpy())
    # Live: the last EXTENDED_LOOKBACK bars give the row the whole history gives.
    latest = latest_features(bars, bars["SPY"], day, "extended").sort_index()
    np.testing.assert_allclose(latest.to_numpy(), expected.to_numpy(), rtol=1e-6, atol=1e-7)


def _sector_of(
    bars: dict[str, BarFrame], extended: pd.DataFrame, symbol: str, day: pd.Timestamp
) -> str:
    """The ETF whose 63-session return the row's sector return is."""
    row = extended.loc[(day, symbol)]
    sector_return = row["sector_rel_ret_63_spy"] + (
        bars["SPY"]["close"].loc[:day].iloc[-1] / bars["SPY"]["close"].loc[:day].iloc[-64] - 1
    )
    etf_returns = {
        etf: bars[etf]["close"].loc[:day].iloc[-1] / bars[etf]["close"].loc[:day].iloc[-64] - 1
        for etf in SECTOR_ETFS
    }
    best = min(etf_returns, key=lambda etf: abs(etf_returns[etf] - sector_return))
    assert abs(etf_returns[best] - sector_return) < 1e-5
    return best


@pytest.mark.parametrize("day", CUTS)
def test_the_sector_is_the_etf_a_person_would_name(
    bars: dict[str, BarFrame], extended: pd.DataFrame, day: str
) -> None:
    at = pd.Timestamp(day)
    sectors = {s: _sector_of(bars, extended, s, at) for s in ("AAPL", "MSFT", "XOM", "CVX", "JPM")}
    assert sectors == {"AAPL": "XLK", "MSFT": "XLK", "XOM": "XLE", "CVX": "XLE", "JPM": "XLF"}


def test_without_sector_etfs_or_tlt_their_columns_are_nan(bars: dict[str, BarFrame]) -> None:
    """The 32-name watchlist loads no sector ETF and no TLT: NaN, never a guess."""
    alone = {s: bars[s] for s in ("AAPL", "MSFT", "SPY")}
    frame = build_features(alone, alone["SPY"], feature_set="extended")
    assert frame[["sector_rel_ret_63_spy", "rel_ret_63_sector", "tlt_ret_63"]].isna().all().all()
    assert frame[["spy_sma_200_gap", "spy_vol_20", "mom_12_1"]].notna().all().all()
    assert {"sector_rel_ret_63_spy", "tlt_ret_63", "spy_vol_20"} <= CONTEXT_COLUMNS


@pytest.fixture(scope="module")
def models(bars: dict[str, BarFrame], extended: pd.DataFrame) -> dict[str, ModelBundle]:
    end = date(2019, 6, 28)
    seed = build_features(bars, bars["SPY"])
    return {
        name: train(
            None, None, "pooled", end, FAST, features=frame, n_lgbm=1, n_xgb=1, feature_set=name
        )
        for name, frame in (("seed", seed), ("extended", extended))
    }


def test_training_records_the_feature_set(models: dict[str, ModelBundle]) -> None:
    assert models["seed"].metadata["feature_set"] == "seed"
    assert models["seed"].feature_columns == FEATURE_COLUMNS
    assert models["extended"].metadata["feature_set"] == "extended"
    assert models["extended"].feature_columns == feature_columns("extended")
    # A model saved before feature sets existed was trained on the seed's.
    assert trained_feature_set({}) == "seed"


def test_a_seed_model_refuses_to_trade_under_extended_settings(
    tmp_path: Path, bars: dict[str, BarFrame], models: dict[str, ModelBundle]
) -> None:
    store = ModelStore(tmp_path)
    store.save(models["seed"])
    meta = store.metadata()
    assert meta is not None
    assert meta["feature_set"] == "seed"
    session = date(2019, 10, 31)
    everything = Thresholds(-1.0, -2.0, 0.0)  # every finite prediction is a BUY

    def source(feature_set: str) -> ModelSignalSource:
        return ModelSignalSource(store, everything, 3650, label=(1, "raw"), feature_set=feature_set)

    signals, problem = source("seed").signals(bars, session)
    assert problem is None
    assert {s.action for s in signals.values()} == {SignalAction.BUY}
    signals, problem = source("extended").signals(bars, session)
    assert problem is not None
    assert "seed feature set" in problem
    assert "extended one" in problem
    assert "AI_FEATURE_SET" in problem
    assert "flask --app app train" in problem
    assert len(signals) == len(LOADED)
    assert {s.action for s in signals.values()} == {SignalAction.HOLD}

    store.save(models["extended"])
    signals, problem = source("extended").signals(bars, session)
    assert problem is None
    assert {s.action for s in signals.values()} == {SignalAction.BUY}


def test_the_gate_replaces_a_champion_of_another_feature_set(
    models: dict[str, ModelBundle], extended: pd.DataFrame
) -> None:
    decision = judge(models["seed"], models["extended"], extended, gated=True)
    assert decision.kept == "challenger"
    assert decision.reason == "the champion was trained on another feature set (seed)"


def test_missing_signals_count_the_sets_own_history(bars: dict[str, BarFrame]) -> None:
    session = date(2019, 10, 31)
    short = {"AAPL": bars["AAPL"].loc[: pd.Timestamp(session)].tail(200), "SPY": bars["SPY"]}
    reasons = missing_signal_reasons(
        ["AAPL"], short, session, {}, lambda s, d: None, feature_set="extended"
    )
    assert reasons == {"AAPL": "too_few_bars: 200 bars, the features need 276"}
    # Sector and market context may be NaN (no ETF loaded): not the symbol's fault.
    reasons = missing_signal_reasons(
        ["AAPL"], bars, session, {}, lambda s, d: None, feature_set="extended"
    )
    assert reasons["AAPL"].startswith("no_prediction")


def test_a_bad_feature_set_stops_start_up_naming_the_key() -> None:
    assert load_settings().ai_feature_set == "seed"
    assert load_settings({"AI_FEATURE_SET": "extended"}).ai_feature_set == "extended"
    with pytest.raises(ConfigError) as caught:
        load_settings({"AI_FEATURE_SET": "everything"})
    assert str(caught.value).startswith("configuration error: AI_FEATURE_SET")


def test_walk_forward_windows_carry_the_feature_set(bars: dict[str, BarFrame]) -> None:
    config = WalkForwardConfig(feature_set="extended")
    assert WalkForwardConfig.from_dict(config.as_dict()) == config
    legacy = {k: v for k, v in WalkForwardConfig().as_dict().items() if k != "feature_set"}
    assert WalkForwardConfig.from_dict(legacy).feature_set == "seed"
    with pytest.raises(ValidationError):
        WalkForwardConfig(feature_set="huge")

    start, end = date(2016, 1, 1), date(2019, 12, 31)
    seed = source_of(bars, LOADED, start, end)
    wide = source_of(bars, LOADED, start, end, feature_set="extended")
    assert seed.fingerprint == fingerprint(bars)  # the seed's as before sets existed
    assert wide.fingerprint != seed.fingerprint
    assert FeatureSource.from_dict(wide.as_dict()) == wide
    legacy_source = {k: v for k, v in seed.as_dict().items() if k != "feature_set"}
    assert FeatureSource.from_dict(legacy_source) == seed


def test_a_window_trains_and_predicts_on_its_configs_set(bars: dict[str, BarFrame]) -> None:
    config = WalkForwardConfig(
        retrain_every=21, train_years=2.0, n_lgbm=1, n_xgb=1, params=FAST, feature_set="extended"
    )
    sessions = backtest_sessions(bars, STOCKS, date(2019, 7, 1), date(2019, 7, 30))
    window = plan_windows(sessions, STOCKS, config)[0]
    # What a fan-out worker receives carries the set.
    assert WalkForwardWindow.from_dict(window.as_dict()) == window
    data = SourceData(bars)
    result = run_window(window, data)
    assert result.retrain is not None
    assert set(result.symbols) == set(STOCKS)
    seed_window = replace(window, config=replace(config, feature_set="seed"))
    seed_result = run_window(seed_window, data)
    assert not np.array_equal(result.values, seed_result.values)  # other inputs, other model
