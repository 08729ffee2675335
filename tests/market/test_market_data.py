"""Calendar, bar validation, CSV/synthetic sources and the replay clock."""

from __future__ import annotations

import logging
import math
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.domain import BAR_COLUMNS, MarketData, TradingSession
from app.errors import NotFoundError, ValidationError
from app.market.calendar import NyseCalendar, ReplayClock, ReplayFinished
from app.market.sources import CsvMarketData, SyntheticMarketData
from app.market.validation import rejection_counts, validate_bars

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "daily"


@pytest.fixture(scope="module")
def cal() -> NyseCalendar:
    return NyseCalendar()


Row = tuple[str, float, float, float, float, float]


def bars(rows: list[Row]) -> pd.DataFrame:
    """A small input frame with a date column, as CSVs and APIs deliver them."""
    return pd.DataFrame(rows, columns=["date", *BAR_COLUMNS]).assign(
        date=lambda f: pd.to_datetime(f["date"])
    )


GOOD = [
    ("2021-07-01", 10.0, 11.0, 9.5, 10.5, 1000.0),
    ("2021-07-02", 10.5, 11.2, 10.1, 11.0, 1200.0),
    ("2021-07-06", 11.0, 11.5, 10.8, 11.1, 900.0),
    ("2021-07-07", 11.1, 11.3, 10.9, 11.2, 800.0),
]


# -- calendar ---------------------------------------------------------------------------------


@pytest.mark.parametrize("day", ["2021-07-03", "2021-07-04", "2020-11-28", "2019-01-05"])
def test_weekends_are_not_sessions(cal: NyseCalendar, day: str) -> None:
    assert not cal.is_session(day)


@pytest.mark.parametrize("day", [date(2021, 7, 5), date(2020, 11, 26), date(2019, 1, 1)])
def test_holidays_are_not_sessions(cal: NyseCalendar, day: date) -> None:
    assert not cal.is_session(day)


def test_ordinary_days_are_sessions(cal: NyseCalendar) -> None:
    assert cal.is_session(date(2021, 7, 6))
    assert cal.sessions(date(2021, 7, 1), date(2021, 7, 9)) == [
        date(2021, 7, 1),
        date(2021, 7, 2),
        date(2021, 7, 6),
        date(2021, 7, 7),
        date(2021, 7, 8),
        date(2021, 7, 9),
    ]


def test_next_and_previous_session_skip_the_holiday_weekend(cal: NyseCalendar) -> None:
    assert cal.next_session(date(2021, 7, 2)) == date(2021, 7, 6)
    assert cal.previous_session(date(2021, 7, 6)) == date(2021, 7, 2)
    assert cal.next_session(date(2021, 7, 4)) == date(2021, 7, 6)


@pytest.mark.parametrize("day", [date(2019, 11, 29), date(2020, 12, 24), date(2019, 12, 24)])
def test_early_closes_close_at_13_et(cal: NyseCalendar, day: date) -> None:
    assert cal.session_close(day) == datetime(day.year, day.month, day.day, 18, 0, tzinfo=UTC)
    assert cal.is_early_close(day)


def test_regular_close_follows_dst(cal: NyseCalendar) -> None:
    assert cal.session_close(date(2021, 7, 6)) == datetime(2021, 7, 6, 20, 0, tzinfo=UTC)
    assert cal.session_close(date(2021, 1, 5)) == datetime(2021, 1, 5, 21, 0, tzinfo=UTC)
    assert cal.session_open(date(2021, 1, 5)) == datetime(2021, 1, 5, 14, 30, tzinfo=UTC)
    assert not cal.is_early_close(date(2021, 7, 6))


def test_session_lookups_reject_non_sessions(cal: NyseCalendar) -> None:
    with pytest.raises(ValueError, match="not an NYSE session"):
        cal.session_close(date(2021, 7, 5))


