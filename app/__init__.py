"""create_app: reads settings, wires extensions, services, Celery and blueprints. No logic."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from flask import Flask
from prometheus_flask_exporter import PrometheusMetrics
from redis import Redis

from app import metrics_export
from app.ai.store import ModelStore
from app.api import register_api
from app.api.errors import register_error_handlers
from app.api.schemas import ErrorSchema
from app.broker.venue import build_venue
from app.cli import register_cli
from app.config import Settings, load_settings
from app.container import EXTENSION_KEY, Services
from app.extensions import api, db, jwt, limiter
from app.logging_setup import configure_logging
from app.store.response_cache import ResponseCache
from app.store.users import TokenBlocklist, UserService
from app.tasks.celery_app import celery_init_app
from app.trading.cycle_lock import CycleLock
from app.trading.notifier import Notifier

log = logging.getLogger(__name__)


def create_app(config: Settings | Mapping[str, Any] | None = None) -> Flask:
    """Build the app. `config` is a Settings object or overrides of environment settings."""
    settings = config if isinstance(config, Settings) else load_settings(config)
    configure_logging(settings.log_level, json_format=settings.log_json)

    app = Flask(__name__)
    app.config.update(_flask_config(settings))

    db.configure(settings.sql_url)
    redis = Redis.from_url(settings.redis_url, socket_timeout=5) if settings.redis_url else None
    jwt.init_app(app)
    limiter.init_app(app)
    api.ERROR_SCHEMA = ErrorSchema  # the spec documents the one error shape the API sends
    api.init_app(app)
    register_error_handlers(app)
    PrometheusMetrics(app, registry=metrics_export.app_registry(), group_by="endpoint")
    celery = celery_init_app(app, settings)

    users = UserService(db)
    app.extensions[EXTENSION_KEY] = Services(
        settings=settings,
        db=db,
        redis=redis,
        users=users,
        blocklist=TokenBlocklist(db, redis),
        celery=celery,
        venue=build_venue(settings, db),
        cache=ResponseCache(redis),
        notifier=Notifier(settings.discord_webhook_url),
        models=ModelStore(settings.models_dir),
        cycle_lock=CycleLock(redis, settings.database_dir, ttl=settings.trading_lock_ttl_seconds),
    )
    register_api(app)
    register_cli(app)
    _bootstrap_admin(settings, users)
    return app


def _flask_config(settings: Settings) -> dict[str, Any]:
    return {
        "SECRET_KEY": settings.effective_secret_key,
        "JWT_SECRET_KEY": settings.effective_jwt_secret,
        "JWT_ACCESS_TOKEN_EXPIRES": timedelta(minutes=settings.jwt_access_token_minutes),
        "JWT_REFRESH_TOKEN_EXPIRES": timedelta(days=settings.jwt_refresh_token_days),
        "JWT_TOKEN_LOCATION": ["headers"],
        "MAX_CONTENT_LENGTH": settings.max_request_bytes,
        "RATELIMIT_STORAGE_URI": settings.redis_url or "memory://",
        "RATELIMIT_KEY_PREFIX": "alpha",
        "RATELIMIT_HEADERS_ENABLED": True,
        "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
        "API_TITLE": "Alpha Trader",
        "API_VERSION": "1.0",
        "OPENAPI_VERSION": "3.0.3",
        "OPENAPI_URL_PREFIX": "/api",
        "OPENAPI_JSON_PATH": "openapi.json",
        "JSON_SORT_KEYS": False,
    }


def _bootstrap_admin(settings: Settings, users: UserService) -> None:
    """Ensure the configured admin exists once the schema is migrated."""
    password = settings.effective_admin_password
    if settings.uses_default_admin_password:
        log.warning(
            "SIM MODE WITH THE DEMO LOGIN %r / 'password'. Anyone who can reach this port can "
            "log in. Set ADMIN_PASSWORD, or use `flask --app app create-user`.",
            settings.admin_username,
        )
    if password and db.has_table("users"):
        users.ensure_admin(settings.admin_username, password)
