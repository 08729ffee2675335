"""One universe: the symbols every path builds features from.

Live cycles, training, backtests and the signal API all use watchlist + holdings + SPY: SPY is
the features' benchmark (rel_ret_20_spy, corr_spy_60, beta_spy_60), so a custom WATCHLIST
without it would otherwise leave those features NaN on one path only.
"""

from __future__ import annotations

from collections.abc import Iterable

#: The benchmark the SPY-relative features (and the backtest's buy-and-hold) measure against.
BENCHMARK = "SPY"


def feature_universe(watchlist: Iterable[str], holdings: Iterable[str] = ()) -> list[str]:
    """Sorted, upper-cased watchlist + holdings + SPY."""
    return sorted({s.upper() for s in watchlist} | {s.upper() for s in holdings} | {BENCHMARK})
