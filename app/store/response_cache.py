"""A short-lived cache of JSON answers, so many API clients do not multiply broker calls.

Values live in Redis when it is configured (shared by every gunicorn worker), else in process.
Within a process one caller computes a missing key while the others wait for its answer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import RedisError


class ResponseCache:
    def __init__(self, redis: Redis | None, prefix: str = "alpha:api-cache:") -> None:
        self._redis = redis
        self._prefix = prefix
        self._local: dict[str, tuple[float, Any]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.computed = 0

    def get_or_compute(self, key: str, ttl: float, compute: Callable[[], Any]) -> Any:
        if ttl <= 0:
            return compute()
        hit, value = self._get(key)
        if hit:
            return value
        with self._lock_for(key):
            hit, value = self._get(key)
            if hit:
                return value
            self.computed += 1
            self._set(key, compute(), ttl)
            return self._get(key)[1]

    def _lock_for(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _get(self, key: str) -> tuple[bool, Any]:
        if self._redis is not None:
            try:
                raw = self._redis.get(self._prefix + key)
            except RedisError:
                raw = None
            if raw is not None:
                return True, json.loads(raw)
            return False, None
        entry = self._local.get(key)
        if entry is not None and entry[0] > time.monotonic():
            return True, entry[1]
        return False, None

    def _set(self, key: str, value: Any, ttl: float) -> None:
        """Values must be JSON data; both stores keep the JSON form, so they answer alike."""
        encoded = json.dumps(value)
        if self._redis is not None:
            try:
                self._redis.set(self._prefix + key, encoded, px=max(1, int(ttl * 1000)))
                return
            except RedisError:
                pass
        self._local[key] = (time.monotonic() + ttl, json.loads(encoded))
