"""What the kill switch and the daily summary need from the app's services, as a protocol, so
trading never imports the app container (app.container.Services satisfies it)."""

from __future__ import annotations

from typing import Protocol

from app.broker.venue import Venue
from app.config import Settings
from app.store.database import Database
from app.trading.cycle_lock import CycleLock
from app.trading.notifier import Notifier


class TradingServices(Protocol):
    settings: Settings
    db: Database
    venue: Venue
    notifier: Notifier
    cycle_lock: CycleLock
