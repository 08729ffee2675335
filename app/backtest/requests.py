"""A backtest request as the API, the CLI and the task take it, and how it runs: plan (load bars,
resolve Settings, cut the walk-forward windows), collect the windows' predictions (in-process or
from Celery workers: the same work unit either way), run the engine over them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import date
from functools import cache
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import pandas as pd

from app.ai.ensemble import MIN_SYMBOL_TRAIN_ROWS, MIN_SYMBOL_VAL_ROWS, ModelBundle
from app.ai.features import label_sessions, max_lookback
from app.ai.signals import Thresholds
from app.ai.training import split_by_date
from app.backtest.engine import run_backtest
from app.backtest.feature_source import FeatureSource, SourceData, source_of
from app.backtest.momentum import LOOKBACK, SKIP, MomentumSignals
from app.backtest.results import BacktestConfig, BacktestResult, ProgressFn, SignalFn
from app.backtest.signals import ModelSignals, SmaCrossSignals
from app.backtest.walk_forward import WalkForwardConfig, WalkForwardPredictor
from app.backtest.walk_forward_window import (
    WalkForwardWindow,
    WindowResult,
    plan_windows,
    run_window,
)
from app.backtest.window import backtest_sessions, history_start, load_bars
from app.domain import BarFrame, MarketData
from app.errors import ValidationError
from app.market.calendar import NyseCalendar
from app.trading.risk import RiskLimits
from app.trading.strategy import StrategyConfig

if TYPE_CHECKING:
    from app.config import Settings

_N = TypeVar("_N", int, float)


@dataclass(frozen=True)
class BacktestRequest:
    """What a user asks for; everything else comes from Settings (the live defaults)."""

    symbols: tuple[str, ...]
    start: date
    end: date
    initial_capital: float = 100_000.0
    commission_bps: float | None = None  # None: SIM_COMMISSION_BPS
    slippage_bps: float | None = None  # None: SIM_SLIPPAGE_BPS
    retrain_every: int = 63
    #: walk_forward: retrain during the run; current: the saved current model as is;
    #: sma_cross: the model-free SMA 20/50 rule; momentum: the 12-1 momentum factor rule.
    model: Literal["walk_forward", "current", "sma_cross", "momentum"] = "walk_forward"
    buy_threshold: float | None = None
    sell_threshold: float | None = None
    confidence_threshold: float | None = None
    #: Placebo: walk-forward models trained on shuffled labels (they can know nothing).
    placebo: bool = False
    #: Loaded for the features only, never traded: a universe's ETFs (SPY always is loaded).
    feature_symbols: tuple[str, ...] = ()
    #: model momentum only (None: the default): the return from `momentum_lookback` to
    #: `momentum_skip` sessions back (252 / 21: 12-1 months), the best `momentum_top_k` names
    #: held (default: RISK_MAX_POSITIONS, the plain factor rule filling every position).
    momentum_lookback: int | None = None
    momentum_skip: int | None = None
    momentum_top_k: int | None = None

    def check(self) -> None:
        """Combinations no run can honour, refused before any work (the API before queueing)."""
        if self.placebo and self.model != "walk_forward":
            raise ValidationError("a placebo needs walk-forward retraining", field="placebo")
        options = {name: getattr(self, name) for name in MOMENTUM_OPTIONS}
        for name, value in options.items():
            if value is not None and self.model != "momentum":
                raise ValidationError(f"{name} needs model momentum", field=name)
        lookback, skip, top_k = options.values()
        if lookback is not None and lookback < 2:
            raise ValidationError("momentum_lookback must be >= 2", field="momentum_lookback")
        if skip is not None and skip < 0:
            raise ValidationError("momentum_skip must be >= 0", field="momentum_skip")
        if _pick(skip, SKIP) >= _pick(lookback, LOOKBACK):
            raise ValidationError(
                f"momentum_skip ({_pick(skip, SKIP)}) must be below momentum_lookback "
                f"({_pick(lookback, LOOKBACK)})",
                field="momentum_skip" if skip is not None else "momentum_lookback",
            )
        if top_k is not None and top_k < 1:
            raise ValidationError("momentum_top_k must be >= 1", field="momentum_top_k")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            symbols=list(self.symbols), start=self.start.isoformat(), end=self.end.isoformat()
        )
        return data


#: The request fields of model momentum, in MomentumSignals' order (lookback, skip, top k).
MOMENTUM_OPTIONS = ("momentum_lookback", "momentum_skip", "momentum_top_k")


@dataclass(frozen=True)
class PlannedRun:
    """A request resolved against Settings and its bars: all the engine needs but the
    walk-forward windows' predictions."""

    request: BacktestRequest
    config: BacktestConfig
    bars: dict[str, BarFrame]
    sessions: list[date]
    calendar: NyseCalendar
    thresholds: Thresholds
    #: Walk-forward runs only: the retraining knobs, and where the windows' bars come from.
    walk_forward: WalkForwardConfig | None = None
    source: FeatureSource | None = None

    @property
    def windows(self) -> list[WalkForwardWindow]:
        """The independent work units of a walk-forward run (none for the other models)."""
        if self.walk_forward is None:
            return []
        return plan_windows(self.sessions, self.config.symbols, self.walk_forward)


