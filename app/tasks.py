"""Thin Celery tasks: take ids and symbols, call one service, return a small dict."""

from __future__ import annotations

import os
import socket
from typing import Any

from celery import shared_task


@shared_task(name="app.tasks.ping")
def ping() -> dict[str, Any]:
    """Proves the broker → worker → result backend round trip."""
    return {"pong": True, "worker": f"{socket.gethostname()}:{os.getpid()}"}
