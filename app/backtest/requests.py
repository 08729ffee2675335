"""A backtest request as the API, the CLI and the task take it, and the one function that runs it:
load bars, pick the signal source (walk-forward model, saved model or SMA rule), run the engine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Literal

from app.ai.ensemble import ModelBundle
from app.ai.signals import Thresholds
from app.backtest.engine import run_backtest
from app.backtest.results import BacktestConfig, BacktestResult, ProgressFn, SignalFn
from app.backtest.signals import ModelSignals, SmaCrossSignals
from app.backtest.walk_forward import WalkForwardConfig, WalkForwardPredictor
from app.backtest.window import backtest_sessions, history_start, load_bars
from app.domain import (
    MarketData,
)
from app.errors import ValidationError
from app.market.calendar import NyseCalendar
from app.trading.risk import RiskLimits
from app.trading.strategy import StrategyConfig

if TYPE_CHECKING:
    from app.config import Settings


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
    #: sma_cross: the model-free SMA 20/50 rule.
    model: Literal["walk_forward", "current", "sma_cross"] = "walk_forward"
    buy_threshold: float | None = None
    sell_threshold: float | None = None
    confidence_threshold: float | None = None
    #: Placebo: walk-forward models trained on shuffled labels (they can know nothing).
    placebo: bool = False

    def check(self) -> None:
        """Combinations no run can honour, refused before any work (the API before queueing)."""
        if self.placebo and self.model != "walk_forward":
            raise ValidationError("a placebo needs walk-forward retraining", field="placebo")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            symbols=list(self.symbols), start=self.start.isoformat(), end=self.end.isoformat()
        )
        return data


def run_request(
    request: BacktestRequest,
    settings: Settings,
    market: MarketData,
    *,
    bundle: ModelBundle | None = None,
    progress: ProgressFn | None = None,
) -> BacktestResult:
    """Load the bars, build the strategy from Settings, run. `bundle` is the saved model for
    ``model="current"``. Tuned parameters in BEST_PARAMS_DIR are used, as live training does,
    but only by walk-forward windows that start after the tuning's data ended (the defaults
    before that, and everywhere when the file does not say what data it was tuned on)."""
    from app.ai.params import best_params_tuned_through, load_best_params, to_train_params

    request.check()
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
        limits=RiskLimits.from_settings(settings),
        strategy=StrategyConfig.from_settings(settings),
    )
    model_years = settings.train_years if request.model == "walk_forward" else 0.0
    bars = load_bars(market, symbols, history_start(request.start, model_years), request.end)
    calendar = NyseCalendar()
    signal_fn: SignalFn
    if request.model == "sma_cross":
        signal_fn = SmaCrossSignals(bars, symbols)
    else:
        thresholds = Thresholds(
            ai_signal_buy_threshold=_pick(request.buy_threshold, settings.ai_signal_buy_threshold),
            ai_signal_sell_threshold=_pick(
                request.sell_threshold, settings.ai_signal_sell_threshold
            ),
            ai_confidence_threshold=_pick(
                request.confidence_threshold, settings.ai_confidence_threshold
            ),
        )
        sessions = backtest_sessions(bars, symbols, config.start, config.end, calendar)
        if not sessions:
            raise ValidationError(
                f"no bars for {list(symbols)} between {config.start} and {config.end}",
                field="start",
            )
        if request.model == "current":
            if bundle is None:
                raise ValidationError("there is no trained model to use", field="model")
            predictor = WalkForwardPredictor(bars, sessions, symbols, bundle=bundle)
        else:
            mode = settings.ai_mode
            tuned = load_best_params(settings.best_params_dir, mode)
            through = best_params_tuned_through(settings.best_params_dir, mode)
            wf = WalkForwardConfig(
                retrain_every=request.retrain_every,
                train_years=settings.train_years,
                mode=mode,  # type: ignore[arg-type]
                params=to_train_params(tuned) if tuned and through else None,
                params_tuned_through=through,
                horizon=settings.ai_prediction_horizon_days,
                label_normalisation=settings.ai_label_normalisation,
                shuffle_labels=request.placebo,
            )
            predictor = WalkForwardPredictor(bars, sessions, symbols, wf, calendar=calendar)
        signal_fn = ModelSignals(predictor, thresholds)
    return run_backtest(bars, config, signal_fn, progress=progress, calendar=calendar)


def _pick(value: float | None, default: float) -> float:
    return default if value is None else value