#: Computes a planned run's windows: in-process (collect_locally) or on Celery workers.
WindowCollector = Callable[[PlannedRun], Sequence[WindowResult]]


def plan_request(
    request: BacktestRequest,
    settings: Settings,
    market: MarketData,
    *,
    data_dir: str | None = None,
) -> PlannedRun:
    """Load the bars, build the strategy from Settings. Tuned parameters in BEST_PARAMS_DIR
    are used, as live training does, but only by walk-forward windows that start after the
    tuning's data ended (the defaults before that, and everywhere when the file does not say
    what data it was tuned on). `data_dir`: the CSV directory `market` reads, named in the
    windows' source so workers read the same one (None: the workers' configured market)."""
    from app.ai.params import best_params_tuned_through, load_best_params, to_train_params

    request.check()
    limits = RiskLimits.from_settings(settings)
    strategy = StrategyConfig.from_settings(settings)
    if request.model == "momentum":
        request = replace(
            request,
            momentum_lookback=_pick(request.momentum_lookback, LOOKBACK),
            momentum_skip=_pick(request.momentum_skip, SKIP),
            momentum_top_k=_pick(request.momentum_top_k, limits.max_positions),
        )
        # The rule's BUY signals are its top k already; the entry rank must not cut them.
        strategy = replace(strategy, entry_top_k=request.momentum_top_k or 0)
    symbols = tuple(dict.fromkeys(s.upper() for s in request.symbols))
    config = BacktestConfig(
        symbols=symbols,
        start=request.start,
        end=request.end,
        initial_capital=request.initial_capital,
        commission_bps=settings.sim_commission_bps
        if request.commission_bps is None
        else request.commission_bps,
        slippage_bps=settings.sim_slippage_bps
        if request.slippage_bps is None
        else request.slippage_bps,
        limits=limits,
        strategy=strategy,
    )
    loaded, first_bar, last_bar = _bar_range(request, settings)
    bars = load_bars(market, loaded, first_bar, last_bar)
    calendar = NyseCalendar()
    sessions = runnable_sessions(request, settings, bars, calendar)
    thresholds = Thresholds(
        ai_signal_buy_threshold=_pick(request.buy_threshold, settings.ai_signal_buy_threshold),
        ai_signal_sell_threshold=_pick(request.sell_threshold, settings.ai_signal_sell_threshold),
        ai_confidence_threshold=_pick(
            request.confidence_threshold, settings.ai_confidence_threshold
        ),
    )
    plan = PlannedRun(request, config, bars, sessions, calendar, thresholds)
    if request.model != "walk_forward":
        return plan
    mode = settings.ai_mode
    tuned = load_best_params(settings.best_params_dir, mode)
    through = best_params_tuned_through(settings.best_params_dir, mode)
    wf = replace(
        _walk_forward_config(request, settings),
        params=to_train_params(tuned) if tuned and through else None,
        params_tuned_through=through,
    )
    source = source_of(bars, loaded, first_bar, last_bar, data_dir, wf.feature_set)
    return replace(plan, walk_forward=wf, source=source)


