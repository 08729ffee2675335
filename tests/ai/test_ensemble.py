# ruff: noqa: N806 - X / X_val / X_test: the usual names of feature matrices
"""Members, ensemble and calibration, training split, ModelStore (incl. kill -9), signals."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.ai.calibration import ConfidenceCalibrator, _isotonic
from app.ai.ensemble import (
    POOLED_KEY,
    Ensemble,
    ModelBundle,
    Prediction,
    SymbolPrediction,
)
from app.ai.evaluation import reliability_table
from app.ai.features import FEATURE_COLUMNS, LABEL_END_COLUMN, build_features, trained_label
from app.ai.signals import ModelSignalSource, Thresholds, make_signal
from app.ai.store import ModelStore, ModelStoreError
from app.ai.training import split_by_date, train
from app.config import load_settings
from app.domain import SignalAction
from app.market.sources import CsvMarketData
from tests.support import ROOT, SHARED_DATA

#: Small, fast models: these tests check plumbing and statistics, not model quality.
FAST = {
    "lightgbm": {"num_boost_round": 60, "learning_rate": 0.1, "early_stopping_rounds": 15},
    "xgboost": {"num_boost_round": 60, "eta": 0.1, "early_stopping_rounds": 15},
}
N_FEATURES = 6


def synthetic(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Returns whose sign is predictable from x0, more so the larger |x0| is."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES))
    y = 0.006 * x[:, 0] + 0.01 * rng.standard_normal(n)
    return pd.DataFrame(x, columns=[f"f{i}" for i in range(N_FEATURES)]), y


@pytest.fixture(scope="module")
def fitted_ensemble() -> Ensemble:
    X, y = synthetic(4000, 0)
    X_val, y_val = synthetic(3000, 1)
    ens = Ensemble(n_lgbm=2, n_xgb=2, params=FAST, seed=0)
    ens.fit(X, y, X_val, y_val)
    return ens


# --- members and ensemble ---------------------------------------------------------------------


def test_ensemble_prediction_shape_and_ranges(fitted_ensemble: Ensemble) -> None:
    X_test, _ = synthetic(700, 5)
    pred = fitted_ensemble.predict(X_test)
    assert pred.mean.shape == pred.dispersion.shape == pred.confidence.shape == (700,)
    assert (pred.dispersion >= 0).all()
    assert ((pred.confidence >= 0) & (pred.confidence <= 1)).all()
    assert fitted_ensemble.member_predictions(X_test).shape == (4, 700)
    # Column order comes from the names seen in fit, not from the caller's frame.
    shuffled = X_test[list(reversed(X_test.columns))]
    np.testing.assert_array_equal(fitted_ensemble.predict(shuffled).mean, pred.mean)


def test_reliability_is_monotone_and_calibrated_on_held_out_data(
    fitted_ensemble: Ensemble,
) -> None:
    X_test, y_test = synthetic(6000, 6)
    pred = fitted_ensemble.predict(X_test)
    table = reliability_table(pred, y_test, bins=5)
    assert sum(row["count"] for row in table) == 6000
    conf = [row["mean_confidence"] for row in table]
    hits = [row["hit_rate"] for row in table]
    assert conf == sorted(conf)
    assert hits[-1] - hits[0] > 0.15
    assert sum(b >= a - 0.02 for a, b in itertools.pairwise(hits)) == len(hits) - 1
    gap = sum(r["count"] * abs(r["mean_confidence"] - r["hit_rate"]) for r in table) / 6000
    assert gap < 0.04


def test_without_validation_confidence_is_uninformative() -> None:
    X, y = synthetic(800, 7)
    ens = Ensemble(n_lgbm=1, n_xgb=1, params=FAST)
    ens.fit(X, y)
    assert np.all(ens.predict(X).confidence == 0.5)


def test_reliability_table_uniform_bins_and_empty_input() -> None:
    pred = Prediction(
        mean=np.array([0.01, -0.01, 0.02, 0.03]),
        dispersion=np.zeros(4),
        confidence=np.array([0.05, 0.15, 0.95, 0.97]),
    )
    table = reliability_table(pred, np.array([0.01, 0.01, 0.01, -0.01]), 10, "uniform")
    assert [(r["count"], r["hit_rate"]) for r in table] == [(1, 1.0), (1, 0.0), (2, 0.5)]
    empty = Prediction(np.array([]), np.array([]), np.array([]))
    assert reliability_table(empty, np.array([])) == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 1), st.floats(0.1, 10)),
        min_size=1,
        max_size=40,
    )
)
def test_isotonic_fit_is_monotone_and_keeps_the_weighted_mean(
    pairs: list[tuple[float, float]],
) -> None:
    values = np.array([v for v, _ in pairs])
    weights = np.array([w for _, w in pairs])
    fitted = _isotonic(values, weights)
    assert len(fitted) == len(values)
    assert np.all(np.diff(fitted) >= -1e-12)
    assert np.isclose(np.average(fitted, weights=weights), np.average(values, weights=weights))


def test_calibrator_round_trips_through_json() -> None:
    rng = np.random.default_rng(8)
    mean, disp = rng.normal(0, 0.01, 2000), rng.uniform(0.001, 0.005, 2000)
    y = mean + rng.normal(0, 0.01, 2000)
    cal = ConfidenceCalibrator.fit(mean, disp, y)
    clone = ConfidenceCalibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_array_equal(clone(mean, disp), cal(mean, disp))
    assert np.all(np.diff(cal.knots_confidence) >= 0)


# --- training split ---------------------------------------------------------------------------


def test_split_by_date_keeps_order_and_a_two_session_gap() -> None:
    days = pd.bdate_range("2020-01-01", periods=100)
    dates = np.repeat(days, 3)
    train_mask, val_mask = split_by_date(dates, 0.2, gap=2)
    assert not (train_mask & val_mask).any()
    train_days = np.unique(dates[train_mask])
    val_days = np.unique(dates[val_mask])
    assert len(val_days) == 20
    assert train_days.max() < val_days.min()
    between = days[(days > train_days.max()) & (days < val_days.min())]
    assert len(between) == 2


@pytest.fixture(scope="module")
def real_features() -> pd.DataFrame:
    market = CsvMarketData(SHARED_DATA)
    bars = market.get_daily_bars(["AAPL", "JPM", "XOM", "KO", "SPY"], "2014-01-01", "2018-12-31")
    return build_features(bars, bars["SPY"])


@pytest.mark.parametrize("mode", ["pooled", "per_symbol"])
def test_train_uses_only_labels_known_by_train_end(real_features: pd.DataFrame, mode: str) -> None:
    end = pd.Timestamp("2017-12-29")
    bundle = train(None, None, mode, end, FAST, features=real_features, n_lgbm=1, n_xgb=1)  # type: ignore[arg-type]
    meta = bundle.metadata
    assert pd.Timestamp(meta["last_label_end"]) <= end
    assert pd.Timestamp(meta["train_end"]) < pd.Timestamp(meta["val_start"])
    assert meta["features"] == FEATURE_COLUMNS
    assert len(meta["training_data_sha256"]) == 64
    keys = {POOLED_KEY} if mode == "pooled" else {"AAPL", "JPM", "KO", "SPY", "XOM"}
    assert set(bundle.ensembles) == keys
    at = real_features.xs(pd.Timestamp("2018-03-01"), level="date")
    predictions = bundle.predict(at)
    assert set(predictions) == {"AAPL", "JPM", "KO", "SPY", "XOM"}
    assert all(0.0 <= p.confidence <= 1.0 for p in predictions.values())


def test_confidence_is_calibrated_on_rows_the_members_never_saw(
    real_features: pd.DataFrame,
) -> None:
    """Members early-stop on the first held-out dates; the calibrator and the reported
    validation come from later dates, after the label gap (issue 12, item 7)."""
    end = pd.Timestamp("2017-12-29")
    bundle = train(None, None, "pooled", end, FAST, features=real_features, n_lgbm=1, n_xgb=1)
    meta = bundle.metadata
    gap_dates = real_features.loc[
        pd.Timestamp(meta["val_end"]) : pd.Timestamp(meta["calibration_start"])
    ].index.get_level_values("date")
    assert gap_dates.nunique() - 2 == 2  # two sessions between, so no label overlaps
    rows = real_features[real_features[LABEL_END_COLUMN] <= end]
    dates = rows.index.get_level_values("date")
    cal = rows[(dates >= pd.Timestamp(meta["calibration_start"]))]
    assert len(cal) == meta["n_calibration_rows"]
    ens = bundle.ensembles[POOLED_KEY]
    raw = ens.member_predictions(cal[FEATURE_COLUMNS])
    expected = ConfidenceCalibrator.fit(raw.mean(axis=0), raw.std(axis=0), cal["label"].to_numpy())
    assert ens.calibrator == expected
    assert ens.validation["n"] == len(cal)
    assert meta["validation"]["n_rows"] == len(cal)


def test_an_ensemble_keeps_calibration_rows_out_of_early_stopping() -> None:
    X, y = synthetic(2000, 11)
    X_val, y_val = synthetic(1000, 12)
    ens = Ensemble(n_lgbm=1, n_xgb=1, params=FAST)
    ens.fit(X, y, X_val, y_val)
    raw = ens.member_predictions(X_val[500:])
    assert ens.calibrator == ConfidenceCalibrator.fit(
        raw.mean(axis=0), raw.std(axis=0), y_val[500:]
    )


def test_train_from_bars_equals_train_from_features(real_features: pd.DataFrame) -> None:
    market = CsvMarketData(SHARED_DATA)
    bars = market.get_daily_bars(["AAPL", "JPM", "XOM", "KO", "SPY"], "2014-01-01", "2018-12-31")
    end = "2016-12-30"
    a = train(bars, bars["SPY"], "pooled", end, FAST, n_lgbm=1, n_xgb=1)
    b = train(None, None, "pooled", end, FAST, features=real_features, n_lgbm=1, n_xgb=1)
    assert a.metadata["training_data_sha256"] == b.metadata["training_data_sha256"]


# --- ModelStore -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle_pair(real_features: pd.DataFrame) -> tuple[ModelBundle, ModelBundle]:
    first = train(
        None, None, "pooled", "2016-12-30", FAST, features=real_features, n_lgbm=1, n_xgb=1
    )
    second = train(
        None, None, "pooled", "2017-12-29", FAST, features=real_features, n_lgbm=1, n_xgb=1, seed=5
    )
    return first, second


def _probe(real_features: pd.DataFrame) -> pd.DataFrame:
    return real_features.loc[pd.Timestamp("2018-06-01") : pd.Timestamp("2018-06-30")]


def test_store_round_trip_and_metadata(
    tmp_path: Path, bundle_pair: tuple[ModelBundle, ModelBundle], real_features: pd.DataFrame
) -> None:
    store = ModelStore(tmp_path)
    assert store.load_current() is None
    assert store.is_stale(7)
    version = store.save(bundle_pair[0], {"trained_by": "test"})
    assert store.current_version() == version
    assert store.versions() == [version]
    loaded = store.load_current()
    assert loaded is not None
    assert loaded.version == version
    probe = _probe(real_features)
    pd.testing.assert_frame_equal(loaded.predict_frame(probe), bundle_pair[0].predict_frame(probe))
    meta = store.metadata()
    assert meta is not None
    assert meta["trained_by"] == "test"
    assert set(meta["libraries"]) >= {"lightgbm", "xgboost", "numpy", "pandas"}
    for key in ("features", "train_start", "train_end", "mode", "validation"):
        assert key in meta
    assert meta["training_data_sha256"] == bundle_pair[0].metadata["training_data_sha256"]
    assert sorted(p.suffix for p in (tmp_path / version / "ensembles").rglob("m*")) == [
        ".txt",
        ".ubj",
    ]


def test_load_current_is_cached_until_the_pointer_moves(
    tmp_path: Path, bundle_pair: tuple[ModelBundle, ModelBundle]
) -> None:
    store = ModelStore(tmp_path)
    store.save(bundle_pair[0])
    first = store.load_current()
    assert ModelStore(tmp_path).load_current() is first
    store.save(bundle_pair[1])
    second = store.load_current()
    assert second is not first
    assert second is not None
    assert second.version == store.current_version()


def test_store_keeps_the_last_k_versions(
    tmp_path: Path, bundle_pair: tuple[ModelBundle, ModelBundle]
) -> None:
    store = ModelStore(tmp_path, keep=2)
    versions = [store.save(bundle_pair[i % 2]) for i in range(4)]
    assert store.versions() == versions[-2:]
    assert store.current_version() == versions[-1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_staleness_follows_creation_time(
    tmp_path: Path, bundle_pair: tuple[ModelBundle, ModelBundle]
) -> None:
    store = ModelStore(tmp_path)
    store.save(bundle_pair[0])
    now = datetime.now(UTC)
    assert not store.is_stale(7, now=now)
    assert not store.is_stale(7, now=now + timedelta(days=6, hours=23))
    assert store.is_stale(7, now=now + timedelta(days=7, minutes=1))


def test_malformed_pointer_is_an_error_not_a_path(tmp_path: Path) -> None:
    (tmp_path / "current").write_text("../../etc\n")
    with pytest.raises(ModelStoreError):
        ModelStore(tmp_path).load_current()


CHILD = textwrap.dedent(
    """
    import os, sys, time
    real_fsync, real_replace = os.fsync, os.replace

    def slow_fsync(fd):
        time.sleep(0.1)
        real_fsync(fd)

    def slow_replace(src, dst):
        time.sleep(0.5)
        real_replace(src, dst)

    os.fsync, os.replace = slow_fsync, slow_replace
    from app.ai.store import ModelStore

    bundle = ModelStore(sys.argv[1]).load_current()
    print("saving", flush=True)
    version = ModelStore(sys.argv[2]).save(bundle, {"attempt": sys.argv[3]})
    print("saved", version, flush=True)
    """
)


def _start_child(staging: Path, target: Path, attempt: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(staging), str(target), str(attempt)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "saving", proc.stderr.read() if proc.stderr else line
    return proc


def test_kill_9_mid_save_leaves_the_previous_model_current(
    tmp_path: Path, bundle_pair: tuple[ModelBundle, ModelBundle], real_features: pd.DataFrame
) -> None:
    """Slowed fsync (0.1 s each) and pointer replace (0.5 s) make a save take > 1.3 s before
    the pointer moves; SIGKILL lands at stratified random points inside that span."""
    live, staging = tmp_path / "models", tmp_path / "staging"
    store = ModelStore(live)
    old_version = store.save(bundle_pair[0])
    ModelStore(staging).save(bundle_pair[1])
    probe = _probe(real_features)
    expected = store.load(old_version).predict_frame(probe)

    rng = np.random.default_rng(42)
    kill_points = [rng.uniform(lo, lo + 0.25) for lo in (0.0, 0.25, 0.5, 0.75, 1.0)]
    for attempt, delay in enumerate(kill_points):
        proc = _start_child(staging, live, attempt)
        time.sleep(delay)
        assert proc.poll() is None, "the save finished before the kill; slow it down"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL
        assert proc.stdout is not None
        assert "saved" not in proc.stdout.read()
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()

        fresh = ModelStore(live)
        assert fresh.current_version() == old_version
        reloaded = fresh.load(old_version)
        pd.testing.assert_frame_equal(reloaded.predict_frame(probe), expected)
        current = fresh.load_current()
        assert current is not None
        assert current.version == old_version
        for version in fresh.versions():  # a version that got renamed into place is complete
            fresh.load(version)

    leftovers = [p for p in live.iterdir() if p.name.startswith(".")]
    assert leftovers, "some kills should have left temporary files behind"
    for path in leftovers:  # pretend they are old: the next save sweeps them
        os.utime(path, (time.time() - 7200, time.time() - 7200))

    proc = _start_child(staging, live, 99)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    new_version = out.split()[-1]
    assert ModelStore(live).current_version() == new_version != old_version
    after = ModelStore(live).load_current()
    assert after is not None
    assert after.metadata["attempt"] == "99"
    pd.testing.assert_frame_equal(after.predict_frame(probe), bundle_pair[1].predict_frame(probe))
    assert not [p for p in live.iterdir() if p.name.startswith(".")]


# --- signals ----------------------------------------------------------------------------------

T = Thresholds()


@pytest.mark.parametrize(
    ("mean", "confidence", "action"),
    [
        (0.005, 0.7, SignalAction.BUY),
        (0.02, 0.95, SignalAction.BUY),
        (0.004999, 0.9, SignalAction.HOLD),
        (0.005, 0.6999, SignalAction.HOLD),
        (-0.005, 0.7, SignalAction.SELL),
        (-0.004999, 0.9, SignalAction.HOLD),
        (-0.02, 0.6999, SignalAction.HOLD),
        (0.0, 1.0, SignalAction.HOLD),
        (float("nan"), 0.9, SignalAction.HOLD),
        (0.01, float("nan"), SignalAction.HOLD),
    ],
)
def test_make_signal_thresholds(mean: float, confidence: float, action: SignalAction) -> None:
    sig = make_signal("AAPL", SymbolPrediction(mean, 0.001, confidence), T, "v1")
    assert sig.action is action
    assert (sig.symbol, sig.model_version, sig.dispersion) == ("AAPL", "v1", 0.001)


def test_stale_model_always_holds() -> None:
    strong = SymbolPrediction(0.05, 0.0, 0.99)
    assert make_signal("AAPL", strong, T, "v1").action is SignalAction.BUY
    assert make_signal("AAPL", strong, T, "v1", stale=True).action is SignalAction.HOLD


def test_make_signal_reads_the_settings() -> None:
    cfg = load_settings({"ai_signal_buy_threshold": 0.01, "ai_confidence_threshold": 0.55})
    assert make_signal("KO", SymbolPrediction(0.009, 0, 0.9), cfg, "v").action is SignalAction.HOLD
    assert make_signal("KO", SymbolPrediction(0.01, 0, 0.55), cfg, "v").action is SignalAction.BUY


def test_a_model_trained_for_another_label_only_holds(
    tmp_path: Path, bundle_pair: tuple[ModelBundle, ModelBundle]
) -> None:
    """The saved model's label (train's default: 1 session, raw) against the settings': a
    mismatch makes every signal HOLD and says why; the same label trades."""
    store = ModelStore(tmp_path)
    store.save(bundle_pair[1])
    bars = CsvMarketData(SHARED_DATA).get_daily_bars(
        ["AAPL", "JPM", "XOM", "KO", "SPY"], "2018-01-01", "2018-06-29"
    )
    session = datetime(2018, 6, 29).date()
    everything = Thresholds(-1.0, -2.0, 0.0)  # every finite prediction is a BUY

    def source(label: tuple[int, str]) -> ModelSignalSource:
        return ModelSignalSource(store, everything, 365, label=label)

    signals, problem = source((1, "raw")).signals(bars, session)
    assert problem is None
    assert {s.action for s in signals.values()} == {SignalAction.BUY}
    signals, problem = source((5, "excess")).signals(bars, session)
    assert problem is not None
    assert "1-session raw" in problem
    assert "5-session excess" in problem
    assert len(signals) == 5
    assert {s.action for s in signals.values()} == {SignalAction.HOLD}
    # A model saved before the label was recorded was trained for the seed's label.
    assert trained_label({}) == (1, "raw")
    assert trained_label({"horizon": 10, "label_normalisation": "rank"}) == (10, "rank")


def test_bundle_predict_rejects_several_dates(
    bundle_pair: tuple[ModelBundle, ModelBundle], real_features: pd.DataFrame
) -> None:
    with pytest.raises(ValueError, match="one date"):
        bundle_pair[0].predict(_probe(real_features))
    assert LABEL_END_COLUMN in real_features.columns
