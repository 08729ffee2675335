"""The services one app instance wires together; views reach them through `services()`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from celery import Celery
from flask import current_app
from redis import Redis

from app.config import Settings
from app.services.ai_service import ModelStore
from app.services.auth_service import TokenBlocklist, UserService
from app.services.cycle_lock import CycleLock
from app.services.database_service import Database
from app.services.notifier import Notifier
from app.services.response_cache import ResponseCache
from app.services.signal_service import ModelSignalSource
from app.services.trading_service import SignalSource, TradingService
from app.services.venue import Venue

EXTENSION_KEY = "alpha_trader"


@dataclass
class Services:
    settings: Settings
    db: Database
    redis: Redis | None
    users: UserService
    blocklist: TokenBlocklist
    celery: Celery
    venue: Venue
    cache: ResponseCache
    notifier: Notifier
    models: ModelStore
    cycle_lock: CycleLock

    def trading(self, signal_source: SignalSource | None = None) -> TradingService:
        """A trading service over this app's venue and alerts; signals from the current model
        unless another source is given."""
        source = signal_source or ModelSignalSource(
            self.models, self.settings, self.settings.model_max_age_days
        )
        return TradingService(
            settings=self.settings,
            db=self.db,
            venue=self.venue,
            signal_source=source,
            notifier=self.notifier,
            lock=self.cycle_lock,
        )


def services() -> Services:
    """The services of the current Flask app (API views only; services never call this)."""
    return cast(Services, current_app.extensions[EXTENSION_KEY])
