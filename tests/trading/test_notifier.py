"""Discord alerts against a loopback webhook receiver: async, rate-limited, 429 respected."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app.trading.notifier import Notifier


class Receiver:
    """A Discord-like webhook endpoint on 127.0.0.1 that records what it gets."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.answer_429 = 0
        self.delay = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(receiver.delay)
                if receiver.answer_429 > 0:
                    receiver.answer_429 -= 1
                    payload = json.dumps({"retry_after": 0.3, "global": False}).encode()
                    self.send_response(429)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                receiver.received.append(body)
                receiver.times.append(time.monotonic())
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/webhooks/1/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_alerts_arrive_as_embeds(receiver: Receiver) -> None:
    notifier = Notifier(receiver.url, min_interval=0.01)
    notifier.notify("Stop loss: sell AAPL", "10 shares at 150.00", "warning")
    assert notifier.flush()
    embed = receiver.received[0]["embeds"][0]
    assert embed["title"] == "Stop loss: sell AAPL"
    assert embed["description"] == "10 shares at 150.00"
    assert notifier.sent == 1


def test_notify_never_blocks_the_caller(receiver: Receiver) -> None:
    receiver.delay = 0.5  # a slow Discord
    notifier = Notifier(receiver.url, min_interval=0.0)
    started = time.monotonic()
    for i in range(5):
        notifier.notify("fill", f"order {i}")
    assert time.monotonic() - started < 0.1
    assert notifier.flush(10)
    assert len(receiver.received) == 5


def test_rate_limit_and_429_are_respected(receiver: Receiver) -> None:
    receiver.answer_429 = 2
    notifier = Notifier(receiver.url, min_interval=0.2)
    for i in range(4):
        notifier.notify("event", str(i))
    assert notifier.flush(15)
    assert [r["embeds"][0]["description"] for r in receiver.received] == ["0", "1", "2", "3"]
    gaps = [b - a for a, b in zip(receiver.times, receiver.times[1:], strict=False)]
    assert min(gaps) >= 0.18
    assert notifier.rate_limited == 2


def test_unreachable_webhook_fails_quietly() -> None:
    notifier = Notifier("http://127.0.0.1:9/nothing", min_interval=0.0, max_attempts=1)
    notifier.notify("x", "y")
    assert notifier.flush(10)
    assert notifier.failed == 1


def test_disabled_without_url() -> None:
    notifier = Notifier(None)
    notifier.notify("x", "y")
    assert notifier.enabled is False
    assert notifier.flush(0.1)
