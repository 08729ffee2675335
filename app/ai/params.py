"""The tuned hyperparameters: the search space, its mapping onto the members' training params, and
the best parameters stored in ``best_params/<mode>.json`` (written atomically by tuning).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import date
from pathlib import Path
from typing import Any

import optuna

from app.errors import ValidationError

logger = logging.getLogger(__name__)


_LOG_SCALE = frozenset(
    {"learning_rate", "num_leaves", "min_child_samples", "reg_alpha", "reg_lambda"}
)
_INTEGER = frozenset({"num_leaves", "max_depth", "min_child_samples", "n_estimators"})


@dataclass(frozen=True)
class SearchSpace:
    """Inclusive (low, high) bounds per tuned parameter; names are library-neutral.

    Defaults stay near the ensemble's defaults (small steps, shallow trees, big leaves,
    regularised): daily returns are mostly noise. n_estimators is bounded small for speed;
    ``train`` still early-stops below it.
    """

    learning_rate: tuple[float, float] = (0.005, 0.2)
    num_leaves: tuple[int, int] = (4, 64)
    max_depth: tuple[int, int] = (2, 8)
    min_child_samples: tuple[int, int] = (20, 1000)
    subsample: tuple[float, float] = (0.5, 1.0)
    colsample: tuple[float, float] = (0.4, 1.0)
    reg_alpha: tuple[float, float] = (1e-3, 10.0)
    reg_lambda: tuple[float, float] = (1e-3, 100.0)
    n_estimators: tuple[int, int] = (50, 300)

    def __post_init__(self) -> None:
        for spec in fields(self):
            low, high = getattr(self, spec.name)
            if not (math.isfinite(low) and math.isfinite(high)) or low > high:
                raise _fail(f"space.{spec.name}", f"{spec.name} needs low <= high, got {low, high}")
            if low <= 0 and (spec.name in _LOG_SCALE or spec.name in _INTEGER):
                raise _fail(f"space.{spec.name}", f"{spec.name} bounds must be positive")
            if spec.name in ("subsample", "colsample") and high > 1.0:
                raise _fail(f"space.{spec.name}", f"{spec.name} is a fraction (<= 1)")

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's draw of every parameter."""
        out: dict[str, Any] = {}
        for spec in fields(self):
            low, high = getattr(self, spec.name)
            log = spec.name in _LOG_SCALE and low < high
            if spec.name in _INTEGER:
                out[spec.name] = trial.suggest_int(spec.name, int(low), int(high), log=log)
            else:
                out[spec.name] = trial.suggest_float(spec.name, float(low), float(high), log=log)
        return out


TUNED_PARAMS: tuple[str, ...] = tuple(spec.name for spec in fields(SearchSpace))


def to_train_params(tuned: Mapping[str, Any]) -> dict[str, Any]:
    """Tuned (library-neutral) params as ``app.ai.training.train(params=...)`` takes them.

    Keys are the canonical names of the ensemble's defaults, so they replace those defaults
    instead of adding conflicting aliases. min_child_samples feeds XGBoost's min_child_weight
    too: with squared error every row's hessian is 1, so both mean "rows per leaf".
    """
    unknown = sorted(set(tuned) - set(TUNED_PARAMS))
    if unknown:
        raise _fail(unknown[0], f"unknown tuned parameter(s) {unknown}")
    lgbm: dict[str, Any] = {}
    xgbp: dict[str, Any] = {}
    if "learning_rate" in tuned:
        lgbm["learning_rate"] = xgbp["eta"] = float(tuned["learning_rate"])
    if "num_leaves" in tuned:
        lgbm["num_leaves"] = int(tuned["num_leaves"])
    if "max_depth" in tuned:
        lgbm["max_depth"] = xgbp["max_depth"] = int(tuned["max_depth"])
    if "min_child_samples" in tuned:
        lgbm["min_data_in_leaf"] = int(tuned["min_child_samples"])
        xgbp["min_child_weight"] = float(tuned["min_child_samples"])
    if "subsample" in tuned:
        lgbm["bagging_fraction"] = xgbp["subsample"] = float(tuned["subsample"])
        lgbm["bagging_freq"] = 1
    if "colsample" in tuned:
        lgbm["feature_fraction"] = xgbp["colsample_bytree"] = float(tuned["colsample"])
    if "reg_alpha" in tuned:
        lgbm["lambda_l1"] = xgbp["alpha"] = float(tuned["reg_alpha"])
    if "reg_lambda" in tuned:
        lgbm["lambda_l2"] = xgbp["lambda"] = float(tuned["reg_lambda"])
    if "n_estimators" in tuned:
        lgbm["num_boost_round"] = xgbp["num_boost_round"] = int(tuned["n_estimators"])
    return {"lightgbm": lgbm, "xgboost": xgbp}


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Temp file in the same directory, fsync, os.replace, fsync the directory."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _best_params_path(best_params_dir: str | Path, mode: str) -> Path:
    return Path(best_params_dir) / f"{mode}.json"


def load_best_params(best_params_dir: str | Path, mode: str) -> dict[str, Any] | None:
    """The tuned params of `mode` (library-neutral names; see ``to_train_params``), or None.

    A missing, unreadable or malformed file gives None with a warning: training then uses
    the ensemble's defaults, which are sane, instead of not training at all.
    """
    path = _best_params_path(best_params_dir, mode)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable best params %s: %s", path, exc)
        return None
    params = record.get("params") if isinstance(record, dict) else None
    if not (
        isinstance(params, dict)
        and record.get("mode") == mode
        and set(params) <= set(TUNED_PARAMS)
        and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in params.values()
        )
    ):
        logger.warning("ignoring malformed best params %s", path)
        return None
    return dict(params)


def best_params_tuned_through(best_params_dir: str | Path, mode: str) -> date | None:
    """The last date whose labels the stored tuning saw (its best trial's `train_end`), or
    None when the file does not say: such params cannot be shown to predate a backtest."""
    try:
        record = json.loads(_best_params_path(best_params_dir, mode).read_text())
        return date.fromisoformat(str(record["best_trial_window"]["train_end"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _fail(field: str, message: str) -> ValidationError:
    return ValidationError(message, field=field)
