# ruff: noqa: N806 - X / X_val: the usual name of a feature matrix, as in every ML API
"""Training the universe's (UNIVERSE) models on data before "today", and saving them atomically.

"Today" is the venue's session (the replay session in sim mode), so a model never learns from
days the strategy has not lived yet. Tuned parameters from best_params/ are used when present.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pandas as pd
from sqlalchemy.exc import IntegrityError

from app.ai.calibration import _hits
from app.ai.champion import settle
from app.ai.ensemble import (
    MIN_SYMBOL_TRAIN_ROWS,
    MIN_SYMBOL_VAL_ROWS,
    MODES,
    POOLED_KEY,
    Ensemble,
    Mode,
    ModelBundle,
    _merged_params,
    _symbols_of,
    daily_ic,
)
from app.ai.features import (
    LABEL_COLUMN,
    LABEL_END_COLUMN,
    LABEL_HORIZON,
    SEED_FEATURE_SET,
    build_features,
    feature_columns,
    label_sessions,
)
from app.ai.members import as_matrix
from app.ai.params import load_best_params, to_train_params
from app.ai.store import ModelStore
from app.config import Settings
from app.domain import BarFrame, MarketData
from app.market.calendar import NyseCalendar
from app.market.universe import BENCHMARK, configured_universe, feature_universe
from app.store.database import Database
from app.store.orm import ModelRun

logger = logging.getLogger(__name__)

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
BoolMask = npt.NDArray[np.bool_]


def training_window(today: date, years: float, calendar: NyseCalendar) -> tuple[date, date]:
    """From `years` before, to the last session before `today` (its label is not known yet
    either, but `train` drops rows whose label ends after the window)."""
    end = calendar.previous_session(today)
    start = end - timedelta(days=int(years * 365.25))
    return start, end


def load_bars(
    market: MarketData, symbols: Sequence[str], start: date, end: date
) -> dict[str, BarFrame]:
    universe = feature_universe(symbols)
    bars = market.get_daily_bars(universe, start, end)
    return {s: f for s, f in bars.items() if len(f)}


def fit_and_save(
    *,
    settings: Settings,
    db: Database,
    market: MarketData,
    store: ModelStore,
    today: date,
    symbols: Sequence[str] | None = None,
    mode: str | None = None,
    progress: Progress | None = None,
    gated: bool = False,
) -> dict[str, Any]:
    """Train a challenger; with `gated` (the nightly retrain) it replaces the current model only
    when it is not worse on rows neither trained on (app.ai.champion), else it always does."""
    mode = (mode or settings.model_mode).replace("-", "_")
    report = progress or (lambda stage, done, total: None)
    calendar = NyseCalendar()
    start, end = training_window(today, settings.train_years, calendar)
    started = time.perf_counter()
    report("data", 0, 3)
    bars = load_bars(market, symbols or configured_universe(settings, market).symbols, start, end)
    if BENCHMARK not in bars:
        raise ValueError(f"{BENCHMARK} bars are needed: features measure strength relative to it")
    report("fit", 1, 3)
    params = load_best_params(settings.best_params_dir, mode)
    day = _day(end)
    features = build_features(
        {sym: frame.loc[:day] for sym, frame in bars.items()},
        bars[BENCHMARK].loc[:day],
        horizon=settings.ai_prediction_horizon_days,
        normalisation=settings.ai_label_normalisation,
        feature_set=settings.ai_feature_set,
    )
    bundle = train(
        None,
        None,
        cast(Mode, mode),  # validated by Settings and the API
        end,
        to_train_params(params) if params else None,
        features=features,
        horizon=settings.ai_prediction_horizon_days,
        normalisation=settings.ai_label_normalisation,
        feature_set=settings.ai_feature_set,
    )
    report("save", 2, 3)
    gate = settle(
        store,
        bundle,
        features,
        {"train_start": start.isoformat(), "train_end": end.isoformat(), "symbols": sorted(bars)},
        tolerance=settings.model_gate_tolerance,
        gated=gated,
    )
    version = str(gate.challenger)
    metrics = dict(bundle.metadata.get("validation", {}))
    try:
        with db.session() as session:
            session.add(
                ModelRun(
                    version=version,
                    mode=mode,
                    symbols={"symbols": sorted(bars)},
                    metrics={**metrics, "gate": gate.as_dict()},
                    train_start=start,
                    train_end=end,
                )
            )
    except IntegrityError:
        log.warning("model run %s already recorded", version)
    seconds = round(time.perf_counter() - started, 1)
    log.info("trained %s model %s on %d symbols in %.1fs", mode, version, len(bars), seconds)
    report("done", 3, 3)
    return {
        "version": version,
        "kept": gate.kept,
        "current_version": store.current_version(),
        "gate": gate.as_dict(),
        "mode": mode,
        "symbols": len(bars),
        "train_start": start.isoformat(),
        "train_end": end.isoformat(),
        "tuned_params": params is not None,
        "metrics": metrics,
        "seconds": seconds,
    }


def split_by_date(
    dates: pd.DatetimeIndex | npt.NDArray[Any] | pd.Index,
    val_fraction: float = 0.2,
    gap: int = LABEL_HORIZON,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(train, validation) masks: the last `val_fraction` of distinct dates validate, and the
    `gap` dates before them are dropped so no training label overlaps the validation period."""
    values = np.asarray(dates)
    unique = np.unique(values)
    n_val = round(len(unique) * val_fraction) if val_fraction > 0 else 0
    if n_val == 0:
        return np.ones(len(values), dtype=bool), np.zeros(len(values), dtype=bool)
    val_dates = unique[len(unique) - n_val :]
    train_dates = unique[: max(len(unique) - n_val - gap, 0)]
    return np.isin(values, train_dates), np.isin(values, val_dates)


