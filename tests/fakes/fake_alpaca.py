"""A loopback fake of the Alpaca trading and market-data REST APIs.

It is a real HTTP server (so the real alpaca-py, its `requests` session and our timeouts are all
exercised) answering the JSON that alpaca-py 0.44 parses (see /work/shared/ALPACA_NOTES.md). It
keeps a small book (cash, positions, orders) that tests read directly, counts requests per route
and injects faults on demand:

    with FakeAlpaca() as fake:
        fake.inject("POST /v2/orders", "504_after_accept")
        broker = AlpacaBroker("k", "s", base_url=fake.base_url, ...)

Fault kinds (`FAULT_KINDS`): "429" (with X-RateLimit-* headers, Reset ~1 s ahead), "500",
"504", "504_after_accept" (the request is processed and booked, then answered 504), "hang"
(sleeps `hang_seconds`, longer than any client timeout, then drops; wakes at stop()),
"hang_after_accept", "drop" (closes the connection without an answer), "drop_after_accept"
and "partial" (an order fills only `partial_fraction` of its quantity). Routes are
"METHOD /path" with fnmatch wildcards, e.g. "GET /v2/positions/*".

Market orders fill at once at `price(symbol)` while the clock says the market is open (the
settable price, else the last close on or before `today`), or wait as "new" for
`fill_open_orders()` when it is closed. Bars, prices and the calendar come from the CSV
directory (default: ../shared/data/daily beside the repository); nothing after `today` is served.

As at Alpaca, a sell needing shares that open sells hold is refused (403 "insufficient qty
available"), OPG orders are refused from 09:28 to the open, and with `pending_cancel_reads` set
a cancel stays `pending_cancel` (open, its shares held) for that many reads of the order.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import csv
import fnmatch
import functools
import json
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo

NY = ZoneInfo("America/New_York")
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = (REPO_ROOT / ".." / "shared" / "data" / "daily").resolve()

FAULT_KINDS = frozenset(
    {
        "429",
        "500",
        "504",
        "504_after_accept",
        "hang",
        "hang_after_accept",
        "drop",
        "drop_after_accept",
        "partial",
    }
)
DUPLICATE_CLIENT_ORDER_ID = {"code": 40010001, "message": "client_order_id must be unique"}
_NAMESPACE = uuid.UUID("6f1c1a52-6f0b-4c55-9a43-3f0c5a1e0b7d")

Json = dict[str, Any] | list[Any] | None


class _HttpError(Exception):
    """Raised inside a route to answer `status` with a JSON error body."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"code": code, "message": message}


@dataclass
class FakeOrder:
    """One order in the fake's book (what tests inspect)."""

    id: str
    client_order_id: str
    symbol: str
    side: str
    qty: float | None
    notional: float | None
    status: str
    created_at: datetime
    time_in_force: str = "day"
    filled_qty: float = 0.0
    filled_avg_price: float | None = None
    filled_at: datetime | None = None
    canceled_at: datetime | None = None
    updated_at: datetime | None = None
    order_type: str = "market"
    order_class: str = "simple"
    limit_price: float | None = None
    stop_price: float | None = None
    #: An OCO's stop leg (the parent is the take-profit limit), as Alpaca nests it.
    legs: list[FakeOrder] = field(default_factory=list)
    parent_id: str | None = None
    #: Reads of this order still to come before a pending cancel is confirmed.
    reads_until_canceled: int = 0

    @property
    def is_open(self) -> bool:
        # pending_cancel is still open at Alpaca: it can fill and its shares stay held.
        return self.status in (
            "new",
            "accepted",
            "partially_filled",
            "pending_new",
            "pending_cancel",
        )

    def to_json(self, *, nested: bool = True) -> dict[str, Any]:
        """The order as Alpaca answers it; its legs only in a `nested` read (else null)."""
        updated = self.updated_at or self.created_at
        return {
            "id": self.id,
            "client_order_id": self.client_order_id,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(updated),
            "submitted_at": _iso(self.created_at),
            "filled_at": _iso(self.filled_at) if self.filled_at else None,
            "expired_at": None,
            "canceled_at": _iso(self.canceled_at) if self.canceled_at else None,
            "failed_at": None,
            "replaced_at": None,
            "replaced_by": None,
            "replaces": None,
            "asset_id": str(_asset_id(self.symbol)),
            "symbol": self.symbol,
            "asset_class": "us_equity",
            "notional": _num(self.notional) if self.notional is not None else None,
            "qty": _num(self.qty) if self.qty is not None else None,
            "filled_qty": _num(self.filled_qty),
            "filled_avg_price": (
                _num(self.filled_avg_price) if self.filled_avg_price is not None else None
            ),
            "order_class": self.order_class,
            "order_type": self.order_type,
            "type": self.order_type,
            "side": self.side,
            "time_in_force": self.time_in_force,
            "limit_price": _num(self.limit_price) if self.limit_price is not None else None,
            "stop_price": _num(self.stop_price) if self.stop_price is not None else None,
            "status": self.status,
            "extended_hours": False,
            "legs": ([leg.to_json() for leg in self.legs] or None) if nested else None,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
        }


@dataclass
class FakePosition:
    symbol: str
    qty: float
    avg_entry_price: float


@dataclass
class _Fault:
    kind: str
    remaining: int


@dataclass
class _Bars:
    days: list[date] = field(default_factory=list)
    rows: list[tuple[float, float, float, float, float]] = field(default_factory=list)


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _num(x: float) -> str:
    """Alpaca sends numbers as strings; up to 9 decimals, no trailing zeros."""
    text = f"{x:.9f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def _nested(query: dict[str, str]) -> bool:
    """The `nested` flag as Alpaca parses booleans (alpaca-py sends "True")."""
    return query.get("nested", "").lower() in ("true", "t", "1")


def _asset_id(symbol: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, symbol)


@functools.cache
def _load_bars(path: Path) -> _Bars:
    """Parse one CSV once per test session (many fakes share it)."""
    bars = _Bars()
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            bars.days.append(date.fromisoformat(row["date"]))
            bars.rows.append(
                (
                    float(row["open"]),
                    float(row["high"]),
                    float(row["low"]),
                    float(row["close"]),
                    float(row["volume"]),
                )
            )
    return bars


