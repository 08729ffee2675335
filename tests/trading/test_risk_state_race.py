"""The risk state's first save under concurrency: many cycles of a fresh install saving at once
(the twenty-concurrent-cycles test once failed on the read-then-insert this replaced, with a
duplicate primary key on PostgreSQL)."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, date, datetime

from flask import Flask
from sqlalchemy import delete

from app.container import services
from app.domain import TradingState
from app.store.orm import RiskStateRecord
from app.trading.risk import RiskState, RiskStateStore


def test_concurrent_first_saves_all_succeed_and_a_halt_is_never_lost(app: Flask) -> None:
    with app.app_context():
        db = services().db
    store = RiskStateStore(db)
    threads_n = 8
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []
    halt = RiskState(
        state=TradingState.HALTED,
        halted_until=datetime(2021, 6, 2, tzinfo=UTC),
        halt_reason="daily loss",
    )

    def save(i: int) -> None:
        # One writer halts (the daily-loss rule); the others save an ACTIVE day's figures,
        # each having loaded the fresh install's default state.
        state = halt if i == 0 else replace(RiskState(), session_date=date(2021, 6, 1))
        barrier.wait()
        try:
            store.save(state, loaded=RiskState())
        except BaseException as exc:
            errors.append(exc)

    for _round in range(5):
        with db.session() as session:
            session.execute(delete(RiskStateRecord))
        threads = [threading.Thread(target=save, args=(i,)) for i in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        saved = store.load()
        # Whoever wrote last, a halt written by another cycle since they loaded wins.
        assert saved.state is TradingState.HALTED
        assert saved.halt_reason == "daily loss"
