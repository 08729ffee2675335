"""Everything a dashboard shows, in one answer."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from app.api.blueprint import Blueprint
from app.api.schemas import DashboardSchema
from app.container import services
from app.store import history as history_service
from app.trading import kill_switch as risk_service

blp = Blueprint("dashboard", __name__, url_prefix="/api/dashboard", description="Dashboard")


@blp.route("/all_data")
@blp.response(200, DashboardSchema)
def all_data() -> dict[str, Any]:
    svc = services()
    broker = svc.venue.broker
    account = broker.get_account()
    meta = svc.models.metadata()
    created = meta.get("created_at") if meta else None
    age_days = (
        (datetime.now(UTC) - datetime.fromisoformat(str(created))).total_seconds() / 86400
        if created
        else None
    )
    return {
        "as_of": svc.venue.today().isoformat(),
        "trading_mode": str(svc.settings.trading_mode),
        "account": asdict(account),
        "positions": [
            {**asdict(p), "market_value": p.market_value, "unrealized_pl": p.unrealized_pl}
            for p in broker.get_positions()
        ],
        "risk": risk_service.status(svc),
        "recent_signals": history_service.recent_signals(svc.db),
        "model": {
            "version": svc.models.current_version(),
            "age_days": age_days,
            "stale": svc.models.is_stale(svc.settings.model_max_age_days),
            "mode": meta.get("mode") if meta else None,
        },
        "performance": history_service.performance(svc.db),
    }
