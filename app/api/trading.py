"""Signals and the trading cycle on demand."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask_jwt_extended import get_jwt_identity

from app.ai.features import history_calendar_days
from app.ai.signals import ModelSignalSource
from app.api.blueprint import Blueprint
from app.api.schemas import SignalSchema, TaskStartedSchema
from app.api.symbols import known_symbol
from app.api.tasks import started
from app.container import services
from app.errors import ConflictError, NotFoundError
from app.market.universe import configured_universe, feature_universe
from app.tasks import queue_limits
from app.trading.cycle import LOOKBACK_CALENDAR_DAYS

blp = Blueprint("trading", __name__, url_prefix="/api/trading", description="Signals and cycles")


@blp.route("/signal/<symbol:symbol>")
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
    loaded = configured_universe(svc.settings, svc.venue.market).symbols
    universe = feature_universe(loaded, [*held, symbol])  # what the cycle sees

    def compute() -> dict[str, Any]:
        bars = svc.venue.market.get_daily_bars(
            universe,
            session
            - timedelta(
                days=history_calendar_days(svc.settings.ai_feature_set, LOOKBACK_CALENDAR_DAYS)
            ),
            session,
        )
        source = ModelSignalSource(
            svc.models,
            svc.settings,
            svc.settings.model_max_age_days,
            label=svc.settings.label,
            feature_set=svc.settings.ai_feature_set,
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


@blp.route("/auto/start", methods=["POST"])
@blp.response(202, TaskStartedSchema)
@blp.alt_response(200, schema=TaskStartedSchema, description="A cycle already queued: its id")
def auto_start() -> tuple[dict[str, str], int]:
    """Run one trading cycle now on a worker; the answer is a task id. At most one waits in the
    queue: while it does, a new request answers 200 with its id instead of queueing another."""
    svc = services()
    task_id, queued_now = queue_limits.start_manual_cycle(
        svc.db, svc.celery, svc.redis, svc.settings.database_dir, get_jwt_identity()
    )
    return started(task_id), 202 if queued_now else 200
