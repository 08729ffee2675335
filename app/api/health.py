"""GET /health: 200 when the database, the Celery broker and Redis (when configured) answer.

It also says whether trading cycles still run: "degraded" (still 200) with the age of the last
cycle when one was due a few intervals ago and none ran. Still 200 because the API itself
serves (the kill switch must stay reachable and a load balancer must not drop it); monitors
read `status` or alert on Prometheus' rule; 503 is kept for a dependency that is down."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from flask import current_app

from app.api.blueprint import Blueprint
from app.api.schemas import HealthSchema
from app.container import services
from app.store.heartbeats import HeartbeatStore
from app.tasks.cycle_watch import trading_freshness

log = logging.getLogger(__name__)

blp = Blueprint("health", __name__, description="Liveness of the service's dependencies")

BROKER_TIMEOUT_SECONDS = 3.0
_STARTED_AT = "health_started_at"


@blp.record_once
def _remember_start(state: Any) -> None:
    """Cycles due before the API started are not its to miss: staleness counts from here."""
    state.app.extensions[_STARTED_AT] = datetime.now(UTC)


@blp.route("/health")
@blp.response(200, HealthSchema)
@blp.alt_response(503, schema=HealthSchema)
def health() -> tuple[dict[str, Any], int]:
    svc = services()
    checks: dict[str, str] = {}
    checks["database"] = _check(svc.db.ping)
    checks["celery_broker"] = _check(lambda: _ping_broker(svc.celery))
    if svc.redis is not None:
        checks["redis"] = _check(lambda: svc.redis.ping() if svc.redis else None)
    failing = sorted(name for name, result in checks.items() if result != "ok")
    body: dict[str, Any] = {
        "status": "ok" if not failing else "unavailable: " + ", ".join(failing),
        "checks": checks,
        "trading_mode": str(svc.settings.trading_mode),
    }
    if checks["database"] == "ok":
        since = current_app.extensions.get(_STARTED_AT) or datetime.now(UTC)
        trading = trading_freshness(svc.settings, HeartbeatStore(svc.db), since)
        body["trading"] = trading.as_dict()
        if trading.status == "stale" and not failing:
            body["status"] = "degraded"
    return body, 200 if not failing else 503


def _check(probe: Any) -> str:
    try:
        probe()
    except Exception as exc:  # any failure means "not healthy"; the reason is reported
        log.warning("health check failed: %s", type(exc).__name__)
        return f"error: {type(exc).__name__}"
    return "ok"


def _ping_broker(celery: Any) -> None:
    with celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_SECONDS)
