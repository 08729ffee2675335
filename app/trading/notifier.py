"""Discord alerts: fills, exits, halts, mismatches, failures and a daily summary.

Messages go on a bounded queue that one background thread drains, so an alert never blocks or
fails a trade. The thread keeps under Discord's webhook limit (about 5 requests per 2 seconds)
and honours 429 answers' retry_after. A full queue drops the newest message and counts it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests

log = logging.getLogger(__name__)

COLORS = {"info": 0x3498DB, "success": 0x2ECC71, "warning": 0xF1C40F, "error": 0xE74C3C}


@dataclass(frozen=True)
class Alert:
    title: str
    message: str
    level: str = "info"


class Notifier:
    def __init__(
        self,
        webhook_url: str | None,
        *,
        min_interval: float = 0.4,
        timeout: float = 5.0,
        max_queue: int = 1000,
        max_attempts: int = 5,
    ) -> None:
        self._url = webhook_url
        self._min_interval = min_interval
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._session = requests.Session()
        self.sent = 0
        self.dropped = 0
        self.failed = 0
        self.rate_limited = 0

    @property
    def enabled(self) -> bool:
        return bool(self._url)

    def notify(self, title: str, message: str, level: str = "info") -> None:
        """Queue an alert; returns at once whatever Discord does."""
        if not self._url:
            return
        self._ensure_thread()
        try:
            self._queue.put_nowait(Alert(title[:256], message[:4000], level))
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the queue is drained (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.02)
        return False

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._drain, name="discord", daemon=True)
                self._thread.start()

    def _drain(self) -> None:
        last = 0.0
        while True:
            alert = self._queue.get()
            try:
                if alert is None:
                    return
                wait = self._min_interval - (time.monotonic() - last)
                if wait > 0:
                    time.sleep(wait)
                self._post(alert)
                last = time.monotonic()
            finally:
                self._queue.task_done()

    def _post(self, alert: Alert) -> None:
        body: dict[str, Any] = {
            "username": "Alpha Trader",
            "embeds": [
                {
                    "title": alert.title,
                    "description": alert.message,
                    "color": COLORS.get(alert.level, COLORS["info"]),
                }
            ],
        }
        for _ in range(self._max_attempts):
            try:
                response = self._session.post(str(self._url), json=body, timeout=self._timeout)
            except requests.RequestException as exc:
                log.warning("discord alert failed: %s", type(exc).__name__)
                time.sleep(1.0)
                continue
            if response.status_code == 429:
                self.rate_limited += 1
                time.sleep(_retry_after(response))
                continue
            if response.status_code < 300:
                self.sent += 1
                return
            log.warning("discord alert refused with HTTP %s", response.status_code)
            break
        self.failed += 1


def _retry_after(response: requests.Response) -> float:
    try:
        seconds = float(response.json().get("retry_after", 1.0))
    except ValueError:
        seconds = float(response.headers.get("Retry-After", 1.0))
    return min(max(seconds, 0.05), 60.0)
