"""The services one app instance wires together; views reach them through `services()`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from celery import Celery
from flask import current_app
from redis import Redis

from app.config import Settings
from app.services.auth_service import TokenBlocklist, UserService
from app.services.database_service import Database
from app.services.response_cache import ResponseCache
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


def services() -> Services:
    """The services of the current Flask app (API views only; services never call this)."""
    return cast(Services, current_app.extensions[EXTENSION_KEY])
