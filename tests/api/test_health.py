"""GET /health and /metrics."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from flask import Flask
from flask.testing import FlaskClient

from tests import support


def test_health_reports_each_dependency(client: FlaskClient, app: Flask) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    expected = {"database", "celery_broker"}
    if app.extensions["alpha_trader"].settings.redis_url:
        expected.add("redis")
    assert set(body["checks"]) == expected
    assert set(body["checks"].values()) == {"ok"}


def test_health_is_503_naming_what_is_down(make_app: Callable[..., Flask]) -> None:
    dead = f"redis://127.0.0.1:{support.free_port()}/0"
    app = make_app(REDIS_URL=dead, CELERY_BROKER_URL=dead, CELERY_RESULT_BACKEND=dead)
    response = app.test_client().get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("error")
    assert body["checks"]["celery_broker"].startswith("error")
    assert "redis" in body["status"]
    assert "celery_broker" in body["status"]


def test_metrics_show_http_requests(client: FlaskClient) -> None:
    client.get("/health")
    text = client.get("/metrics").get_data(as_text=True)
    assert "flask_http_request_duration_seconds_count" in text
    assert 'endpoint="health.health"' in text


def test_metrics_include_trading_metrics_in_single_process_mode(client: FlaskClient) -> None:
    from app import metrics

    metrics.record_cycle("done", 0.5)
    text = client.get("/metrics").get_data(as_text=True)
    assert "alpha_cycles_total" in text
    assert "process_resident_memory_bytes" in text or "python_gc_objects" in text


def test_health_is_degraded_with_the_age_when_the_trading_cycle_is_stale(
    make_app: Callable[..., Flask],
) -> None:
    """A dead trader leaves the API up: /health must say that no cycle ran when one was due
    (sim: every SIM_CYCLE_SECONDS; stale after max(3 intervals, 60 s))."""
    from app.extensions import db
    from app.store.heartbeats import TRADING_CYCLE, HeartbeatStore

    app = make_app(SIM_CYCLE_SECONDS=20)
    heartbeats = HeartbeatStore(db)
    now = datetime.now(UTC)
    heartbeats.touch(TRADING_CYCLE, now - timedelta(seconds=5), "done")
    fresh = app.test_client().get("/health")
    assert fresh.status_code == 200
    assert fresh.get_json()["status"] == "ok"
    assert fresh.get_json()["trading"]["status"] == "ok"

    # The API has been up for 10 minutes and the last cycle ended 5 minutes ago.
    app.extensions["health_started_at"] = now - timedelta(minutes=10)
    heartbeats.touch(TRADING_CYCLE, now - timedelta(minutes=5), "done")
    stale = app.test_client().get("/health")
    assert stale.status_code == 200  # the API serves; the body says trading stopped
    body = stale.get_json()
    assert body["status"] == "degraded"
    assert body["trading"]["status"] == "stale"
    assert 299 <= body["trading"]["last_cycle_age_seconds"] < 330
    assert body["trading"]["stale_after_seconds"] == 60
    assert set(body["checks"].values()) == {"ok"}


def test_health_waits_for_the_first_cycle_of_a_new_service(client: FlaskClient) -> None:
    body = client.get("/health").get_json()
    assert body["status"] == "ok"
    assert body["trading"] == {
        "status": "waiting",
        "last_cycle_at": None,
        "last_cycle_age_seconds": None,
        "stale_after_seconds": 60.0,
    }
