"""Each symbol's bars laid on the backtest's sessions once, so a session reads its prices by
position instead of walking every symbol: the replay loop touches only what it trades.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from app.backtest.window import _SymbolIndex


class SessionTape:
    """Session i's own bar of each symbol (open, high, low, close) and the last closes the live
    cycle would see after the close of i, from the engine's per-symbol indexes.

    `at(i)` moves the tape to session i; the per-symbol reads are then list lookups.
    """

    def __init__(self, index: Mapping[str, _SymbolIndex], sessions: int) -> None:
        self._index = index
        self.symbols = list(index)
        self._column = {s: j for j, s in enumerate(self.symbols)}
        shape = (sessions, len(self.symbols))
        #: rows[i, j]: row of symbols[j]'s own bar on session i in its frame, -1: no bar.
        self.rows = np.full(shape, -1, dtype=np.int64)
        #: last_closes[i, j]: close of the last bar of symbols[j] in session i's lookback
        #: window, where priced[i, j] (what the live cycle prices a symbol at).
        self.last_closes = np.zeros(shape)
        self.priced = np.zeros(shape, dtype=bool)
        for j, ix in enumerate(index.values()):
            if len(ix.close):
                last = np.clip(ix.hi - 1, 0, None)
                self.rows[:, j] = np.where(ix.today, last, -1)
                self.last_closes[:, j] = ix.close[last]
                self.priced[:, j] = ix.hi > ix.lo
        self._rows: list[int] = []
        self.at(0)

    def at(self, i: int) -> None:
        self.i = i
        self._rows = self.rows[i].tolist()

    def _row(self, symbol: str) -> int:
        j = self._column.get(symbol)
        return -1 if j is None else self._rows[j]

    def open(self, symbol: str) -> float:
        """The session's open; KeyError without a bar (SimBroker rejects the order: no price)."""
        r = self._row(symbol)
        if r < 0:
            raise KeyError(symbol)
        return float(self._index[symbol].open[r])

    def closes(self, symbols: Iterable[str]) -> dict[str, float]:
        """The session's closes of those of `symbols` with a bar that day (the marks)."""
        rows, column, index = self._rows, self._column, self._index
        out = {}
        for symbol in symbols:
            j = column.get(symbol)
            if j is not None and (r := rows[j]) >= 0:
                out[symbol] = float(index[symbol].close[r])
        return out

    def range(self, symbol: str) -> tuple[float, float, float] | None:
        """(open, high, low) of the session's bar: what protective exits fill against."""
        r = self._row(symbol)
        if r < 0:
            return None
        ix = self._index[symbol]
        return float(ix.open[r]), float(ix.high[r]), float(ix.low[r])

    def prices(self) -> dict[str, float]:
        """Last closes of every symbol with a bar in the session's lookback, in symbol order."""
        closes, priced = self.last_closes[self.i].tolist(), self.priced[self.i].tolist()
        return {s: v for s, v, ok in zip(self.symbols, closes, priced, strict=True) if ok}
