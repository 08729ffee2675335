"""The services one app instance wires together; views reach them through `services()`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from celery import Celery
from flask import current_app
from redis import Redis

from app.ai.signals import ModelSignalSource
from app.ai.store import ModelStore
from app.broker.venue import Venue
from app.config import Settings
from app.store.database import Database
from app.store.response_cache import ResponseCache
from app.store.users import TokenBlocklist, UserService
from app.trading.cycle import SignalSource, TradingService
from app.trading.cycle_lock import CycleLock
from app.trading.notifier import Notifier

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

    def trading(
        self,
        signal_source: SignalSource | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> TradingService:
        """A trading service over this app's venue and alerts; signals from the current model
        unless another source is given, time from the wall clock unless a clock is given."""
        source = signal_source or ModelSignalSource(
            self.models,
            self.settings,
            self.settings.model_max_age_days,
            label=self.settings.label,
            feature_set=self.settings.ai_feature_set,
        )
        return TradingService(
            settings=self.settings,
            db=self.db,
            venue=self.venue,
            signal_source=source,
            notifier=self.notifier,
            lock=self.cycle_lock,
            clock=clock,
        )


def services() -> Services:
    """The services of the current Flask app (API views only; services never call this)."""
    return cast(Services, current_app.extensions[EXTENSION_KEY])
