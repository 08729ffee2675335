"""GET /health: 200 when the database, the Celery broker and Redis (when configured) answer."""

from __future__ import annotations

import logging
from typing import Any

from flask_smorest import Blueprint

from app.api.schemas import HealthSchema
from app.container import services

log = logging.getLogger(__name__)

blp = Blueprint("health", __name__, description="Liveness of the service's dependencies")

BROKER_TIMEOUT_SECONDS = 3.0


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
    body = {
        "status": "ok" if not failing else "unavailable: " + ", ".join(failing),
        "checks": checks,
        "trading_mode": str(svc.settings.trading_mode),
    }
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
