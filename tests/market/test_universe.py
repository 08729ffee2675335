"""UNIVERSE: the watchlist or a universe file; a file's ETFs feed the features, never trades."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from app.ai.features import MAX_LOOKBACK, build_features
from app.config import DEFAULT_WATCHLIST, UNIVERSES_DIR, load_settings, read_universe_file
from app.errors import ValidationError
from app.market.sources import CsvMarketData, SyntheticMarketData
from app.market.universe import configured_universe, resolve_universe
from tests.support import SHARED_DATA

BROAD = SHARED_DATA.parent / "broad"
WATCHLIST = tuple(DEFAULT_WATCHLIST.split(","))


@pytest.fixture(scope="module")
def broad() -> CsvMarketData:
    return CsvMarketData(BROAD)


def universe_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mine.txt"
    path.write_text(text)
    return path


def test_the_watchlist_trades_as_it_always_did() -> None:
    chosen = resolve_universe("watchlist", WATCHLIST)
    assert chosen.tradable == WATCHLIST  # SPY included: the watchlist trades it
    assert chosen.feature_only == ()
    assert resolve_universe("watchlist", ["aapl", "KO"]).feature_only == ("SPY",)


def test_the_shipped_broad_universe_is_the_broad_datas_stocks(broad: CsvMarketData) -> None:
    chosen = resolve_universe("broad", WATCHLIST, broad)
    assert chosen.tradable == tuple(broad.symbols_of_kind("stock"))
    assert len(chosen.tradable) == 646
    assert chosen.feature_only == ("SPY",)
    lines = (UNIVERSES_DIR / "broad.txt").read_text().splitlines()
    assert [line for line in lines if not line.startswith("#")] == list(chosen.tradable)


def test_a_files_etfs_are_feature_only(tmp_path: Path, broad: CsvMarketData) -> None:
    path = universe_file(tmp_path, "# mine\naapl\n\nXLK  # the tech sector\nMSFT\nTLT\n")
    chosen = resolve_universe(str(path), WATCHLIST, broad)
    assert chosen.tradable == ("AAPL", "MSFT")
    assert chosen.feature_only == ("SPY", "TLT", "XLK")
    flat = resolve_universe(str(path), WATCHLIST, CsvMarketData(SHARED_DATA))
    assert flat.tradable == ("AAPL", "XLK", "MSFT", "TLT")  # a flat directory knows no ETFs


def test_a_file_of_etfs_only_trades_nothing(tmp_path: Path, broad: CsvMarketData) -> None:
    path = universe_file(tmp_path, "SPY\nXLK\n")
    with pytest.raises(ValidationError) as caught:
        resolve_universe(str(path), WATCHLIST, broad)
    assert caught.value.field == "universe"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("AAPL\nMS FT\n", "line 2: 'MS FT' is not a symbol"),
        ("AAPL\nKO\naapl\n", "line 3: AAPL repeats line 1"),
        ("# nothing\n\n", "names no symbol"),
    ],
)
def test_a_bad_file_is_refused_naming_its_line(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        read_universe_file(universe_file(tmp_path, text))


def test_universe_setting_takes_a_name_or_a_path(tmp_path: Path) -> None:
    assert load_settings({"UNIVERSE": "watchlist"}).universe == "watchlist"
    assert load_settings({"UNIVERSE": "broad"}).universe == "broad"
    path = universe_file(tmp_path, "AAPL\n")
    assert load_settings({"UNIVERSE": f" {path} "}).universe == str(path)


def test_a_listing_enters_with_its_feature_history_and_a_delisting_leaves_after_its_last_bar(
    broad: CsvMarketData,
) -> None:
    """Point in time without membership dates: ABNB listed on 2020-12-10, TWX (acquired by
    AT&T) last traded on 2018-06-14; neither has a feature row outside its own bars."""
    bars = broad.get_daily_bars(
        ["ABNB", "TWX", "AAPL", "SPY"], date(2017, 1, 3), date(2021, 12, 31)
    )
    rows = build_features(bars, bars["SPY"]).index
    abnb = rows[rows.get_level_values("symbol") == "ABNB"].get_level_values("date")
    twx = rows[rows.get_level_values("symbol") == "TWX"].get_level_values("date")
    assert abnb[0] == bars["ABNB"].index[MAX_LOOKBACK - 1] > pd.Timestamp("2020-12-10")
    assert twx[-1] == bars["TWX"].index[-1] == pd.Timestamp("2018-06-14")  # 06-15: volume 0


def test_sim_on_the_synthetic_demo_market_trades_the_watchlist_whatever_universe_says(
    broad: CsvMarketData,
) -> None:
    """A new install (UNIVERSE=broad, no DATA_DIR) runs sim on synthetic bars of the watchlist's
    names: it trades those, not 646 names the demo market has no bars for; real bars (DATA_DIR)
    and the broker trade the file's universe."""
    settings = load_settings({"UNIVERSE": "broad", "WATCHLIST": "AAPL,KO"})
    demo = SyntheticMarketData(symbols=settings.watchlist, end=date(2020, 12, 31))
    chosen = configured_universe(settings, demo)
    assert chosen.tradable == ("AAPL", "KO")
    assert set(chosen.tradable) <= set(demo.available_symbols())
    assert len(configured_universe(settings, broad).tradable) == 646