def _data_sha256(rows: pd.DataFrame, columns: list[str]) -> str:
    hashed = pd.util.hash_pandas_object(rows[[*columns, LABEL_COLUMN]], index=True)
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()


def _day(value: date | datetime | str | pd.Timestamp) -> pd.Timestamp:
    return pd.Timestamp(value).normalize()


def _iso(value: Any) -> str | None:
    return None if value is None or pd.isna(value) else pd.Timestamp(value).date().isoformat()


def train(
    bars: Mapping[str, BarFrame] | None,
    spy: BarFrame | None,
    mode: Mode,
    train_end: date | datetime | str | pd.Timestamp,
    params: Mapping[str, Any] | None = None,
    *,
    features: pd.DataFrame | None = None,
    train_start: date | datetime | str | pd.Timestamp | None = None,
    n_lgbm: int = 3,
    n_xgb: int = 3,
    seed: int = 0,
    val_fraction: float = 0.2,
    horizon: int = 1,
    normalisation: str = "raw",
    feature_set: str = SEED_FEATURE_SET,
) -> ModelBundle:
    """Train on every row whose label is known by the close of `train_end`.

    Rows qualify when ``label_end <= train_end`` (the trade's closing open has happened). The
    last `val_fraction` of dates, after a 2-session gap, are held out: their first half
    early-stops the members, their second half (after another gap) calibrates confidence and
    gives the validation metrics, so calibration is fitted on rows no member saw; nothing is
    shuffled. `features` (from ``build_features``) skips recomputation; they must have been
    built with the same `horizon`, `normalisation` and `feature_set`: the first two size the
    gaps, all three are recorded (a model is only used with its own label and feature set).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    end = _day(train_end)
    if features is None:
        if bars is None:
            raise ValueError("train needs bars or features")
        clipped = {sym: frame.loc[:end] for sym, frame in bars.items()}
        features = build_features(
            clipped,
            spy.loc[:end] if spy is not None else None,
            horizon=horizon,
            normalisation=normalisation,
            feature_set=feature_set,
        )
    columns = feature_columns(feature_set)
    rows = features[features[LABEL_COLUMN].notna() & (features[LABEL_END_COLUMN] <= end)]
    if train_start is not None:
        rows = rows[rows.index.get_level_values("date") >= _day(train_start)]
    if rows.empty:
        raise ValueError(f"no labelled rows to train on up to {end.date()}")
    dates = rows.index.get_level_values("date")
    gap = label_sessions(horizon)
    train_mask, held_out = split_by_date(dates, val_fraction, gap)
    # The held-out dates: the first half early-stops the members, the second half (after the
    # label gap) calibrates confidence and reports validation, on rows no member saw.
    stop_part, cal_part = split_by_date(dates[held_out], 0.5, gap)
    val_mask, cal_mask = held_out.copy(), held_out.copy()
    val_mask[held_out] = stop_part
    cal_mask[held_out] = cal_part
    # One float32 matrix of every row; each ensemble copies out only its own rows.
    X = as_matrix(rows, columns)
    y = rows[LABEL_COLUMN].to_numpy(dtype=np.float64)

    def fit(train: BoolMask, val: BoolMask, cal: BoolMask) -> Ensemble:
        ens = Ensemble(n_lgbm, n_xgb, params, seed)
        ens.fit(X[train], y[train], X[val], y[val], X[cal], y[cal], feature_names=columns)
        return ens

    ensembles: dict[str, Ensemble] = {}
    if mode == "pooled":
        ensembles[POOLED_KEY] = fit(train_mask, val_mask, cal_mask)
    else:
        symbols = _symbols_of(rows)
        for sym in np.unique(symbols):
            mine = symbols == sym
            tm, vm, cm = train_mask & mine, val_mask & mine, cal_mask & mine
            if tm.sum() < MIN_SYMBOL_TRAIN_ROWS or vm.sum() + cm.sum() < MIN_SYMBOL_VAL_ROWS:
                logger.info("per-symbol model for %s skipped: too few rows", sym)
                continue
            ensembles[str(sym)] = fit(tm, vm, cm)
    if not ensembles:
        raise ValueError("no ensemble could be trained (too few rows)")

    bundle = ModelBundle(mode=mode, feature_columns=columns, ensembles=ensembles)
    val_rows = rows[cal_mask]
    val_metrics: dict[str, float] = {}
    if not val_rows.empty:
        scored = bundle.predict_frame(val_rows).join(val_rows[[LABEL_COLUMN]])
        ics = daily_ic(scored)
        usable = scored.dropna(subset=["mean"])
        val_metrics = {
            "n_rows": float(len(usable)),
            "ic_mean": float(ics["ic"].mean()) if len(ics) else float("nan"),
            "rank_ic_mean": float(ics["rank_ic"].mean()) if len(ics) else float("nan"),
            "hit_rate": float(
                _hits(usable["mean"].to_numpy(), usable[LABEL_COLUMN].to_numpy()).mean()
            )
            if len(usable)
            else float("nan"),
        }
    train_dates = dates[train_mask]
    val_dates = dates[val_mask]
    cal_dates = dates[cal_mask]
    bundle.metadata = {
        "mode": mode,
        "features": list(columns),
        "feature_set": feature_set,
        "label": f"open[t+{1 + horizon}] / open[t+1] - 1, {normalisation}",
        "horizon": horizon,
        "label_normalisation": normalisation,
        "train_start": _iso(train_dates.min()) if len(train_dates) else None,
        "train_end": _iso(train_dates.max()) if len(train_dates) else None,
        "val_start": _iso(val_dates.min()) if len(val_dates) else None,
        "val_end": _iso(val_dates.max()) if len(val_dates) else None,
        # Confidence calibration and the "validation" metrics: dates after val_end + the gap.
        "calibration_start": _iso(cal_dates.min()) if len(cal_dates) else None,
        "calibration_end": _iso(cal_dates.max()) if len(cal_dates) else None,
        "n_calibration_rows": int(cal_mask.sum()),
        "labels_known_by": end.date().isoformat(),
        # The latest open any training label used: must precede the first decision it serves.
        "last_label_end": _iso(rows.loc[train_mask | val_mask | cal_mask, LABEL_END_COLUMN].max()),
        "n_train_rows": int(train_mask.sum()),
        "n_val_rows": int(val_mask.sum()),
        "symbols": sorted(str(s) for s in np.unique(_symbols_of(rows))),
        "validation": val_metrics,
        "params": _merged_params(params),
        "members": {"lightgbm": n_lgbm, "xgboost": n_xgb},
        "seed": seed,
        "training_data_sha256": _data_sha256(rows, columns),
    }
    return bundle
