"""Silent empty cycles are a bug: each universe symbol without a signal is named with its reason,
recorded (table missing_signals), counted (alpha_signal_missing_total{reason}), logged and
alerted once per cycle."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import date

from sqlalchemy import insert

from app import metrics
from app.ai.features import SEED_FEATURE_SET
from app.ai.signals import NO_MODEL, missing_signal_reasons
from app.domain import BarFrame, Signal
from app.store.database import Database
from app.store.orm import MissingSignal
from app.trading.notifier import Notifier

log = logging.getLogger(__name__)


def report_missing_signals(
    db: Database,
    notifier: Notifier,
    universe: Iterable[str],
    bars: Mapping[str, BarFrame],
    signals: Mapping[str, Signal],
    session: date,
    problem: str | None = None,
    *,
    feature_set: str = SEED_FEATURE_SET,
) -> dict[str, str]:
    """Name, record, count and alert the symbols the decision has no signal for.

    Without a model no symbol has one and the cycle already alerts that; nothing more here.
    """
    if problem == NO_MODEL:
        return {}
    missing = missing_signal_reasons(universe, bars, session, signals, feature_set=feature_set)
    if not missing:
        return missing
    metrics.record_signals_missing(reason.split(":", 1)[0] for reason in missing.values())
    with db.session() as session_:  # one executemany: a broad universe can miss hundreds
        session_.execute(
            insert(MissingSignal),
            [
                {"symbol": symbol, "as_of": session, "reason": reason[:2000]}
                for symbol, reason in missing.items()
            ],
        )
    lines = "\n".join(f"{symbol}: {reason}" for symbol, reason in missing.items())
    detail = f"{len(missing)} symbol(s) without a signal on {session}:\n{lines}"
    log.warning("%s", detail)
    notifier.notify(f"No signal for {', '.join(missing)}"[:256], detail, "warning")
    return missing
