# ruff: noqa: N806 - X: the usual name of a feature matrix, as in every ML API
"""Optuna tuning of the ensemble members' hyperparameters, shared by many worker processes.

Why it is shaped this way:
- One study, many processes: studies live in an RDB storage (the app's PostgreSQL, or SQLite)
  and every worker opens the same study with ``load_if_exists=True``. The storage hands out
  trial numbers transactionally; each worker's TPE sampler gets its own seed, and Optuna's
  constant-liar TPE (the default) treats the other workers' running trials as bad, so workers
  do not sample the same region.
- Optuna keeps its schema version in an Alembic ``alembic_version`` table, the same table the
  app's migrations use. Sharing one namespace breaks both (measured: Optuna refuses the app's
  revision, Alembic cannot find Optuna's). So on PostgreSQL the studies live in their own schema
  (``optuna``, via the connection's search_path); SQLite has no schemas, so the app's SQLite
  database gets a sibling file (``storage_url_for``), which also keeps tuning writes off the
  app database's single write lock.
- The objective never looks past ``train_end``: bars are clipped there before features are
  built, and only rows whose label is known by ``train_end`` are used. Inside that period, K
  expanding walk-forward folds by date; a fold trains on rows whose label ended before the
  fold's first validation session (the label's sessions as a gap, as in ``evaluation``) and
  is scored on the next block of dates. Members fit without early stopping, so the scored
  block never chooses anything. The label is the one live trains on
  (AI_PREDICTION_HORIZON_DAYS, AI_LABEL_NORMALISATION): tuning a 1-session label for a model
  that trades a 5-session one would choose parameters for another problem.
- The score is the mean daily cross-sectional Spearman rank IC. Trading uses the ordering of
  the symbols on a day (the best-ranked candidates get bought), not the predicted level, and
  ranks make the score robust to the few +-20 % days that dominate squared-error or Pearson
  figures. A constant prediction has no skill, so such days count as 0 instead of vanishing.
- Best parameters go to ``best_params/<mode>.json`` atomically (temp file, fsync, os.replace,
  under a file lock that re-reads the study's best), so a reader never sees half a file and the
  last of several finishing workers writes the study's latest best.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from app.ai.ensemble import (
    MIN_SYMBOL_TRAIN_ROWS,
    MODES,
    Ensemble,
    Mode,
)
from app.ai.features import (
    LABEL_COLUMN,
    LABEL_END_COLUMN,
    SEED_FEATURE_SET,
    SEED_LABEL,
    build_features,
    feature_columns,
    label_sessions,
)
from app.ai.params import SearchSpace, _best_params_path, _fail, _write_json_atomic, to_train_params
from app.ai.tuning_storage import _close_storage, _file_lock, _safe_url, make_storage
from app.domain import BarFrame

__all__ = [
    "N_TRIALS_RANGE",
    "TIMEOUT_RANGE",
    "SearchSpace",
    "daily_rank_ic",
    "make_folds",
    "make_storage",
    "optimize",
    "to_train_params",
]

logger = logging.getLogger(__name__)

#: Inclusive bounds of the budgets; anything outside is a typo, not a plan.
N_TRIALS_RANGE = (1, 1000)
TIMEOUT_RANGE = (10.0, 86400.0)
N_FOLDS_RANGE = (2, 10)
DEFAULT_N_FOLDS = 4
#: Share of the training period's dates that the K validation blocks cover together.
VALIDATION_SHARE = 0.5
MIN_FOLD_DATES = 20
MIN_FIRST_TRAIN_DATES = 60
#: Fewer symbols than this on a date leave no cross-section to rank.
MIN_SYMBOLS_PER_DATE = 3
#: Fixed model seed: trials differ by their parameters, not by their bagging draw.
_MODEL_SEED = 0
_OBJECTIVE_VERSION = 1


# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fold:
    """One walk-forward step: train on labels ended before `val_start`, score the block."""

    train_mask: np.ndarray
    val_mask: np.ndarray
    last_train_label_end: pd.Timestamp
    val_start: pd.Timestamp
    val_end: pd.Timestamp


def _day(value: date | datetime | str | pd.Timestamp) -> pd.Timestamp:
    return pd.Timestamp(value).normalize()


def _training_rows(
    bars: Mapping[str, BarFrame],
    spy: BarFrame | None,
    train_start: pd.Timestamp | None,
    train_end: pd.Timestamp,
    features: pd.DataFrame | None,
    horizon: int = 1,
    normalisation: str = "raw",
    feature_set: str = SEED_FEATURE_SET,
) -> pd.DataFrame:
    """Labelled rows known by `train_end`; bars after it are cut before features exist."""
    if features is None:
        clipped = {sym: frame.loc[:train_end] for sym, frame in bars.items()}
        features = build_features(
            clipped,
            spy.loc[:train_end] if spy is not None else None,
            horizon=horizon,
            normalisation=normalisation,
            feature_set=feature_set,
        )
    rows = features[features[LABEL_COLUMN].notna() & (features[LABEL_END_COLUMN] <= train_end)]
    if train_start is not None:
        rows = rows[rows.index.get_level_values("date") >= train_start]
    return rows


def make_folds(rows: pd.DataFrame, n_folds: int, horizon: int = 1) -> list[Fold]:
    """K expanding folds over the rows' dates; the validation blocks cover the last half.

    Training rows of a fold have ``label_end < val_start``: their trade closed before the first
    validation decision, which drops the label's sessions (``label_sessions(horizon)``) before
    the block.
    """
    dates = rows.index.get_level_values("date").to_numpy()
    label_end = rows[LABEL_END_COLUMN].to_numpy()
    unique = np.unique(dates)
    block = int(len(unique) * VALIDATION_SHARE) // n_folds
    first_train = len(unique) - block * n_folds - label_sessions(horizon)
    if block < MIN_FOLD_DATES or first_train < MIN_FIRST_TRAIN_DATES:
        raise _fail(
            "bars",
            f"{len(unique)} labelled dates are too few for {n_folds} folds "
            f"(need >= {MIN_FOLD_DATES} per block and {MIN_FIRST_TRAIN_DATES} to start)",
        )
    folds: list[Fold] = []
    for k in range(n_folds):
        start = len(unique) - (n_folds - k) * block
        val_start, val_end = unique[start], unique[start + block - 1]
        train_mask = label_end < val_start
        val_mask = (dates >= val_start) & (dates <= val_end)
        folds.append(
            Fold(
                train_mask=train_mask,
                val_mask=val_mask,
                last_train_label_end=pd.Timestamp(label_end[train_mask].max()),
                val_start=pd.Timestamp(val_start),
                val_end=pd.Timestamp(val_end),
            )
        )
    return folds


def daily_rank_ic(dates: np.ndarray, pred: np.ndarray, label: np.ndarray) -> pd.Series:
    """Per-date Spearman correlation of predictions and labels across symbols.

    Dates with fewer than MIN_SYMBOLS_PER_DATE usable rows or constant labels are left out;
    a constant prediction scores 0 (no skill) rather than disappearing. Same figure as
    ``app.ai.ensemble.daily_ic``'s rank_ic otherwise, vectorised (tuning calls it per fold).
    """
    frame = pd.DataFrame({"date": dates, "p": pred, "y": label}).dropna()
    grouped = frame.groupby("date")
    frame["n"] = grouped["y"].transform("size")
    frame = frame[frame["n"] >= MIN_SYMBOLS_PER_DATE]
    grouped = frame.groupby("date")
    rp = grouped["p"].rank(method="average")
    ry = grouped["y"].rank(method="average")
    dp = rp - rp.groupby(frame["date"]).transform("mean")
    dy = ry - ry.groupby(frame["date"]).transform("mean")
    parts = pd.DataFrame({"date": frame["date"], "xy": dp * dy, "xx": dp * dp, "yy": dy * dy})
    sums = parts.groupby("date")[["xy", "xx", "yy"]].sum()
    sums = sums[sums["yy"] > 0]
    denom = np.sqrt(sums["xx"] * sums["yy"])
    ic = (sums["xy"] / denom.where(denom > 0)).fillna(0.0)
    ic.index = pd.DatetimeIndex(ic.index, name="date")
    return ic.rename("rank_ic")


def _fold_predictions(
    rows: pd.DataFrame,
    columns: list[str],
    fold: Fold,
    mode: Mode,
    params: Mapping[str, Any],
    n_lgbm: int,
    n_xgb: int,
) -> np.ndarray:
    """Predictions for the fold's validation rows (NaN where no model applies)."""
    X = rows[columns]
    y = rows[LABEL_COLUMN]
    val_X = X[fold.val_mask]
    if mode == "pooled":
        ens = Ensemble(n_lgbm, n_xgb, params, _MODEL_SEED)
        ens.fit(X[fold.train_mask], y[fold.train_mask])
        return ens.predict(val_X).mean
    symbols = rows.index.get_level_values("symbol").to_numpy()
    val_symbols = symbols[fold.val_mask]
    out = np.full(len(val_X), np.nan)
    for sym in np.unique(val_symbols):
        tm = fold.train_mask & (symbols == sym)
        if tm.sum() < MIN_SYMBOL_TRAIN_ROWS:
            continue
        ens = Ensemble(n_lgbm, n_xgb, params, _MODEL_SEED)
        ens.fit(X[tm], y[tm])
        sel = val_symbols == sym
        out[sel] = ens.predict(val_X[sel]).mean
    return out


