"""Signals and the trading cycle on demand."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask_jwt_extended import get_jwt_identity
from flask_smorest import Blueprint

from app.ai.signals import ModelSignalSource
from app.api.schemas import SignalSchema, TaskStartedSchema
from app.api.symbols import known_symbol
from app.api.tasks import started
from app.container import services
from app.errors import ConflictError, NotFoundError
from app.market.universe import feature_universe
from app.store import tasks as task_service
from app.trading.cycle import LOOKBACK_CALENDAR_DAYS

blp = Blueprint("trading", __name__, url_prefix="/api/trading", description="Signals and cycles")


@blp.route("/signal/<string:symbol>")
@blp.response(200, SignalSchema)
def signal(symbol: str) -> dict[str, Any]:
    symbol = known_symbol(symbol)
    svc = services()
    if svc.models.current_version() is None:
        raise ConflictError(
            "no trained model yet: train one with POST /api/training/start/batch "
            "or `flask --app app train`"
        )
    session = svc.venue.today()
    held = [p.symbol for p in svc.venue.broker.get_positions()]
    universe = feature_universe(svc.settings.watchlist, [*held, symbol])  # what the cycle sees

    def compute() -> dict[str, Any]:
        bars = svc.venue.market.get_daily_bars(
            universe, session - timedelta(days=LOOKBACK_CALENDAR_DAYS), session
        )
        source = ModelSignalSource(
            svc.models, svc.settings, svc.settings.model_max_age_days, label=svc.settings.label
        )
        signals, problem = source.signals(bars, session)
        found = signals.get(symbol)
        if found is None:
            raise NotFoundError(f"no prediction for {symbol} on {session}", field="symbol")
        return {
            "symbol": symbol,
            "signal": found.action.value,
            "predicted_return": found.predicted_return,
            "confidence": found.confidence,
            "dispersion": found.dispersion,
            "model_version": found.model_version,
            "as_of": session.isoformat(),
            "warning": problem,
        }

    return dict(svc.cache.get_or_compute(f"signal:{symbol}:{session}", 30, compute))


@blp.route("/auto/start", methods=["GET", "POST"])
@blp.response(202, TaskStartedSchema)
def auto_start() -> dict[str, str]:
    """Run one trading cycle now on a worker; the answer is a task id."""
    svc = services()
    task_id = task_service.start(
        svc.db, svc.celery, "app.tasks.smart_trading_pipeline", {}, get_jwt_identity()
    )
    return started(task_id)
