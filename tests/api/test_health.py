"""GET /health and /metrics."""

from __future__ import annotations

from collections.abc import Callable

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