def _objective(
    rows: pd.DataFrame,
    columns: list[str],
    folds: list[Fold],
    mode: Mode,
    space: SearchSpace,
    n_lgbm: int,
    n_xgb: int,
    window: Mapping[str, Any],
) -> Callable[[optuna.Trial], float]:
    dates = rows.index.get_level_values("date").to_numpy()
    labels = rows[LABEL_COLUMN].to_numpy(dtype=np.float64)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        for key, value in window.items():
            trial.set_user_attr(key, value)
        params = to_train_params(space.suggest(trial))
        fold_ics: list[float] = []
        for step, fold in enumerate(folds):
            pred = _fold_predictions(rows, columns, fold, mode, params, n_lgbm, n_xgb)
            ics = daily_rank_ic(dates[fold.val_mask], pred, labels[fold.val_mask])
            fold_ics.append(float(ics.mean()) if len(ics) else 0.0)
            # The running mean is what the final value will be; the pruner compares it with
            # other trials at the same fold.
            trial.report(float(np.mean(fold_ics)), step)
            trial.set_user_attr("fold_rank_ic", fold_ics)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return float(np.mean(fold_ics))

    return objective


def _check_budget(field: str, value: Any, bounds: tuple[float, float], integral: bool) -> None:
    ok_type = isinstance(value, int) if integral else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        raise _fail(field, f"{field} must be a finite {'integer' if integral else 'number'}")
    if not bounds[0] <= value <= bounds[1]:
        raise _fail(field, f"{field} must be between {bounds[0]:g} and {bounds[1]:g}, got {value}")