def collect_locally(plan: PlannedRun, progress: ProgressFn | None = None) -> list[WindowResult]:
    """The run's windows one after another in this process, from the bars it loaded."""
    data = SourceData(plan.bars)
    windows = plan.windows
    results = []
    for done, window in enumerate(windows, start=1):
        results.append(run_window(window, data, calendar=plan.calendar))
        if progress is not None:
            progress(done, len(windows))
    return results


def run_planned(
    plan: PlannedRun,
    *,
    windows: Sequence[WindowResult] | None = None,
    bundle: ModelBundle | None = None,
    progress: ProgressFn | None = None,
) -> BacktestResult:
    """Run the engine over a planned run. `windows`: the walk-forward windows' results
    (computed here, one by one, when not given); `bundle`: the saved model of
    ``model="current"``."""
    request, symbols = plan.request, plan.config.symbols
    signal_fn: SignalFn
    if request.model == "sma_cross":
        signal_fn = SmaCrossSignals(plan.bars, symbols)
    elif request.model == "momentum":
        signal_fn = MomentumSignals(
            plan.bars,
            symbols,
            top_k=_pick(request.momentum_top_k, plan.config.limits.max_positions),
            lookback=_pick(request.momentum_lookback, LOOKBACK),
            skip=_pick(request.momentum_skip, SKIP),
        )
    else:
        if request.model == "current":
            if bundle is None:
                raise ValidationError("there is no trained model to use", field="model")
            predictor = WalkForwardPredictor(plan.bars, plan.sessions, symbols, bundle=bundle)
        else:
            predictor = WalkForwardPredictor(
                plan.bars,
                plan.sessions,
                symbols,
                plan.walk_forward,
                calendar=plan.calendar,
                windows=windows,
            )
        signal_fn = ModelSignals(predictor, plan.thresholds)
    return run_backtest(
        plan.bars, plan.config, signal_fn, progress=progress, calendar=plan.calendar
    )


def run_request(
    request: BacktestRequest,
    settings: Settings,
    market: MarketData,
    *,
    bundle: ModelBundle | None = None,
    progress: ProgressFn | None = None,
    collect: WindowCollector = collect_locally,
    data_dir: str | None = None,
) -> BacktestResult:
    """Plan, collect the walk-forward windows (`collect`: in-process by default), run the
    engine. `bundle` is the saved model for ``model="current"``."""
    plan = plan_request(request, settings, market, data_dir=data_dir)
    windows = collect(plan) if plan.walk_forward is not None else None
    return run_planned(plan, windows=windows, bundle=bundle, progress=progress)


def check_runnable(
    request: BacktestRequest, settings: Settings, market: MarketData, *, field: str = "start"
) -> None:
    """Refuse up front (the API before queueing) a run its bars cannot carry, naming `field`
    (the request's `start` or `days`), instead of a task accepted and then failed."""
    request.check()
    runnable_sessions(request, settings, _load(request, settings, market), field=field)


def runnable_sessions(
    request: BacktestRequest,
    settings: Settings,
    bars: Mapping[str, BarFrame],
    calendar: NyseCalendar | None = None,
    *,
    field: str = "start",
) -> list[date]:
    """The sessions to replay. ValidationError when there is none, or when the first
    walk-forward model would have too few labelled sessions before its window to train on
    (the data starts too close to `start`)."""
    cal = calendar or NyseCalendar()
    symbols = tuple(dict.fromkeys(s.upper() for s in request.symbols))
    sessions = backtest_sessions(bars, symbols, request.start, request.end, cal)
    if not sessions:
        raise ValidationError(
            f"no bars for {list(symbols)} between {request.start} and {request.end}", field=field
        )
    if request.model == "walk_forward":
        wf = _walk_forward_config(request, settings)
        have = labelled_sessions(bars, cal.previous_session(sessions[0]), wf)
        need = min_training_sessions(wf.mode, wf.horizon, wf.val_fraction)
        if have < need:
            raise ValidationError(
                f"the first walk-forward model, for the window from {sessions[0]}, would learn "
                f"from {have} sessions of labelled rows and needs at least {need}: start later, "
                "or use model sma_cross",
                field=field,
            )
    return sessions


