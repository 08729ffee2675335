"""Research round 3 (docs/research.md, "Round 3 protocol"): the grid, its baselines and the rule.

Every run goes through the path `flask --app app backtest` takes (``plan_request`` ->
walk-forward windows -> ``run_planned``), with Settings overridden per configuration, so a
default chosen here reproduces with the default command. Walk-forward windows depend only on
(universe, features, horizon, placebo seed): each such stream is computed once, kept on disk,
and replayed by the four (portfolio, exits) rules.

    nice -n 10 .venv/bin/python -m bench.research_round3 --predict [--streams NAME,...]
    nice -n 10 .venv/bin/python -m bench.research_round3 --replay      # every configuration
    .venv/bin/python -m bench.research_round3 --table [holdout]        # rows, verdicts, ranking
    nice -n 10 .venv/bin/python -m bench.research_round3 --holdout NAME[,NAME]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from app.backtest.deflated_sharpe import deflated_sharpe_ratio
from app.backtest.report import to_report
from app.backtest.requests import (
    BacktestRequest,
    PlannedRun,
    collect_locally,
    plan_request,
    run_planned,
)
from app.backtest.walk_forward_window import WindowResult
from app.config import Settings
from app.market.sources import CsvMarketData
from app.market.universe import Universe, resolve_universe
from bench.research_runs import (
    ALL_ROUNDS_TRIALS,
    ROUND1_SHARPES,
    TRIALS_BY_ROUND,
    figures,
    median_of,
    trial_sharpes,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT_DIR = ROOT / "bench" / "out" / "research3"
PERIODS = {
    "selection": (date(2008, 1, 1), date(2015, 12, 31)),
    "holdout": (date(2016, 1, 1), date(2021, 12, 31)),
}
UNIVERSES = {"watchlist": "daily", "broad": "broad"}
FEATURES = ("seed", "extended")
HORIZONS = (5, 21)
PLACEBO_SEEDS = (0, 1, 2)
#: Exits (stop-loss, take-profit): the seed's preset and the wide pair; both stay at the broker.
EXITS = {"seed": (-0.05, 0.10), "wide": (-0.15, 0.30)}
PORTFOLIOS = ("seed3", "book7")
#: Round 2's 8 configurations, annualised 2008-2015 Sharpe (research.md, round 2's table; their
#: JSON is not kept): with round 1's, the earlier trials' spread for the deflated Sharpe ratio.
ROUND2_SHARPES = (0.92, 0.82, 0.67, 0.70, 0.60, 0.35, 0.30, 0.51)
#: Round 3's configurations, counted in N of the deflated Sharpe ratio (research.md).
ROUND3_TRIALS = len(UNIVERSES) * len(FEATURES) * len(HORIZONS) * len(PORTFOLIOS) * len(EXITS)
assert TRIALS_BY_ROUND[3] == ROUND3_TRIALS
N_TRIALS = ALL_ROUNDS_TRIALS


@dataclass(frozen=True)
class Stream:
    """What the walk-forward predictions depend on."""

    universe: str
    features: str
    horizon: int

    @property
    def name(self) -> str:
        return f"{self.universe}_{self.features}_h{self.horizon}"


@dataclass(frozen=True)
class Config:
    stream: Stream
    portfolio: str
    exits: str

    @property
    def name(self) -> str:
        return f"r3_{self.stream.name}_{self.portfolio}_{self.exits}"

    @property
    def changes(self) -> int:
        """Settings changed from today's defaults (watchlist, seed, h5, seed3, seed exits)."""
        s = self.stream
        return sum(
            (
                s.universe != "watchlist",
                s.features != "seed",
                s.horizon != 5,
                self.portfolio != "seed3",
                self.exits != "seed",
            )
        )


STREAMS = [Stream(u, f, h) for u in UNIVERSES for f in FEATURES for h in HORIZONS]
GRID = [Config(s, p, x) for s in STREAMS for p in PORTFOLIOS for x in EXITS]
assert len(GRID) == ROUND3_TRIALS


