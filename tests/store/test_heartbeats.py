"""Heartbeats under concurrency: many cycles touching a name for the first time at once (the
twenty-concurrent-cycles test once failed on the read-then-insert this replaced)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from flask import Flask

from app.container import services
from app.store.heartbeats import HeartbeatStore


def test_concurrent_first_touches_all_succeed_and_the_row_holds_one_of_them(app: Flask) -> None:
    with app.app_context():
        store = HeartbeatStore(services().db)
    start = datetime(2021, 11, 29, 21, tzinfo=UTC)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def touch(i: int) -> None:
        barrier.wait()
        try:
            store.touch("race", start + timedelta(seconds=i), f"cycle {i}")
        except BaseException as exc:
            errors.append(exc)

    for _round in range(5):
        store.clear("race")
        threads = [threading.Thread(target=touch, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        last = store.last("race")
        assert last is not None
        at, detail = last
        assert detail == f"cycle {int((at - start).total_seconds())}"


def test_a_touch_replaces_the_previous_one(app: Flask) -> None:
    with app.app_context():
        store = HeartbeatStore(services().db)
    first = datetime(2021, 11, 29, 21, tzinfo=UTC)
    store.touch("cycle", first, "one")
    store.touch("cycle", first + timedelta(hours=1), "two")
    assert store.last("cycle") == (first + timedelta(hours=1), "two")
