"""What the fake's bars route serves around corporate actions and data outages.

The shared CSVs end in 2021 and are already adjusted for splits and dividends, so a real split
such as NVDA's 10:1 of 2024-06-10 is rebuilt on real bars: pick a session S inside the data and
pretend the split happened there. Before S the stock "really" traded at R times the adjusted
price (volume R times lower); a feed that has not adjusted yet serves those raw prices. Once
the action is announced (`lag_sessions` sessions after S; 0: on S, as Alpaca adjusts its
history), the feed serves the adjusted history, i.e. the CSV as it is. A dividend is the same
with a small factor: before its ex-date, raw prices are the adjusted ones divided by
(1 - amount / previous close).

    feed = BarFeed([Split("NVDA", date(2021, 6, 10), 10.0)])
    fake.bars_hook = feed          # FakeAlpaca serves feed(symbol, csv_bars, fake.today)

`outage` drops sessions from what is served (a feed gap) until removed again.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

from tests.fakes.fake_alpaca import _Bars


@dataclass(frozen=True)
class Split:
    """`ratio` new shares per old one (10.0 for a 10:1 split) effective at the open of `day`."""

    symbol: str
    day: date
    ratio: float

    def raw_factor(self, bars: _Bars) -> float:
        """Raw price / adjusted price of the bars before `day`."""
        return self.ratio


@dataclass(frozen=True)
class Dividend:
    """A cash dividend of `amount` per share, ex-date `day`."""

    symbol: str
    day: date
    amount: float

    def raw_factor(self, bars: _Bars) -> float:
        i = bisect.bisect_left(bars.days, self.day)
        if i == 0:
            raise ValueError(f"no bar before the ex-date {self.day}")
        previous_close = bars.rows[i - 1][3]
        return 1.0 / (1.0 - self.amount / previous_close)


Action = Split | Dividend


@dataclass
class BarFeed:
    """A `FakeAlpaca.bars_hook`: raw prices until an action is announced, adjusted after."""

    actions: list[Action] = field(default_factory=list)
    #: Sessions between an action and its adjustment of the history (new bars arrive raw).
    lag_sessions: int = 0
    #: symbol -> sessions the feed has no bar for (a data outage, an IEX gap).
    outage: dict[str, set[date]] = field(default_factory=dict)

    def __call__(self, symbol: str, bars: _Bars, today: date) -> _Bars:
        rows = list(bars.rows)
        for action in self.actions:
            if action.symbol != symbol or self._announced(action, bars, today):
                continue
            k = action.raw_factor(bars)
            end = bisect.bisect_left(bars.days, action.day)
            rows[:end] = [(o * k, h * k, lo * k, c * k, v / k) for o, h, lo, c, v in rows[:end]]
        dropped = self.outage.get(symbol, set())
        served = _Bars()
        for day, row in zip(bars.days, rows, strict=True):
            if day not in dropped:
                served.days.append(day)
                served.rows.append(row)
        return served

    def _announced(self, action: Action, bars: _Bars, today: date) -> bool:
        start = bisect.bisect_left(bars.days, action.day)
        announce = start + self.lag_sessions
        return announce < len(bars.days) and bars.days[announce] <= today

    def drop(self, symbol: str, days: Iterable[date]) -> None:
        self.outage.setdefault(symbol, set()).update(days)

    def restore(self, symbol: str) -> None:
        self.outage.pop(symbol, None)


__all__ = ["BarFeed", "Dividend", "Split"]