def settings_for(config: Config | Stream) -> Settings:
    """The configuration's levers, each set, as a user would in .env; every other setting is
    the default. A Stream alone (momentum, predictions) gets `seed3` and the seed's exits, so
    no row depends on what the defaults are when it runs."""
    stream = config.stream if isinstance(config, Config) else config
    portfolio, exits = (
        (config.portfolio, config.exits) if isinstance(config, Config) else ("seed3", "seed")
    )
    stop, target = EXITS[exits]
    book = portfolio == "book7"
    overrides: dict[str, Any] = {
        "universe": stream.universe,
        "ai_feature_set": stream.features,
        "ai_prediction_horizon_days": stream.horizon,
        "risk_stop_loss_pct": stop,
        "risk_take_profit_pct": target,
        "strategy_portfolio": "book" if book else "signals",
        "strategy_entry_top_k": 7 if book else 3,
        "strategy_rebalance_every": stream.horizon if book else 0,
    }
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]


def universe_of(name: str) -> tuple[CsvMarketData, Universe, str]:
    data_dir = DATA / UNIVERSES[name]
    market = CsvMarketData(data_dir)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    return market, resolve_universe(name, settings.watchlist, market), str(data_dir)


def plan_for(
    config: Config | Stream, period: str, *, model: str = "walk_forward", placebo: bool = False
) -> PlannedRun:
    stream = config.stream if isinstance(config, Config) else config
    market, universe, data_dir = universe_of(stream.universe)
    request = BacktestRequest(
        symbols=universe.tradable,
        feature_symbols=universe.feature_only,
        start=PERIODS[period][0],
        end=PERIODS[period][1],
        model=model,  # type: ignore[arg-type]
        placebo=placebo,
    )
    return plan_request(request, settings_for(config), market, data_dir=data_dir)


def windows_path(stream: Stream, period: str, seed: int | None) -> Path:
    kind = "real" if seed is None else f"placebo{seed}"
    return OUT_DIR / f"windows_{period}_{stream.name}_{kind}.pkl"


def with_seed(plan: PlannedRun, seed: int | None) -> PlannedRun:
    """The plan's walk-forward with placebo seed `seed` (None: the real model)."""
    assert plan.walk_forward is not None
    wf = replace(plan.walk_forward, shuffle_labels=seed is not None, seed=seed or 0)
    return replace(plan, walk_forward=wf, request=replace(plan.request, placebo=seed is not None))


def windows_for(plan: PlannedRun, stream: Stream, period: str, seed: int | None) -> list[Any]:
    """The stream's window results, computed once and kept on disk."""
    path = windows_path(stream, period, seed)
    if path.exists():
        return list(pickle.loads(path.read_bytes()))  # noqa: S301 (our own file)
    started = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 60 or done == total:
            last[0] = time.perf_counter()
            print(f"  {stream.name} seed {seed}: window {done}/{total}", flush=True)

    results: list[WindowResult] = collect_locally(with_seed(plan, seed), progress)
    partial = path.with_suffix(".partial")
    partial.write_bytes(pickle.dumps(results))
    partial.replace(path)  # a reader never sees half a file
    print(
        f"{period} {stream.name} {'real' if seed is None else f'placebo {seed}'}: "
        f"{len(results)} windows in {time.perf_counter() - started:.0f}s",
        flush=True,
    )
    return results


def replay(
    config: Config, period: str, *, report_dir: Path | None = None, lazy: bool = False
) -> dict[str, Any]:
    """One configuration beside its three placebos (windows from the stream's cache).

    `lazy`: the placebos only when the configuration passes every other test of the rule.
    The rule's outcome is the same (a configuration that fails a test is not eligible, and
    the ranking only reads the eligible's placebos); a broad placebo stream costs about ten
    minutes of this machine's two cores."""
    plan = plan_for(config, period)
    out: dict[str, Any] = {"config": config.name, "period": period, "placebos": []}
    for seed in (None, *PLACEBO_SEEDS):
        if seed is not None and lazy:
            fails = verdict(out, momentum(config.stream.universe, period))["fails"]
            if set(fails) - {"placebo"}:
                out["placebos_skipped"] = f"fails {', '.join(fails)} whatever its placebo"
                break
        planned = with_seed(plan, seed)
        result = run_planned(planned, windows=windows_for(plan, config.stream, period, seed))
        if seed is None:
            out["real"] = figures(result)
        else:
            out["placebos"].append(figures(result))
        if report_dir is not None:
            kind = "" if seed is None else f"_placebo{seed}"
            path = report_dir / f"{config.name}{kind}.json"
            path.write_text(json.dumps(to_report(result), indent=1))
    return out


