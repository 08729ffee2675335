"""The universe: which symbols a run trades, and which it loads only for the features.

Live cycles, training, backtests and the signal API all load the universe + holdings + SPY:
SPY is the features' benchmark (rel_ret_20_spy, corr_spy_60, beta_spy_60), so a custom
WATCHLIST without it would otherwise leave those features NaN on one path only.

UNIVERSE (Settings) says what the install trades, live, paper, sim and backtest alike
(`configured_universe`; sim on the synthetic demo market trades the watchlist): the watchlist
(the seed preset), or a universe file (one symbol a line;
app/market/universes/broad.txt lists the 646 stocks of ../shared/data/broad). A file's ETFs
(the etf/ folder of the broad layout) are loaded for the features, never traded. Live, the
broker's asset listing still decides which of them trade on a given day (Venue.tradable).
Membership is point in time without a list of dates: a symbol has no feature row, hence no
signal, before its MAX_LOOKBACK-th bar, and none after its last bar (validation ends a series
whose ticker was reused by another security, see validation.BREAK_FACTOR).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from app.config import Settings, read_universe_file, universe_file
from app.domain import MarketData
from app.errors import ValidationError
from app.market.sources import CsvMarketData, SyntheticMarketData

#: The benchmark the SPY-relative features (and the backtest's buy-and-hold) measure against.
BENCHMARK = "SPY"


def feature_universe(watchlist: Iterable[str], holdings: Iterable[str] = ()) -> list[str]:
    """Sorted, upper-cased watchlist + holdings + SPY."""
    return sorted({s.upper() for s in watchlist} | {s.upper() for s in holdings} | {BENCHMARK})


@dataclass(frozen=True)
class Universe:
    """What a run may trade, and what it loads for the features only (never traded)."""

    name: str
    tradable: tuple[str, ...]
    feature_only: tuple[str, ...]

    @property
    def symbols(self) -> tuple[str, ...]:
        """What a run loads bars for: the tradable symbols, then the feature-only ones."""
        return (*self.tradable, *self.feature_only)


def configured_universe(settings: Settings, market: MarketData | None = None) -> Universe:
    """Which symbols this install trades: UNIVERSE=watchlist the WATCHLIST, else the universe
    file's symbols; `market` tells a file's ETFs apart (feature-only).

    Sim without DATA_DIR is a demo on a synthetic market of the WATCHLIST's names only: there it
    trades the watchlist whatever UNIVERSE says, so a new install's `make run` trades at once."""
    if isinstance(market, SyntheticMarketData):
        return resolve_universe("watchlist", settings.watchlist, market)
    return resolve_universe(settings.universe, settings.watchlist, market)


def resolve_universe(
    value: str, watchlist: Sequence[str], market: MarketData | None = None
) -> Universe:
    """The universe UNIVERSE names (`value`, as Settings validated it).

    "watchlist": the watchlist as it always traded (SPY included); SPY is feature-only when the
    watchlist lacks it. A file: its symbols minus those `market` keeps as ETFs (a CSV source's
    etf/ folder), which join SPY as feature-only.
    """
    path = universe_file(value)
    if path is None:
        tradable = tuple(dict.fromkeys(s.upper() for s in watchlist))
        etfs: set[str] = set()
    else:
        listed = read_universe_file(path)
        known = set(market.symbols_of_kind("etf")) if isinstance(market, CsvMarketData) else set()
        tradable = tuple(s for s in listed if s not in known)
        etfs = {s for s in listed if s in known}
    if not tradable:
        raise ValidationError(f"universe {value} lists no tradable symbol", field="universe")
    feature_only = tuple(sorted((etfs | {BENCHMARK}) - set(tradable)))
    return Universe(name=value, tradable=tradable, feature_only=feature_only)
