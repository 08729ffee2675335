"""The cycle watch: when trading counts as stale (from the beat schedule), and its one Discord
alert per stale spell, through a real Notifier to a loopback webhook receiver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask

from app.config import TradingMode, load_settings
from app.extensions import db
from app.store.heartbeats import TRADING_CYCLE, HeartbeatStore
from app.tasks.cycle_watch import alert_when_stale, freshness
from app.trading.notifier import Notifier
from tests.trading.test_notifier import Receiver

# Guard cycles every 10 minutes 11:00-23:59 UTC on weekdays; stale after 30 minutes.
WEDNESDAY_NOON = datetime(2026, 12, 9, 12, 0, tzinfo=UTC)
SATURDAY_NOON = datetime(2026, 12, 12, 12, 0, tzinfo=UTC)


def test_live_trading_is_stale_only_when_a_due_cycle_did_not_run() -> None:
    live = load_settings().model_copy(update={"trading_mode": TradingMode.PAPER})
    long_ago = WEDNESDAY_NOON - timedelta(days=2)
    recent = WEDNESDAY_NOON - timedelta(minutes=25)
    assert freshness(live, recent, WEDNESDAY_NOON, long_ago).status == "ok"
    stale = freshness(live, WEDNESDAY_NOON - timedelta(minutes=45), WEDNESDAY_NOON, long_ago)
    assert stale.status == "stale"
    assert stale.age_seconds == 45 * 60
    assert stale.due_at == datetime(2026, 12, 9, 11, 30, tzinfo=UTC)
    # Friday's last guard (23:50) ran: nothing is due over the weekend.
    friday_last = datetime(2026, 12, 11, 23, 51, tzinfo=UTC)
    assert freshness(live, friday_last, SATURDAY_NOON, long_ago).status == "ok"
    # A service started five minutes ago has missed nothing yet.
    just_started = WEDNESDAY_NOON - timedelta(minutes=5)
    assert freshness(live, None, WEDNESDAY_NOON, just_started).status == "waiting"
    assert freshness(live, None, WEDNESDAY_NOON, long_ago).status == "stale"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_one_alert_when_trading_stops_and_one_when_it_resumes(
    make_app: Callable[..., Flask], receiver: Receiver
) -> None:
    app = make_app(SIM_CYCLE_SECONDS=20)
    settings = app.extensions["alpha_trader"].settings
    heartbeats = HeartbeatStore(db)
    notifier = Notifier(receiver.url, min_interval=0.01)
    since = datetime.now(UTC) - timedelta(hours=1)
    heartbeats.touch(TRADING_CYCLE, datetime.now(UTC) - timedelta(minutes=3), "done")

    for _ in range(3):  # the watch runs every 30 s: a stale spell is told once
        assert alert_when_stale(settings, heartbeats, notifier, since).status == "stale"
    assert notifier.flush()
    assert [m["embeds"][0]["title"] for m in receiver.received] == ["Trading stopped"]
    assert "no trading cycle since" in receiver.received[0]["embeds"][0]["description"]

    heartbeats.touch(TRADING_CYCLE, datetime.now(UTC), "done")
    for _ in range(2):
        assert alert_when_stale(settings, heartbeats, notifier, since).status == "ok"
    assert notifier.flush()
    titles = [m["embeds"][0]["title"] for m in receiver.received]
    assert titles == ["Trading stopped", "Trading resumed"]
