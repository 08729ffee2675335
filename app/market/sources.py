"""Bar sources for sim and backtest: a CSV directory (validated) and a seeded synthetic market.

Sources honour an optional ``as_of`` date (sim replay sets it): nothing after ``as_of`` is ever
returned, neither by ``get_daily_bars`` nor by ``get_latest_price``, so a replayed decision cannot
see the future.
"""

from __future__ import annotations

import math
import re
import threading
import zlib
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from app.domain import BarFrame
from app.errors import NotFoundError, ValidationError
from app.market.calendar import DateLike, NyseCalendar, _to_day
from app.market.validation import ValidationResult, validate_bars

_SYMBOL_RE = re.compile(r"^[A-Z][A-Z0-9.\-]{0,14}$")


def _norm_symbol(symbol: str) -> str:
    return symbol.strip().upper()


class _FrameSource:
    """Shared as_of clipping and slicing: subclasses only say how to get one symbol's frame."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._as_of: pd.Timestamp | None = None

    @property
    def as_of(self) -> date | None:
        """Nothing after this date is visible; None means everything is."""
        return None if self._as_of is None else self._as_of.date()

    @as_of.setter
    def as_of(self, value: DateLike | None) -> None:
        self._as_of = None if value is None else _to_day(value)

    def set_as_of(self, value: DateLike | None) -> None:
        self.as_of = value

    def available_symbols(self) -> list[str]:
        raise NotImplementedError

    def _frame(self, symbol: str) -> BarFrame:
        raise NotImplementedError

    def get_daily_bars(
        self, symbols: Sequence[str], start: DateLike, end: DateLike
    ) -> dict[str, BarFrame]:
        """Bars in [start, end] (clipped at as_of) per upper-cased symbol; copies, not views."""
        s, e = _to_day(start), _to_day(end)
        if s > e:
            raise ValidationError(f"start {s.date()} is after end {e.date()}", field="start")
        as_of = self._as_of
        if as_of is not None and e > as_of:
            e = as_of
        out: dict[str, BarFrame] = {}
        for raw in symbols:
            sym = _norm_symbol(raw)
            out[sym] = self._frame(sym).loc[s:e].copy()
        return out

    def get_latest_price(self, symbol: str) -> float:
        """The last close on or before as_of (or the last close at all)."""
        sym = _norm_symbol(symbol)
        frame = self._frame(sym)
        as_of = self._as_of
        if as_of is not None:
            frame = frame.loc[:as_of]
        if frame.empty:
            raise NotFoundError(f"no price for {sym} on or before {self.as_of}", field="symbol")
        return float(frame["close"].iloc[-1])


#: The broad layout (../shared/data/broad): stocks in daily/, ETFs in etf/. A directory with
#: neither folder is flat (../shared/data/daily): its own files, all taken as stocks.
_FOLDERS: tuple[tuple[str, str], ...] = (("daily", "stock"), ("etf", "etf"))


class CsvMarketData(_FrameSource):
    """Bars from SYMBOL.csv files (date,open,high,low,close,volume), in one flat directory or in
    the broad layout's daily/ (stocks) and etf/ (ETFs) folders; `kind` says which a symbol is.

    Files are read lazily, validated once and cached in memory; `validation(symbol)` keeps what
    validation said so the API and metrics can show it.
    """

    def __init__(self, data_dir: str | Path, calendar: NyseCalendar | None = None) -> None:
        super().__init__()
        self._dir = Path(data_dir)
        if not self._dir.is_dir():
            raise NotFoundError(f"market data directory {self._dir} does not exist")
        self._calendar = calendar or NyseCalendar()
        self._results: dict[str, ValidationResult] = {}
        self._folders = [
            (self._dir / name, kind) for name, kind in _FOLDERS if (self._dir / name).is_dir()
        ] or [(self._dir, "stock")]

    def available_symbols(self) -> list[str]:
        return sorted(self._kinds())

    def symbols_of_kind(self, kind: str) -> list[str]:
        """Sorted symbols whose files hold `kind` ("stock" or "etf")."""
        return sorted(s for s, k in self._kinds().items() if k == kind)

    def kind(self, symbol: str) -> str:
        """The kind of its file: "etf" in the etf/ folder, else "stock" (NotFoundError: none)."""
        return self._locate(_norm_symbol(symbol))[1]

    def _kinds(self) -> dict[str, str]:
        kinds: dict[str, str] = {}
        for folder, kind in self._folders:
            for path in folder.glob("*.csv"):
                symbol = path.stem.upper()
                if path.is_file() and _SYMBOL_RE.match(symbol):
                    kinds.setdefault(symbol, kind)
        return kinds

    def _locate(self, symbol: str) -> tuple[Path, str]:
        if _SYMBOL_RE.match(symbol):
            for folder, kind in self._folders:
                for name in (f"{symbol}.csv", f"{symbol.lower()}.csv"):
                    if (folder / name).is_file():
                        return folder / name, kind
        raise NotFoundError(f"unknown symbol {symbol!r}", field="symbol")

    def validation(self, symbol: str) -> ValidationResult:
        sym = _norm_symbol(symbol)
        with self._lock:
            cached = self._results.get(sym)
            if cached is None:
                cached = validate_bars(sym, _read_csv(self._locate(sym)[0]), self._calendar)
                self._results[sym] = cached
            return cached

    def _frame(self, symbol: str) -> BarFrame:
        return self.validation(symbol).clean_frame


def _read_csv(path: Path) -> pd.DataFrame:
    """One SYMBOL.csv as validate_bars takes it (a date column, the bar columns as read)."""
    raw = pd.read_csv(path)
    if "date" not in raw.columns:
        raise ValidationError(f"{path.stem.upper()}: CSV has no date column", field="date")
    try:  # ISO dates, the common case, parsed by numpy (5x faster than pandas' inference)
        raw["date"] = raw["date"].to_numpy().astype("datetime64[D]").astype("datetime64[ns]")
    except (ValueError, TypeError):
        raw["date"] = pd.to_datetime(raw["date"])
    return raw


#: Sector of each watchlist symbol; sector factors are what makes same-sector names co-move.
SECTORS: dict[str, str] = {
    **dict.fromkeys(
        ("AAPL", "MSFT", "NVDA", "AMD", "INTC", "CSCO", "GOOGL", "META", "NFLX", "AMZN", "TSLA"),
        "tech",
    ),
    **dict.fromkeys(("JPM", "V", "MA"), "financials"),
    **dict.fromkeys(("JNJ", "PFE", "MRK", "ABT", "UNH"), "health"),
    **dict.fromkeys(("KO", "PEP", "PG", "WMT"), "staples"),
    **dict.fromkeys(("HD", "NKE", "DIS"), "consumer"),
    **dict.fromkeys(("T", "VZ", "CMCSA"), "telecom"),
    **dict.fromkeys(("XOM", "CAT"), "industrial"),
}
_SECTOR_NAMES = sorted(set(SECTORS.values()))
DEFAULT_SYMBOLS: tuple[str, ...] = ("SPY", *sorted(SECTORS))

_MARKET_VOL = 0.0100  # SPY-like daily vol (sample vol lands near 1 %)
_SECTOR_VOL = 0.008
_T_DF = 4.0


def _rng(seed: int, label: str) -> np.random.Generator:
    """Per-component streams, so adding a symbol never changes another symbol's path."""
    return np.random.default_rng([seed, zlib.crc32(label.encode())])


