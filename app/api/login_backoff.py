"""Exponential backoff on failed logins, per (account, client address).

A lock per account alone let anyone keep any account locked by sending wrong passwords; the
real user then got 429 with the right one. Here failures count per account *and* address: after
LOGIN_BACKOFF_AFTER failures from one address, that address waits LOGIN_BACKOFF_SECONDS before
its next attempt on that account, twice as long after each further failure, up to
MAX_WAIT_SECONDS; a success clears its count. Another address is not slowed down. The
trade-off: an attacker with many addresses gets that many guesses (the per-address limit
LOGIN_RATE_LIMIT and scrypt bound each of them), which is the price of a user who cannot be
locked out by a stranger.

Counters live in the rate limiter's storage (Redis when configured, so every gunicorn worker
sees them); when that storage fails, a memory store of this process stands in, as it does for
the limiter itself.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from functools import cache
from typing import TypeVar

from limits.errors import StorageError
from limits.storage import MemoryStorage, Storage
from werkzeug.exceptions import TooManyRequests

from app.extensions import limiter

log = logging.getLogger(__name__)

#: The longest a client waits between two attempts on one account.
MAX_WAIT_SECONDS = 900
#: Failures are forgotten a day after the first one of a run (or at once on a success).
FAILURE_MEMORY_SECONDS = 24 * 3600

T = TypeVar("T")


def backoff_seconds(failures: int, *, free: int, first: float = 1.0, cap: float = 900) -> float:
    """The wait after `failures` failures in a row: none before the `free`-th, then `first`
    seconds, doubling with each further failure, at most `cap`."""
    if failures < free:
        return 0
    return float(min(first * 2 ** min(failures - free, 64), cap))


class LoginBackoff:
    def __init__(self, *, free: int, first_wait: float) -> None:
        self._free = free
        self._first_wait = first_wait

    def check(self, username: str, address: str) -> None:
        """429 with Retry-After while this address must wait before trying this account."""
        wait_key = self._keys(username, address)[1]

        def remaining(storage: Storage) -> float:
            return storage.get_expiry(wait_key) - time.time() if storage.get(wait_key) else 0

        seconds = self._with_storage(remaining)
        if seconds > 0:
            retry = max(1, math.ceil(seconds))
            raise TooManyRequests(
                f"too many failed logins for this account from this address: "
                f"try again in {retry} s",
                retry_after=retry,
            )

    def failed(self, username: str, address: str) -> None:
        failures_key, wait_key = self._keys(username, address)

        def record(storage: Storage) -> None:
            failures = storage.incr(failures_key, FAILURE_MEMORY_SECONDS)
            wait = backoff_seconds(
                failures, free=self._free, first=self._first_wait, cap=MAX_WAIT_SECONDS
            )
            if wait > 0:
                storage.clear(wait_key)
                storage.incr(wait_key, max(1, math.ceil(wait)))

        self._with_storage(record)

    def succeeded(self, username: str, address: str) -> None:
        def clear(storage: Storage) -> None:
            for key in self._keys(username, address):
                storage.clear(key)

        self._with_storage(clear)

    @staticmethod
    def _keys(username: str, address: str) -> tuple[str, str]:
        """Hashed, so a key stays short whatever is sent."""
        who = hashlib.sha256(f"{username}\0{address}".encode()).hexdigest()[:32]
        return f"alpha/login-failures/{who}", f"alpha/login-wait/{who}"

    def _with_storage(self, action: Callable[[Storage], T]) -> T:
        storage = limiter.storage
        failures: tuple[type[Exception], ...] = (StorageError, *_as_tuple(storage.base_exceptions))
        try:
            return action(storage)
        except failures as exc:
            log.warning("login backoff: rate-limit storage failed (%s); using memory", exc)
            return action(_fallback_storage())


@cache
def _fallback_storage() -> MemoryStorage:
    return MemoryStorage()


def _as_tuple(value: type[Exception] | tuple[type[Exception], ...]) -> tuple[type[Exception], ...]:
    return value if isinstance(value, tuple) else (value,)
