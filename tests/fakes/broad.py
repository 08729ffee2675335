"""The shared broad universe (../shared/data/broad: 646 stocks, 46 ETFs, 2004-2021) laid out
as one bars directory the loopback fake serves: chosen stocks plus SPY, linked, never copied."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from app.trading.risk import RiskLimits
from tests.support import SHARED_DATA

BROAD_DATA = SHARED_DATA.parent / "broad"
#: Limits that never sell by themselves: a holding lives until a signal or the end of its bars.
HOLD_TILL_BARS_END = RiskLimits(
    max_positions=5,
    max_exposure=1.0,
    max_position_size=0.4,
    stop_loss_pct=-0.99,
    take_profit_pct=100.0,
    max_daily_loss=-0.99,
    entry_gap_margin=0.5,  # no trim of an entry that gapped up
)
#: Stocks the decision tests trade: enough to prove the request budget at a broad size.
DEFAULT_COUNT = 320


def broad_symbols(
    count: int = DEFAULT_COUNT, *, since: date | None = date(2019, 1, 2)
) -> list[str]:
    """The first `count` stocks by name that trade from `since` to the data's last day, so
    each has a full feature window; `since=None`: any stock (delisted and late ones too)."""
    with (BROAD_DATA / "symbols.csv").open(newline="") as fh:
        rows = [
            r["symbol"]
            for r in csv.DictReader(fh)
            if r["kind"] == "stock"
            and (
                since is None
                or (date.fromisoformat(r["first"]) <= since and r["last"] == "2021-12-31")
            )
        ]
    if len(rows) < count:
        raise ValueError(f"only {len(rows)} broad stocks trade from {since}, {count} asked")
    return sorted(rows)[:count]


def broad_data_dir(dest: Path, symbols: Sequence[str] | None = None) -> Path:
    """`dest` holding links to the stocks' CSVs (default: `broad_symbols()`) and SPY's."""
    dest.mkdir(parents=True, exist_ok=True)
    for symbol in symbols if symbols is not None else broad_symbols():
        (dest / f"{symbol}.csv").symlink_to(BROAD_DATA / "daily" / f"{symbol}.csv")
    (dest / "SPY.csv").symlink_to(BROAD_DATA / "etf" / "SPY.csv")
    return dest
