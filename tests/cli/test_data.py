"""`flask --app app data import|download` fill the bar cache with progress and a summary."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

from flask import Flask
from sqlalchemy import func, select

from app.extensions import db
from app.store.orm import BarRecord
from tests.api.test_market_api import PAPER
from tests.fakes.fake_alpaca import FakeAlpaca
from tests.support import SHARED_DATA


def bar_count(symbol: str) -> int:
    with db.session() as session:
        return (
            session.scalar(
                select(func.count()).select_from(BarRecord).where(BarRecord.symbol == symbol)
            )
            or 0
        )


def test_import_reports_rejected_placeholder_bar(app: Flask) -> None:
    args = [
        "data",
        "import",
        "--data-dir",
        str(SHARED_DATA),
        "--symbols",
        "AMD,KO",
        "--start",
        "2014-06-01",
        "--end",
        "2015-06-30",
    ]
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 0, result.output
    assert "2 symbols" in result.output
    assert "zero_volume=1" in result.output
    with db.session() as session:
        amd_days = set(session.scalars(select(BarRecord.day).where(BarRecord.symbol == "AMD")))
    assert date(2015, 1, 2) not in amd_days
    assert date(2015, 1, 5) in amd_days
    again = app.test_cli_runner().invoke(args=args)
    assert "0 upstream requests" in again.output


def test_import_rejects_bad_symbol(app: Flask) -> None:
    result = app.test_cli_runner().invoke(
        args=["data", "import", "--data-dir", str(SHARED_DATA), "--symbols", "A$B"]
    )
    assert result.exit_code != 0


def test_download_from_alpaca_into_cache(make_app: Callable[..., Flask]) -> None:
    with FakeAlpaca(SHARED_DATA, today=date(2021, 12, 31)) as fake:
        app = make_app(**PAPER, ALPACA_BASE_URL=fake.base_url, ALPACA_DATA_URL=fake.base_url)
        result = app.test_cli_runner().invoke(
            args=[
                "data",
                "download",
                "--symbols",
                "AAPL,MSFT,SPY",
                "--start",
                "2021-01-01",
                "--end",
                "2021-12-31",
            ]
        )
        assert result.exit_code == 0, result.output
        assert fake.count("GET /v2/stocks/bars") == 1  # three symbols, one request
    assert bar_count("AAPL") == bar_count("SPY") == 252


def test_download_needs_keys(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["data", "download", "--start", "2021-01-01"])
    assert result.exit_code != 0
    assert "ALPACA_API_KEY" in result.output