def test_clock_open_closed_and_at_the_close(cal: NyseCalendar) -> None:
    during = cal.clock(datetime(2021, 7, 6, 15, 0, tzinfo=UTC))
    assert during.is_open
    assert during.next_close == datetime(2021, 7, 6, 20, 0, tzinfo=UTC)
    assert during.next_open == datetime(2021, 7, 7, 13, 30, tzinfo=UTC)

    holiday = cal.clock(datetime(2021, 7, 5, 15, 0, tzinfo=UTC))
    assert not holiday.is_open
    assert holiday.next_open == datetime(2021, 7, 6, 13, 30, tzinfo=UTC)

    close = datetime(2021, 7, 6, 20, 0, tzinfo=UTC)
    assert not cal.clock(close).is_open
    assert cal.clock(close, include_close=True).is_open


def test_trading_sessions_carry_early_close(cal: NyseCalendar) -> None:
    sessions = cal.trading_sessions(date(2019, 11, 27), date(2019, 12, 2))
    assert [s.day for s in sessions] == [date(2019, 11, 27), date(2019, 11, 29), date(2019, 12, 2)]
    assert sessions[1] == TradingSession(
        day=date(2019, 11, 29),
        open=datetime(2019, 11, 29, 14, 30, tzinfo=UTC),
        close=datetime(2019, 11, 29, 18, 0, tzinfo=UTC),
    )


# -- replay clock -----------------------------------------------------------------------------


def test_replay_clock_starts_on_the_next_session_and_steps_one_session(cal: NyseCalendar) -> None:
    clock = ReplayClock(date(2021, 7, 3), end=date(2021, 7, 7), calendar=cal)
    assert clock.session == date(2021, 7, 6)
    assert clock.now() == datetime(2021, 7, 6, 20, 0, tzinfo=UTC)
    assert clock.session_open() == datetime(2021, 7, 6, 13, 30, tzinfo=UTC)
    assert clock.advance() == date(2021, 7, 7)
    assert not clock.can_advance
    with pytest.raises(ReplayFinished):
        clock.advance()
    assert clock.session == date(2021, 7, 7)


def test_replay_clock_now_is_the_early_close(cal: NyseCalendar) -> None:
    clock = ReplayClock(date(2019, 11, 27), calendar=cal)
    assert clock.advance() == date(2019, 11, 29)
    assert clock.now() == datetime(2019, 11, 29, 18, 0, tzinfo=UTC)


# -- validation -------------------------------------------------------------------------------


def test_clean_frame_has_the_documented_shape(cal: NyseCalendar) -> None:
    result = validate_bars("X", bars(GOOD), cal)
    assert result.ok
    frame = result.clean_frame
    assert list(frame.columns) == list(BAR_COLUMNS)
    assert isinstance(frame.index, pd.DatetimeIndex)
    assert frame.index.name == "date"
    assert frame.index.tz is None
    assert frame.index.dtype == "datetime64[ns]"
    assert (frame.index == frame.index.normalize()).all()
    assert all(dtype == np.float64 for dtype in frame.dtypes)
    assert len(frame) == 4


def _one_bad(row: Row) -> list[Row]:
    rows = list(GOOD)
    rows[2] = row
    return rows


