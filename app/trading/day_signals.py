"""One closed session's inputs to the decision: the universe's bars and the signals on them.

Why its own step: the universe (UNIVERSE), the feature set's history (AI_FEATURE_SET) and the
report of symbols without a signal all shape what the decision sees, and the backtest mirrors
each of them; here they sit together, apart from the ordering logic of decision.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta

from app.ai.features import history_calendar_days
from app.broker.venue import Venue
from app.config import Settings
from app.domain import BarFrame, Signal
from app.market.universe import configured_universe, feature_universe
from app.store.database import Database
from app.trading.missing_signals import report_missing_signals
from app.trading.notifier import Notifier

#: Covers the seed's 120-session feature window with room for holidays.
LOOKBACK_CALENDAR_DAYS = 200


@dataclass(frozen=True)
class DaySignals:
    bars: Mapping[str, BarFrame]
    signals: dict[str, Signal]
    #: Why there are no signals at all (no model, a stale one...), else None.
    problem: str | None


def day_signals(
    settings: Settings,
    venue: Venue,
    source: Callable[[Mapping[str, BarFrame], date], tuple[dict[str, Signal], str | None]],
    db: Database,
    notifier: Notifier,
    session: date,
    held: Iterable[str],
) -> DaySignals:
    """Bars of the universe and the holdings up to `session` (as far back as the feature set
    needs) and the signals on them; symbols without one are recorded and alerted."""
    held = set(held)
    universe = configured_universe(settings, venue.market)
    days = history_calendar_days(settings.ai_feature_set, LOOKBACK_CALENDAR_DAYS)
    bars = venue.market.get_daily_bars(
        feature_universe(universe.symbols, held), session - timedelta(days=days), session
    )
    signals, problem = source(bars, session)
    # The universe's feature-only symbols (its ETFs, SPY outside the watchlist) are never
    # traded, as in the backtest; a holding outside the universe keeps its signal (exits).
    traded = set(universe.tradable) | held
    signals = {s: sig for s, sig in signals.items() if s in traded}
    report_missing_signals(
        db,
        notifier,
        sorted(traded),
        bars,
        signals,
        session,
        problem,
        feature_set=settings.ai_feature_set,
    )
    if problem:
        notifier.notify("No trading signals", problem, "warning")
    return DaySignals(bars, signals, problem)
