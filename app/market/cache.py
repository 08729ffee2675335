"""An incremental cache of daily bars in the service's database.

A fetch asks the upstream source only for the days outside what is already covered, several
symbols per request, validates what arrives (bad bars are rejected with a logged, counted
reason) and stores the clean bars. Bars of a session that has not closed yet are served but never
stored, so a partial daily bar cannot stick.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from app.domain import BAR_COLUMNS, BarFrame, MarketData
from app.market.calendar import NyseCalendar
from app.market.validation import validate_bars
from app.store.database import Database
from app.store.orm import BarCoverage, BarRecord

log = logging.getLogger(__name__)


class CachedMarketData:
    """MarketData that reads through the database cache to an upstream source."""

    def __init__(
        self,
        upstream: MarketData,
        db: Database,
        calendar: NyseCalendar | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.upstream = upstream
        self._db = db
        self._calendar = calendar or NyseCalendar()
        self._now = now or (lambda: datetime.now(UTC))
        self.upstream_requests = 0

    def get_latest_price(self, symbol: str) -> float:
        return self.upstream.get_latest_price(symbol)

    def get_daily_bars(self, symbols: Sequence[str], start: date, end: date) -> dict[str, BarFrame]:
        symbols = [s.upper() for s in symbols]
        last_closed = self._last_closed_session()
        cache_end = min(end, last_closed)
        if start <= cache_end:
            self._fill(symbols, start, cache_end)
        frames = self._read(symbols, start, cache_end)
        if end > last_closed:
            self._append_unclosed(frames, symbols, max(start, last_closed + timedelta(days=1)), end)
        return frames

    def _last_closed_session(self) -> date:
        now = self._now()
        day = self._calendar.session_on_or_before(now.date())
        if self._calendar.session_close(day) > now:
            day = self._calendar.previous_session(day)
        return day

    def _fill(self, symbols: list[str], start: date, end: date) -> None:
        with self._db.session() as session:
            coverage = {
                c.symbol: c
                for c in session.scalars(select(BarCoverage).where(BarCoverage.symbol.in_(symbols)))
            }
        missing: dict[tuple[date, date], list[str]] = defaultdict(list)
        for symbol in symbols:
            have = coverage.get(symbol)
            if have is None:
                missing[(start, end)].append(symbol)
                continue
            if start < have.first_day:
                missing[(start, have.first_day - timedelta(days=1))].append(symbol)
            if end > have.last_day:
                missing[(have.last_day + timedelta(days=1), end)].append(symbol)
        for (span_start, span_end), group in sorted(missing.items()):
            self.upstream_requests += 1
            fetched = self.upstream.get_daily_bars(group, span_start, span_end)
            self._store(group, fetched, span_start, span_end)

    def _store(
        self, symbols: list[str], fetched: dict[str, BarFrame], start: date, end: date
    ) -> None:
        """Upsert clean bars and widen coverage; safe when processes fill the same span."""
        rows: list[dict[str, object]] = []
        for symbol in symbols:
            frame = fetched.get(symbol)
            if frame is None or frame.empty:
                continue
            clean = validate_bars(symbol, frame, self._calendar).clean_frame
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
                    _upsert(dialect, BarRecord, ["symbol", "day"], list(BAR_COLUMNS)),
                    rows[i : i + 5000],
                )
            for symbol in symbols:
                session.execute(
                    _upsert(dialect, BarCoverage, ["symbol"], []),
                    [{"symbol": symbol, "first_day": start, "last_day": end}],
                )
                cover = session.get(
                    BarCoverage, symbol, with_for_update=True, populate_existing=True
                )
                if cover is not None:
                    cover.first_day = min(cover.first_day, start)
                    cover.last_day = max(cover.last_day, end)

    def _read(self, symbols: list[str], start: date, end: date) -> dict[str, BarFrame]:
        frames: dict[str, BarFrame] = {}
        with self._db.session() as session:
            rows = session.execute(
                select(BarRecord)
                .where(BarRecord.symbol.in_(symbols), BarRecord.day.between(start, end))
                .order_by(BarRecord.symbol, BarRecord.day)
            ).scalars()
            by_symbol: dict[str, list[BarRecord]] = defaultdict(list)
            for row in rows:
                by_symbol[row.symbol].append(row)
        for symbol in symbols:
            frames[symbol] = to_frame(by_symbol.get(symbol, []))
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


def _upsert(dialect: str, model: type, keys: list[str], update: list[str]) -> Any:
    """INSERT ... ON CONFLICT for PostgreSQL and SQLite: update `update`, or do nothing."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(model)
    if not update:
        return statement.on_conflict_do_nothing(index_elements=keys)
    return statement.on_conflict_do_update(
        index_elements=keys, set_={col: statement.excluded[col] for col in update}
    )


def to_frame(rows: Sequence[BarRecord]) -> BarFrame:
    index = pd.DatetimeIndex([pd.Timestamp(r.day) for r in rows], name="date").as_unit("ns")
    data = {col: [float(getattr(r, col)) for r in rows] for col in BAR_COLUMNS}
    return pd.DataFrame(data, index=index, columns=list(BAR_COLUMNS), dtype=float)