@pytest.mark.parametrize(
    ("row", "code"),
    [
        (("2021-07-06", math.nan, 11.5, 10.8, 11.1, 900.0), "nan"),
        (("2021-07-06", 11.0, 11.5, 10.8, math.inf, 900.0), "nan"),
        (("2021-07-06", 11.0, 11.5, -1.0, 11.1, 900.0), "non_positive_price"),
        (("2021-07-06", 0.0, 11.5, 10.8, 11.1, 900.0), "non_positive_price"),
        (("2021-07-06", 11.0, 11.05, 10.8, 11.1, 900.0), "inconsistent_ohlc"),  # high < close
        (("2021-07-06", 11.0, 11.5, 11.05, 11.1, 900.0), "inconsistent_ohlc"),  # low > open
        (("2021-07-06", 11.0, 10.0, 12.0, 11.1, 900.0), "inconsistent_ohlc"),  # high < low
        (("2021-07-06", 11.0, 11.5, 10.8, 11.1, 0.0), "zero_volume"),
        (("2021-07-06", 11.0, 11.5, 10.8, 11.1, -5.0), "negative_volume"),
        (("2021-07-05", 11.0, 11.5, 10.8, 11.1, 900.0), "not_a_session"),  # holiday
    ],
)
def test_bad_bars_are_rejected_with_reason(
    cal: NyseCalendar,
    caplog: pytest.LogCaptureFixture,
    row: Row,
    code: str,
) -> None:
    before = rejection_counts().get(code, 0)
    with caplog.at_level(logging.WARNING, logger="app.market.validation"):
        result = validate_bars("X", bars(_one_bad(row)), cal)
    assert [r.day for r in result.rejected] == [date.fromisoformat(row[0])]
    assert result.rejected[0].code == code
    assert result.rejected[0].reason.startswith(f"{code}:")
    assert pd.Timestamp(row[0]) not in result.clean_frame.index
    assert len(result.clean_frame) == 3
    assert rejection_counts()[code] == before + 1
    assert any(code in rec.getMessage() and "X" in rec.getMessage() for rec in caplog.records)


def test_duplicates_keep_the_first(cal: NyseCalendar) -> None:
    rows = [*GOOD, ("2021-07-02", 99.0, 100.0, 98.0, 99.5, 5.0)]
    result = validate_bars("X", bars(rows), cal)
    assert [(r.day, r.code) for r in result.rejected] == [(date(2021, 7, 2), "duplicate_date")]
    assert result.clean_frame.loc["2021-07-02", "close"] == 11.0
    assert result.clean_frame.index.is_unique


def test_gaps_are_reported_not_dropped(cal: NyseCalendar) -> None:
    rows = [GOOD[0], GOOD[3]]  # 2021-07-02 and 2021-07-06 missing
    before = rejection_counts().get("gap", 0)
    result = validate_bars("X", bars(rows), cal)
    assert result.rejected == []
    assert len(result.clean_frame) == 2
    assert len(result.gaps) == 1
    gap = result.gaps[0]
    assert gap.day == date(2021, 7, 2)
    assert gap.code == "gap"
    assert "2 NYSE session(s) missing" in gap.reason
    assert not result.ok
    assert rejection_counts()["gap"] == before + 1


def test_holiday_is_not_a_gap(cal: NyseCalendar) -> None:
    assert validate_bars("X", bars([GOOD[1], GOOD[2]]), cal).gaps == []


def test_hole_left_by_a_rejected_bar_is_not_also_a_gap(cal: NyseCalendar) -> None:
    rows = _one_bad(("2021-07-06", 11.0, 11.5, 10.8, 11.1, 0.0))
    result = validate_bars("X", bars(rows), cal)
    assert len(result.rejected) == 1
    assert result.gaps == []


def test_rounding_level_ohlc_noise_is_kept_and_repaired(cal: NyseCalendar) -> None:
    close = 11.1
    row = ("2021-07-06", 11.0, close * (1 - 1e-15), 10.8, close, 900.0)
    result = validate_bars("X", bars(_one_bad(row)), cal)
    assert result.rejected == []
    kept = result.clean_frame.loc["2021-07-06"]
    assert kept["high"] >= max(kept["open"], kept["close"])


def test_unsorted_input_is_sorted(cal: NyseCalendar) -> None:
    result = validate_bars("X", bars(list(reversed(GOOD))), cal)
    assert result.clean_frame.index.is_monotonic_increasing
    assert result.ok


def test_missing_column_is_a_validation_error(cal: NyseCalendar) -> None:
    with pytest.raises(ValidationError, match="volume"):
        validate_bars("X", bars(GOOD).drop(columns="volume"), cal)