@functools.cache
def _load_sessions(data_dir: Path) -> tuple[date, ...]:
    """Every date present in any CSV of the directory: the fake's exchange calendar."""
    days: set[date] = set()
    for path in sorted(data_dir.glob("*.csv")):
        days.update(_load_bars(path).days)
    return tuple(sorted(days))


def _midnight(day: date) -> datetime:
    """A daily bar's timestamp: the session's date at midnight New York."""
    return datetime.combine(day, dtime(0), NY)


def _parse_ts(text: str) -> datetime:
    """ISO date or datetime from a query string; naive means UTC (as alpaca-py sends)."""
    text = text.strip().replace("Z", "+00:00").replace(" ", "+")
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), dtime(0), NY)
    ts = datetime.fromisoformat(text)
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeAlpaca


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections give up after this, so handler threads never linger.
    timeout = 5
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr log."""

    def do_GET(self) -> None:
        self.server.fake._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.fake._handle(self, "POST")

    def do_DELETE(self) -> None:
        self.server.fake._handle(self, "DELETE")

    def do_PATCH(self) -> None:
        self.server.fake._handle(self, "PATCH")


class FakeAlpaca:
    """Loopback Alpaca: start()/stop() or use as a context manager; `base_url` once started."""

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        cash: float = 100_000.0,
        today: date | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
        hang_seconds: float = 30.0,
        partial_fraction: float = 0.5,
        max_page_size: int = 10_000,
        rate_limit: tuple[int, float] | None = None,
        rate_limit_reset_seconds: float = 1.0,
        quote_spread: float = 0.001,
        commission_bps: float = 0.0,
        slippage_bps: float = 0.0,
        margin_multiplier: float = 1.0,
        premarket_marks: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
        if not self.data_dir.is_dir():
            raise FileNotFoundError(f"bars directory not found: {self.data_dir}")
        self.api_key = api_key
        self.api_secret = api_secret
        self.hang_seconds = hang_seconds
        self.partial_fraction = partial_fraction
        #: Bars per page at most, whatever `limit` the client asks for (forces pagination).
        self.max_page_size = max_page_size
        #: Server-side budget (requests, seconds); beyond it the fake answers 429 by itself.
        self.rate_limit = rate_limit
        self.rate_limit_reset_seconds = rate_limit_reset_seconds
        self.quote_spread = quote_spread
        #: Like Alpaca's free plan when set: SIP bars are served only once this old, a
        #: feed=sip request ending later is refused (403). None: no such limit.
        self.sip_delay: timedelta | None = None
        #: Charged on session-stepped and immediate fills, like the backtest's cost models.
        self.commission_bps = commission_bps
        self.slippage_bps = slippage_bps
        #: Like a real Alpaca margin account (2: Reg-T): `buying_power` and `regt_buying_power`
        #: are that multiple of the equity not already used by positions and open buys; only
        #: `non_marginable_buying_power` is cash. 1: a cash account (the default).
        self.margin_multiplier = margin_multiplier
        #: Like real Alpaca before the open: `pre_open` marks holdings at a pre-market trade
        #: (the day's open), so the account's equity and a position's current_price are not
        #: the last close. False: marked at the last close (the backtest's own assumption).
        self.premarket_marks = premarket_marks
        #: Session stepping (pre_open/open_session/close_session): the last session whose bar
        #: is served (never an unfinished one) and the prices positions are marked at.
        self.horizon: date | None = None
        self.marks: dict[str, float] = {}

        self.lock = threading.RLock()
        self.account_id = str(uuid.uuid5(_NAMESPACE, "account"))
        self.cash = float(cash)
        self.last_equity = float(cash)
        self.positions: dict[str, FakePosition] = {}
        self.orders: dict[str, FakeOrder] = {}
        self.orders_by_client_id: dict[str, str] = {}
        self.prices: dict[str, float] = {}
        self.untradable: set[str] = set()
        #: Assets Alpaca trades in whole shares only: fractional orders are rejected (422).
        self.non_fractionable: set[str] = set()
        self.early_closes: dict[date, str] = {}
        #: Rewrites what the bars route serves (tests/fakes/corporate_actions.py): (symbol,
        #: the CSV's bars, today) -> the bars to serve.
        self.bars_hook: Callable[[str, _Bars, date], _Bars] | None = None
        self.request_counts: Counter[str] = Counter()
        #: (unix time, "METHOD /path") of every request, in arrival order.
        self.request_log: list[tuple[float, str]] = []
        #: ("METHOD /path", query parameters) of every request, in arrival order.
        self.request_queries: list[tuple[str, dict[str, str]]] = []
        self.rate_limited = 0
        #: Pending-cancel mode, as real Alpaca: a cancel leaves the order (and its legs)
        #: `pending_cancel`, still open and holding its shares, until the order has been read
        #: this many times (by id, by client id or in a list); 0 cancels at once. A huge
        #: number never confirms.
        self.pending_cancel_reads = 0
        #: Symbols whose orders refuse to be cancelled (422 "order is not cancelable").
        self.refuse_cancel: set[str] = set()
        #: Called with "METHOD /path" after each request was handled (e.g. to move the clock
        #: at a chosen point of a cycle).
        self.on_request: Callable[[str], None] | None = None

        self._faults: list[tuple[str, _Fault]] = []
        self._sessions = _load_sessions(self.data_dir)
        if not self._sessions:
            raise FileNotFoundError(f"no CSV files in {self.data_dir}")
        self.today = today or self._sessions[-1]
        self._clock_ts: datetime | None = None
        self._clock_open: bool | None = None
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeAlpaca:
        """Bind 127.0.0.1 on a free port and serve in a daemon thread."""
        if self._server is not None:
            return self
        self._stop.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-alpaca",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; hanging handlers wake up and drop their connections."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeAlpaca:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test API

    def inject(self, route: str, kind: str, times: int = 1) -> None:
        """Make the next `times` requests matching `route` ("POST /v2/orders") fail as `kind`."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(FAULT_KINDS)}")
        if times < 1:
            raise ValueError("times must be at least 1")
        method, _, path = route.partition(" ")
        if not method or not path.startswith("/"):
            raise ValueError(f"route must look like 'GET /v2/account', got {route!r}")
        with self.lock:
            self._faults.append((f"{method.upper()} {path}", _Fault(kind, times)))

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def count(self, route: str) -> int:
        """Requests received for `route` (fnmatch pattern allowed)."""
        with self.lock:
            return sum(n for r, n in self.request_counts.items() if fnmatch.fnmatchcase(r, route))

    def reset_counts(self) -> None:
        with self.lock:
            self.request_counts.clear()
            self.request_log.clear()
            self.request_queries.clear()
            self.rate_limited = 0

    def set_price(self, symbol: str, price: float) -> None:
        with self.lock:
            self.prices[symbol.upper()] = float(price)

    def clear_price(self, symbol: str) -> None:
        with self.lock:
            self.prices.pop(symbol.upper(), None)

    def price(self, symbol: str) -> float | None:
        """The fill/last-trade price: the settable one, else the last close up to `today`."""
        symbol = symbol.upper()
        with self.lock:
            if symbol in self.prices:
                return self.prices[symbol]
            if symbol in self.marks:
                return self.marks[symbol]
        bars = self._bars(symbol)
        if bars is None:
            return None
        idx = bisect.bisect_right(bars.days, self.horizon or self.today)
        return bars.rows[idx - 1][3] if idx else None

    def set_today(self, day: date) -> None:
        """Move the data horizon; the clock follows (10:00 New York that day) unless set."""
        with self.lock:
            self.today = day
            self.horizon = None
            self._clock_ts = None
            self._clock_open = None

    def set_clock(self, timestamp: datetime, is_open: bool | None = None) -> None:
        """Pin the clock (tz-aware); `today` becomes its New York date. is_open defaults to
        whether the timestamp falls inside that day's session."""
        if timestamp.tzinfo is None:
            raise ValueError("timestamp must be timezone-aware")
        with self.lock:
            self._clock_ts = timestamp
            self._clock_open = is_open
            self.today = timestamp.astimezone(NY).date()

    def set_early_close(self, day: date, close: str = "13:00") -> None:
        with self.lock:
            self.early_closes[day] = close

    def set_position(self, symbol: str, qty: float, avg_entry_price: float) -> None:
        with self.lock:
            symbol = symbol.upper()
            if qty == 0:
                self.positions.pop(symbol, None)
            else:
                self.positions[symbol] = FakePosition(symbol, float(qty), float(avg_entry_price))

    def orders_for_client_id(self, client_order_id: str) -> list[FakeOrder]:
        """Every booked order carrying that client id (the dedup invariant says at most one)."""
        with self.lock:
            return [o for o in self.orders.values() if o.client_order_id == client_order_id]

    def order_by_client_id(self, client_order_id: str) -> FakeOrder | None:
        with self.lock:
            oid = self.orders_by_client_id.get(client_order_id)
            return self.orders[oid] if oid else None

    def fill_open_orders(self) -> int:
        """Fill what is left of every open order at the current price; returns how many."""
        n = 0
        with self.lock:
            for order in self.orders.values():
                if order.is_open:
                    self._fill(order, fraction=1.0)
                    n += 1
        return n

    def now(self) -> datetime:
        with self.lock:
            if self._clock_ts is not None:
                return self._clock_ts
            return datetime.combine(self.today, dtime(10, 0), NY)

    def is_open(self) -> bool:
        with self.lock:
            if self._clock_open is not None:
                return self._clock_open
            ts = self.now()
        session = self._session(ts.astimezone(NY).date())
        return session is not None and session[0] <= ts < session[1]

    def equity(self) -> float:
        with self.lock:
            return self.cash + sum(
                p.qty * (self.price(p.symbol) or p.avg_entry_price) for p in self.positions.values()
            )

    # ------------------------------------------------------------------ HTTP plumbing

    def _handle(self, h: _Handler, method: str) -> None:
        parts = urlsplit(h.path)
        path = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        route = f"{method} {path}"
        with self.lock:
            self.request_counts[route] += 1
            self.request_log.append((time.time(), route))
            self.request_queries.append((route, query))
            fault = self._take_fault(route)
            limited = fault is None and self._over_rate_limit()
        if fault in ("drop", "hang"):
            self._hang_then_drop(h, hang=fault == "hang")
            return
        if fault == "429" or limited:
            self._send(h, 429, {"code": 42910000, "message": "rate limit exceeded"}, limit=True)
            return
        if fault in ("500", "504"):
            status = int(fault)
            self._send(h, status, {"code": status * 100000, "message": "internal server error"})
            return
        try:
            self._check_auth(h)
            status, payload = self._route(method, path, query, raw, partial=fault == "partial")
        except _HttpError as err:
            status, payload = err.status, err.body
        except Exception as exc:  # a bug in the fake must still answer JSON
            status, payload = 500, {"code": 50000000, "message": f"fake error: {exc!r}"}
        if self.on_request is not None:  # before answering: the client sees its effect
            self.on_request(route)
        if fault == "504_after_accept":
            self._send(h, 504, {"code": 50400000, "message": "gateway timeout"})
        elif fault in ("hang_after_accept", "drop_after_accept"):
            self._hang_then_drop(h, hang=fault == "hang_after_accept")
        else:
            self._send(h, status, payload)

    def _take_fault(self, route: str) -> str | None:
        for pattern, fault in self._faults:
            if fault.remaining > 0 and fnmatch.fnmatchcase(route, pattern):
                fault.remaining -= 1
                return fault.kind
        self._faults = [(p, f) for p, f in self._faults if f.remaining > 0]
        return None

    def _over_rate_limit(self) -> bool:
        if self.rate_limit is None:
            return False
        limit, window = self.rate_limit
        now = time.time()
        recent = sum(1 for t, _ in self.request_log if t > now - window)
        if recent > limit:
            self.rate_limited += 1
            return True
        return False

    def _hang_then_drop(self, h: _Handler, *, hang: bool) -> None:
        if hang:
            self._stop.wait(self.hang_seconds)
        h.close_connection = True
        with contextlib.suppress(OSError):
            h.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, h: _Handler, status: int, payload: Json, *, limit: bool = False) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        try:
            h.send_response(status)
            if payload is not None:
                h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            if limit:
                reset = int(time.time() + self.rate_limit_reset_seconds)
                h.send_header(
                    "X-RateLimit-Limit", str(self.rate_limit[0] if self.rate_limit else 200)
                )
                h.send_header("X-RateLimit-Remaining", "0")
                h.send_header("X-RateLimit-Reset", str(reset))
            h.end_headers()
            if data:
                h.wfile.write(data)
        except OSError:
            h.close_connection = True  # the client gave up (timeout); nothing to answer

    def _check_auth(self, h: _Handler) -> None:
        key = h.headers.get("APCA-API-KEY-ID")
        secret = h.headers.get("APCA-API-SECRET-KEY")
        if not key or not secret:
            raise _HttpError(401, 40110000, "request is not authorized")
        if (self.api_key is not None and key != self.api_key) or (
            self.api_secret is not None and secret != self.api_secret
        ):
            raise _HttpError(401, 40110000, "request is not authorized")

    _ORDER_ID = re.compile(r"^/v2/orders/([^/:]+)$")
    _POSITION = re.compile(r"^/v2/positions/([^/]+)$")
    _ASSET = re.compile(r"^/v2/assets/([^/]+)$")

    def _route(
        self, method: str, path: str, query: dict[str, str], raw: bytes, *, partial: bool
    ) -> tuple[int, Json]:
        if method == "GET":
            simple = {
                "/v2/account": self._get_account,
                "/v2/positions": self._get_positions,
                "/v2/clock": self._get_clock,
                "/v2/orders:by_client_order_id": self._get_order_by_client_id,
                "/v2/orders": self._get_orders,
                "/v2/calendar": self._get_calendar,
                "/v2/assets": self._get_assets,
                "/v2/stocks/bars": self._get_bars,
                "/v2/stocks/trades/latest": self._get_latest_trades,
                "/v2/stocks/quotes/latest": self._get_latest_quotes,
            }
            if path in simple:
                return 200, simple[path](query)
            if m := self._ORDER_ID.match(path):
                order = self._read_order(self._find_order(m.group(1)))
                return 200, order.to_json(nested=_nested(query))
            if m := self._POSITION.match(path):
                return 200, self._position_json(self._find_position(m.group(1)))
            if m := self._ASSET.match(path):
                return 200, self._get_asset(m.group(1))
        elif method == "POST" and path == "/v2/orders":
            return 200, self._post_order(raw, partial=partial)
        elif method == "DELETE":
            if m := self._ORDER_ID.match(path):
                self._cancel(m.group(1))
                return 204, None
            if m := self._POSITION.match(path):
                return 200, self._close_position(m.group(1), partial=partial)
        raise _HttpError(404, 40410000, f"endpoint not found: {method} {path}")

    # ------------------------------------------------------------------ trading routes

    def _get_account(self, _query: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            long_value = sum(
                p.qty * (self.price(p.symbol) or p.avg_entry_price)
                for p in self.positions.values()
                if p.qty > 0
            )
            short_value = sum(
                p.qty * (self.price(p.symbol) or p.avg_entry_price)
                for p in self.positions.values()
                if p.qty < 0
            )
            equity = self.cash + long_value + short_value
            bp = self._buying_power()
            margin_bp = self._margin_buying_power()
            return {
                "id": self.account_id,
                "account_number": "PA0000FAKE",
                "status": "ACTIVE",
                "crypto_status": "ACTIVE",
                "currency": "USD",
                "buying_power": _num(margin_bp),
                "regt_buying_power": _num(margin_bp),
                "non_marginable_buying_power": _num(bp),
                "cash": _num(self.cash),
                "accrued_fees": "0",
                "portfolio_value": _num(equity),
                "equity": _num(equity),
                "last_equity": _num(self.last_equity),
                "long_market_value": _num(long_value),
                "short_market_value": _num(short_value),
                "initial_margin": "0",
                "maintenance_margin": "0",
                "multiplier": _num(self.margin_multiplier),
                "trading_blocked": False,
                "transfers_blocked": False,
                "account_blocked": False,
                "trade_suspended_by_user": False,
                "shorting_enabled": False,
                "created_at": "2020-01-01T00:00:00Z",
            }

    def _buying_power(self) -> float:
        """Cash minus what open buy orders still need (Alpaca's non-marginable buying power)."""
        return max(self.cash - self._reserved_for_buys(), 0.0)

    def _reserved_for_buys(self) -> float:
        reserved = 0.0
        for o in self.orders.values():
            if o.is_open and o.side == "buy":
                px = self.price(o.symbol) or 0.0
                if o.notional is not None:
                    reserved += o.notional - o.filled_qty * (o.filled_avg_price or px)
                else:
                    reserved += ((o.qty or 0.0) - o.filled_qty) * px
        return reserved

    def _margin_buying_power(self) -> float:
        """What Alpaca's `buying_power` says: cash less open buys on a cash account; on
        margin, `margin_multiplier` x the equity that positions do not already use as initial
        margin (1/multiplier of their value), less open buys."""
        if self.margin_multiplier <= 1.0:
            return self._buying_power()
        values = [
            p.qty * (self.price(p.symbol) or p.avg_entry_price) for p in self.positions.values()
        ]
        excess = self.cash + sum(values) - sum(v for v in values if v > 0) / self.margin_multiplier
        return max(self.margin_multiplier * excess - self._reserved_for_buys(), 0.0)

    def _position_json(self, p: FakePosition) -> dict[str, Any]:
        px = self.price(p.symbol) or p.avg_entry_price
        held = sum(
            (o.qty or 0.0) - o.filled_qty
            for o in self.orders.values()
            if o.is_open and o.side == "sell" and o.symbol == p.symbol
        )
        market_value = p.qty * px
        cost_basis = p.qty * p.avg_entry_price
        return {
            "asset_id": str(_asset_id(p.symbol)),
            "symbol": p.symbol,
            "exchange": "NASDAQ",
            "asset_class": "us_equity",
            "asset_marginable": True,
            "avg_entry_price": _num(p.avg_entry_price),
            "qty": _num(p.qty),
            "qty_available": _num(p.qty - held),
            "side": "long" if p.qty > 0 else "short",
            "market_value": _num(market_value),
            "cost_basis": _num(cost_basis),
            "unrealized_pl": _num(market_value - cost_basis),
            "unrealized_plpc": _num((px / p.avg_entry_price - 1) if p.avg_entry_price else 0.0),
            "current_price": _num(px),
        }

    def _get_positions(self, _query: dict[str, str]) -> list[Any]:
        with self.lock:
            return [self._position_json(p) for _, p in sorted(self.positions.items())]

    def _find_position(self, symbol: str) -> FakePosition:
        with self.lock:
            p = self.positions.get(symbol.upper())
        if p is None:
            raise _HttpError(404, 40410000, "position does not exist")
        return p

    def _find_order(self, order_id: str) -> FakeOrder:
        with self.lock:
            order = self.orders.get(order_id)
        if order is None:
            raise _HttpError(404, 40410000, "order not found")
        return order

    def _get_order_by_client_id(self, query: dict[str, str]) -> dict[str, Any]:
        order = self.order_by_client_id(query.get("client_order_id", ""))
        if order is None:
            raise _HttpError(404, 40410000, "order not found")
        return self._read_order(order).to_json(nested=_nested(query))

    def _get_orders(self, query: dict[str, str]) -> list[Any]:
        status = query.get("status", "open")
        limit = min(int(query.get("limit") or 50), 500)
        symbols = {s for s in query.get("symbols", "").upper().split(",") if s}
        with self.lock:
            orders = [self._read_order(o) for o in self.orders.values() if o.parent_id is None]
        nested = _nested(query)
        if not nested:  # legs listed on their own, like Alpaca
            orders = [x for o in orders for x in (o, *o.legs)]
        if status == "open":
            orders = [o for o in orders if o.is_open]
        elif status == "closed":
            orders = [o for o in orders if not o.is_open]
        if symbols:
            orders = [o for o in orders if o.symbol in symbols]
        if query.get("direction", "desc") == "desc":
            orders.reverse()
        return [o.to_json(nested=nested) for o in orders[:limit]]

    def _post_order(self, raw: bytes, *, partial: bool) -> dict[str, Any]:
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            raise _HttpError(400, 40010000, "request body format is invalid") from exc
        if not isinstance(body, dict):
            raise _HttpError(400, 40010000, "request body format is invalid")
        symbol = str(body.get("symbol") or "").upper()
        side = body.get("side")
        otype = body.get("type")
        tif = body.get("time_in_force")
        cid = str(body.get("client_order_id") or uuid.uuid4())
        qty = float(body["qty"]) if body.get("qty") is not None else None
        notional = float(body["notional"]) if body.get("notional") is not None else None
        if side not in ("buy", "sell"):
            raise _HttpError(422, 40010001, "side must be buy or sell")
        if otype == "limit" and body.get("order_class") == "oco":
            return self._post_oco(body, symbol, side, qty, cid, tif)
        if otype != "market":
            raise _HttpError(422, 40010001, "the fake only supports market and OCO orders")
        if tif == "opg" and self.is_open():
            raise _HttpError(422, 40010001, "opg orders are not accepted while the market is open")
        if tif == "opg" and dtime(9, 28) <= self.now().astimezone(NY).time() < dtime(9, 30):
            raise _HttpError(422, 40010001, "opg orders are not accepted from 09:28 to the open")
        if (qty is None) == (notional is None):
            raise _HttpError(422, 40010001, "qty or notional is required, not both")
        if (qty if qty is not None else notional or 0.0) <= 0:
            raise _HttpError(422, 40010001, "qty must be > 0")
        fractional = notional is not None or (qty is not None and qty != int(qty))
        if fractional and tif != "day":
            raise _HttpError(422, 40010001, "fractional orders must be DAY orders")
        if fractional and symbol in self.non_fractionable:
            raise _HttpError(422, 40310000, f"asset {symbol} is not fractionable")
        return self._place(symbol, side, qty, notional, cid, tif or "day", partial).to_json()

    def _place(
        self,
        symbol: str,
        side: str,
        qty: float | None,
        notional: float | None,
        cid: str,
        tif: str,
        partial: bool,
    ) -> FakeOrder:
        with self.lock:
            if cid in self.orders_by_client_id:
                raise _HttpError(422, **DUPLICATE_CLIENT_ORDER_ID)
            px = self.price(symbol)
            if px is None:
                raise _HttpError(422, 40010001, f'asset "{symbol}" not found')
            if symbol in self.untradable:
                raise _HttpError(422, 40010001, f"asset {symbol} is not tradable")
            amount = qty if qty is not None else (notional or 0.0) / px
            if side == "buy":
                cost = notional if notional is not None else amount * px
                if cost > self._margin_buying_power() + 1e-9:
                    raise _HttpError(403, 40310000, "insufficient buying power")
            else:
                pos = self.positions.get(symbol)
                held = sum(
                    (o.qty or 0.0) - o.filled_qty
                    for o in self.orders.values()
                    if o.is_open and o.side == "sell" and o.symbol == symbol
                )
                available = (pos.qty if pos else 0.0) - held
                if amount > available + 1e-9:
                    raise _HttpError(
                        403,
                        40310000,
                        f"insufficient qty available for order (requested: {_num(amount)}, "
                        f"available: {_num(max(available, 0.0))})",
                    )
            now = self.now()
            order = FakeOrder(
                id=str(uuid.uuid4()),
                client_order_id=cid,
                symbol=symbol,
                side=side,
                qty=qty,
                notional=notional,
                status="new",
                created_at=now,
                time_in_force=tif,
            )
            self.orders[order.id] = order
            self.orders_by_client_id[cid] = order.id
            if self.is_open():
                self._fill(order, fraction=self.partial_fraction if partial else 1.0)
            return order

    def _fill(self, order: FakeOrder, *, fraction: float, at: float | None = None) -> None:
        """Fill `fraction` of the order's total size (capped at what is left), at `at` (the
        price already moved by any slippage) or the current price; commission from cash."""
        px = at if at is not None else self.price(order.symbol)
        if px is None:
            return
        total = order.qty if order.qty is not None else round((order.notional or 0.0) / px, 9)
        target = total if fraction >= 1.0 else round(total * fraction, 9)
        add = max(target - order.filled_qty, 0.0)
        if add <= 0:
            return
        signed = add if order.side == "buy" else -add
        pos = self.positions.get(order.symbol)
        if pos is None:
            self.positions[order.symbol] = FakePosition(order.symbol, signed, px)
        else:
            new_qty = pos.qty + signed
            if abs(new_qty) < 1e-9:
                del self.positions[order.symbol]
            else:
                if order.side == "buy" and pos.qty > 0:
                    pos.avg_entry_price = (pos.qty * pos.avg_entry_price + add * px) / new_qty
                pos.qty = new_qty
        self.cash -= signed * px + add * px * self.commission_bps / 10_000
        prev = order.filled_qty
        order.filled_qty = prev + add
        order.filled_avg_price = ((order.filled_avg_price or 0.0) * prev + px * add) / (
            order.filled_qty
        )
        order.updated_at = self.now()
        if order.filled_qty >= total - 1e-9:
            order.status = "filled"
            order.filled_at = order.updated_at
        else:
            order.status = "partially_filled"

    def _cancel(self, order_id: str) -> None:
        with self.lock:
            order = self._find_order(order_id)
            if order.parent_id is not None:  # cancelling one OCO leg cancels the other
                order = self._find_order(order.parent_id)
            if not order.is_open or order.symbol in self.refuse_cancel:
                raise _HttpError(422, 42210000, "order is not cancelable")
            if order.status == "pending_cancel":
                return
            if self.pending_cancel_reads > 0:  # the held leg goes with its parent, later
                order.status = "pending_cancel"
                order.updated_at = self.now()
                order.reads_until_canceled = self.pending_cancel_reads
                return
            for o in (order, *order.legs):
                o.status = "canceled"
                o.canceled_at = o.updated_at = self.now()

    def _read_order(self, order: FakeOrder) -> FakeOrder:
        """One read of `order`: a pending cancel is confirmed at its last awaited read."""
        with self.lock:
            if order.parent_id is not None:
                self._read_order(self._find_order(order.parent_id))
                return order
            if order.status != "pending_cancel":
                return order
            order.reads_until_canceled -= 1
            if order.reads_until_canceled <= 0:
                for o in (order, *order.legs):
                    if o.is_open or o.status in ("held", "pending_cancel"):
                        o.status = "canceled"
                        o.canceled_at = o.updated_at = self.now()
            return order

    def _post_oco(
        self,
        body: dict[str, Any],
        symbol: str,
        side: Any,
        qty: float | None,
        cid: str,
        tif: Any,
    ) -> dict[str, Any]:
        """An OCO exit: the take-profit limit is the order, the stop its held leg."""
        try:
            target = float(body["take_profit"]["limit_price"])
            stop = float(body["stop_loss"]["stop_price"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _HttpError(422, 40010001, "oco orders need take_profit and stop_loss") from exc
        if side != "sell" or qty is None or qty != int(qty) or qty <= 0:
            raise _HttpError(422, 40010001, "oco exits sell a positive whole qty")
        if tif not in ("day", "gtc"):
            raise _HttpError(422, 40010001, "oco orders must be DAY or GTC")
        if not 0 < stop < target or round(stop, 2) != stop or round(target, 2) != target:
            raise _HttpError(422, 42210000, "invalid oco prices (sub-penny or crossed)")
        with self.lock:
            if cid in self.orders_by_client_id:
                raise _HttpError(422, **DUPLICATE_CLIENT_ORDER_ID)
            pos = self.positions.get(symbol)
            available = (pos.qty if pos else 0.0) - self._held_for_sells(symbol)
            if qty > available + 1e-9:
                raise _HttpError(
                    403,
                    40310000,
                    f"insufficient qty available for order (requested: {_num(qty)}, "
                    f"available: {_num(max(available, 0.0))})",
                )
            now = self.now()
            parent = FakeOrder(
                str(uuid.uuid4()),
                cid,
                symbol,
                "sell",
                qty,
                None,
                "new",
                now,
                tif,
                order_type="limit",
                order_class="oco",
                limit_price=target,
            )
            leg = FakeOrder(
                str(uuid.uuid4()),
                str(uuid.uuid4()),
                symbol,
                "sell",
                qty,
                None,
                "held",
                now,
                tif,
                order_type="stop",
                order_class="oco",
                stop_price=stop,
                parent_id=parent.id,
            )
            parent.legs.append(leg)
            self.orders[parent.id] = parent
            self.orders[leg.id] = leg
            self.orders_by_client_id[cid] = parent.id
            return parent.to_json()

    def _held_for_sells(self, symbol: str) -> float:
        return sum(
            (o.qty or 0.0) - o.filled_qty
            for o in self.orders.values()
            if o.is_open and o.side == "sell" and o.symbol == symbol
        )

    # ------------------------------------------------------------------ session stepping

    def session_bar(self, symbol: str, day: date) -> tuple[float, float, float, float] | None:
        """(open, high, low, close) of `symbol` on `day`, or None."""
        bars = self._bars(symbol)
        if bars is None:
            return None
        i = bisect.bisect_left(bars.days, day)
        if i == len(bars.days) or bars.days[i] != day:
            return None
        o, h, lo, c, _v = bars.rows[i]
        return o, h, lo, c

    def pre_open(self, day: date) -> None:
        """08:00 New York on `day`, market closed: bars and prices up to the last close."""
        with self.lock:
            previous = self._sessions[bisect.bisect_left(self._sessions, day) - 1]
            self.set_clock(datetime.combine(day, dtime(8, 0), NY), is_open=False)
            self.horizon = previous
            self.marks = {}
            if self.premarket_marks:
                for symbol in self.positions:
                    bar = self.session_bar(symbol, day)
                    if bar is not None:
                        self.marks[symbol] = bar[0]

    def open_session(self, day: date) -> list[FakeOrder]:
        """09:30 on `day`: last_equity becomes the equity at the last close; every queued
        market order (OPG or DAY) fills at the day's open moved by `slippage_bps` against the
        trader, sells first, then buys; positions are marked at the open while it trades."""
        with self.lock:
            self.set_clock(datetime.combine(day, dtime(9, 31), NY), is_open=True)
            self.horizon = self._sessions[bisect.bisect_left(self._sessions, day) - 1]
            self.marks = {}  # not the pre-market marks: last_equity is the last close's
            self.last_equity = self.equity()
            for symbol in {*self.positions, *(o.symbol for o in self.orders.values())}:
                bar = self.session_bar(symbol, day)
                if bar is not None:
                    self.marks[symbol] = bar[0]
            queued = [o for o in self.orders.values() if o.is_open and o.order_type == "market"]
            filled = []
            for order in sorted(queued, key=lambda o: o.side != "sell"):
                bar = self.session_bar(order.symbol, day)
                if bar is None:
                    continue
                slip = self.slippage_bps / 10_000
                px = bar[0] * (1 + slip) if order.side == "buy" else bar[0] * (1 - slip)
                qty = order.qty or 0.0
                fee = qty * px * self.commission_bps / 10_000
                if order.side == "buy" and qty * px + fee > self.cash + 1e-9:
                    order.status = "canceled"  # no margin in the fake
                    continue
                self._fill(order, fraction=1.0, at=px)
                filled.append(order)
            return filled

    def close_session(self, day: date) -> list[FakeOrder]:
        """The day's range against every open OCO: an open through a level fills at the open,
        else a low at or under the stop fills the stop (with `slippage_bps`), a high at or over
        the target fills the limit at the target; both touched counts as the stop. The other
        leg is cancelled. Then 16:00, market closed, prices at the day's close."""
        filled = []
        with self.lock:
            for parent in [o for o in self.orders.values() if o.order_class == "oco"]:
                if not parent.is_open or parent.parent_id is not None:
                    continue
                bar = self.session_bar(parent.symbol, day)
                if bar is None:
                    continue
                leg = parent.legs[0]
                o, h, lo, _c = bar
                stop, target = leg.stop_price or 0.0, parent.limit_price or 0.0
                slip = 1 - self.slippage_bps / 10_000
                hit: tuple[FakeOrder, float] | None = None
                if o <= stop:
                    hit = leg, o * slip
                elif o >= target:
                    hit = parent, o
                elif lo <= stop:
                    hit = leg, stop * slip
                elif h >= target:
                    hit = parent, target
                if hit is None:
                    continue
                won, px = hit
                self._fill_oco(parent, won, px)
                filled.append(won)
            self.set_clock(datetime.combine(day, dtime(16, 0), NY), is_open=False)
            self.horizon = day
            self.marks = {}
        return filled

    def fill_oco_leg(self, client_order_id: str, leg: str, price: float) -> FakeOrder:
        """Fill the open OCO under `client_order_id` by its "stop" or "limit" leg at `price`
        (any price: a triggered stop's market order can fill above the stop), cancelling the
        other leg; returns the leg that filled."""
        with self.lock:
            parent = self.order_by_client_id(client_order_id)
            if parent is None or parent.order_class != "oco" or not parent.is_open:
                raise ValueError(f"no open OCO under {client_order_id!r}")
            if leg not in ("stop", "limit"):
                raise ValueError(f"leg must be 'stop' or 'limit', got {leg!r}")
            won = parent.legs[0] if leg == "stop" else parent
            self._fill_oco(parent, won, price)
            return won

    def _fill_oco(self, parent: FakeOrder, won: FakeOrder, price: float) -> None:
        """One leg of an OCO fills at `price`; the other is cancelled with it."""
        won.status = "new"
        self._fill(won, fraction=1.0, at=price)
        other = parent.legs[0] if won is parent else parent
        other.status = "canceled"
        other.canceled_at = self.now()

    def _close_position(self, symbol: str, *, partial: bool) -> dict[str, Any]:
        with self.lock:
            pos = self._find_position(symbol)
            side = "sell" if pos.qty > 0 else "buy"
            order = self._place(
                pos.symbol, side, abs(pos.qty), None, str(uuid.uuid4()), "day", partial
            )
            return order.to_json()

    def _get_assets(self, query: dict[str, str]) -> list[Any]:
        """GET /v2/assets: every symbol with a CSV and a bar by `today`, filtered like Alpaca
        by `status` (active, inactive) and `asset_class` (only us_equity here)."""
        if query.get("asset_class", "us_equity") != "us_equity":
            return []
        status = query.get("status")
        symbols = sorted(p.stem for p in self.data_dir.glob("*.csv"))
        assets = [self._asset_json(s) for s in symbols if self.price(s) is not None]
        return [a for a in assets if status in (None, a["status"])]

    def _get_asset(self, symbol: str) -> dict[str, Any]:
        symbol = symbol.upper()
        if self.price(symbol) is None:
            raise _HttpError(404, 40410000, "asset not found")
        return self._asset_json(symbol)

    def _asset_json(self, symbol: str) -> dict[str, Any]:
        tradable = symbol not in self.untradable
        return {
            "id": str(_asset_id(symbol)),
            "class": "us_equity",
            "exchange": "NASDAQ",
            "symbol": symbol,
            "name": f"{symbol} (fake)",
            "status": "active" if tradable else "inactive",
            "tradable": tradable,
            "marginable": True,
            "shortable": True,
            "easy_to_borrow": True,
            "fractionable": symbol not in self.non_fractionable,
            "attributes": [],
        }

    # ------------------------------------------------------------------ clock and calendar

    def _session(self, day: date) -> tuple[datetime, datetime] | None:
        if not self._is_session(day):
            return None
        close = self.early_closes.get(day, "16:00")
        hh, mm = (int(x) for x in close.split(":"))
        return (
            datetime.combine(day, dtime(9, 30), NY),
            datetime.combine(day, dtime(hh, mm), NY),
        )

    def _is_session(self, day: date) -> bool:
        if day <= self._sessions[-1]:
            i = bisect.bisect_right(self._sessions, day)
            return i > 0 and self._sessions[i - 1] == day
        return day.weekday() < 5  # past the data: assume weekdays

    def _next_sessions(self, after: datetime) -> tuple[datetime, datetime]:
        """(next open, next close) strictly after `after`."""
        day = after.astimezone(NY).date()
        next_open = next_close = None
        for _ in range(30):
            session = self._session(day)
            if session is not None:
                if next_open is None and session[0] > after:
                    next_open = session[0]
                if next_close is None and session[1] > after:
                    next_close = session[1]
                if next_open is not None and next_close is not None:
                    return next_open, next_close
            day += timedelta(days=1)
        raise _HttpError(500, 50000000, "no session within 30 days")

    def _get_clock(self, _query: dict[str, str]) -> dict[str, Any]:
        ts = self.now()
        next_open, next_close = self._next_sessions(ts)
        return {
            "timestamp": ts.astimezone(NY).isoformat(),
            "is_open": self.is_open(),
            "next_open": next_open.isoformat(),
            "next_close": next_close.isoformat(),
        }

    def _get_calendar(self, query: dict[str, str]) -> list[Any]:
        start = date.fromisoformat(query["start"][:10]) if query.get("start") else date.min
        end = date.fromisoformat(query["end"][:10]) if query.get("end") else date.max
        lo = bisect.bisect_left(self._sessions, start)
        hi = bisect.bisect_right(self._sessions, end)
        return [
            {
                "date": d.isoformat(),
                "open": "09:30",
                "close": self.early_closes.get(d, "16:00"),
                "session_open": "0400",
                "session_close": "2000",
                "settlement_date": (d + timedelta(days=1)).isoformat(),
            }
            for d in self._sessions[lo:hi]
        ]

    # ------------------------------------------------------------------ market data

    def _bars(self, symbol: str) -> _Bars | None:
        if not re.fullmatch(r"[A-Z][A-Z0-9.\-]{0,9}", symbol):
            return None
        path = self.data_dir / f"{symbol}.csv"
        return _load_bars(path) if path.is_file() else None

    def _get_bars(self, query: dict[str, str]) -> dict[str, Any]:
        symbols = sorted({s for s in query.get("symbols", "").upper().split(",") if s})
        if not symbols:
            raise _HttpError(400, 40010000, "symbols is required")
        if query.get("timeframe") not in ("1Day", "1D"):
            raise _HttpError(422, 42210000, "the fake only serves 1Day bars")
        start = _parse_ts(query["start"]) if query.get("start") else None
        end = _parse_ts(query["end"]) if query.get("end") else None
        if (
            self.sip_delay is not None
            and query.get("feed") == "sip"
            and end is not None
            and end > self.now() - self.sip_delay
        ):
            raise _HttpError(403, 40310000, "subscription does not permit querying recent SIP data")
        limit = min(int(query.get("limit") or 1000), 10_000, self.max_page_size)
        offset = 0
        if query.get("page_token"):
            try:
                offset = int(base64.urlsafe_b64decode(query["page_token"]).decode())
            except ValueError as exc:
                raise _HttpError(400, 40010000, "invalid page_token") from exc
        items: list[tuple[str, dict[str, Any]]] = []
        for symbol in symbols:
            bars = self._bars(symbol)
            if bars is None:
                continue
            if self.bars_hook is not None:
                bars = self.bars_hook(symbol, bars, self.today)
            first = bisect.bisect_left(bars.days, start, key=_midnight) if start else 0
            last = bisect.bisect_right(bars.days, self.horizon or self.today)
            if end is not None:
                last = min(last, bisect.bisect_right(bars.days, end, key=_midnight))
            for i in range(first, last):
                day, (o, hi, lo, c, v) = bars.days[i], bars.rows[i]
                ts = _midnight(day)
                bar = {
                    "t": _iso(ts),
                    "o": o,
                    "h": hi,
                    "l": lo,
                    "c": c,
                    "v": v,
                    "n": None,
                    "vw": (hi + lo + c) / 3,
                }
                items.append((symbol, bar))
        page = items[offset : offset + limit]
        out: dict[str, list[Any]] = {}
        for symbol, bar in page:
            out.setdefault(symbol, []).append(bar)
        more = offset + limit < len(items)
        token = base64.urlsafe_b64encode(str(offset + limit).encode()).decode() if more else None
        return {"bars": out, "next_page_token": token}

    def _latest_symbols(self, query: dict[str, str]) -> list[tuple[str, float]]:
        symbols = [s for s in query.get("symbols", "").upper().split(",") if s]
        if not symbols:
            raise _HttpError(400, 40010000, "symbols is required")
        out = []
        for s in symbols:
            px = self.price(s)
            if px is not None:
                out.append((s, px))
        return out

    def _get_latest_trades(self, query: dict[str, str]) -> dict[str, Any]:
        t = _iso(self.now())
        return {
            "trades": {
                s: {"t": t, "x": "V", "p": px, "s": 100, "c": ["@"], "i": 1, "z": "C"}
                for s, px in self._latest_symbols(query)
            }
        }

    def _get_latest_quotes(self, query: dict[str, str]) -> dict[str, Any]:
        t = _iso(self.now())
        half = self.quote_spread / 2
        return {
            "quotes": {
                s: {
                    "t": t,
                    "bx": "V",
                    "bp": round(px * (1 - half), 4),
                    "bs": 3,
                    "ax": "V",
                    "ap": round(px * (1 + half), 4),
                    "as": 2,
                    "c": ["R"],
                    "z": "C",
                }
                for s, px in self._latest_symbols(query)
            }
        }


__all__ = [
    "DEFAULT_DATA_DIR",
    "DUPLICATE_CLIENT_ORDER_ID",
    "FAULT_KINDS",
    "FakeAlpaca",
    "FakeOrder",
    "FakePosition",
]
