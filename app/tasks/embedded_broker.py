"""The embedded broker: kombu's SQLAlchemy transport over SQLite, made to notice a shutdown.

Celery drives a polling transport with `drain_events(timeout=2.0)`, and kombu's loop sleeps
and polls until that timeout has passed, whatever the worker was asked meanwhile. Together with
billiard's own shutdown that made a warm shutdown take 5-6 s, past honcho's 5 s grace, so
Ctrl-C on `make run` ended in SIGKILL. Draining in short slices that stop once the worker is
shutting down makes the stop prompt; messages are fetched exactly as before.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from celery.worker import state as worker_state
from kombu.transport import sqlalchemy


def _shutting_down() -> bool:
    return worker_state.should_stop is not None or worker_state.should_terminate is not None


class Transport(sqlalchemy.Transport):  # type: ignore[misc]
    """SQLAlchemy transport whose drain returns within `polling_interval` of a shutdown."""

    polling_interval = 0.2

    def drain_events(self, connection: Any, timeout: float | None = None) -> Any:  # type: ignore[override]
        deadline = None if timeout is None else monotonic() + timeout
        while not _shutting_down():
            step = self.polling_interval
            if deadline is not None:
                step = min(step, deadline - monotonic())
                if step <= 0:
                    break
            try:
                return super().drain_events(connection, timeout=step)  # type: ignore[no-untyped-call]
            except TimeoutError:
                continue
        raise TimeoutError()