def momentum(universe: str, period: str, rule: str = "protocol") -> dict[str, Any]:
    """The plain factor rule on the universe's files: 12-1 momentum, top 7, monthly (a fixed
    baseline: not tuned, not a trial). "protocol": the rule's baseline, round 2's sizing and
    the seed's exits; "book": the same signals through the defaults' book (7 names at the cap,
    -15 % / +30 %), what `flask --app app backtest --model momentum` runs with the defaults,
    printed beside it so the baseline is not handicapped by sizing or stops the strategy has not."""
    suffix = "" if rule == "protocol" else "_book"
    path = OUT_DIR / f"{period}_momentum_{universe}{suffix}.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    config = (
        Config(Stream(universe, "seed", 5), "seed3", "seed")
        if rule == "protocol"
        else Config(Stream(universe, "seed", 21), "book7", "wide")
    )
    plan = plan_for(config, period, model="momentum")
    result = run_planned(plan)
    fig = figures(result)
    path.write_text(json.dumps(fig))
    (OUT_DIR / f"{period}_momentum_{universe}{suffix}_report.json").write_text(
        json.dumps(to_report(result), indent=1)
    )
    return fig


def verdict(data: dict[str, Any], mom: dict[str, Any]) -> dict[str, Any]:
    """Round 3's selection rule (research.md), step 1 and the ranking margin of step 2."""
    real = data["real"]
    spy = real["benchmarks"].get("spy_buy_and_hold", {})
    spy_sharpe = spy.get("sharpe_ratio") or 0.0
    spy_dd = spy.get("max_drawdown") or -1.0
    placebo = median_of([p["sharpe"] for p in data.get("placebos", [])])
    sharpe = real["sharpe"]
    tests = {
        "trades": (real["trades"] or 0) >= 50,
        "exposure": (real["exposure"] or 0.0) >= 0.5,
        "spy": sharpe is not None and sharpe > spy_sharpe,
        "drawdown": real["max_dd"] is not None and real["max_dd"] >= spy_dd,
        "momentum": sharpe is not None and sharpe > (mom["sharpe"] or 0.0),
        "placebo": sharpe is not None and placebo is not None and sharpe > placebo,
    }
    margin = None
    if sharpe is not None and placebo is not None:
        margin = min(sharpe - (mom["sharpe"] or 0.0), sharpe - placebo)
    return {
        "placebo_sharpe": placebo,
        "fails": [name for name, ok in tests.items() if not ok],
        "eligible": all(tests.values()),
        "margin": margin,
    }


