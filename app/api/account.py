"""Account, positions and the broker connection check."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from app.api.blueprint import Blueprint
from app.api.schemas import AccountSchema, ConnectionSchema, PositionSchema
from app.container import services

blp = Blueprint("account", __name__, url_prefix="/api", description="Brokerage account")


@blp.route("/account/info")
@blp.response(200, AccountSchema)
def account_info() -> dict[str, Any]:
    svc = services()

    def fetch() -> dict[str, Any]:
        account = svc.venue.broker.get_account()
        return {**asdict(account), "broker": svc.venue.name}

    return dict(svc.cache.get_or_compute("account", svc.settings.api_cache_seconds, fetch))


@blp.route("/positions")
@blp.response(200, PositionSchema(many=True))
def positions() -> list[dict[str, Any]]:
    svc = services()

    def fetch() -> list[dict[str, Any]]:
        return [
            {
                **asdict(p),
                "market_value": p.market_value,
                "cost_basis": p.cost_basis,
                "unrealized_pl": p.unrealized_pl,
                "unrealized_plpc": p.unrealized_plpc,
            }
            for p in svc.venue.broker.get_positions()
        ]

    return list(svc.cache.get_or_compute("positions", svc.settings.api_cache_seconds, fetch))


@blp.route("/test/connection")
@blp.response(200, ConnectionSchema)
def test_connection() -> dict[str, Any]:
    """Ask the broker for its account and clock now (never cached): are the keys and the
    endpoint right?"""
    venue = services().venue
    started = time.perf_counter()
    account = venue.broker.get_account()
    clock = venue.broker.get_clock()
    return {
        "ok": True,
        "broker": venue.name,
        "account_status": account.status,
        "market_open": clock.is_open,
        "next_open": clock.next_open,
        "next_close": clock.next_close,
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
    }