def labelled_sessions(bars: Mapping[str, BarFrame], cutoff: date, wf: WalkForwardConfig) -> int:
    """Sessions the model trained on the close of `cutoff` has labelled rows for (its most
    rows of one symbol in per-symbol mode), counted from the bar dates alone (cheaper than the
    features): a row exists from a symbol's max_lookback-th bar on, its label is known once
    label_sessions(horizon) further bars have closed by `cutoff`, only the last `train_years`
    count, and a normalised label needs another symbol's label on that date."""
    end = pd.Timestamp(cutoff)
    since = end - pd.DateOffset(days=int((wf.train_years or 0) * 365.25))
    per_symbol: dict[str, pd.DatetimeIndex] = {}
    lookback = max_lookback(wf.feature_set)
    for symbol, frame in bars.items():
        if len(frame) < lookback:
            continue
        dates = frame.index.sort_values()
        known = int(dates.searchsorted(end, side="right")) - label_sessions(wf.horizon)
        rows = dates[lookback - 1 : max(known, lookback - 1)]
        per_symbol[symbol] = rows[rows > since] if wf.train_years else rows
    if not per_symbol:
        return 0
    counts = pd.concat([dates.to_series() for dates in per_symbol.values()]).value_counts()
    dated = set(counts.index[counts >= (1 if wf.label_normalisation == "raw" else 2)])
    if wf.mode == "pooled":
        return len(dated)
    return max(sum(day in dated for day in dates) for dates in per_symbol.values())


@cache
def min_training_sessions(mode: str, horizon: int, val_fraction: float) -> int:
    """The fewest labelled sessions train() can fit a model on: its split into training,
    early-stopping and calibration parts (each after a label gap) leaves each part a session
    (per symbol: the rows a per-symbol model needs)."""
    gap = label_sessions(horizon)
    for n in range(1, 10_000):
        days = np.arange(n)
        train_part, held_out = split_by_date(days, val_fraction, gap)
        stop_part, cal_part = split_by_date(days[held_out], 0.5, gap)
        fit, stop, cal = int(train_part.sum()), int(stop_part.sum()), int(cal_part.sum())
        if mode == "pooled":
            enough = min(fit, stop, cal) >= 1
        else:
            enough = fit >= MIN_SYMBOL_TRAIN_ROWS and stop + cal >= MIN_SYMBOL_VAL_ROWS
        if enough:
            return n
    raise ValueError(f"no history is long enough to train a {mode} model")


def _walk_forward_config(request: BacktestRequest, settings: Settings) -> WalkForwardConfig:
    """The walk-forward knobs from Settings, without tuned parameters (read by the run)."""
    return WalkForwardConfig(
        retrain_every=request.retrain_every,
        train_years=settings.train_years,
        mode=settings.ai_mode,  # type: ignore[arg-type]
        horizon=settings.ai_prediction_horizon_days,
        label_normalisation=settings.ai_label_normalisation,
        feature_set=settings.ai_feature_set,
        shuffle_labels=request.placebo,
    )


def _bar_range(request: BacktestRequest, settings: Settings) -> tuple[list[str], date, date]:
    """The symbols and dates to load: the bars the run replays, and before `start` the
    history its first model trains on (momentum: its lookback, in years of 252 sessions)."""
    symbols = list(dict.fromkeys(s.upper() for s in (*request.symbols, *request.feature_symbols)))
    model_years = 0.0
    if request.model == "walk_forward":
        model_years = settings.train_years
    elif request.model == "momentum":
        model_years = _pick(request.momentum_lookback, LOOKBACK) / 252
    return symbols, history_start(request.start, model_years), request.end


def _load(request: BacktestRequest, settings: Settings, market: MarketData) -> dict[str, BarFrame]:
    return load_bars(market, *_bar_range(request, settings))


def _pick(value: _N | None, default: _N) -> _N:
    return default if value is None else value