def ranking(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Step 2: the eligible by margin; within 0.05 of the best, fewer changes first."""
    eligible = [(v["margin"], name) for name, v in rows.items() if v["eligible"]]
    if not eligible:
        return []
    best = max(m for m, _ in eligible)
    changes = {c.name: c.changes for c in GRID}
    near = sorted(
        (n for m, n in eligible if m >= best - 0.05), key=lambda n: (changes[n], -rows[n]["margin"])
    )
    rest = [n for m, n in sorted(eligible, reverse=True) if n not in near]
    return near + rest


def _f(value: Any, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value * 100:.1f} %" if pct else f"{value:.2f}"


def _fails(v: dict[str, Any], data: dict[str, Any]) -> str:
    if not data.get("placebos"):
        return ", ".join(f if f != "placebo" else "(placebos not run)" for f in v["fails"])
    return ", ".join(v["fails"]) or "eligible"


def table(period: str) -> str:
    """Every stored configuration of `period` with the rule's verdict, and the ranking."""
    rows = [
        "| configuration | Sharpe | CAGR | maxDD | exposure | trades | placebo Sharpe 0/1/2 "
        "(median) | momentum Sharpe (through the book) | SPY Sharpe / maxDD | EW Sharpe | margin | "
        "fails |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts: dict[str, dict[str, Any]] = {}
    for config in GRID:
        path = OUT_DIR / f"{period}_{config.name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        mom = momentum(config.stream.universe, period)
        v = verdicts[config.name] = verdict(data, mom)
        real = data["real"]
        spy = real["benchmarks"].get("spy_buy_and_hold", {})
        ew = real["benchmarks"].get("equal_weight_buy_and_hold", {})
        seeds = " / ".join(_f(p["sharpe"]) for p in data["placebos"]) or "not run"
        rows.append(
            f"| {config.name} | {_f(real['sharpe'])} | {_f(real['cagr'], True)} | "
            f"{_f(real['max_dd'], True)} | {_f(real['exposure'], True)} | {real['trades']} | "
            f"{seeds} ({_f(v['placebo_sharpe'])}) | {_f(mom['sharpe'])} "
            f"({_f(momentum(config.stream.universe, period, 'book')['sharpe'])}) | "
            f"{_f(spy.get('sharpe_ratio'))} / {_f(spy.get('max_drawdown'), True)} | "
            f"{_f(ew.get('sharpe_ratio'))} | {_f(v['margin'])} | "
            f"{_fails(v, data)} |"
        )
    order = ranking(verdicts)
    if period != "selection":  # the rule selects on 2008-2015 only
        return "\n".join(rows)
    rows.append(
        f"\n{len(verdicts)} of {len(GRID)} configurations stored. "
        + (
            f"Rule's ranking of the eligible: {', '.join(order)}; finalists: {order[:2]}"
            if order
            else "No configuration is eligible."
        )
    )
    return "\n".join(rows)


def deflated(period: str, names: Sequence[str]) -> None:
    """DSR of each named configuration with N over all three rounds, the trials' spread from
    rounds 1 and 2's published Sharpes and round 3's stored selection runs."""
    runs = [
        json.loads(p.read_text())["real"]["daily_returns"]
        for p in OUT_DIR.glob("selection_r3_*.json")
    ]
    earlier = (*ROUND1_SHARPES, *ROUND2_SHARPES)
    trials = [s / np.sqrt(252) for s in earlier] + trial_sharpes(runs)
    print(f"deflated Sharpe: N = {N_TRIALS} configurations over rounds 1-3", flush=True)
    for name in names:
        for kind in ("selection", period):
            path = OUT_DIR / f"{kind}_{name}.json"
            if path.exists():
                returns = json.loads(path.read_text())["real"]["daily_returns"]
                dsr = deflated_sharpe_ratio(returns, n_trials=N_TRIALS, trial_sharpes=trials)
                print(f"{name} {kind}: deflated Sharpe {dsr}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--predict", action="store_true", help="compute the streams' windows")
    parser.add_argument("--streams", help="comma-separated stream names (default: all)")
    parser.add_argument("--seeds", default="real,0,1,2", help="real and/or placebo seeds")
    parser.add_argument("--replay", action="store_true", help="run every configuration")
    parser.add_argument("--only", help="comma-separated configuration names")
    parser.add_argument(
        "--table",
        nargs="?",
        const="selection",
        choices=tuple(PERIODS),
        help="print the stored rows of a period (default: selection) with the rule's verdicts",
    )
    parser.add_argument(
        "--lazy-placebos",
        action="store_true",
        help="replay: placebos only for configurations that pass every other test",
    )
    parser.add_argument("--holdout", help="finalists to run once on 2016-2021")
    args = parser.parse_args()
    # The broad files' rejected bars are reported by `python -m bench.broad_data`, not per run.
    logging.getLogger("app.market").setLevel(logging.ERROR)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    if args.table:
        print(table(args.table))
        return
    period = "holdout" if args.holdout else "selection"
    wanted = [w for w in (args.holdout or args.only or "").split(",") if w]
    chosen = [c for c in GRID if not wanted or c.name in wanted]
    if wanted and len(chosen) != len(wanted):
        parser.error(f"unknown configuration among {wanted}")
    if args.predict:
        names = [w for w in (args.streams or "").split(",") if w]
        seeds = [None if s == "real" else int(s) for s in args.seeds.split(",")]
        for stream in (s for s in STREAMS if not names or s.name in names):
            plan = plan_for(stream, period)
            for seed in seeds:
                windows_for(plan, stream, period, seed)
        return
    report_dir = OUT_DIR / "holdout_reports" if args.holdout else None
    if report_dir is not None:
        report_dir.mkdir(exist_ok=True)
    for config in chosen:
        started = time.perf_counter()
        out = replay(config, period, report_dir=report_dir, lazy=args.lazy_placebos)
        (OUT_DIR / f"{period}_{config.name}.json").write_text(json.dumps(out))
        mom = momentum(config.stream.universe, period)
        v = verdict(out, mom)
        print(
            f"{config.name}: Sharpe {_f(out['real']['sharpe'])} exposure "
            f"{_f(out['real']['exposure'], True)} trades {out['real']['trades']} | placebos "
            f"{'/'.join(_f(p['sharpe']) for p in out['placebos']) or 'not run'} | momentum "
            f"{_f(mom['sharpe'])} | margin {_f(v['margin'])} | "
            f"{', '.join(v['fails']) or 'eligible'} | {time.perf_counter() - started:.0f}s",
            flush=True,
        )
    if args.holdout:
        deflated(period, [c.name for c in chosen])


if __name__ == "__main__":
    main()
