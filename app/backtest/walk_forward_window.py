"""One walk-forward window as a pure work unit: (bars, window, config) -> that window's
predictions and its retrain record. The same function runs in-process and in a Celery task
(app.tasks.walk_forward), so a run's result does not depend on where its windows ran.

The model of a window starting at session S is trained with ``train_end`` = the session before
S, on rows whose label ended by then (``label_end <= train_end``). A placebo's label shuffle
draws from the window's own generator (seed, window index): windows share no state.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import date
from typing import Any, Literal

import numpy as np
import pandas as pd

from app.ai.ensemble import Mode, ModelBundle, SymbolPrediction
from app.ai.features import (
    FEATURE_SETS,
    LABEL_COLUMN,
    LABEL_END_COLUMN,
    SEED_FEATURE_SET,
    history_calendar_days,
    latest_features,
)
from app.ai.training import train
from app.backtest.feature_source import SourceData
from app.backtest.results import BENCHMARK_SYMBOL
from app.backtest.window import backtest_sessions
from app.errors import ValidationError
from app.market.calendar import NyseCalendar
from app.trading.cycle import LOOKBACK_CALENDAR_DAYS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WalkForwardConfig:
    """How models are retrained during a backtest (app.ai.training.train's knobs)."""

    retrain_every: int = 63
    #: Years of rows each training uses (Settings.train_years); None: all history.
    train_years: float | None = 5.0
    mode: Mode = "pooled"
    params: Mapping[str, Any] | None = None
    #: The last label date the tuning of `params` saw. A window whose training ends before it
    #: trains with the defaults instead: a backtest never uses tuning from its future.
    params_tuned_through: date | None = None
    n_lgbm: int = 3
    n_xgb: int = 3
    seed: int = 0
    val_fraction: float = 0.2
    #: The label: sessions held after the next open, and its normalisation across symbols
    #: (AI_PREDICTION_HORIZON_DAYS, AI_LABEL_NORMALISATION).
    horizon: int = 1
    label_normalisation: str = "raw"
    #: The model inputs (AI_FEATURE_SET): every window, wherever it runs, builds this set.
    feature_set: str = SEED_FEATURE_SET
    #: Placebo: permute the training labels (a model that can know nothing; must earn ~0).
    shuffle_labels: bool = False
    #: "precomputed": feature rows computed once over the whole history (features are causal,
    #: so row t is the same as from bars <= t; one pass instead of one per session).
    #: "live": latest_features from the bars the live cycle would fetch on each session, as
    #: ModelSignalSource does (about 0.25 s per session for 32 symbols).
    features: Literal["precomputed", "live"] = "precomputed"

    def __post_init__(self) -> None:
        if self.retrain_every < 1:
            raise ValidationError("must be >= 1", field="retrain_every")
        if self.feature_set not in FEATURE_SETS:
            raise ValidationError(f"must be one of {FEATURE_SETS}", field="feature_set")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["params"] = dict(self.params) if self.params is not None else None
        data["params_tuned_through"] = (
            self.params_tuned_through.isoformat() if self.params_tuned_through else None
        )
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WalkForwardConfig:
        through = data.get("params_tuned_through")
        return replace(
            cls(**{k: v for k, v in data.items() if k != "params_tuned_through"}),
            params_tuned_through=date.fromisoformat(through) if through else None,
        )


@dataclass(frozen=True)
class WalkForwardWindow:
    """The `index`-th window of a run: its sessions `first`..`last`, the symbols it predicts."""

    index: int
    first: date
    last: date
    symbols: tuple[str, ...]
    config: WalkForwardConfig

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "first": self.first.isoformat(),
            "last": self.last.isoformat(),
            "symbols": list(self.symbols),
            "config": self.config.as_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WalkForwardWindow:
        return cls(
            index=int(data["index"]),
            first=date.fromisoformat(data["first"]),
            last=date.fromisoformat(data["last"]),
            symbols=tuple(data["symbols"]),
            config=WalkForwardConfig.from_dict(data["config"]),
        )


class WindowResult:
    """A window's predictions, kept as columns (a broad universe has millions of them), and the
    record of its retraining (None for a saved model)."""

    def __init__(
        self,
        index: int,
        version: str,
        retrain: dict[str, Any] | None,
        sessions: Sequence[date],
        symbols: Sequence[str],
        values: np.ndarray,
    ) -> None:
        order = np.argsort(np.asarray([d.toordinal() for d in sessions]), kind="stable")
        self.index = index
        self.version = version
        self.retrain = retrain
        self.sessions = [sessions[i] for i in order]
        self.symbols = [symbols[i] for i in order]
        #: mean, dispersion, confidence per row.
        self.values = np.asarray(values, dtype=np.float64).reshape(-1, 3)[order]
        self._rows: dict[date, tuple[int, int]] = {}
        for row, day in enumerate(self.sessions):
            lo, _hi = self._rows.get(day, (row, row))
            self._rows[day] = (lo, row + 1)

    def at(self, session: date) -> dict[str, SymbolPrediction]:
        lo, hi = self._rows.get(session, (0, 0))
        return {
            self.symbols[i]: SymbolPrediction(*(float(v) for v in self.values[i]))
            for i in range(lo, hi)
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON for a task result: Python's float repr round-trips every float64 exactly."""
        return {
            "index": self.index,
            "version": self.version,
            "retrain": self.retrain,
            "sessions": [d.isoformat() for d in self.sessions],
            "symbols": self.symbols,
            "values": self.values.ravel().tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowResult:
        return cls(
            int(data["index"]),
            str(data["version"]),
            data.get("retrain"),
            [date.fromisoformat(d) for d in data["sessions"]],
            list(data["symbols"]),
            np.asarray(data["values"], dtype=np.float64),
        )


def plan_windows(
    sessions: Sequence[date], symbols: Sequence[str], config: WalkForwardConfig
) -> list[WalkForwardWindow]:
    """The run's windows: `retrain_every` sessions each, from the first session."""
    every = config.retrain_every
    universe = tuple(sorted(set(symbols)))
    return [
        WalkForwardWindow(i, chunk[0], chunk[-1], universe, config)
        for i, chunk in enumerate(
            sessions[start : start + every] for start in range(0, len(sessions), every)
        )
    ]


def run_window(
    window: WalkForwardWindow,
    data: SourceData,
    *,
    calendar: NyseCalendar | None = None,
    worker: str | None = None,
) -> WindowResult:
    """Train the window's model on labels known before it, predict its sessions."""
    cfg = window.config
    cal = calendar or NyseCalendar()
    cutoff = pd.Timestamp(cal.previous_session(window.first))
    feats = data.features(cfg.horizon, cfg.label_normalisation, cfg.feature_set)
    pool = feats[feats[LABEL_COLUMN].notna() & (feats[LABEL_END_COLUMN] <= cutoff)]
    if cfg.train_years:
        since = cutoff - pd.DateOffset(days=int(cfg.train_years * 365.25))
        pool = pool[pool.index.get_level_values("date") > since]
    if cfg.shuffle_labels:
        rng = np.random.default_rng([cfg.seed, window.index])
        pool = pool.copy()
        pool[LABEL_COLUMN] = rng.permutation(pool[LABEL_COLUMN].to_numpy())
    tuned = cfg.params is not None and (
        cfg.params_tuned_through is None or cfg.params_tuned_through <= cutoff.date()
    )
    t0 = time.perf_counter()
    bundle = train(
        None,
        None,
        cfg.mode,
        cutoff,
        cfg.params if tuned else None,
        features=pool,
        n_lgbm=cfg.n_lgbm,
        n_xgb=cfg.n_xgb,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        horizon=cfg.horizon,
        normalisation=cfg.label_normalisation,
        feature_set=cfg.feature_set,
    )
    seconds = time.perf_counter() - t0
    meta = bundle.metadata
    last_label = meta.get("last_label_end")
    if last_label is None or date.fromisoformat(last_label) >= window.first:
        raise RuntimeError(f"lookahead: labels up to {last_label} for a window from {window.first}")
    bundle.version = f"wf-{cutoff.date().isoformat()}"
    record = {
        "window_start": window.first.isoformat(),
        "train_end": cutoff.date().isoformat(),
        "train_start": meta.get("train_start"),
        "last_label_end": last_label,
        "n_train_rows": meta.get("n_train_rows"),
        "n_val_rows": meta.get("n_val_rows"),
        "params": "tuned" if tuned else "defaults",
        "validation": meta.get("validation"),
        "seconds": round(seconds, 2),
        "worker": worker or f"in-process@{socket.gethostname()}",
    }
    log.info("walk-forward model %s trained in %.1fs", bundle.version, seconds)
    return predict_window(bundle, window, data, record)


def predict_window(
    model: ModelBundle,
    window: WalkForwardWindow,
    data: SourceData,
    retrain: dict[str, Any] | None = None,
) -> WindowResult:
    """`model`'s predictions for every session of the window, from the precomputed feature
    rows (all at once: far fewer calls) or, for ``features="live"``, from the bars the live
    cycle would fetch on each session."""
    cfg = window.config
    version = model.version or "saved"
    if cfg.features == "live":
        return _predict_live(model, window, data, version, retrain)
    feats = data.features(cfg.horizon, cfg.label_normalisation, cfg.feature_set)
    dates = feats.index.get_level_values("date")
    mask = (
        (dates >= pd.Timestamp(window.first))
        & (dates <= pd.Timestamp(window.last))
        & feats.index.get_level_values("symbol").isin(window.symbols)
    )
    rows = feats[mask]
    if rows.empty:
        return WindowResult(window.index, version, retrain, [], [], np.empty((0, 3)))
    scored = model.predict_frame(rows[model.feature_columns]).dropna(subset=["mean"])
    return WindowResult(
        window.index,
        version,
        retrain,
        [pd.Timestamp(d).date() for d in scored.index.get_level_values("date")],
        [str(s) for s in scored.index.get_level_values("symbol")],
        scored[["mean", "dispersion", "confidence"]].to_numpy(dtype=np.float64),
    )


def _predict_live(
    model: ModelBundle,
    window: WalkForwardWindow,
    data: SourceData,
    version: str,
    retrain: dict[str, Any] | None,
) -> WindowResult:
    bars = data.bars
    feature_set = window.config.feature_set
    # The live cycle's window for this feature set (the extended one remembers a year).
    lookback = pd.Timedelta(days=history_calendar_days(feature_set, LOOKBACK_CALENDAR_DAYS))
    wanted = set(window.symbols)
    days, symbols, values = [], [], []
    for day in backtest_sessions(bars, window.symbols, window.first, window.last):
        ts = pd.Timestamp(day)
        seen = {s: f.loc[ts - lookback : ts] for s, f in bars.items()}
        rows = latest_features(seen, seen.get(BENCHMARK_SYMBOL), day, feature_set)
        for symbol, prediction in sorted(model.predict(rows).items()):
            if symbol in wanted:
                days.append(day)
                symbols.append(symbol)
                values.append((prediction.mean, prediction.dispersion, prediction.confidence))
    return WindowResult(
        window.index, version, retrain, days, symbols, np.asarray(values, dtype=np.float64)
    )
