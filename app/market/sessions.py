"""One date everywhere: "today's session" and "the last closed session" from one clock.

In paper and live mode that clock is the broker's (Alpaca's `/v2/clock`), read in New York time,
so the bar cache, the API and the cycle agree on the session even when the machine's clock is
off or it is already tomorrow in UTC (after 20:00 New York). Tests and sim use the same rules
over an injected `now`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from app.domain import MarketClock
from app.market.calendar import NyseCalendar

NEW_YORK = ZoneInfo("America/New_York")


def new_york_date(instant: datetime) -> date:
    """The New York calendar date of an instant (naive means UTC)."""
    aware = instant if instant.tzinfo else instant.replace(tzinfo=UTC)
    return aware.astimezone(NEW_YORK).date()


def session_today(clock: MarketClock) -> date:
    """The session date a clock reading belongs to: its New York date (what the cycle uses)."""
    return new_york_date(clock.timestamp)


def last_closed_session(
    clock: MarketClock, calendar: NyseCalendar, now: datetime | None = None
) -> date:
    """The latest session whose close is at or before `now` (default: the clock's timestamp).

    `next_close` is the close of the open session, or of the next one when closed; the session
    before it is the last closed one, unless `now` has already passed that close (a reading
    taken a little earlier and extrapolated).
    """
    at = now or clock.timestamp
    closing = new_york_date(clock.next_close)
    if at >= clock.next_close:
        return calendar.session_on_or_before(closing)
    return calendar.previous_session(closing)


class SessionClock(Protocol):
    """Where the cache, the API and the cycle get their session dates from."""

    def today(self) -> date: ...

    def last_closed_session(self) -> date: ...


class CalendarSessions:
    """Session dates from the NYSE calendar at `now()` (machine time, or a test's/sim's)."""

    def __init__(
        self, calendar: NyseCalendar | None = None, now: Callable[[], datetime] | None = None
    ) -> None:
        self._calendar = calendar or NyseCalendar()
        self._now = now or (lambda: datetime.now(UTC))

    def today(self) -> date:
        return new_york_date(self._now())

    def last_closed_session(self) -> date:
        now = self._now()
        day = self._calendar.session_on_or_before(new_york_date(now))
        if self._calendar.session_close(day) > now:
            day = self._calendar.previous_session(day)
        return day


class BrokerSessions:
    """Session dates from the broker's clock, read at most every `max_age` seconds.

    Between reads the reading's timestamp is advanced by the monotonic time elapsed, so a
    cached reading still notices a close passing; the API's "today" costs no broker request
    per call (Alpaca allows 200 requests a minute).
    """

    def __init__(
        self,
        get_clock: Callable[[], MarketClock],
        calendar: NyseCalendar | None = None,
        max_age: float = 30.0,
    ) -> None:
        self._get_clock = get_clock
        self._calendar = calendar or NyseCalendar()
        self._max_age = max_age
        self._lock = threading.Lock()
        self._reading: tuple[MarketClock, float] | None = None

    def _clock(self) -> tuple[MarketClock, datetime]:
        with self._lock:
            reading = self._reading
            if reading is None or time.monotonic() - reading[1] > self._max_age:
                reading = (self._get_clock(), time.monotonic())
                self._reading = reading
        clock, read_at = reading
        return clock, clock.timestamp + timedelta(seconds=time.monotonic() - read_at)

    def today(self) -> date:
        _clock, now = self._clock()
        return new_york_date(now)

    def last_closed_session(self) -> date:
        clock, now = self._clock()
        return last_closed_session(clock, self._calendar, now)
