"""The broad data (646 stocks, 46 ETFs): its layout is read, and its reused-ticker files end
at their break while real stocks keep their big moves."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from app.errors import NotFoundError
from app.market.sources import CsvMarketData
from tests.support import SHARED_DATA

BROAD = SHARED_DATA.parent / "broad"

#: Reused tickers: the date the data's README names, and where validation ends the series.
DEFECTS = {
    "CBE": (date(2015, 12, 7), date(2004, 1, 5)),  # a penny stock interleaved from the start
    "GDW": (date(2014, 11, 26), date(2014, 10, 27)),  # 0.005 -> 39.17 on a zero-volume bar
    "TIE": (date(2016, 4, 6), date(2010, 2, 22)),  # 12.06 -> 22 900
}

#: Every file the break rule ends (with the date it does), all former members whose ticker
#: another security took over: the whole list, so a change to the rule shows here.
BREAKS = {
    "BOL": "2004-08-30",
    "CBE": "2004-01-05",
    "CFC": "2006-12-18",
    "CIN": "2008-05-21",
    "FSH": "2015-07-06",
    "GDW": "2014-10-27",
    "GLK": "2014-12-16",
    "HET": "2020-01-24",
    "HPC": "2014-12-04",
    "KRI": "2007-12-24",
    "MAY": "2006-09-18",
    "MEE": "2007-12-28",
    "NCC": "2013-04-05",
    "PBG": "2017-03-16",
    "TIE": "2010-02-22",
}

#: Real stocks' biggest days, each beyond the 1.6x jump bound: only that day's bar is dropped.
REAL_MOVES = {
    "FNMA": date(2008, 9, 8),  # conservatorship: 7.04 to 0.65..2.05
    "FMCC": date(2008, 9, 8),
    "JCI": date(2007, 7, 2),  # the history is Tyco's: Covidien and TE spun off
    "STT": date(2009, 1, 20),
    "PCG": date(2019, 1, 14),  # PG&E's bankruptcy warning
    "GME": date(2021, 1, 27),
    "SVU": date(2018, 7, 26),  # a takeover bid
}

pytestmark = pytest.mark.skipif(not BROAD.is_dir(), reason="../shared/data/broad is not there")


@pytest.fixture(scope="module")
def broad() -> CsvMarketData:
    return CsvMarketData(BROAD)


def test_the_broad_layout_knows_each_symbols_kind(broad: CsvMarketData) -> None:
    stocks, etfs = broad.symbols_of_kind("stock"), broad.symbols_of_kind("etf")
    assert (len(stocks), len(etfs)) == (646, 46)
    table = pd.read_csv(BROAD / "symbols.csv")
    assert dict(zip(table["symbol"], table["kind"], strict=True)) == {
        **dict.fromkeys(stocks, "stock"),
        **dict.fromkeys(etfs, "etf"),
    }
    assert broad.available_symbols() == sorted(stocks + etfs)
    assert (broad.kind("spy"), broad.kind("XLK"), broad.kind("AAPL")) == ("etf", "etf", "stock")


def test_a_flat_directory_holds_stocks_only() -> None:
    flat = CsvMarketData(SHARED_DATA)
    assert flat.symbols_of_kind("etf") == []
    assert flat.kind("SPY") == "stock"


def test_stocks_and_etfs_are_served_alike(broad: CsvMarketData) -> None:
    frames = broad.get_daily_bars(["aapl", "SPY", "TLT"], date(2021, 6, 1), date(2021, 6, 4))
    assert set(frames) == {"AAPL", "SPY", "TLT"}
    for frame in frames.values():
        assert list(frame.index.date) == [date(2021, 6, d) for d in (1, 2, 3, 4)]
        assert (frame["close"] > 0).all()


@pytest.mark.parametrize("symbol", ["NOPE", "../etf/SPY", "etf/SPY", "daily/AAPL", "SPY.csv"])
def test_unknown_or_path_like_symbols_are_not_found(broad: CsvMarketData, symbol: str) -> None:
    with pytest.raises(NotFoundError):
        broad.get_daily_bars([symbol], date(2020, 1, 2), date(2020, 1, 31))
    with pytest.raises(NotFoundError):
        broad.kind(symbol)


@pytest.mark.parametrize("symbol", sorted(DEFECTS))
def test_a_reused_ticker_ends_at_its_break(broad: CsvMarketData, symbol: str) -> None:
    named, ends = DEFECTS[symbol]
    result = broad.validation(symbol)
    assert ends <= named
    assert result.clean_frame.index[-1] < pd.Timestamp(ends)
    raw = pd.read_csv(BROAD / "daily" / f"{symbol}.csv", parse_dates=["date"])
    later = set(raw["date"][raw["date"] >= pd.Timestamp(ends)].dt.date)
    assert later <= {r.day for r in result.rejected}  # every bar on and after it
    (brk,) = [r for r in result.rejected if "break" in r.codes]
    assert brk.day == ends
    assert f"break: {symbol} {ends}" in brk.reason


@pytest.mark.parametrize("symbol", sorted(REAL_MOVES))
def test_a_real_stock_loses_only_its_jump_day(broad: CsvMarketData, symbol: str) -> None:
    result = broad.validation(symbol)
    dropped = [(r.day, r.codes) for r in result.rejected if r.codes != ["zero_volume"]]
    assert dropped == [(REAL_MOVES[symbol], ["jump"])]


def test_only_reused_tickers_break_and_no_other_file_loses_more_than_its_jump_days(
    broad: CsvMarketData,
) -> None:
    breaks: dict[str, str] = {}
    for symbol in broad.available_symbols():
        result = broad.validation(symbol)
        found = [r.day.isoformat() for r in result.rejected if "break" in r.codes]
        if found:
            breaks[symbol] = found[0]
        elif symbol not in ("EP", "GR", "UVN"):  # foreign penny quotes from the start
            assert len([r for r in result.rejected if "jump" in r.codes]) <= 1, symbol
    assert breaks == BREAKS