def _garch_t(
    rng: np.random.Generator,
    n: int,
    vol: float,
    *,
    alpha: float = 0.06,
    beta: float = 0.90,
    cap: float = 3.5,
) -> np.ndarray:
    """GARCH(1,1) returns with unit-variance Student-t(4) shocks: fat tails plus clustering."""
    z = rng.standard_t(_T_DF, size=n) / math.sqrt(_T_DF / (_T_DF - 2))
    target = vol * vol
    omega = target * (1 - alpha - beta)
    ceiling = (cap * vol) ** 2
    out = np.empty(n)
    var = target
    for t in range(n):
        r = math.sqrt(var) * z[t]
        out[t] = r
        var = min(omega + alpha * r * r + beta * var, ceiling)
    return out


class SyntheticMarketData(_FrameSource):
    """A seeded fake market over NYSE sessions, for sim mode and tests without real data.

    Daily log return of symbol i: drift + beta_i * market + gamma_i * sector + idiosyncratic,
    each component a GARCH(1,1) series with Student-t(4) shocks. SPY is the market factor plus
    a sliver of noise (~1 % daily vol); stocks land at 1 to 3 %. The same seed, symbols and dates
    give identical frames; each symbol's path depends only on the seed, its name and the dates.

    The idiosyncratic part mean-reverts day to day (AR(1) with coefficient `reversal`, a
    short-term reversal much stronger than real markets show): the demo market has something
    a model can learn, so sim mode trades with the default thresholds. Real data gives the
    honest figures (README).
    """

    def __init__(
        self,
        symbols: Sequence[str] = DEFAULT_SYMBOLS,
        start: DateLike = date(2018, 1, 2),
        end: DateLike = date(2021, 12, 31),
        seed: int = 42,
        calendar: NyseCalendar | None = None,
        reversal: float = -0.6,
    ) -> None:
        super().__init__()
        if not -1 < reversal < 1:
            raise ValidationError("reversal must be inside (-1, 1)", field="reversal")
        self._reversal = reversal
        self._calendar = calendar or NyseCalendar()
        syms = [_norm_symbol(s) for s in symbols]
        self._symbols = list(dict.fromkeys(["SPY", *syms]))
        self._seed = int(seed)
        self._index = self._calendar.sessions_index(start, end)
        if len(self._index) < 2:
            raise ValidationError("synthetic market needs at least two sessions", field="end")
        n = len(self._index)
        self._market = _garch_t(_rng(self._seed, "market"), n, _MARKET_VOL)
        self._sectors = {
            name: _garch_t(_rng(self._seed, f"sector:{name}"), n, _SECTOR_VOL)
            for name in _SECTOR_NAMES
        }
        self._frames: dict[str, BarFrame] = {}

    def available_symbols(self) -> list[str]:
        return sorted(self._symbols)

    def _frame(self, symbol: str) -> BarFrame:
        if symbol not in self._symbols:
            raise NotFoundError(f"unknown symbol {symbol!r}", field="symbol")
        with self._lock:
            frame = self._frames.get(symbol)
            if frame is None:
                frame = self._generate(symbol)
                self._frames[symbol] = frame
            return frame

    def _generate(self, symbol: str) -> BarFrame:
        rng = _rng(self._seed, f"symbol:{symbol}")
        n = len(self._index)
        if symbol == "SPY":
            beta, gamma, idio_vol = 1.0, 0.0, 0.001
            sector = np.zeros(n)
            drift = 0.07 / 252
            price0 = rng.uniform(180.0, 260.0)
            base_volume = 8e7
        else:
            beta = rng.uniform(0.8, 1.3)
            gamma = rng.uniform(0.6, 1.0)
            idio_vol = rng.uniform(0.007, 0.020)
            name = (
                SECTORS.get(symbol)
                or _SECTOR_NAMES[zlib.crc32(symbol.encode()) % len(_SECTOR_NAMES)]
            )
            sector = self._sectors[name]
            drift = rng.uniform(0.02, 0.12) / 252
            price0 = rng.uniform(20.0, 300.0)
            base_volume = rng.uniform(2e6, 6e7)
        sigma = math.sqrt((beta * _MARKET_VOL) ** 2 + (gamma * _SECTOR_VOL) ** 2 + idio_vol**2)
        shocks = _garch_t(rng, n, idio_vol * math.sqrt(1 - self._reversal**2))
        idio = np.empty(n)
        previous = 0.0
        for t in range(n):
            previous = self._reversal * previous + shocks[t]
            idio[t] = previous
        r = drift + beta * self._market + gamma * sector + idio

        # Split each day's return into overnight gap and intraday move; close-to-close stays r.
        gap = 0.35 * r + rng.normal(0.0, 0.25 * sigma, n)
        log_close = math.log(price0) + np.cumsum(r)
        close = np.exp(log_close)
        prev_close = np.exp(np.concatenate([[math.log(price0)], log_close[:-1]]))
        open_ = prev_close * np.exp(gap)
        high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.4 * sigma, n)))
        low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.4 * sigma, n)))
        volume = np.maximum(
            1.0,
            np.round(base_volume * np.exp(0.8 * np.abs(r) / sigma - 0.5 + rng.normal(0, 0.25, n))),
        )
        frame = pd.DataFrame(
            {"open": open_, "high": high, "low": low, "close": close, "volume": volume},
            index=self._index.copy(),
        ).astype("float64")
        frame.index.name = "date"
        return frame
