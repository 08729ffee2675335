"""Account, positions, prices and bars: in sim mode, and in paper mode through the real
alpaca-py against the loopback fake Alpaca."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import Auth
from tests.fakes.fake_alpaca import FakeAlpaca
from tests.support import SHARED_DATA

PAPER = {
    "TRADING_MODE": "paper",
    "ALPACA_API_KEY": "key",
    "ALPACA_API_SECRET": "secret",
    "ADMIN_PASSWORD": "a-long-admin-password",
    "JWT_SECRET_KEY": "j" * 40,
    "SECRET_KEY": "s" * 40,
    # generous for a loaded 2-core machine; the fault tests below shorten them
    "ALPACA_TIMEOUT_SECONDS": 5,
    "ALPACA_RETRY_SECONDS": 0.5,
}


class PaperClient:
    def __init__(self, app: Flask, fake: FakeAlpaca) -> None:
        self.fake = fake
        self.client = app.test_client()
        token = Auth(self.client).login("admin", PAPER["ADMIN_PASSWORD"])["access_token"]
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str) -> Any:
        return self.client.get(path, headers=self.headers)


@pytest.fixture
def paper(make_app: Callable[..., Flask], request: pytest.FixtureRequest) -> Iterator[PaperClient]:
    timeout = getattr(request, "param", PAPER["ALPACA_TIMEOUT_SECONDS"])
    with FakeAlpaca(SHARED_DATA, today=date(2021, 12, 31)) as fake:
        fake.set_clock(datetime(2021, 12, 30, 15, 0, tzinfo=UTC), is_open=True)
        app = make_app(
            **{**PAPER, "ALPACA_TIMEOUT_SECONDS": timeout},
            ALPACA_BASE_URL=fake.base_url,
            ALPACA_DATA_URL=fake.base_url,
        )
        yield PaperClient(app, fake)


@pytest.fixture
def sim(make_app: Callable[..., Flask]) -> tuple[FlaskClient, dict[str, str]]:
    client = make_app(DATA_DIR=str(SHARED_DATA)).test_client()
    return client, Auth(client).headers()


def test_sim_account_positions_price_and_bars(sim: tuple[FlaskClient, dict[str, str]]) -> None:
    client, headers = sim
    account = client.get("/api/account/info", headers=headers).get_json()
    assert account["broker"] == "sim"
    assert account["cash"] == account["equity"] == 100_000.0
    assert client.get("/api/positions", headers=headers).get_json() == []
    price = client.get("/api/price/aapl", headers=headers).get_json()
    assert price["symbol"] == "AAPL"
    assert price["as_of"] == "2021-01-04"  # the replay session: no price from its future
    bars = client.get("/api/market/bars/AAPL?limit=5", headers=headers).get_json()["bars"]
    assert len(bars) == 5
    assert bars[-1]["date"] <= "2021-01-04"
    assert bars[-1]["close"] == pytest.approx(price["price"])
    connection = client.get("/api/test/connection", headers=headers).get_json()
    assert connection["ok"] is True
    assert connection["broker"] == "sim"


@pytest.mark.parametrize(
    ("path", "status", "field"),
    [
        ("/api/price/A$B", 400, "symbol"),
        ("/api/price/TOOLONGSYMBOL", 400, "symbol"),
        ("/api/price/ZZZZ", 404, "symbol"),
        ("/api/market/bars/AAPL?limit=0", 400, "limit"),
        ("/api/market/bars/AAPL?limit=10001", 400, "limit"),
        ("/api/market/bars/AAPL?limit=ten", 400, "limit"),
        ("/api/market/bars/AAPL?start=2020-13-01", 400, "start"),
        ("/api/market/bars/AAPL?start=2020-02-01&end=2020-01-01", 400, "start"),
        ("/api/market/bars/AAPL?bogus=1", 400, "bogus"),
        ("/api/market/bars/ZZZZ", 404, "symbol"),
    ],
)
def test_bad_market_requests(
    sim: tuple[FlaskClient, dict[str, str]], path: str, status: int, field: str
) -> None:
    client, headers = sim
    response = client.get(path, headers=headers)
    assert response.status_code == status, response.get_json()
    assert field in response.get_json()["error"]["message"]


def test_paper_account_positions_price_and_bars(paper: PaperClient) -> None:
    paper.fake.set_position("AAPL", 10, 150.0)
    account = paper.get("/api/account/info").get_json()
    assert account["broker"] == "alpaca-paper"
    assert account["cash"] == pytest.approx(paper.fake.cash)
    positions = paper.get("/api/positions").get_json()
    assert [(p["symbol"], p["qty"], p["avg_entry_price"]) for p in positions] == [
        ("AAPL", 10.0, 150.0)
    ]
    paper.fake.set_price("MSFT", 333.25)
    assert paper.get("/api/price/MSFT").get_json()["price"] == pytest.approx(333.25)
    bars = paper.get("/api/market/bars/AAPL?start=2021-12-01&end=2021-12-10&limit=3")
    assert [b["date"] for b in bars.get_json()["bars"]] == [
        "2021-12-08",
        "2021-12-09",
        "2021-12-10",
    ]
    assert paper.get("/api/test/connection").get_json()["broker"] == "alpaca-paper"


def test_many_clients_share_one_broker_call(paper: PaperClient) -> None:
    paper.fake.reset_counts()
    for _ in range(25):
        assert paper.get("/api/positions").status_code == 200
    assert paper.fake.count("GET /v2/positions") == 1


@pytest.mark.parametrize("kind", ["500", "hang", "drop", "429"])
@pytest.mark.parametrize("paper", [0.5], indirect=True)  # a hang fails fast
def test_broker_faults_are_503_json(paper: PaperClient, kind: str) -> None:
    paper.fake.inject("GET /v2/account", kind, times=50)
    started = datetime.now(UTC)
    response = paper.get("/api/account/info")
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert error["code"] in {"broker_unavailable", "broker_rate_limited"}
    assert "account" in error["message"]
    assert "Traceback" not in error["message"]
    assert (datetime.now(UTC) - started).total_seconds() < 10  # no hang


def test_unknown_symbol_on_alpaca_is_404(paper: PaperClient) -> None:
    response = paper.get("/api/price/ZZZZ")
    assert response.status_code == 404


UNKNOWN_SYMBOL_ROUTES = [
    "/api/market/bars/ZZZZQ?limit=5",
    "/api/price/ZZZZQ",
    "/api/trading/signal/ZZZZQ",
]


@pytest.mark.parametrize("path", UNKNOWN_SYMBOL_ROUTES)
def test_symbol_alpaca_does_not_list_is_404_naming_it(paper: PaperClient, path: str) -> None:
    response = paper.get(path)
    assert response.status_code == 404, response.get_json()
    error = response.get_json()["error"]
    assert "ZZZZQ" in error["message"]
    assert error["field"] == "symbol"


def test_asset_lookup_is_cached(paper: PaperClient) -> None:
    paper.fake.reset_counts()
    for _ in range(5):
        assert paper.get("/api/market/bars/ZZZZQ?limit=5").status_code == 404
        assert paper.get("/api/market/bars/AAPL?limit=5").status_code == 200
    assert paper.fake.count("GET /v2/assets/ZZZZQ") == 1
    assert paper.fake.count("GET /v2/assets") == 1  # AAPL: from the day's asset listing
    assert paper.fake.count("GET /v2/assets/AAPL") == 0


@pytest.mark.parametrize("path", UNKNOWN_SYMBOL_ROUTES)
def test_symbol_the_sim_data_lacks_is_404(
    sim: tuple[FlaskClient, dict[str, str]], path: str
) -> None:
    client, headers = sim
    response = client.get(path, headers=headers)
    assert response.status_code == 404, response.get_json()
    assert "ZZZZQ" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("path", ["/api/market/bars/AA$PL", "/api/price/" + "A" * 30])
def test_malformed_symbol_stays_400(sim: tuple[FlaskClient, dict[str, str]], path: str) -> None:
    client, headers = sim
    assert client.get(path, headers=headers).status_code == 400
