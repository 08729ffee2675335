"""Sim mode's broker: a SimBroker whose book lives in the database.

gunicorn workers and Celery workers are separate processes; keeping the book in one row, read
and written under an exclusive lock, makes them all trade against one exchange. The exchange
also holds the replay session: prices are the closes of that session, and `advance()` moves it
one NYSE session on (one per trading cycle in sim mode).

The replay session is the last *closed* session: decisions see its bars and queue their orders
for the next open. `open_next()` moves to the next session and fills them at its open
(`SimBroker.process_pending`), the guard places the protective exits, and `close_session()`
fills those from the session's open, high and low (`SimBroker.process_protective`) and marks at
its close: the backtest's execution model, on the same SimBroker code.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Protocol, TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app.broker.costs import CommissionModel, SlippageModel
from app.broker.sim import SimBroker
from app.domain import (
    Account,
    BarFrame,
    Fill,
    MarketClock,
    Order,
    OrderRequest,
    Position,
    ProtectiveRequest,
    TradingSession,
)
from app.market.calendar import NyseCalendar, ReplayClock
from app.store.database import Database
from app.store.orm import SimExchangeState

T = TypeVar("T")
ROW_ID = 1
OPEN_PHASE = "open"


def _phase(row: SimExchangeState) -> str:
    return str((row.book or {}).get("phase", "closed"))


class ReplayableMarketData(Protocol):
    def get_latest_price(self, symbol: str) -> float: ...

    def get_daily_bars(
        self, symbols: Sequence[str], start: date, end: date
    ) -> dict[str, BarFrame]: ...

    def set_as_of(self, value: date | None) -> None: ...


class SimExchange:
    """domain.Broker for sim mode; every call is one transaction on the shared book."""

    def __init__(
        self,
        db: Database,
        market: ReplayableMarketData,
        *,
        start_session: date,
        starting_cash: float,
        commission_bps: float,
        slippage_bps: float,
        calendar: NyseCalendar | None = None,
    ) -> None:
        self._db = db
        self._market = market
        self._calendar = calendar or NyseCalendar()
        self._start = self._calendar.session_on_or_after(start_session)
        self._starting_cash = starting_cash
        self._commission = CommissionModel(bps=commission_bps)
        self._slippage = SlippageModel(bps=slippage_bps)

    # -- domain.Broker -------------------------------------------------------------------------
    def get_account(self) -> Account:
        return self._run(lambda b: self._marked(b).get_account(), write=False)

    def get_positions(self) -> list[Position]:
        return self._run(lambda b: self._marked(b).get_positions(), write=False)

    def get_open_orders(self) -> list[Order]:
        return self._run(lambda b: b.get_open_orders(), write=False)

    def submit_market_order(self, request: OrderRequest) -> Order:
        return self._run(lambda b: b.submit_market_order(request), write=True)

    def submit_protective_order(self, request: ProtectiveRequest) -> Order:
        return self._run(lambda b: b.submit_protective_order(request), write=True)

    def get_order_by_client_id(self, client_order_id: str) -> Order | None:
        return self._run(lambda b: b.get_order_by_client_id(client_order_id), write=False)

    def cancel_order(self, client_order_id: str) -> None:
        self._run(lambda b: b.cancel_order(client_order_id), write=True)

    def close_position(self, symbol: str, client_order_id: str) -> Order:
        return self._run(lambda b: b.close_position(symbol, client_order_id), write=True)

    def is_fractionable(self, symbol: str) -> bool:
        return self._run(lambda b: b.is_fractionable(symbol), write=False)

    def get_clock(self) -> MarketClock:
        return self._run(lambda b: b.get_clock(), write=False)

    def get_calendar(self, start: date, end: date) -> list[TradingSession]:
        return self._calendar.trading_sessions(start, end)

    # -- replay --------------------------------------------------------------------------------
    def latest_price(self, symbol: str) -> float:
        """The close of the replay session: what a market order would fill at now."""
        with self._locked() as (_session, row):
            self._market.set_as_of(row.session_day)
            return self._market.get_latest_price(symbol)

    def session(self) -> date:
        with self._locked() as (_session, row):
            return row.session_day

    def now(self) -> datetime:
        """The replay instant: the close of the replay session (the open while mid-session)."""
        with self._locked() as (_session, row):
            if _phase(row) == OPEN_PHASE:
                return self._calendar.session_open(row.session_day)
            return self._calendar.session_close(row.session_day)

    def is_mid_session(self) -> bool:
        """True between open_next() and close_session() (a tick that died in between)."""
        with self._locked() as (_session, row):
            return _phase(row) == OPEN_PHASE

    def open_next(self, from_session: date | None = None) -> date:
        """Move to the next session and fill the queued orders at its open. The equity at the
        last close becomes the session's start-of-day equity (Alpaca's last_equity), the base
        of the daily-loss rule. With `from_session`, only a replay still at that session moves
        (a tick run twice for one session opens the next once)."""
        with self._locked() as (_session, row):
            if (from_session is not None and row.session_day != from_session) or _phase(
                row
            ) == OPEN_PHASE:
                return row.session_day
            day = self._calendar.next_session(row.session_day)
            broker = self._broker(row, at=day)  # fills stamped at the session they happen in
            self._mark(broker)
            broker.start_day()
            bars = self._session_bars(broker, day)
            broker.process_pending({s: o for s, (o, _h, _l, _c) in bars.items()})
            row.session_day = day
            row.book = {**broker.to_state(), "phase": OPEN_PHASE}
            return day

    def close_session(self, day: date) -> None:
        """Fill the protective exits the session's range reaches; mark at its close."""
        with self._locked() as (_session, row):
            if row.session_day != day or _phase(row) != OPEN_PHASE:
                return
            broker = self._broker(row)
            bars = self._session_bars(broker, day)
            broker.process_protective({s: (o, h, lo) for s, (o, h, lo, _c) in bars.items()})
            self._mark(broker)
            row.book = broker.to_state()

    def _session_bars(
        self, broker: SimBroker, day: date
    ) -> dict[str, tuple[float, float, float, float]]:
        """(open, high, low, close) of `day` for every symbol held or ordered."""
        symbols = sorted(
            {p.symbol for p in broker.get_positions()}
            | {o.symbol for o in broker.get_open_orders()}
        )
        if not symbols:
            return {}
        self._market.set_as_of(day)
        frames = self._market.get_daily_bars(symbols, day, day)
        out = {}
        for symbol, frame in frames.items():
            if len(frame):
                bar = frame.iloc[-1]
                out[symbol] = (
                    float(bar["open"]),
                    float(bar["high"]),
                    float(bar["low"]),
                    float(bar["close"]),
                )
        return out

    def fills(self) -> list[Fill]:
        """Every fill of the book, oldest first, stamped with the replay session's close."""
        return self._run(lambda b: b.fills, write=False)

    def reset(self) -> None:
        """Start again from the first session with the starting cash."""
        with self._locked() as (session, row):
            session.delete(row)

    # -- internals -----------------------------------------------------------------------------
    def _run(self, action: Callable[[SimBroker], T], *, write: bool) -> T:
        with self._locked() as (_session, row):
            broker = self._broker(row)
            result = action(broker)
            if write:
                row.book = {**broker.to_state(), "phase": _phase(row)}
            return result

    def _broker(self, row: SimExchangeState, at: date | None = None) -> SimBroker:
        self._market.set_as_of(row.session_day)
        broker = SimBroker(
            self._market.get_latest_price,
            starting_cash=self._starting_cash,
            clock=ReplayClock(at or row.session_day, calendar=self._calendar),
            calendar=self._calendar,
            commission=self._commission,
            slippage=self._slippage,
        )
        if row.book:
            broker.load_state(row.book)
        return broker

    def _mark(self, broker: SimBroker) -> None:
        held = [p.symbol for p in broker.get_positions()]
        broker.mark({symbol: self._market.get_latest_price(symbol) for symbol in held})

    def _marked(self, broker: SimBroker) -> SimBroker:
        """The broker with its positions marked at the replay session's prices."""
        self._mark(broker)
        return broker

    @contextmanager
    def _locked(self) -> Iterator[tuple[Session, SimExchangeState]]:
        with _process_lock(self._db), self._db.session() as session:
            row = session.get(SimExchangeState, ROW_ID, with_for_update=True)
            if row is None:
                row = SimExchangeState(id=ROW_ID, session_day=self._start, book=None)
                session.add(row)
                session.flush()
            yield session, row


@contextmanager
def _process_lock(db: Database) -> Iterator[None]:
    """SQLite ignores SELECT ... FOR UPDATE; a file lock beside the database file serialises
    the processes of one machine instead (SQLite implies one machine)."""
    url = make_url(str(db.engine.url))
    if url.get_backend_name() != "sqlite" or not url.database:
        yield
        return
    lock_path = Path(f"{url.database}.sim-exchange.lock")
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
