"""Optuna tuning: a real-data study, budget checks, and two processes tuning one shared study."""

from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from app.ai.ensemble import daily_ic
from app.ai.params import SearchSpace, load_best_params, to_train_params
from app.ai.training import train
from app.ai.tuning import daily_rank_ic, optimize
from app.ai.tuning_storage import make_storage, storage_url_for
from app.domain import BarFrame
from app.errors import ValidationError
from app.market.sources import CsvMarketData
from app.store import migrations
from tests import support
from tests.support import SHARED_DATA

SYMBOLS = ("AAPL", "MSFT", "JPM", "XOM", "KO")
BARS_START, TRAIN_END = "2015-06-01", "2018-12-31"  # features from 2015-11 (120-bar warm-up)
TINY = SearchSpace(n_estimators=(5, 20))
N_FOLDS = 3
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def load_bars() -> tuple[dict[str, BarFrame], BarFrame]:
    bars = CsvMarketData(SHARED_DATA).get_daily_bars([*SYMBOLS, "SPY"], BARS_START, TRAIN_END)
    spy = bars.pop("SPY")
    return bars, spy


@pytest.fixture(scope="module")
def real_data() -> tuple[dict[str, BarFrame], BarFrame]:
    return load_bars()


def run_worker(storage_url: str, study_name: str, best_params_dir: str, sync_dir: str) -> None:
    """Child process of the concurrency test: load data, wait for the start signal, tune."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bars, spy = load_bars()
    sync = Path(sync_dir)
    (sync / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + 60
    while not (sync / "go").exists():
        if time.monotonic() > deadline:
            raise SystemExit("no start signal")
        time.sleep(0.02)
    summary = optimize(
        bars,
        spy,
        mode="pooled",
        storage_url=storage_url,
        study_name=study_name,
        n_trials=3,
        timeout=120,
        train_end=TRAIN_END,
        best_params_dir=best_params_dir,
        space=TINY,
        n_folds=N_FOLDS,
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "setup"}))


# --- (a) a small study on real data ---------------------------------------------------------


def test_small_study_on_real_data_writes_best_params_that_train_uses(
    tmp_path: Path, real_data: tuple[dict[str, BarFrame], BarFrame]
) -> None:
    bars, spy = real_data
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    best_dir = tmp_path / "best_params"
    common: dict[str, Any] = {
        "mode": "pooled",
        "storage_url": url,
        "timeout": 120,
        "best_params_dir": best_dir,
        "space": TINY,
        "n_folds": N_FOLDS,
    }
    summary = optimize(bars, spy, n_trials=4, train_end=TRAIN_END, seed=7, **common)

    assert summary["study_name"] == "alpha-pooled"
    assert summary["n_trials_done"] == summary["n_trials_total"] == 4
    assert summary["n_complete"] + summary["n_pruned"] == 4
    assert summary["trials_per_minute"] > 0
    assert math.isfinite(summary["best_value"])

    # Walk-forward inside the training period: expanding folds, 2-session label gap, no row
    # whose label ends after train_end.
    folds = summary["setup"]["folds"]
    assert len(folds) == N_FOLDS
    for fold, following in zip(folds, [*folds[1:], None], strict=True):
        assert fold["last_train_label_end"] < fold["val_start"] <= fold["val_end"] <= TRAIN_END
        if following is not None:
            assert fold["val_end"] < following["val_start"]
    sessions = spy.index[(spy.index > folds[0]["last_train_label_end"])]
    assert sessions[0] == pd.Timestamp(folds[0]["val_start"])  # label_end < the block's start

    storage = make_storage(url)
    try:
        trials = optuna.load_study(study_name="alpha-pooled", storage=storage).get_trials()
    finally:
        storage.engine.dispose()
    assert {t.user_attrs["pid"] for t in trials} == {os.getpid()}
    assert {t.user_attrs["train_end"] for t in trials} == {TRAIN_END}
    assert all(1 <= len(t.user_attrs["fold_rank_ic"]) <= N_FOLDS for t in trials)

    path = best_dir / "pooled.json"
    record = json.loads(path.read_text())
    assert record["study_name"] == "alpha-pooled"
    assert record["best_value"] == summary["best_value"]
    assert record["n_trials"] == 4
    assert record["written_at"]
    assert not list(best_dir.glob("*.tmp"))  # the atomic write left no temp file

    tuned = load_best_params(best_dir, "pooled")
    assert tuned == summary["best_params"]
    params = to_train_params(tuned)
    bundle = train(bars, spy, "pooled", TRAIN_END, params, n_lgbm=1, n_xgb=1)
    lgbm, xgbp = bundle.metadata["params"]["lightgbm"], bundle.metadata["params"]["xgboost"]
    assert lgbm["learning_rate"] == xgbp["eta"] == tuned["learning_rate"]
    assert lgbm["num_boost_round"] == xgbp["num_boost_round"] == tuned["n_estimators"]
    assert lgbm["min_data_in_leaf"] == tuned["min_child_samples"]
    assert lgbm["lambda_l2"] == xgbp["lambda"] == tuned["reg_lambda"]
    assert lgbm["feature_fraction"] == xgbp["colsample_bytree"] == tuned["colsample"]

    # The study resumes on a window that moved (a nightly retune); each trial records its
    # window. Another objective structure (fold count) is refused.
    again = optimize(bars, spy, n_trials=1, train_end="2018-12-28", seed=8, **common)
    assert (again["n_trials_done"], again["n_trials_total"]) == (1, 5)
    assert again["setup"]["folds"][-1]["val_end"] < "2018-12-28"
    with pytest.raises(ValidationError) as info:
        optimize(bars, spy, n_trials=1, train_end=TRAIN_END, **{**common, "n_folds": 4})
    assert info.value.field == "study_name"


def test_load_best_params_ignores_missing_or_malformed_files(tmp_path: Path) -> None:
    assert load_best_params(tmp_path, "pooled") is None
    (tmp_path / "pooled.json").write_text("{not json")
    assert load_best_params(tmp_path, "pooled") is None
    good = {"mode": "pooled", "params": {"learning_rate": 0.05, "n_estimators": 100}}
    (tmp_path / "pooled.json").write_text(json.dumps(good))
    assert load_best_params(tmp_path, "pooled") == good["params"]
    assert load_best_params(tmp_path, "per_symbol") is None
    (tmp_path / "per_symbol.json").write_text(json.dumps({**good, "mode": "pooled"}))
    assert load_best_params(tmp_path, "per_symbol") is None  # a file of another mode
    bad = {"mode": "pooled", "params": {"learning_rate": "fast"}}
    (tmp_path / "pooled.json").write_text(json.dumps(bad))
    assert load_best_params(tmp_path, "pooled") is None
    with pytest.raises(ValidationError) as info:
        to_train_params({"learning_rte": 0.1})
    assert info.value.field == "learning_rte"


def test_daily_rank_ic_matches_ai_service_and_scores_constant_predictions_zero() -> None:
    rng = np.random.default_rng(0)
    index = pd.MultiIndex.from_product(
        [pd.bdate_range("2020-01-01", periods=30), [f"S{i}" for i in range(8)]],
        names=["date", "symbol"],
    )
    frame = pd.DataFrame({"mean": rng.normal(size=len(index))}, index=index)
    frame["label"] = 0.3 * frame["mean"] + rng.normal(size=len(index))
    dates = index.get_level_values("date").to_numpy()
    mine = daily_rank_ic(dates, frame["mean"].to_numpy(), frame["label"].to_numpy())
    theirs = daily_ic(frame)["rank_ic"]
    pd.testing.assert_series_equal(mine, theirs, check_names=False, check_freq=False)
    flat = daily_rank_ic(dates, np.zeros(len(index)), frame["label"].to_numpy())
    assert len(flat) == 30
    assert (flat == 0.0).all()


# --- (b) budgets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_trials", 0),
        ("n_trials", 1001),
        ("n_trials", 2.5),
        ("n_trials", True),
        ("timeout", 9),
        ("timeout", 86401),
        ("timeout", float("nan")),
        ("timeout", "60"),
    ],
)
def test_absurd_budgets_raise_validation_error_naming_the_field(
    tmp_path: Path, field: str, value: Any
) -> None:
    budget: dict[str, Any] = {"n_trials": 10, "timeout": 60, field: value}
    with pytest.raises(ValidationError) as info:
        optimize(
            {},
            None,
            mode="pooled",
            storage_url=f"sqlite:///{tmp_path / 'optuna.db'}",
            train_end=TRAIN_END,
            best_params_dir=tmp_path,
            **budget,
        )
    assert info.value.field == field
    assert not (tmp_path / "optuna.db").exists()  # refused before touching anything


def test_bad_search_space_names_the_parameter() -> None:
    with pytest.raises(ValidationError) as info:
        SearchSpace(learning_rate=(0.2, 0.01))
    assert info.value.field == "space.learning_rate"


# --- (c) two processes, one study -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_processes_tune_one_study_through_the_shared_storage(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # The app's (migrated) database URL, mapped as the service maps it: a sibling file for
    # SQLite, schema "optuna" of the same database for PostgreSQL.
    if backend == "postgres":
        app_url = request.getfixturevalue("postgres_database_url")
    else:
        app_url = f"sqlite:///{tmp_path / 'app.db'}"
        migrations.upgrade(app_url)
    app_revision = migrations.current(app_url)
    url = storage_url_for(app_url)
    study_name = f"alpha-pooled-{uuid.uuid4().hex[:8]}"
    best_dir = tmp_path / "best_params"
    sync = tmp_path / "sync"
    sync.mkdir()
    code = "import sys; from tests.ai.test_tuning import run_worker as w; w(*sys.argv[1:])"
    args = [sys.executable, "-c", code, url, study_name, str(best_dir), str(sync)]
    workers = [
        support.Process(args, support.service_env(), tmp_path / f"worker{i}.log") for i in range(2)
    ]
    try:
        support.wait_until(
            lambda: len(list(sync.glob("ready-*"))) == 2 or any(not w.alive() for w in workers),
            timeout=60,
            what="both workers ready",
        )
        (sync / "go").touch()
        for worker in workers:
            worker.popen.wait(timeout=120)
    finally:
        codes = [worker.stop() for worker in workers]
    outputs = [worker.output() for worker in workers]
    assert codes == [0, 0], outputs
    summaries = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    assert [s["n_trials_done"] for s in summaries] == [3, 3]

    storage = make_storage(url)
    try:
        trials = optuna.load_study(study_name=study_name, storage=storage).get_trials()
    finally:
        storage.engine.dispose()
    assert len(trials) == 6
    assert all(t.state in FINISHED for t in trials)
    assert sorted(t.number for t in trials) == list(range(6))
    pids = [t.user_attrs["pid"] for t in trials]
    assert sorted(set(pids)) == sorted(w.popen.pid for w in workers)
    assert all(pids.count(pid) == 3 for pid in set(pids))
    spans = [
        (
            min(t.datetime_start for t in trials if t.user_attrs["pid"] == pid),
            max(t.datetime_complete for t in trials if t.user_attrs["pid"] == pid),
        )
        for pid in set(pids)
    ]
    # The processes ran at once: each one's span of trials overlaps the other's.
    assert max(span[0] for span in spans) < min(span[1] for span in spans), spans
    # The last writer re-read the study under the lock: the file reflects all six trials.
    record = json.loads((best_dir / "pooled.json").read_text())
    assert (record["study_name"], record["n_trials"]) == (study_name, 6)
    # Optuna's own Alembic table did not touch the app's schema.
    assert migrations.current(app_url) == app_revision
    if backend == "postgres":
        engine = create_engine(app_url)
        try:
            with engine.connect() as conn:
                where = conn.execute(text("SELECT to_regclass('public.studies')")).scalar()
        finally:
            engine.dispose()
        assert where is None


def test_tuning_scores_the_label_live_trains_on(
    real_data: tuple[dict[str, BarFrame], BarFrame], tmp_path: Path
) -> None:
    """A 5-session excess label gets its own study, recorded in its structure; every fold's
    training labels end before its validation block starts; the seed's label keeps its name."""
    bars, spy = real_data
    common: dict[str, Any] = {
        "mode": "pooled",
        "storage_url": f"sqlite:///{tmp_path / 'optuna.db'}",
        "timeout": 120,
        "best_params_dir": tmp_path / "best_params",
        "space": TINY,
        "n_folds": N_FOLDS,
        "train_end": TRAIN_END,
    }
    summary = optimize(bars, spy, n_trials=2, horizon=5, normalisation="excess", seed=3, **common)

    assert summary["study_name"] == "alpha-pooled-h5-excess"
    assert summary["setup"]["label"] == {"horizon": 5, "normalisation": "excess"}
    for fold in summary["setup"]["folds"]:
        between = spy.index[
            (spy.index > pd.Timestamp(fold["last_train_label_end"]))
            & (spy.index < pd.Timestamp(fold["val_start"]))
        ]
        assert fold["last_train_label_end"] < fold["val_start"]
        assert len(between) == 0
    seed_label = optimize(bars, spy, n_trials=1, seed=4, **common)
    assert seed_label["study_name"] == "alpha-pooled"
    assert "label" not in seed_label["setup"]
