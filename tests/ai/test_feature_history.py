"""The bars a live decision fetches hold a full row of its feature set: the extended set's year
of memory needs a longer window than the seed's 120 sessions, on every day of the data."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from app.ai.features import history_calendar_days, max_lookback
from app.market.calendar import NyseCalendar
from app.trading.day_signals import LOOKBACK_CALENDAR_DAYS


@pytest.mark.parametrize("feature_set", ["seed", "extended"])
def test_the_decision_window_holds_the_feature_sets_lookback_on_every_day(
    feature_set: str,
) -> None:
    days = history_calendar_days(feature_set, LOOKBACK_CALENDAR_DAYS)
    sessions = [
        d.date() for d in NyseCalendar().sessions_index(date(2003, 1, 2), date(2021, 12, 31))
    ]
    fewest = min(
        sum(1 for s in sessions[max(0, i - 400) : i + 1] if s >= day - timedelta(days=days))
        for i, day in enumerate(sessions)
        if day >= date(2005, 1, 3)
    )
    assert fewest >= max_lookback(feature_set)


def test_the_seed_window_is_unchanged_and_an_unknown_set_is_refused() -> None:
    assert history_calendar_days("seed", LOOKBACK_CALENDAR_DAYS) == LOOKBACK_CALENDAR_DAYS
    assert history_calendar_days("extended", LOOKBACK_CALENDAR_DAYS) > LOOKBACK_CALENDAR_DAYS
    with pytest.raises(ValueError, match="feature set"):
        history_calendar_days("longer", LOOKBACK_CALENDAR_DAYS)
