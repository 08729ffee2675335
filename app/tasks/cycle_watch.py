"""Is the trading cycle still running? Read from the beat schedule and the cycle's heartbeat.

A dead trader (or beat) leaves the API and the other worker up: nothing fails, trading just
stops. The schedule says when a cycle should have run; when a trigger older than
`stale_after` produced no cycle, trading is stale. /health reports it, the `cycle-watch` beat
entry (served by the other worker) alerts on Discord once per stale spell, and Prometheus has a
rule on alpha_cycle_last_run_timestamp_seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import shared_task
from celery.schedules import crontab

from app.config import Settings, TradingMode
from app.container import services
from app.store.heartbeats import TRADING_CYCLE, HeartbeatStore
from app.tasks.celery_config import TRADING_QUEUE, beat_schedule
from app.trading.notifier import Notifier

log = logging.getLogger(__name__)

#: Never call a cycle stale sooner than this: a sim cycle can outlast a short interval.
MIN_STALE_SECONDS = 60.0
#: How many cycle intervals may pass without a cycle before trading counts as stale.
STALE_INTERVALS = 3
#: The longest gap between two trading triggers (a weekend plus a margin), for the search.
_LOOKBACK = timedelta(days=4)
#: The heartbeat row that records an alert already sent for the current stale spell.
STALE_ALERT = "trading_cycle_stale_alert"


@dataclass(frozen=True)
class CycleFreshness:
    status: str  # "ok", "stale", or "waiting" (no cycle yet, none due yet)
    last_cycle_at: datetime | None
    age_seconds: float | None
    stale_after_seconds: float
    due_at: datetime | None  # the latest trigger that should have produced a cycle by now

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "last_cycle_at": self.last_cycle_at.isoformat() if self.last_cycle_at else None,
            "last_cycle_age_seconds": self.age_seconds,
            "stale_after_seconds": self.stale_after_seconds,
        }


def stale_after(settings: Settings) -> float:
    """A few cycle intervals: sim ticks every SIM_CYCLE_SECONDS, live guards every
    TRADING_CYCLE_MINUTES while the market may be open."""
    if settings.trading_mode is TradingMode.SIM:
        interval = settings.sim_cycle_seconds
    else:
        interval = settings.trading_cycle_minutes * 60.0
    return max(MIN_STALE_SECONDS, STALE_INTERVALS * interval)


def latest_trigger(settings: Settings, at: datetime) -> datetime | None:
    """The latest instant <= `at` at which beat sends a trading cycle (None: none in days)."""
    latest: datetime | None = None
    for entry in beat_schedule(settings).values():
        if entry.get("options", {}).get("queue") != TRADING_QUEUE:
            continue
        schedule = entry["schedule"]
        fired = at if isinstance(schedule, timedelta) else _last_cron_fire(schedule, at)
        if fired is not None and (latest is None or fired > latest):
            latest = fired
    return latest


def _last_cron_fire(schedule: crontab, at: datetime) -> datetime | None:
    """Walk back minute by minute (the crontab is UTC, like the beat schedule)."""
    minute = at.astimezone(UTC).replace(second=0, microsecond=0)
    earliest = minute - _LOOKBACK
    while minute > earliest:
        if (
            minute.minute in schedule.minute
            and minute.hour in schedule.hour
            and (minute.isoweekday() % 7) in schedule.day_of_week  # cron: Sunday is 0
            and minute.day in schedule.day_of_month
            and minute.month in schedule.month_of_year
        ):
            return minute
        minute -= timedelta(minutes=1)
    return None


def freshness(
    settings: Settings, last: datetime | None, now: datetime, watching_since: datetime
) -> CycleFreshness:
    """Stale when a trigger older than `stale_after` came after both the last cycle and the
    start of watching (a just-started service is not stale for cycles before its time)."""
    grace = stale_after(settings)
    due = latest_trigger(settings, now - timedelta(seconds=grace))
    newest = max(last, watching_since) if last else watching_since
    stale = due is not None and due > newest
    age = round((now - last).total_seconds(), 1) if last else None
    status = "stale" if stale else "ok" if last else "waiting"
    return CycleFreshness(status, last, age, grace, due)


def trading_freshness(
    settings: Settings, heartbeats: HeartbeatStore, watching_since: datetime
) -> CycleFreshness:
    beat = heartbeats.last(TRADING_CYCLE)
    return freshness(settings, beat[0] if beat else None, datetime.now(UTC), watching_since)


def alert_when_stale(
    settings: Settings,
    heartbeats: HeartbeatStore,
    notifier: Notifier,
    watching_since: datetime,
) -> CycleFreshness:
    """One Discord alert when trading turns stale, one when it resumes (the sent alert is
    recorded in the database, so a restarted worker does not repeat it)."""
    state = trading_freshness(settings, heartbeats, watching_since)
    alerted = heartbeats.last(STALE_ALERT)
    last = state.last_cycle_at.isoformat() if state.last_cycle_at else "never"
    if state.status == "stale" and alerted is None:
        age = f"{state.age_seconds:.0f} s ago" if state.age_seconds is not None else "never"
        why = (
            f"no trading cycle since {last} ({age}); one was due at "
            f"{state.due_at.isoformat() if state.due_at else '?'}: is the trader worker "
            "(or beat) running?"
        )
        log.error("trading cycle stale: %s", why)
        notifier.notify("Trading stopped", why, "error")
        heartbeats.touch(STALE_ALERT, datetime.now(UTC), last[:64])
    elif state.status == "ok" and alerted is not None:
        log.warning("trading cycles resumed (last at %s)", last)
        notifier.notify("Trading resumed", f"a trading cycle ran at {last}", "success")
        heartbeats.clear(STALE_ALERT)
    return state


#: When this process began watching: cycles due before it started are not counted as missed.
_WATCHING_SINCE = datetime.now(UTC)


@shared_task(name="app.tasks.watch_trading_cycle")
def watch_trading_cycle() -> dict[str, Any]:
    """Beat's `cycle-watch`, served by the training worker, so it runs when the trader is dead."""
    svc = services()
    state = alert_when_stale(svc.settings, HeartbeatStore(svc.db), svc.notifier, _WATCHING_SINCE)
    return state.as_dict()
