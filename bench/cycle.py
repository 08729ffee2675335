"""The decision cycle and the guard cycle: 32 symbols in paper mode against the loopback fake
Alpaca (one session per round: the decision before the open, the fake's open, two guard cycles,
the fake's close), and 500 synthetic symbols in sim mode (one replayed session per tick); models
trained and bars cached beforehand.

    .venv/bin/python -m bench.cycle [--cycles 10]
    .venv/bin/python -m bench.cycle --universe-size 646 [--cycles 5]

`--universe-size N` runs the paper rounds instead over N stocks of ../shared/data/broad (up to
587: those trading 2019-2021; above: every stock, delisted ones too) plus SPY, with a small
model trained on them: the first decision fills the empty bar cache, the others read it.

Prints p50/p95 seconds per cycle and broker requests per cycle (per endpoint for the broad
universe); asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["ENV_FILE"] = ""

from sqlalchemy import select

from app import create_app
from app.ai.store import ModelStore
from app.ai.training import train
from app.config import DEFAULT_WATCHLIST, Settings
from app.container import services
from app.extensions import db
from app.market.calendar import NyseCalendar
from app.market.sources import CsvMarketData, SyntheticMarketData
from app.store import migrations
from app.store.orm import SignalRecord
from tests.fakes.broad import broad_data_dir, broad_symbols
from tests.fakes.fake_alpaca import FakeAlpaca
from tests.support import SHARED_DATA

QUICK = {"lightgbm": {"num_boost_round": 150}, "xgboost": {"num_boost_round": 150}}
#: The label the settings ask for by default; a model trained for another one only HOLDs.
LABEL = {
    "horizon": Settings.model_fields["ai_prediction_horizon_days"].default,
    "normalisation": Settings.model_fields["ai_label_normalisation"].default,
}
RAW_LABEL = {**LABEL, "normalisation": "raw"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def paper_settings(
    fake: FakeAlpaca, url: str, tmp: Path, models: Path, **overrides: str
) -> dict[str, str]:
    """A paper app against the loopback fake, with loose floors so the sessions place orders."""
    return {
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
        "MODELS_DIR": str(models),
        "AI_CONFIDENCE_THRESHOLD": "0.5",
        "AI_SIGNAL_BUY_THRESHOLD": "0.0005",
        **overrides,
    }


def paper_32(cycles: int, tmp: Path) -> None:
    symbols = DEFAULT_WATCHLIST.split(",")
    bars = CsvMarketData(SHARED_DATA).get_daily_bars(symbols, date(2019, 1, 1), date(2021, 11, 26))
    model = train(bars, bars["SPY"], "pooled", date(2021, 11, 24), QUICK, **LABEL)
    ModelStore(tmp / "models").save(model)
    url = f"sqlite:///{tmp}/paper.db"
    migrations.upgrade(url)
    with FakeAlpaca(SHARED_DATA, today=date(2021, 11, 29)) as fake:
        app = create_app(paper_settings(fake, url, tmp, tmp / "models", LOG_LEVEL="WARNING"))
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
                orders += len(result.orders)
                fake.open_session(day)
                for _ in range(2):  # the first places the protective exits, the second checks
                    guard = trading.run_guard()
                    if i:
                        guards.append(guard.seconds)
                fake.close_session(day)
    print(
        f"paper, 32 symbols vs loopback fake Alpaca, {cycles} sessions: decision cycle p50 "
        f"{statistics.median(decisions):.3f} s, p95 {percentile(decisions, 0.95):.3f} s "
        f"(broker requests median {statistics.median(requests):.0f}, max {max(requests)}); "
        f"guard cycle p50 {statistics.median(guards):.3f} s, p95 "
        f"{percentile(guards, 0.95):.3f} s; {orders} orders"
    )


def paper_broad(size: int, cycles: int, tmp: Path) -> None:
    symbols = broad_symbols(size) if size <= 587 else broad_symbols(size, since=None)
    data = broad_data_dir(tmp / "broad", symbols)
    started = time.perf_counter()
    bars = CsvMarketData(data).get_daily_bars(
        [*symbols, "SPY"], date(2019, 1, 2), date(2021, 11, 26)
    )
    bars = {s: f for s, f in bars.items() if len(f)}
    # Raw 5-session returns: this small model's excess-return predictions sit below zero for
    # every name (no BUY, no order), so the rounds would not exercise orders and guards.
    model = train(
        bars, bars["SPY"], "pooled", date(2021, 10, 1), QUICK, n_lgbm=1, n_xgb=1, **RAW_LABEL
    )
    ModelStore(tmp / "models_broad").save(model)
    trained = time.perf_counter() - started
    url = f"sqlite:///{tmp}/broad.db"
    migrations.upgrade(url)
    with FakeAlpaca(data, today=date(2021, 11, 29)) as fake:
        app = create_app(
            paper_settings(
                fake,
                url,
                tmp,
                tmp / "models_broad",
                ALPACA_TIMEOUT_SECONDS="60",
                # Sessions replay seconds apart here, one a day live: the budget of 200 a
                # minute is checked on each decision's own count, not made to wait between.
                ALPACA_REQUESTS_PER_MINUTE="10000",
                WATCHLIST=",".join(symbols),
                LOG_LEVEL="ERROR",
                AI_LABEL_NORMALISATION=RAW_LABEL["normalisation"],
            )
        )
        with app.app_context():
            trading = services().trading()
            days = [
                d.date()
                for d in NyseCalendar().sessions_index(date(2021, 10, 1), date(2021, 11, 29))
            ][-(cycles + 1) :]
            decisions, guards, orders, signals = [], [], 0, []
            per_decision: list[Counter[str]] = []
            guard_requests: list[int] = []
            for i, day in enumerate(days):
                fake.pre_open(day)
                fake.reset_counts()
                result = trading.run_decision()
                counts = Counter(fake.request_counts)
                if i == 0:
                    cold, cold_counts = result.seconds, counts
                else:
                    decisions.append(result.seconds)
                    per_decision.append(counts)
                signals.append(result.signals)
                orders += len(result.orders)
                fake.open_session(day)
                for _ in range(2):  # the first places the protective exits, the second checks
                    fake.reset_counts()
                    guards.append(trading.run_guard().seconds)
                    guard_requests.append(sum(fake.request_counts.values()))
                fake.close_session(day)
            with db.session() as session:
                actions = Counter(session.scalars(select(SignalRecord.action)))

    def endpoints(counts: Counter[str]) -> str:
        routes: Counter[str] = Counter()
        for route, n in counts.items():
            routes[re.sub(r"/[0-9a-f-]{36}$", "/{id}", route)] += n
        return ", ".join(f"{route} {n}" for route, n in sorted(routes.items()))

    totals = [sum(c.values()) for c in per_decision]
    typical = per_decision[totals.index(sorted(totals)[len(totals) // 2])]
    print(
        f"paper, broad universe of {len(symbols)} stocks + SPY vs loopback fake Alpaca, "
        f"{cycles} sessions after a cold one (model trained in {trained:.0f} s):\n"
        f"  cold decision (empty bar cache) {cold:.2f} s, {sum(cold_counts.values())} broker "
        f"requests: {endpoints(cold_counts)}\n"
        f"  decision cycle p50 {statistics.median(decisions):.2f} s, p95 "
        f"{percentile(decisions, 0.95):.2f} s; broker requests median "
        f"{statistics.median(totals):.0f}, max {max(totals)} (budget 200 a minute): "
        f"{endpoints(typical)}\n"
        f"  guard cycle p50 {statistics.median(guards):.2f} s, requests median "
        f"{statistics.median(guard_requests):.0f}, max {max(guard_requests)}; signals per "
        f"decision median {statistics.median(signals):.0f} (in all {dict(actions)}); "
        f"{orders} orders"
    )


def sim_500(cycles: int, tmp: Path) -> None:
    symbols = ["SPY"] + [f"S{i:03d}" for i in range(499)]
    market = SyntheticMarketData(symbols=symbols, end=date(2022, 12, 30), seed=7)
    bars = market.get_daily_bars(symbols, date(2019, 1, 2), date(2020, 12, 30))
    ModelStore(tmp / "models500").save(
        train(bars, bars["SPY"], "pooled", date(2020, 12, 28), QUICK, n_lgbm=1, n_xgb=1, **LABEL)
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
    parser.add_argument(
        "--universe-size",
        type=int,
        default=0,
        help="paper rounds over this many broad-universe stocks (300-646) instead",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.universe_size:
            paper_broad(args.universe_size, args.cycles, Path(tmp))
            return
        paper_32(args.cycles, Path(tmp))
        sim_500(args.cycles, Path(tmp))


if __name__ == "__main__":
    main()
