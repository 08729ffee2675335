"""Training the watchlist's models on data before "today", and saving them atomically.

"Today" is the venue's session (the replay session in sim mode), so a model never learns from
days the strategy has not lived yet. Tuned parameters from best_params/ are used when present.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from typing import Any, cast

from sqlalchemy.exc import IntegrityError

from app.ai.ensemble import Mode, ModelStore, train
from app.ai.tuning import load_best_params, to_train_params
from app.config import Settings
from app.domain import BarFrame, MarketData
from app.market.calendar import NyseCalendar
from app.store.database import Database
from app.store.orm import ModelRun

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


def training_window(today: date, years: float, calendar: NyseCalendar) -> tuple[date, date]:
    """From `years` before, to the last session before `today` (its label is not known yet
    either, but `train` drops rows whose label ends after the window)."""
    end = calendar.previous_session(today)
    start = end - timedelta(days=int(years * 365.25))
    return start, end


def load_bars(
    market: MarketData, symbols: Sequence[str], start: date, end: date
) -> dict[str, BarFrame]:
    universe = sorted(set(symbols) | {"SPY"})
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
) -> dict[str, Any]:
    mode = (mode or settings.model_mode).replace("-", "_")
    report = progress or (lambda stage, done, total: None)
    calendar = NyseCalendar()
    start, end = training_window(today, settings.train_years, calendar)
    started = time.perf_counter()
    report("data", 0, 3)
    bars = load_bars(market, symbols or settings.watchlist, start, end)
    if "SPY" not in bars:
        raise ValueError("SPY bars are needed: features measure strength relative to SPY")
    report("fit", 1, 3)
    params = load_best_params(settings.best_params_dir, mode)
    bundle = train(
        bars,
        bars["SPY"],
        cast(Mode, mode),  # validated by Settings and the API
        end,
        to_train_params(params) if params else None,
    )
    report("save", 2, 3)
    version = store.save(
        bundle,
        {"train_start": start.isoformat(), "train_end": end.isoformat(), "symbols": sorted(bars)},
    )
    metrics = dict(bundle.metadata.get("validation", {}))
    try:
        with db.session() as session:
            session.add(
                ModelRun(
                    version=version,
                    mode=mode,
                    symbols={"symbols": sorted(bars)},
                    metrics=metrics,
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
        "mode": mode,
        "symbols": len(bars),
        "train_start": start.isoformat(),
        "train_end": end.isoformat(),
        "tuned_params": params is not None,
        "metrics": metrics,
        "seconds": seconds,
    }
