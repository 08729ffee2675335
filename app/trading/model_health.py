"""Live model health: each model version's realised cross-sectional rank IC, as labels arrive.

A signal recorded for session t predicts the return of a trade bought at the open of t+1 and
sold `horizon` sessions later (open of t+1+horizon), the label the model is trained on. Once
that bar exists, the session's Spearman rank IC between the predictions and the realised
returns is stored, one row per model version and session. Rolling means over the last 20 and
60 labelled sessions say whether the model still ranks the universe better than chance:
for the signals the service acted on ("live": whichever version recorded last that session,
since nightly retrains replace versions often) and for each version. The means go to
Prometheus, and Discord hears once when the live mean turns negative and once when it recovers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app import metrics
from app.domain import BarFrame, MarketData
from app.market.calendar import NyseCalendar
from app.store.database import Database
from app.store.orm import ModelDailyIC, ModelRun, SignalRecord
from app.trading.notifier import Notifier

if TYPE_CHECKING:
    from app.trading.services import TradingServices

log = logging.getLogger(__name__)

#: Sessions from the entry open (t+1) to the exit open, when settings do not say otherwise.
DEFAULT_HORIZON_DAYS = 1
WINDOWS = (20, 60)
#: The alert watches the 60-session live mean once 20 sessions are labelled: a daily rank IC on
#: 32 symbols has a noise of about 0.18, so a 20-session mean flips sign every few weeks.
ALERT_WINDOW = 60
ALERT_MIN_SESSIONS = 20
#: Signals older than this (calendar days) are not scored any more.
LOOKBACK_DAYS = 180
LIVE = "live"


def prediction_horizon(settings: object) -> int:
    """The label horizon in sessions: AI_PREDICTION_HORIZON_DAYS when the settings have it."""
    return int(getattr(settings, "ai_prediction_horizon_days", DEFAULT_HORIZON_DAYS))


def rank_ic(predicted: Sequence[float], realised: Sequence[float]) -> float | None:
    """Spearman correlation (average ranks for ties); None below 3 pairs or without spread."""
    p = pd.Series(predicted, dtype="float64")
    y = pd.Series(realised, dtype="float64")
    usable = p.notna() & y.notna() & np.isfinite(p) & np.isfinite(y)
    p, y = p[usable], y[usable]
    if len(p) < 3 or p.nunique() < 2 or y.nunique() < 2:
        return None
    return float(np.corrcoef(p.rank().to_numpy(), y.rank().to_numpy())[0, 1])


def label_sessions(session: date, horizon: int, calendar: NyseCalendar) -> tuple[date, date]:
    """(entry, exit): the opens a signal of `session` is bought and sold at."""
    entry = calendar.next_session(session)
    exit_ = entry
    for _ in range(horizon):
        exit_ = calendar.next_session(exit_)
    return entry, exit_


def realised_returns(bars: Mapping[str, BarFrame], entry: date, exit_: date) -> dict[str, float]:
    """open[exit] / open[entry] - 1 for every symbol with both bars."""
    out: dict[str, float] = {}
    start, end = pd.Timestamp(entry), pd.Timestamp(exit_)
    for symbol, frame in bars.items():
        if start in frame.index and end in frame.index:
            first = float(frame.at[start, "open"])
            if first > 0:
                out[symbol] = float(frame.at[end, "open"]) / first - 1.0
    return out


@dataclass(frozen=True)
class WindowIC:
    """The mean of the last `window` daily ICs, over `sessions` of them, with its t-statistic."""

    window: int
    mean: float | None
    sessions: int
    t_stat: float | None

    @classmethod
    def of(cls, window: int, values: Sequence[float]) -> WindowIC:
        n = len(values)
        if n == 0:
            return cls(window, None, 0, None)
        mean = float(np.mean(values))
        sd = float(np.std(values, ddof=1)) if n > 1 else 0.0
        t_stat = mean / (sd / math.sqrt(n)) if sd > 0 else None
        return cls(window, mean, n, t_stat)

    @property
    def negative(self) -> bool:
        """What the alert watches: a negative mean over enough sessions to mean something."""
        return self.sessions >= ALERT_MIN_SESSIONS and self.mean is not None and self.mean < 0


class ModelHealth:
    """Scores recorded signals against realised returns and reports the rolling rank IC."""

    def __init__(
        self,
        db: Database,
        market: MarketData,
        notifier: Notifier,
        *,
        horizon: int = DEFAULT_HORIZON_DAYS,
        calendar: NyseCalendar | None = None,
    ) -> None:
        if horizon < 1:
            raise ValueError("horizon must be at least one session")
        self._db = db
        self._market = market
        self._notifier = notifier
        self._horizon = horizon
        self._calendar = calendar or NyseCalendar()

    @classmethod
    def of(cls, svc: TradingServices) -> ModelHealth:
        """The app's tracker: its database, market data, alerts and label horizon."""
        return cls(svc.db, svc.venue.market, svc.notifier, horizon=prediction_horizon(svc.settings))

    # --------------------------------------------------------------------------- update
    def update(self, today: date) -> dict[str, Any]:
        """Score every session whose labels became known by `today`; export; alert on a sign
        change of the live mean. Idempotent: a session is scored once per version."""
        before = self.live_window(ALERT_WINDOW)
        rows, waiting = self._score_pending(today)
        after = self.live_window(ALERT_WINDOW)
        alert = self._alert(before, after) if rows else None
        windows = self._export()
        log.info(
            "model health: %d sessions scored, %d waiting for labels, live %s",
            len(rows),
            waiting,
            ", ".join(f"{w.window}: {_fmt(w.mean)} over {w.sessions}" for w in windows),
        )
        return {
            "scored": len(rows),
            "waiting_for_labels": waiting,
            "horizon_days": self._horizon,
            "live": [asdict(w) for w in windows],
            "alert": alert,
        }

    def _score_pending(self, today: date) -> tuple[list[ModelDailyIC], int]:
        since = today - timedelta(days=LOOKBACK_DAYS)
        with self._db.session() as session:
            recorded = session.execute(
                select(SignalRecord.model_version, SignalRecord.as_of)
                .where(SignalRecord.as_of >= since, SignalRecord.as_of <= today)
                .group_by(SignalRecord.model_version, SignalRecord.as_of)
            ).all()
            done = set(
                session.execute(
                    select(ModelDailyIC.model_version, ModelDailyIC.session_day).where(
                        ModelDailyIC.horizon_days == self._horizon,
                        ModelDailyIC.session_day >= since,
                    )
                ).all()
            )
            days = sorted({d for v, d in recorded if d is not None and (v, d) not in done})
            records = (
                session.execute(
                    select(
                        SignalRecord.id,
                        SignalRecord.model_version,
                        SignalRecord.as_of,
                        SignalRecord.symbol,
                        SignalRecord.predicted_return,
                    ).where(SignalRecord.as_of.in_(days))
                ).all()
                if days
                else []
            )
        if not records:
            return [], 0
        signals = pd.DataFrame(records, columns=["id", "version", "day", "symbol", "predicted"])
        # Cycles may record a session several times: each version's last word per symbol.
        signals = signals.sort_values("id").drop_duplicates(
            ["version", "day", "symbol"], keep="last"
        )
        live_version = signals.groupby("day")["version"].last()
        pending = [
            (version, day, group, *label_sessions(day, self._horizon, self._calendar))
            for (version, day), group in signals.groupby(["version", "day"])
            if (version, day) not in done
        ]
        due = [p for p in pending if p[4] <= today]
        waiting = len(pending) - len(due)
        if not due:
            return [], waiting
        first = min(p[3] for p in due)
        symbols = sorted({s for p in due for s in p[2]["symbol"]})
        bars = self._market.get_daily_bars(symbols, first, today)
        latest = max((frame.index.max() for frame in bars.values() if len(frame)), default=None)
        rows: list[ModelDailyIC] = []
        for version, day, group, entry, exit_ in due:
            if latest is None or pd.Timestamp(exit_) > latest:  # the exit bar has not arrived
                waiting += 1
                continue
            realised = realised_returns(bars, entry, exit_)
            known = group[group["symbol"].isin(realised.keys())]
            rows.append(
                ModelDailyIC(
                    model_version=str(version),
                    session_day=day,
                    horizon_days=self._horizon,
                    rank_ic=rank_ic(
                        known["predicted"].tolist(), [realised[s] for s in known["symbol"]]
                    ),
                    n_symbols=len(known),
                    live=bool(live_version[day] == version),
                    label_end=exit_,
                )
            )
        if rows:
            try:
                with self._db.session() as session:
                    session.add_all(rows)
            except IntegrityError:  # another run scored them first: theirs stand
                log.info("model health: sessions already scored by another run")
                return [], waiting
        return rows, waiting

    # --------------------------------------------------------------------------- reading
    def _ics(self, version: str | None, limit: int) -> list[float]:
        """The last `limit` daily ICs, newest first: of the live series or of one version."""
        query = select(ModelDailyIC.rank_ic).where(
            ModelDailyIC.horizon_days == self._horizon, ModelDailyIC.rank_ic.is_not(None)
        )
        if version is None:
            query = query.where(ModelDailyIC.live.is_(True))
        else:
            query = query.where(ModelDailyIC.model_version == version)
        query = query.order_by(ModelDailyIC.session_day.desc()).limit(limit)
        with self._db.session() as session:
            return [float(v) for v in session.scalars(query) if v is not None]

    def live_window(self, window: int) -> WindowIC:
        return WindowIC.of(window, self._ics(None, window))

    def version_windows(self, version: str) -> list[WindowIC]:
        values = self._ics(version, max(WINDOWS))
        return [WindowIC.of(w, values[:w]) for w in WINDOWS]

    def report(self, versions: int = 10, sessions: int = 60) -> dict[str, Any]:
        """What GET /api/model/health answers: live windows, recent versions, recent days."""
        with self._db.session() as session:
            recent = session.scalars(
                select(ModelDailyIC)
                .where(ModelDailyIC.horizon_days == self._horizon, ModelDailyIC.live.is_(True))
                .order_by(ModelDailyIC.session_day.desc())
                .limit(sessions)
            ).all()
            days = [
                {
                    "session": r.session_day.isoformat(),
                    "model_version": r.model_version,
                    "rank_ic": r.rank_ic,
                    "n_symbols": r.n_symbols,
                    "label_end": r.label_end.isoformat(),
                }
                for r in recent
            ]
            spans = session.execute(
                select(ModelDailyIC.model_version, ModelDailyIC.session_day).where(
                    ModelDailyIC.horizon_days == self._horizon
                )
            ).all()
        by_version: dict[str, list[date]] = {}
        for version, day in spans:
            by_version.setdefault(version, []).append(day)
        newest = sorted(by_version, key=lambda v: max(by_version[v]), reverse=True)[:versions]
        live = [self.live_window(w) for w in WINDOWS]
        alert = next(w for w in live if w.window == ALERT_WINDOW)
        return {
            "horizon_days": self._horizon,
            "live": [asdict(w) for w in live],
            "alert": {
                "window": ALERT_WINDOW,
                "min_sessions": ALERT_MIN_SESSIONS,
                "negative": alert.negative,
            },
            "versions": [
                {
                    "model_version": v,
                    "first_session": min(by_version[v]).isoformat(),
                    "last_session": max(by_version[v]).isoformat(),
                    "windows": [asdict(w) for w in self.version_windows(v)],
                }
                for v in newest
            ],
            "sessions": days,
            "champion_challenger": self.gate_decisions(),
        }

    def gate_decisions(self, limit: int = 10) -> list[dict[str, Any]]:
        """The nightly gate's last verdicts (app.ai.champion), newest first."""
        with self._db.session() as session:
            runs = session.scalars(
                select(ModelRun).order_by(ModelRun.created_at.desc()).limit(limit * 3)
            ).all()
            found = [
                {**run.metrics["gate"], "at": run.created_at.isoformat()}
                for run in runs
                if isinstance(run.metrics, dict) and isinstance(run.metrics.get("gate"), dict)
            ]
        return found[:limit]

    # --------------------------------------------------------------------------- telling
    def _export(self) -> list[WindowIC]:
        """Gauges for the live series and for the version that served the latest session
        (older versions are not re-exported: one new version per retrain would pile up)."""
        live = [self.live_window(w) for w in WINDOWS]
        with self._db.session() as session:
            latest = session.scalar(
                select(ModelDailyIC.model_version)
                .where(ModelDailyIC.horizon_days == self._horizon, ModelDailyIC.live.is_(True))
                .order_by(ModelDailyIC.session_day.desc())
                .limit(1)
            )
        series: list[tuple[str, WindowIC]] = [(LIVE, w) for w in live]
        if latest is not None:
            series += [(latest, w) for w in self.version_windows(latest)]
        for version, w in series:
            if w.mean is not None:
                metrics.record_model_ic(version, w.window, w.mean, w.sessions)
        return live

    def _alert(self, before: WindowIC, after: WindowIC) -> str | None:
        """Once per transition: negative now and not before, or recovered."""
        t = f", t = {after.t_stat:+.2f}" if after.t_stat is not None else ""
        detail = (
            f"mean rank IC {_fmt(after.mean)} over the last {after.sessions} labelled sessions"
            f"{t} (horizon {self._horizon} session(s))"
        )
        if after.negative and not before.negative:
            title = "Model health: rolling rank IC turned negative"
            self._notifier.notify(title, detail, "warning")
            return "negative"
        if before.negative and not after.negative:
            self._notifier.notify("Model health: rolling rank IC positive again", detail, "info")
            return "recovered"
        return None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"