def test_real_amd_placeholder_bar_is_rejected(cal: NyseCalendar) -> None:
    raw = pd.read_csv(DATA_DIR / "AMD.csv", parse_dates=["date"])
    result = validate_bars("AMD", raw, cal)
    assert [r.day for r in result.rejected] == [date(2015, 1, 2)]
    assert result.rejected[0].code == "zero_volume"
    assert "placeholder" in result.rejected[0].reason
    assert result.gaps == []
    assert pd.Timestamp("2015-01-02") not in result.clean_frame.index
    assert len(result.clean_frame) == len(raw) - 1


def test_the_rest_of_the_real_data_is_clean() -> None:
    source = CsvMarketData(DATA_DIR)
    symbols = source.available_symbols()
    assert len(symbols) == 32
    assert "SPY" in symbols
    dirty = {s: source.validation(s) for s in symbols if not source.validation(s).ok}
    assert list(dirty) == ["AMD"]


# -- CSV source -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def csv_source() -> CsvMarketData:
    return CsvMarketData(DATA_DIR)


def test_csv_source_is_market_data(csv_source: CsvMarketData) -> None:
    assert isinstance(csv_source, MarketData)


def test_csv_bars_are_inclusive_and_skip_the_placeholder(csv_source: CsvMarketData) -> None:
    frames = csv_source.get_daily_bars(["amd", "SPY"], date(2014, 12, 31), date(2015, 1, 6))
    assert set(frames) == {"AMD", "SPY"}
    assert list(frames["SPY"].index.date) == [
        date(2014, 12, 31),
        date(2015, 1, 2),
        date(2015, 1, 5),
        date(2015, 1, 6),
    ]
    assert date(2015, 1, 2) not in set(frames["AMD"].index.date)
    frames["SPY"].loc[:, "close"] = 0.0  # callers get copies
    again = csv_source.get_daily_bars(["SPY"], date(2015, 1, 2), date(2015, 1, 2))
    assert again["SPY"]["close"].iloc[0] > 0


@pytest.mark.parametrize("symbol", ["NOPE", "../daily/SPY", "", "SPY.csv"])
def test_csv_unknown_symbols_are_not_found(csv_source: CsvMarketData, symbol: str) -> None:
    with pytest.raises(NotFoundError):
        csv_source.get_daily_bars([symbol], date(2020, 1, 1), date(2020, 2, 1))
    with pytest.raises(NotFoundError):
        csv_source.get_latest_price(symbol)


def test_csv_as_of_hides_the_future() -> None:
    source = CsvMarketData(DATA_DIR)
    last = source.get_latest_price("SPY")
    source.as_of = date(2020, 3, 22)  # a Sunday: Friday's close is the latest
    friday = source.get_daily_bars(["SPY"], date(2020, 3, 20), date(2020, 3, 20))["SPY"]
    assert source.get_latest_price("SPY") == friday["close"].iloc[0]
    assert source.get_latest_price("SPY") != last
    later = source.get_daily_bars(["SPY"], date(2020, 3, 1), date(2020, 12, 31))["SPY"]
    assert later.index.max() == pd.Timestamp("2020-03-20")
    source.as_of = date(1990, 1, 1)
    with pytest.raises(NotFoundError):
        source.get_latest_price("SPY")


def test_start_after_end_is_a_validation_error(csv_source: CsvMarketData) -> None:
    with pytest.raises(ValidationError):
        csv_source.get_daily_bars(["SPY"], date(2020, 2, 1), date(2020, 1, 1))


# -- synthetic source -------------------------------------------------------------------------

START, END = date(2017, 1, 3), date(2021, 12, 31)


@pytest.fixture(scope="module")
def synthetic() -> dict[str, pd.DataFrame]:
    source = SyntheticMarketData(start=START, end=END, seed=7)
    return source.get_daily_bars(source.available_symbols(), START, END)