def _sampler_seed(seed: int | None) -> int:
    """An explicit seed reproduces a single worker; otherwise every process draws its own."""
    if seed is not None:
        return seed
    entropy = np.random.SeedSequence([os.getpid(), time.time_ns()])
    return int(entropy.generate_state(1)[0])


def _write_best(
    study: optuna.Study, mode: Mode, best_params_dir: str | Path, setup: Mapping[str, Any]
) -> Path | None:
    """Write the study's current best (re-read under the lock: the last writer is freshest)."""
    path = _best_params_path(best_params_dir, mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path.with_name(f".{path.name}.lock")):
        try:
            best = study.best_trial
        except ValueError:  # no complete trial yet
            return None
        trials = study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state.is_finished()]
        record = {
            "mode": mode,
            "study_name": study.study_name,
            "best_value": best.value,
            "best_trial_number": best.number,
            "n_trials": len(finished),
            "n_complete": sum(t.state == optuna.trial.TrialState.COMPLETE for t in finished),
            "params": best.params,
            "train_params": to_train_params(best.params),
            "best_trial_window": {
                key: best.user_attrs.get(key) for key in ("train_start", "train_end", "n_symbols")
            },
            "objective": dict(setup),
            "written_at": datetime.now(UTC).isoformat(),
        }
        _write_json_atomic(path, record)
    return path


