"""The decision cycle and the guard cycle: 32 symbols in paper mode against the loopback fake
Alpaca (one session per round: the decision before the open, the fake's open, two guard cycles,
the fake's close), and 500 synthetic symbols in sim mode (one replayed session per tick); models
trained and bars cached beforehand.

    .venv/bin/python -m bench.cycle [--cycles 10]

Prints p50/p95 seconds per cycle and broker requests per cycle; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from datetime import date
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["ENV_FILE"] = ""

from app import create_app
from app.ai.store import ModelStore
from app.ai.training import train
from app.container import services
from app.market.calendar import NyseCalendar
from app.market.sources import CsvMarketData, SyntheticMarketData
from app.store import migrations
from tests.fakes.fake_alpaca import FakeAlpaca
from tests.support import SHARED_DATA

QUICK = {"lightgbm": {"num_boost_round": 150}, "xgboost": {"num_boost_round": 150}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def paper_32(cycles: int, tmp: Path) -> None:
    from app.config import DEFAULT_WATCHLIST

    symbols = DEFAULT_WATCHLIST.split(",")
    bars = CsvMarketData(SHARED_DATA).get_daily_bars(symbols, date(2019, 1, 1), date(2021, 11, 26))
    ModelStore(tmp / "models").save(train(bars, bars["SPY"], "pooled", date(2021, 11, 24), QUICK))
    url = f"sqlite:///{tmp}/paper.db"
    migrations.upgrade(url)
    with FakeAlpaca(SHARED_DATA, today=date(2021, 11, 29)) as fake:
        app = create_app(
            {
                "TRADING_MODE": "paper",
                "ALPACA_API_KEY": "k",
                "ALPACA_API_SECRET": "s",
                "ADMIN_PASSWORD": "bench-password-long",
                "JWT_SECRET_KEY": "j" * 40,
                "SECRET_KEY": "s" * 40,
                "ALPACA_BASE_URL": fake.base_url,
                "ALPACA_DATA_URL": fake.base_url,
                "DATABASE_URL": url,
                "DATABASE_DIR": str(tmp),
                "MODELS_DIR": str(tmp / "models"),
                "LOG_LEVEL": "WARNING",
                "AI_CONFIDENCE_THRESHOLD": "0.5",
                "AI_SIGNAL_BUY_THRESHOLD": "0.0005",
            }
        )
        with app.app_context():
            trading = services().trading()
            calendar = NyseCalendar()
            days = [
                d.date() for d in calendar.sessions_index(date(2021, 10, 1), date(2021, 11, 29))
            ]
            days = days[-(cycles + 1) :]
            decisions, guards, requests, orders = [], [], [], 0
            for i, day in enumerate(days):
                fake.pre_open(day)
                before = sum(fake.request_counts.values())
                result = trading.run_decision()
                if i:  # the first one warms the bar cache and loads the model
                    decisions.append(result.seconds)
                    requests.append(sum(fake.request_counts.values()) - before)
                print("DECISION", day, result.seconds, sum(fake.request_counts.values()) - before, result.status, flush=True)
                orders += len(result.orders)
                fake.open_session(day)
                for _ in range(2):  # the first places the protective exits, the second checks
                    guard = trading.run_guard()
                    if i:
                        guards.append(guard.seconds)
                fake.close_session(day)
            from app import metrics as _m
            print("RATE_WAIT", _m.RATE_LIMIT_WAIT_SECONDS._value.get() if hasattr(_m.RATE_LIMIT_WAIT_SECONDS, "_value") else None, flush=True)
    print(
        f"paper, 32 symbols vs loopback fake Alpaca, {cycles} sessions: decision cycle p50 "
        f"{statistics.median(decisions):.3f} s, p95 {percentile(decisions, 0.95):.3f} s "
        f"(broker requests median {statistics.median(requests):.0f}, max {max(requests)}); "
        f"guard cycle p50 {statistics.median(guards):.3f} s, p95 "
        f"{percentile(guards, 0.95):.3f} s; {orders} orders"
    )


def sim_500(cycles: int, tmp: Path) -> None:
    symbols = ["SPY"] + [f"S{i:03d}" for i in range(499)]
    market = SyntheticMarketData(symbols=symbols, end=date(2022, 12, 30), seed=7)
    bars = market.get_daily_bars(symbols, date(2019, 1, 2), date(2020, 12, 30))
    ModelStore(tmp / "models500").save(
        train(bars, bars["SPY"], "pooled", date(2020, 12, 28), QUICK, n_lgbm=1, n_xgb=1)
    )
    url = f"sqlite:///{tmp}/sim500.db"
    migrations.upgrade(url)
    app = create_app(
        {
            "DATABASE_URL": url,
            "DATABASE_DIR": str(tmp),
            "MODELS_DIR": str(tmp / "models500"),
            "WATCHLIST": ",".join(symbols),
            "SIM_SEED": "7",
            "LOG_LEVEL": "WARNING",
            "RISK_MAX_POSITIONS": "50",
        }
    )
    with app.app_context():
        trading = services().trading()
        trading.run_decision()
        times = [trading.run_decision().seconds for _ in range(cycles)]
    print(
        f"sim, 500 synthetic symbols, {cycles} replayed sessions (decision, open, guard, "
        f"close): p50 {statistics.median(times):.3f} s, "
        f"p95 {percentile(times, 0.95):.3f} s (broker calls are in-process)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paper_32(args.cycles, Path(tmp))
        sim_500(args.cycles, Path(tmp))


if __name__ == "__main__":
    main()