def _log_returns(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.DataFrame({s: np.log(f["close"]).diff() for s, f in frames.items()}).dropna()


def test_synthetic_is_deterministic_per_seed() -> None:
    a = SyntheticMarketData(["AAPL", "XOM"], START, END, seed=3)
    b = SyntheticMarketData(["XOM", "AAPL", "KO"], START, END, seed=3)
    c = SyntheticMarketData(["AAPL", "XOM"], START, END, seed=4)
    fa = a.get_daily_bars(["AAPL", "SPY"], START, END)
    fb = b.get_daily_bars(["AAPL", "SPY"], START, END)
    fc = c.get_daily_bars(["AAPL"], START, END)
    pd.testing.assert_frame_equal(fa["AAPL"], fb["AAPL"])
    pd.testing.assert_frame_equal(fa["SPY"], fb["SPY"])
    assert not fa["AAPL"].equals(fc["AAPL"])


def test_synthetic_includes_spy_and_refuses_unknown_symbols() -> None:
    source = SyntheticMarketData(["AAPL"], START, END, seed=1)
    assert source.available_symbols() == ["AAPL", "SPY"]
    assert isinstance(source, MarketData)
    with pytest.raises(NotFoundError):
        source.get_latest_price("MSFT")


def test_synthetic_bars_are_valid_sessions(
    cal: NyseCalendar, synthetic: dict[str, pd.DataFrame]
) -> None:
    sessions = cal.sessions_index(START, END)
    for symbol, frame in synthetic.items():
        assert frame.index.equals(sessions), symbol
        assert frame.index.name == "date"
        result = validate_bars(symbol, frame, cal)
        assert result.ok, (symbol, result.rejected[:3], result.gaps[:3])
        assert (frame["volume"] > 0).all()


def test_spy_daily_vol_is_about_one_percent(synthetic: dict[str, pd.DataFrame]) -> None:
    vol = _log_returns(synthetic)["SPY"].std()
    assert 0.006 <= vol <= 0.016


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_spy_vol_holds_across_seeds(seed: int) -> None:
    source = SyntheticMarketData(["SPY"], START, END, seed=seed)
    vol = _log_returns(source.get_daily_bars(["SPY"], START, END))["SPY"].std()
    assert 0.006 <= vol <= 0.016


def test_stock_vols_are_realistic(synthetic: dict[str, pd.DataFrame]) -> None:
    vols = _log_returns(synthetic).drop(columns="SPY").std()
    assert vols.between(0.009, 0.032).all(), vols.sort_values()


def test_symbols_co_move(synthetic: dict[str, pd.DataFrame]) -> None:
    corr = _log_returns(synthetic).corr().to_numpy()
    pairs = corr[np.triu_indices_from(corr, k=1)]
    assert (pairs > 0).all()
    assert pairs.mean() > 0.15
    same_sector = _log_returns(synthetic)[["KO", "PEP"]].corr().iloc[0, 1]
    cross_sector = _log_returns(synthetic)[["KO", "NVDA"]].corr().iloc[0, 1]
    assert same_sector > cross_sector


def test_returns_have_fat_tails(synthetic: dict[str, pd.DataFrame]) -> None:
    rets = _log_returns(synthetic)
    centred = rets - rets.mean()
    kurtosis = (centred**4).mean() / (centred**2).mean() ** 2  # Pearson: normal = 3
    assert (kurtosis > 3).all(), kurtosis.sort_values()


def test_synthetic_latest_price_respects_as_of() -> None:
    source = SyntheticMarketData(["AAPL"], START, END, seed=5)
    frame = source.get_daily_bars(["AAPL"], START, END)["AAPL"]
    assert source.get_latest_price("AAPL") == frame["close"].iloc[-1]
    source.as_of = date(2019, 6, 15)
    assert source.get_latest_price("AAPL") == frame.loc[:"2019-06-15", "close"].iloc[-1]