def optimize(
    bars: Mapping[str, BarFrame],
    spy: BarFrame | None,
    *,
    mode: Mode,
    storage_url: str,
    study_name: str | None = None,
    n_trials: int,
    timeout: float,
    train_end: date | datetime | str | pd.Timestamp,
    best_params_dir: str | Path,
    seed: int | None = None,
    progress: bool = False,
    train_start: date | datetime | str | pd.Timestamp | None = None,
    n_folds: int = DEFAULT_N_FOLDS,
    space: SearchSpace | None = None,
    n_lgbm: int = 1,
    n_xgb: int = 1,
    features: pd.DataFrame | None = None,
    horizon: int = 1,
    normalisation: str = "raw",
    feature_set: str = SEED_FEATURE_SET,
) -> dict[str, Any]:
    """Run up to `n_trials` trials (or until `timeout` s) of the shared study; write best params.

    Any number of processes may call this at once with the same `storage_url` and study name.
    The objective's structure (score, mode, folds, members) is stored with the study; joining
    with another structure raises ValidationError(field="study_name"): those scores are not
    comparable. The data window may move (a nightly retune's window advances a day): every
    trial records the window it was scored on, and TPE keeps learning from earlier nights'
    trials, scored on nearly the same data. `features` (from ``build_features``) skips
    recomputation (built with the same `horizon`, `normalisation` and `feature_set`); rows
    whose label ends after `train_end` are never used. The default study name carries a label
    other than the seed's (1 session, raw) and a feature set other than the seed's, so each
    label and feature set tunes its own study (AI_FEATURE_SET: tune what training will fit).
    """
    _check_budget("n_trials", n_trials, N_TRIALS_RANGE, integral=True)
    _check_budget("timeout", timeout, TIMEOUT_RANGE, integral=False)
    _check_budget("n_folds", n_folds, N_FOLDS_RANGE, integral=True)
    if mode not in MODES:
        raise _fail("mode", f"mode must be one of {MODES}, got {mode!r}")
    if n_lgbm < 0 or n_xgb < 0 or n_lgbm + n_xgb < 1:
        raise _fail("n_lgbm", "the objective needs at least one member")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _fail("seed", "seed must be an integer or None")
    space = space or SearchSpace()
    seed_label = (horizon, normalisation) == SEED_LABEL
    seed_features = feature_set == SEED_FEATURE_SET
    name = study_name or (
        f"alpha-{mode}"
        + ("" if seed_label else f"-h{horizon}-{normalisation}")
        + ("" if seed_features else f"-{feature_set}")
    )
    wall0 = time.perf_counter()

    end = _day(train_end)
    start = _day(train_start) if train_start is not None else None
    rows = _training_rows(bars, spy, start, end, features, horizon, normalisation, feature_set)
    columns = feature_columns(feature_set)
    if rows.empty:
        raise _fail("train_end", f"no labelled rows to tune on up to {end.date()}")
    symbols = sorted(str(s) for s in rows.index.get_level_values("symbol").unique())
    if len(symbols) < MIN_SYMBOLS_PER_DATE:
        raise _fail("bars", f"rank IC needs >= {MIN_SYMBOLS_PER_DATE} symbols, got {symbols}")
    folds = make_folds(rows, n_folds, horizon)
    dates = rows.index.get_level_values("date")
    structure = {
        "version": _OBJECTIVE_VERSION,
        "score": "mean over folds of mean daily cross-sectional Spearman rank IC",
        "mode": mode,
        "n_folds": n_folds,
        "members": {"lightgbm": n_lgbm, "xgboost": n_xgb},
        # Studies made before the label was configurable hold the seed's label and no key.
        **({} if seed_label else {"label": {"horizon": horizon, "normalisation": normalisation}}),
        # Likewise studies made before the feature set was configurable: the seed's.
        **({} if seed_features else {"feature_set": feature_set}),
    }
    window = {
        "train_start": dates.min().date().isoformat(),
        "train_end": end.date().isoformat(),
        "n_symbols": len(symbols),
    }
    setup = {
        **structure,
        **window,
        "folds": [
            {
                "last_train_label_end": f.last_train_label_end.date().isoformat(),
                "val_start": f.val_start.date().isoformat(),
                "val_end": f.val_end.date().isoformat(),
            }
            for f in folds
        ],
        "symbols": symbols,
    }

    storage = make_storage(storage_url)
    try:
        sampler_seed = _sampler_seed(seed)
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=sampler_seed),
            # Prune from the second fold on: one fold's IC alone is too noisy to judge.
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
            load_if_exists=True,
        )
        stored = study.user_attrs.get("objective")
        if stored is None:
            study.set_user_attr("objective", structure)
        elif stored != structure:
            raise _fail(
                "study_name",
                f"study {name!r} tunes another objective ({stored}); use a new study name",
            )
        mine: list[optuna.trial.FrozenTrial] = []
        objective = _objective(rows, columns, folds, mode, space, n_lgbm, n_xgb, window)
        setup_seconds = time.perf_counter() - wall0
        t0 = time.perf_counter()
        study.optimize(
            objective,
            n_trials=n_trials,
            timeout=timeout,
            callbacks=[lambda _study, trial: mine.append(trial)],
            show_progress_bar=progress,
        )
        seconds = time.perf_counter() - t0
        path = _write_best(study, mode, best_params_dir, setup)
        all_trials = study.get_trials(deepcopy=False)
        finished = [t for t in all_trials if t.state.is_finished()]
        best = study.best_trial if path is not None else None
    finally:
        _close_storage(storage)

    states = optuna.trial.TrialState
    return {
        "study_name": name,
        "storage": _safe_url(storage_url),
        "mode": mode,
        "best_value": best.value if best is not None else None,
        "best_params": dict(best.params) if best is not None else None,
        "best_trial_number": best.number if best is not None else None,
        "best_params_path": str(path) if path is not None else None,
        "n_trials_done": len(mine),
        "n_complete": sum(t.state == states.COMPLETE for t in mine),
        "n_pruned": sum(t.state == states.PRUNED for t in mine),
        "n_failed": sum(t.state == states.FAIL for t in mine),
        "n_trials_total": len(finished),
        "sampler_seed": sampler_seed,
        "seconds": round(seconds, 3),
        "setup_seconds": round(setup_seconds, 3),
        "trials_per_minute": round(len(mine) / seconds * 60.0, 3) if seconds > 0 else None,
        "setup": setup,
    }
