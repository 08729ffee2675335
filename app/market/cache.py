"""An incremental cache of daily bars in the service's database.

A fetch asks the upstream source only for the days outside what is already covered, several
symbols per request, validates what arrives (bad bars are rejected with a logged, counted
reason) and stores the clean bars. Bars of a session that has not closed yet are served but never
stored, so a partial daily bar cannot stick.

Corporate actions: every incremental fetch also re-requests the last `overlap_sessions` stored
sessions; when upstream's closes there differ from the stored ones (beyond `tolerance`,
relative), a split or dividend has re-adjusted the history, and the symbol's whole cached
window is fetched again and replaces what was stored (logged, counted in
alpha_bars_readjusted_total, listed in `readjustments`).

Coverage ends at the last session whose bar actually arrived (and passed validation), so
sessions missing upstream (an outage, a feed gap, a bar rejected by validation) are asked for
again by the next fetch instead of being covered forever.

At a broad universe's size (650 symbols) nothing is done per symbol against the database or
upstream: coverage is read in one query, spans that differ a little (a symbol whose last bar
is older) are asked for in one upstream call when that costs fewer requests than it adds bars
(`merge_spans`), bars and coverage are written in bulk and read back in one query.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import delete, func, select, update

from app import metrics
from app.domain import BAR_COLUMNS, BarFrame, MarketData
from app.market.calendar import NyseCalendar
from app.market.sessions import CalendarSessions, SessionClock
from app.market.validation import DEFAULT_MAX_JUMP, validate_bars
from app.store.database import Database, dialect_insert, upsert
from app.store.orm import BarCoverage, BarRecord

log = logging.getLogger(__name__)

#: Stored sessions each incremental fetch asks for again, to notice re-adjusted history.
DEFAULT_OVERLAP_SESSIONS = 5
#: Relative difference of a close that counts as re-adjusted (float noise is ~1e-15; a
#: quarterly dividend of 0.1 % is 1e-3).
DEFAULT_TOLERANCE = 1e-5
#: Bars one more upstream request is worth: Alpaca's page (10,000 bars across symbols).
REQUEST_BARS = 10_000


@dataclass
class Span:
    """Symbols fetched together over [start, end]; `bars` is what they need on their own
    (sessions x symbols, summed over the spans merged into this one)."""

    start: date
    end: date
    symbols: list[str]
    bars: int
    merged: int = 1


@dataclass(frozen=True)
class Readjustment:
    """A symbol whose stored history upstream re-adjusted, and what was done about it."""

    symbol: str
    day: date
    stored_close: float
    upstream_close: float
    refetched_from: date
    refetched_to: date

    @property
    def kind(self) -> str:
        """ "split" for a large factor, else "dividend" (a small back-adjustment)."""
        ratio = self.upstream_close / self.stored_close
        return "split" if not 0.8 < ratio < 1.25 else "dividend"

    @property
    def reason(self) -> str:
        return (
            f"{self.symbol}: stored close {self.stored_close:.6g} on {self.day} is "
            f"{self.upstream_close:.6g} upstream (x{self.upstream_close / self.stored_close:.6g},"
            f" a {self.kind} re-adjusted the history): re-fetched {self.refetched_from} to "
            f"{self.refetched_to}"
        )


class CachedMarketData:
    """MarketData that reads through the database cache to an upstream source.

    `sessions` says which session last closed (paper/live: the broker's clock); without it
    the NYSE calendar at `now()` (default: the machine's clock) does.
    """

    def __init__(
        self,
        upstream: MarketData,
        db: Database,
        calendar: NyseCalendar | None = None,
        now: Callable[[], datetime] | None = None,
        *,
        sessions: SessionClock | None = None,
        overlap_sessions: int = DEFAULT_OVERLAP_SESSIONS,
        tolerance: float = DEFAULT_TOLERANCE,
        max_jump: float | None = DEFAULT_MAX_JUMP,
    ) -> None:
        self.upstream = upstream
        self._db = db
        self._calendar = calendar or NyseCalendar()
        self._sessions = sessions or CalendarSessions(self._calendar, now)
        self._overlap = max(overlap_sessions, 0)
        self._tolerance = tolerance
        self._max_jump = max_jump
        self.upstream_requests = 0
        self.readjustments: list[Readjustment] = []

    def get_latest_price(self, symbol: str) -> float:
        return self.upstream.get_latest_price(symbol)

    def last_closed_session(self) -> date:
        return self._sessions.last_closed_session()

    def get_daily_bars(self, symbols: Sequence[str], start: date, end: date) -> dict[str, BarFrame]:
        symbols = [s.upper() for s in symbols]
        last_closed = self.last_closed_session()
        cache_end = min(end, last_closed)
        if start <= cache_end:
            self._fill(symbols, start, cache_end)
        frames = self._read(symbols, start, cache_end)
        if end > last_closed:
            self._append_unclosed(frames, symbols, max(start, last_closed + timedelta(days=1)), end)
        return frames

    def _overlap_start(self, cover: BarCoverage) -> date:
        """The first of the last `overlap_sessions` sessions up to the coverage's end."""
        if self._overlap == 0:
            return cover.last_day + timedelta(days=1)
        back = cover.last_day - timedelta(days=self._overlap * 2 + 10)
        recent = self._calendar.sessions(back, cover.last_day)[-self._overlap :]
        return max(recent[0] if recent else cover.last_day, cover.first_day)

    def _fill(self, symbols: list[str], start: date, end: date) -> None:
        with self._db.session() as session:
            coverage = {
                c.symbol: (c.first_day, c.last_day, self._overlap_start(c))
                for c in session.scalars(select(BarCoverage).where(BarCoverage.symbol.in_(symbols)))
            }
        missing: dict[tuple[date, date], list[str]] = defaultdict(list)
        for symbol in dict.fromkeys(symbols):
            have = coverage.get(symbol)
            if have is None:
                missing[(start, end)].append(symbol)
                continue
            first_day, last_day, overlap_start = have
            if start < first_day:
                missing[(start, first_day - timedelta(days=1))].append(symbol)
            if end > last_day:
                missing[(min(overlap_start, end), end)].append(symbol)
        for span in merge_spans(missing, self._sessions_in):
            group = span.symbols
            self.upstream_requests += 1
            fetched = self.upstream.get_daily_bars(group, span.start, span.end)
            readjusted = self._readjusted(group, fetched, span.start, span.end)
            self._store([s for s in group if s not in readjusted], fetched, span.start)
            if readjusted:
                self._refetch(readjusted, span.end)

    def _sessions_in(self, start: date, end: date) -> int:
        return len(self._calendar.sessions(start, end))

    def _readjusted(
        self, symbols: list[str], fetched: dict[str, BarFrame], start: date, end: date
    ) -> dict[str, Readjustment]:
        """Symbols whose stored closes in [start, end] differ from the ones just fetched."""
        with self._db.session() as session:
            rows = session.execute(
                select(BarRecord.symbol, BarRecord.day, BarRecord.close).where(
                    BarRecord.symbol.in_(symbols), BarRecord.day.between(start, end)
                )
            ).all()
            first = dict(
                session.execute(
                    select(BarCoverage.symbol, BarCoverage.first_day).where(
                        BarCoverage.symbol.in_(symbols)
                    )
                ).all()
            )
        found: dict[str, Readjustment] = {}
        for symbol, day, stored in sorted(rows):
            frame = fetched.get(symbol)
            if symbol in found or frame is None or frame.empty:
                continue
            ts = pd.Timestamp(day)
            if ts not in frame.index:
                continue
            upstream = float(frame.at[ts, "close"])
            if abs(upstream - stored) > self._tolerance * abs(stored):
                found[symbol] = Readjustment(
                    symbol, day, float(stored), upstream, first.get(symbol, start), end
                )
        return found

    def _refetch(self, readjusted: dict[str, Readjustment], end: date) -> None:
        """Replace each re-adjusted symbol's cached window with a fresh copy from upstream."""
        by_start: dict[date, list[str]] = defaultdict(list)
        for symbol, found in readjusted.items():
            by_start[found.refetched_from].append(symbol)
            log.warning("re-adjusted history: %s", found.reason)
            metrics.record_bars_readjusted(found.kind)
            self.readjustments.append(found)
        for start, group in sorted(by_start.items()):
            self.upstream_requests += 1
            fetched = self.upstream.get_daily_bars(group, start, end)
            with self._db.session() as session:
                session.execute(
                    delete(BarRecord).where(
                        BarRecord.symbol.in_(group), BarRecord.day.between(start, end)
                    )
                )
                session.execute(delete(BarCoverage).where(BarCoverage.symbol.in_(group)))
            self._store(group, fetched, start)

    def _store(self, symbols: list[str], fetched: dict[str, BarFrame], start: date) -> None:
        """Upsert clean bars; coverage grows to `start` and to the last bar that arrived.

        A few statements whatever the number of symbols. Safe when processes fill the same
        span: upserts, and coverage only ever widened by one atomic statement per kind."""
        rows: list[dict[str, object]] = []
        received: dict[str, date] = {}
        for symbol in symbols:
            frame = fetched.get(symbol)
            if frame is None or frame.empty:
                continue
            clean = validate_bars(symbol, frame, self._calendar, self._max_jump).clean_frame
            if clean.empty:
                continue
            received[symbol] = clean.index[-1].date()
            values = clean[list(BAR_COLUMNS)].to_numpy(dtype=float)
            rows.extend(
                {
                    "symbol": symbol,
                    "day": ts.date(),
                    **dict(zip(BAR_COLUMNS, map(float, v), strict=True)),
                }
                for ts, v in zip(clean.index, values, strict=True)
            )
        with self._db.session() as session:
            dialect = session.get_bind().dialect.name
            for i in range(0, len(rows), 5000):
                session.execute(
                    upsert(dialect, BarRecord, ["symbol", "day"], list(BAR_COLUMNS)),
                    rows[i : i + 5000],
                )
            least, greatest = (
                (func.least, func.greatest) if dialect == "postgresql" else (func.min, func.max)
            )
            if received:
                statement = dialect_insert(dialect)(BarCoverage)
                session.execute(
                    statement.on_conflict_do_update(
                        index_elements=["symbol"],
                        set_={
                            "first_day": least(BarCoverage.first_day, statement.excluded.first_day),
                            "last_day": greatest(BarCoverage.last_day, statement.excluded.last_day),
                            "updated_at": statement.excluded.updated_at,
                        },
                    ),
                    [
                        {"symbol": s, "first_day": start, "last_day": last}
                        for s, last in received.items()
                    ],
                )
            empty = [s for s in symbols if s not in received]
            if empty:  # fetched, nothing arrived: the span before their bars is covered too
                session.execute(
                    update(BarCoverage)
                    .where(BarCoverage.symbol.in_(empty))
                    .values(first_day=least(BarCoverage.first_day, start))
                )

    def _read(self, symbols: list[str], start: date, end: date) -> dict[str, BarFrame]:
        """Every symbol's stored bars in [start, end] from one query."""
        columns = [getattr(BarRecord, c) for c in BAR_COLUMNS]
        with self._db.session() as session:
            rows = session.execute(
                select(BarRecord.symbol, BarRecord.day, *columns)
                .where(BarRecord.symbol.in_(symbols), BarRecord.day.between(start, end))
                .order_by(BarRecord.symbol, BarRecord.day)
            ).all()
        table = pd.DataFrame(rows, columns=["symbol", "date", *BAR_COLUMNS])
        index = pd.DatetimeIndex(pd.to_datetime(table["date"]), name="date").as_unit("ns")
        values = table[list(BAR_COLUMNS)].to_numpy(dtype=float)
        runs = _runs(table["symbol"].to_numpy(dtype=str))
        frames: dict[str, BarFrame] = {}
        for symbol in symbols:
            lo, hi = runs.get(symbol, (0, 0))
            frames[symbol] = pd.DataFrame(
                values[lo:hi], index=index[lo:hi], columns=list(BAR_COLUMNS)
            )
        return frames

    def _append_unclosed(
        self, frames: dict[str, BarFrame], symbols: list[str], start: date, end: date
    ) -> None:
        self.upstream_requests += 1
        live = self.upstream.get_daily_bars(symbols, start, end)
        for symbol in symbols:
            extra = live.get(symbol)
            if extra is not None and not extra.empty:
                frames[symbol] = pd.concat([frames[symbol], extra[list(BAR_COLUMNS)]])


def _runs(grouped: Any) -> dict[str, tuple[int, int]]:
    """[first, end) positions of each key in an array whose equal keys are contiguous (as
    ORDER BY leaves them, whatever the database's collation)."""
    keys, first, counts = np.unique(grouped, return_index=True, return_counts=True)
    return {str(k): (int(i), int(i + n)) for k, i, n in zip(keys, first, counts, strict=True)}


def merge_spans(
    missing: dict[tuple[date, date], list[str]], sessions: Callable[[date, date], int]
) -> list[Span]:
    """The fetches to make: spans taken in order of start, each merged into the one before
    when the bars the merge adds stay under a request's worth for every request it saves.

    On a broad universe most symbols lack the same few sessions, but a symbol whose last bar
    is older (a halt, a delisting, a rejected bar) lacks a span of its own; fetched apart,
    each costs a request. Widening a span only re-reads sessions already stored, which the
    re-adjustment check compares anyway.
    """
    out: list[Span] = []
    for (start, end), symbols in sorted(missing.items()):
        own = sessions(start, end) * len(symbols)
        if out:
            last = out[-1]
            merged = Span(
                last.start,
                max(last.end, end),
                list(dict.fromkeys([*last.symbols, *symbols])),
                last.bars + own,
                last.merged + 1,
            )
            wider = sessions(merged.start, merged.end) * len(merged.symbols)
            if wider - merged.bars <= (merged.merged - 1) * REQUEST_BARS:
                out[-1] = merged
                continue
        out.append(Span(start, end, list(symbols), own))
    return out
