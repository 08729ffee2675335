"""POST /api/backtest/run starts a backtest task; GET /api/backtest/<id> answers its result."""

from __future__ import annotations

from typing import Any

from flask import url_for
from flask_jwt_extended import get_jwt_identity

from app.api.backtest_schemas import BacktestRunSchema, BacktestRunStatusSchema
from app.api.blueprint import Blueprint
from app.api.schemas import TaskStartedSchema
from app.backtest.requests import BacktestRequest, check_runnable
from app.backtest.runs import BacktestRunStore, RunStatus
from app.backtest.window import resolve_window
from app.container import services
from app.errors import NotFoundError, ValidationError
from app.market.calendar import NyseCalendar
from app.market.universe import configured_universe
from app.store import tasks as task_service

blp = Blueprint(
    "backtest", __name__, url_prefix="/api/backtest", description="Backtests of the live strategy"
)

DEFAULT_DAYS = 90


@blp.route("/run", methods=["POST"])
@blp.arguments(BacktestRunSchema, error_status_code=400)
@blp.response(202, TaskStartedSchema)
@blp.alt_response(429, response="TOO_MANY_REQUESTS")  # the caps: the live backtests are named
def run(body: dict[str, Any]) -> dict[str, str]:
    """Replay the live strategy over past bars (a background task on the training queue)."""
    svc = services()
    asked = [s.upper() for s in body.get("symbols") or ()]
    universe = configured_universe(svc.settings, svc.venue.market)  # the default: UNIVERSE
    symbols = list(dict.fromkeys(asked or universe.tradable))
    if svc.venue.symbols is not None:
        unknown = sorted(set(symbols) - set(svc.venue.symbols()))
        if unknown:
            raise ValidationError(f"unknown symbols {unknown}", field="symbols")
    calendar = NyseCalendar()
    days = body.get("days")
    if days is None and "start" not in body:
        days = DEFAULT_DAYS
    start, end = resolve_window(
        days=days,
        start=body.get("start"),
        end=body.get("end"),
        last_session=calendar.previous_session(svc.venue.today()),
        calendar=calendar,
    )
    request = BacktestRequest(
        symbols=tuple(symbols),
        feature_symbols=() if asked else universe.feature_only,
        start=start,
        end=end,
        initial_capital=body["initial_capital"],
        commission_bps=body.get("commission_bps"),
        slippage_bps=body.get("slippage_bps"),
        retrain_every=body["retrain_every"],
        model=body["model"],
        buy_threshold=body.get("buy_threshold"),
        sell_threshold=body.get("sell_threshold"),
        confidence_threshold=body.get("confidence_threshold"),
        placebo=body["placebo"],
        momentum_lookback=body.get("momentum_lookback"),
        momentum_skip=body.get("momentum_skip"),
        momentum_top_k=body.get("momentum_top_k"),
    )
    request.check()
    if request.model == "current" and svc.models.current_version() is None:
        raise ValidationError("there is no trained model to use", field="model")
    check_runnable(
        request, svc.settings, svc.venue.market, field="days" if days is not None else "start"
    )
    from app.tasks.backtest import start_backtest

    task_id = start_backtest(svc, request, get_jwt_identity())
    return {"task_id": task_id, "status_url": url_for("backtest.get_run", task_id=task_id)}


@blp.route('/<task_id("run"):task_id>')
@blp.response(200, BacktestRunStatusSchema)
def get_run(task_id: str) -> dict[str, Any]:
    """The stored run: status, parameters, progress while it runs, the report when done."""
    svc = services()
    run = BacktestRunStore(svc.db).get(task_id)
    if run is None:
        raise NotFoundError(f"no backtest {task_id!r}", field="task_id")
    run["state"] = run["status"]
    run["progress"] = None
    if run["status"] in (RunStatus.PENDING, RunStatus.RUNNING):
        result = svc.celery.AsyncResult(task_id)
        run["state"] = result.state
        if result.state == task_service.PROGRESS and isinstance(result.info, dict):
            run["progress"] = task_service.progress_of(svc.celery, result.info)
    return run
