"""What AlpacaBroker and AlpacaMarketData share: endpoints, the hardened HTTP session (timeout,
rate limiter, request counter), error mapping and the retry loop for reads.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

import requests
from pydantic import ValidationError as PydanticValidationError

from app import errors, metrics
from app.broker.rate_limit import process_limiter

log = logging.getLogger(__name__)

with warnings.catch_warnings():
    # alpaca.trading and alpaca.data import their websocket streams, which import the
    # deprecated `websockets.legacy`; we use neither stream, so silence exactly that warning
    # here instead of loosening the global warning filters.
    warnings.filterwarnings(
        "ignore", message=r"websockets\.legacy is deprecated", category=DeprecationWarning
    )
    from alpaca.common.exceptions import APIError
    from alpaca.common.rest import RESTClient


NY = ZoneInfo("America/New_York")
PAPER_URL = "https://paper-api.alpaca.markets"
LIVE_URL = "https://api.alpaca.markets"
DATA_URL = "https://data.alpaca.markets"
#: Alpaca answers 422 with this message when a client_order_id was used before.
DUPLICATE_MESSAGE = "client_order_id must be unique"
#: GET /v2/orders returns at most this many orders per request.
ORDERS_PAGE = 500

T = TypeVar("T")


class Limiter(Protocol):
    """Anything that blocks until one more request may be sent (see rate_limit.py)."""

    def acquire(self) -> float: ...


@dataclass(frozen=True)
class RetryPolicy:
    """How reads (and rate-limited order sends) are retried.

    Delay before retry n (0-based) is `backoff_base * 2**n`, capped at `backoff_max`, with
    equal jitter, and at least what Retry-After / X-RateLimit-Reset ask for. Retrying stops
    after `max_retries` retries or when the next sleep would take the call's total sleeping
    past `max_total_wait`, so no call blocks for long whatever the broker does.
    """

    max_retries: int = 6
    backoff_base: float = 0.25
    backoff_max: float = 8.0
    max_total_wait: float = 30.0


class _GuardedSession(requests.Session):
    """The session alpaca-py sends through: default timeout, rate limiter, request counter."""

    def __init__(
        self, timeout: float, limiter: Limiter, on_request: Callable[[str, str], None]
    ) -> None:
        super().__init__()
        self.default_timeout = timeout
        self._limiter = limiter
        self._on_request = on_request

    def request(  # type: ignore[override]
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        self._limiter.acquire()
        m = method.decode() if isinstance(method, bytes) else method
        u = url.decode() if isinstance(url, bytes) else url
        self._on_request(m.upper(), u)
        return super().request(m, u, *args, **kwargs)


@dataclass(frozen=True)
class _ApiErrorInfo:
    status: int | None
    code: Any
    message: str


def _api_error(exc: APIError) -> _ApiErrorInfo:
    """Status, code and message of an APIError without letting a non-JSON body raise."""
    try:
        code, message = exc.code, str(exc.message)
    except (ValueError, KeyError, TypeError):
        code, message = None, str(exc)[:200]
    return _ApiErrorInfo(exc.status_code, code, message)


def _is_duplicate(info: _ApiErrorInfo) -> bool:
    # Alpaca's 40010001 is a generic validation code, so the message is what identifies it.
    return info.status == 422 and DUPLICATE_MESSAGE in info.message.lower()


def _hinted_wait(response: requests.Response | None) -> float | None:
    """Seconds the server asked us to wait (Retry-After or X-RateLimit-Reset), if any."""
    if response is None:
        return None
    retry_after = response.headers.get("Retry-After")
    if retry_after:
        try:
            return max(float(retry_after), 0.0)
        except ValueError:
            try:
                return max(parsedate_to_datetime(retry_after).timestamp() - time.time(), 0.0)
            except (TypeError, ValueError):
                pass
    reset = response.headers.get("X-RateLimit-Reset")
    if reset:
        try:
            return max(float(reset) - time.time(), 0.0)
        except ValueError:
            return None
    return None


def _f(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


def _enum_value(value: Any) -> str:
    return str(getattr(value, "value", value))


def _check_keys(api_key: str, api_secret: str) -> None:
    if not api_key or not api_secret:
        raise errors.ConfigError("the Alpaca API key and secret are both required")


def _normalise_url(url: str | None) -> str | None:
    """alpaca-py appends "/v2" itself: accept a URL with or without it or a trailing slash."""
    if not url:
        return None
    url = url.rstrip("/")
    return url.removesuffix("/v2")


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _symbols(symbols: Sequence[str]) -> list[str]:
    """Upper-cased, stripped, de-duplicated, order kept."""
    return list(dict.fromkeys(s.strip().upper() for s in symbols if s and s.strip()))


class _AlpacaBase:
    """Shared plumbing: session hardening, counters and the retry loop for reads."""

    def __init__(
        self, *, timeout: float, limiter: Limiter | None, retry: RetryPolicy | None
    ) -> None:
        if timeout <= 0:
            raise errors.ConfigError("the Alpaca timeout must be positive")
        self.timeout = float(timeout)
        self.limiter: Limiter = limiter if limiter is not None else process_limiter()
        self.retry = retry or RetryPolicy()
        #: alpaca-py calls made, per SDK method (every attempt counts): what benches report.
        self.calls: Counter[str] = Counter()
        #: HTTP requests sent (pagination and retries included).
        self.http_requests = 0
        #: Sleeps spent waiting to retry (429 backoff and friends), and their total seconds.
        self.retry_sleeps = 0
        self.retry_wait_seconds = 0.0
        self._stats_lock = threading.Lock()
        self._sleep: Callable[[float], None] = time.sleep
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography
        self._sessions: list[requests.Session] = []

    def _harden(self, client: RESTClient) -> None:
        """Give an alpaca-py client our session and switch its built-in retry off."""
        if not isinstance(getattr(client, "_session", None), requests.Session) or not hasattr(
            client, "_retry"
        ):
            raise RuntimeError(
                "alpaca-py internals changed (RESTClient._session/_retry missing): re-check "
                "timeouts and retries before upgrading it"
            )
        client._session.close()
        session = _GuardedSession(self.timeout, self.limiter, self._count_request)
        client._session = session
        self._sessions.append(session)
        # alpaca-py would re-send every request, POST /v2/orders included, 3 more times on
        # 429/504 after a fixed 3 s sleep, ignoring the rate-limit headers; that retry is only
        # reachable through this private attribute. We retry ourselves (see _read and
        # AlpacaBroker.submit_market_order).
        client._retry = 0

    def close(self) -> None:
        """Close the HTTP sessions (connection pools)."""
        for session in self._sessions:
            session.close()

    def _count_request(self, _method: str, _url: str) -> None:
        with self._stats_lock:
            self.http_requests += 1

    def _attempt(self, op: str, fn: Callable[[], T]) -> T:
        with self._stats_lock:
            self.calls[op] += 1
        with metrics.alpaca_call(op):  # per attempt: status, latency
            return fn()

    def _delay(self, attempt: int, response: requests.Response | None) -> float:
        p = self.retry
        backoff = min(p.backoff_max, p.backoff_base * 2.0**attempt)
        delay = backoff / 2 + self._rng.uniform(0, backoff / 2)
        hinted = _hinted_wait(response)
        if hinted is not None:
            # A little jitter past the reset so processes sharing the account do not stampede.
            delay = max(delay, hinted + self._rng.uniform(0, min(p.backoff_base, 0.25)))
        return delay

    def _wait_to_retry(self, attempt: int, waited: float, delay: float) -> bool:
        """Sleep `delay` if the retry budget allows it; False means give up."""
        p = self.retry
        if attempt >= p.max_retries or waited + delay > p.max_total_wait:
            return False
        self._sleep(delay)
        with self._stats_lock:
            self.retry_sleeps += 1
            self.retry_wait_seconds += delay
        metrics.record_alpaca_retry(delay)
        return True

    def _read(
        self, op: str, fn: Callable[[], T], *, passthrough: frozenset[int] = frozenset()
    ) -> T:
        """Run an idempotent SDK call, retrying 429, 5xx and connection failures.

        A timeout is not retried: the endpoint is hung, and another full timeout would only
        stretch the caller's cycle; the next cycle tries again. APIErrors whose status is in
        `passthrough` are re-raised as they are for the caller to interpret.
        """
        attempt, waited = 0, 0.0
        while True:
            try:
                return self._attempt(op, fn)
            except APIError as exc:
                info = _api_error(exc)
                status = info.status
                if status in passthrough:
                    raise
                retryable = status == 429 or status is None or status >= 500
                if not retryable:
                    if status == 404:
                        raise errors.NotFoundError(f"{op}: {info.message}") from exc
                    raise errors.BrokerError(f"{op}: HTTP {status}: {info.message}") from exc
                delay = self._delay(attempt, exc.response)
                if not self._wait_to_retry(attempt, waited, delay):
                    if status == 429:
                        raise errors.RateLimited(
                            f"{op}: still rate limited after {attempt} retries"
                        ) from exc
                    raise errors.BrokerUnavailable(f"{op}: HTTP {status}: {info.message}") from exc
                log.info("alpaca %s: HTTP %s, retrying in %.2fs", op, status, delay)
            except requests.Timeout as exc:
                raise errors.BrokerUnavailable(f"{op}: no answer within {self.timeout:g}s") from exc
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                delay = self._delay(attempt, None)
                if not self._wait_to_retry(attempt, waited, delay):
                    raise errors.BrokerUnavailable(f"{op}: connection failed: {exc}") from exc
                log.info("alpaca %s: connection failed (%s), retrying in %.2fs", op, exc, delay)
            except requests.RequestException as exc:
                raise errors.BrokerUnavailable(f"{op}: {exc}") from exc
            except (PydanticValidationError, ValueError, KeyError, TypeError) as exc:
                raise errors.BrokerError(f"{op}: unexpected response: {exc}") from exc
            waited += delay
            attempt += 1
