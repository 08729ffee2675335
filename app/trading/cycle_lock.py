"""Keeps trading cycles from overlapping: a Redis lock with an owner token and a TTL shorter
than the schedule interval, or a file lock on one machine without Redis.

It is a courtesy, not the safety: deterministic client_order_ids make an overlap harmless even
if the lock fails (a lost TTL, a partitioned Redis).
"""

from __future__ import annotations

import fcntl
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from redis import Redis

_POLL_SECONDS = 0.05

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class CycleLock:
    def __init__(
        self, redis: Redis | None, lock_dir: Path, name: str = "trading-cycle", ttl: float = 540
    ) -> None:
        self._redis = redis
        self._path = lock_dir / f"{name}.lock"
        self._key = f"alpha:lock:{name}"
        self._ttl_ms = int(ttl * 1000)

    @contextmanager
    def hold(self, wait: float = 0.0) -> Iterator[bool]:
        """Yields True when this caller owns the lock, False when another run holds it (after
        trying for up to `wait` seconds: the kill switch waits for a running cycle)."""
        deadline = time.monotonic() + wait
        if self._redis is not None:
            token = uuid.uuid4().hex
            while True:
                acquired = bool(self._redis.set(self._key, token, nx=True, px=self._ttl_ms))
                if acquired or time.monotonic() >= deadline:
                    break
                time.sleep(_POLL_SECONDS)
            try:
                yield acquired
            finally:
                if acquired:
                    self._redis.eval(_RELEASE, 1, self._key, token)
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.open("a") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(_POLL_SECONDS)
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
