"""Client-side request budget for the Alpaca API.

Alpaca allows 200 requests per minute per account and answers 429 beyond that. Every process
that talks to the account (gunicorn workers, Celery workers, beat, the CLI) must stay under the
budget *together*, so the limiter can share its window through Redis. It blocks (sleeps) until a
slot is free instead of failing: a slow cycle is better than a rejected order.

The window is a sliding log: the timestamps of the requests sent in the last `window` seconds. A
request may go when fewer than `limit` are in the log; otherwise it waits until the oldest one
leaves. In Redis the log is a sorted set scored by the Redis server's own clock (TIME), so all
processes, whatever their hosts' clocks say, judge the same window.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import redis

from app import metrics

log = logging.getLogger(__name__)

#: Alpaca's documented per-account budget.
ALPACA_REQUESTS_PER_MINUTE = 200
#: How long to stay on the local window after a Redis error before trying Redis again.
_REDIS_RETRY_SECONDS = 30.0

# KEYS[1] = sorted set of request times (µs); ARGV = limit, window (µs), unique member.
# Returns 0 when a slot was taken, otherwise the µs to wait before the oldest entry expires.
# TIME inside a script needs effect replication, the default since Redis 5.
_ACQUIRE_LUA = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('PEXPIRE', key, math.floor(window / 1000) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
local wait = tonumber(oldest[2]) + window - now
if wait < 1 then wait = 1 end
return wait
"""


class SlidingWindowLimiter:
    """At most `limit` acquisitions in any `window` seconds; `acquire()` sleeps until allowed.

    In-process (thread-safe) by default. Given `redis_client` (a `redis.Redis` or a URL) the
    window is shared by every limiter using the same `key`. If Redis cannot be reached the
    limiter falls back to its local window for 30 s at a time and logs a warning, so a Redis
    outage stops nothing, but the budget is then only enforced per process.

    `waits` counts acquisitions that had to sleep and `total_wait` the seconds slept, so
    benchmarks and tests can see the limiter working.
    """

    def __init__(
        self,
        limit: int = ALPACA_REQUESTS_PER_MINUTE,
        window: float = 60.0,
        *,
        redis_client: redis.Redis | str | None = None,
        key: str = "alpha_trader:alpaca:requests",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if window <= 0:
            raise ValueError("window must be positive")
        self.limit = limit
        self.window = window
        self.key = key
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._log: deque[float] = deque()
        self._redis: redis.Redis | None
        if isinstance(redis_client, str):
            self._redis = redis.Redis.from_url(
                redis_client, socket_timeout=2.0, socket_connect_timeout=2.0
            )
        else:
            self._redis = redis_client
        self._script: Any = (
            self._redis.register_script(_ACQUIRE_LUA) if self._redis is not None else None
        )
        # After a Redis error, use the local window until this (clock) time, then try again.
        self._redis_retry_at = 0.0
        self.waits = 0
        self.total_wait = 0.0
        self.acquired = 0

    @property
    def shared(self) -> bool:
        """True when the window lives in Redis."""
        return self._redis is not None

    def acquire(self) -> float:
        """Take one slot, sleeping as long as needed; returns the seconds slept."""
        waited = 0.0
        while True:
            wait = self._try_acquire()
            if wait <= 0:
                break
            # Never sleep longer than a window: a stale estimate must not stall us.
            wait = min(wait, self.window)
            self._sleep(wait)
            waited += wait
        with self._lock:
            self.acquired += 1
            if waited > 0:
                self.waits += 1
                self.total_wait += waited
        metrics.record_rate_limit(waited)
        return waited

    def _try_acquire(self) -> float:
        """0 when a slot was taken, else the seconds until one may be free."""
        if self._script is not None and self._clock() >= self._redis_retry_at:
            try:
                micros = int(
                    self._script(
                        keys=[self.key],
                        args=[self.limit, int(self.window * 1_000_000), uuid.uuid4().hex],
                    )
                )
            except redis.RedisError as exc:
                self._redis_retry_at = self._clock() + _REDIS_RETRY_SECONDS
                log.warning("rate limiter: Redis unavailable (%s); using a local window", exc)
            else:
                return micros / 1_000_000
        return self._try_local()

    def _try_local(self) -> float:
        with self._lock:
            now = self._clock()
            while self._log and self._log[0] <= now - self.window:
                self._log.popleft()
            if len(self._log) < self.limit:
                self._log.append(now)
                return 0.0
            return max(self._log[0] + self.window - now, 1e-6)

    def reset(self) -> None:
        """Forget every recorded request (tests, and after changing keys)."""
        with self._lock:
            self._log.clear()
        if self._redis is not None:
            try:
                self._redis.delete(self.key)
            except redis.RedisError as exc:
                log.warning("rate limiter: could not reset %s: %s", self.key, exc)


_default_lock = threading.Lock()
_default: SlidingWindowLimiter | None = None


def process_limiter() -> SlidingWindowLimiter:
    """The process-wide in-memory limiter used when a client is built without one.

    One per process, not per client, because the budget belongs to the account: a broker and a
    market-data client in the same worker must share it.
    """
    global _default
    with _default_lock:
        if _default is None:
            _default = SlidingWindowLimiter()
        return _default
