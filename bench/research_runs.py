"""Issue 14's research runs (protocol: docs/research.md): one line per configuration.

Selection (default): every configuration over 2008-2015, each beside its shuffled-label placebo,
SPY and equal-weight buy-and-hold. Hold-out (``--holdout NAME[,NAME]``): the named finalists over
2016-2021, once. Walk-forward predictions depend only on the label (horizon, normalisation,
placebo), so each label's predictions are computed once and replayed by every entry rule that
uses it; the engine, risk gate and ``strategy.decide`` are the live ones, unchanged.

    nice -n 10 .venv/bin/python -m bench.research_runs [--only NAME,...] [--holdout NAME,...]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd

from app.ai.ensemble import SymbolPrediction
from app.ai.signals import Thresholds
from app.backtest.deflated_sharpe import deflated_sharpe_ratio
from app.backtest.engine import run_backtest
from app.backtest.metrics import compute_metrics
from app.backtest.results import BacktestConfig, BacktestResult
from app.backtest.signals import ModelSignals
from app.backtest.walk_forward import WalkForwardConfig, WalkForwardPredictor
from app.backtest.window import backtest_sessions, history_start, load_bars
from app.config import Settings
from app.market.calendar import NyseCalendar
from app.market.sources import CsvMarketData
from app.trading.risk import RiskLimits
from app.trading.strategy import StrategyConfig

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data" / "daily"
OUT_DIR = ROOT / "bench" / "out" / "research"
PERIODS = {
    "selection": (date(2008, 1, 1), date(2015, 12, 31)),
    "holdout": (date(2016, 1, 1), date(2021, 12, 31)),
}


@dataclass(frozen=True)
class Candidate:
    """One configuration: the label it trains on and the entry rule that trades it."""

    name: str
    horizon: int
    normalisation: str
    buy: float
    sell: float
    confidence: float
    top_k: int

    @property
    def label_key(self) -> tuple[int, str]:
        return self.horizon, self.normalisation


SEED = (0.005, -0.005, 0.7)
LOOSE = (0.001, -0.001, 0.53)
#: Rank-entry floors: a positive expected (excess) return, a better-than-even calibrated
#: chance that its sign is right, and a SELL only on a clearly negative prediction.
FLOORS = (0.0001, -0.005, 0.5)
CANDIDATES = [
    Candidate("seed_h1_raw_abs", 1, "raw", *SEED, 0),
    Candidate("h1_raw_loose", 1, "raw", *LOOSE, 0),
    Candidate("h1_raw_top3", 1, "raw", *FLOORS, 3),
    Candidate("h5_raw_top3", 5, "raw", *FLOORS, 3),
    Candidate("h5_excess_top3", 5, "excess", *FLOORS, 3),
    Candidate("h10_excess_top3", 10, "excess", *FLOORS, 3),
    Candidate("h5_rank_top3", 5, "rank", *FLOORS, 3),
    Candidate("h5_excess_top5", 5, "excess", *FLOORS, 5),
    Candidate("h10_excess_top5", 10, "excess", *FLOORS, 5),
    Candidate("h5_excess_top3_conf55", 5, "excess", FLOORS[0], FLOORS[1], 0.55, 3),
    Candidate("h10_raw_top3", 10, "raw", *FLOORS, 3),
    Candidate("h20_excess_top3", 20, "excess", *FLOORS, 3),
]
#: Round 2 (research.md, "Round 2 protocol"): entries gated by the calibrated probability of
#: beating the watchlist (excess label), each beside three placebo seeds.
ROUND2 = [
    Candidate(f"r2_h{h}_excess_top{k}_conf{int(c * 100)}", h, "excess", FLOORS[0], FLOORS[1], c, k)
    for h in (5, 10)
    for k, c in ((3, 0.52), (3, 0.55), (7, 0.55), (7, 0.52))
]
ROUND2_PLACEBO_SEEDS = (0, 1, 2)
#: Configurations tried in each round (research.md), each counted once over all rounds: round
#: 2's r2_h5_excess_top3_conf55 was round 1's h5_excess_top3_conf55, so round 2 adds 7; round 3
#: (bench/research_round3.py) 32. A new round adds its count here before its hold-out is run.
TRIALS_BY_ROUND = {1: len(CANDIDATES), 2: len(ROUND2) - 1, 3: 32}
#: N of every hold-out's deflated Sharpe ratio: all configurations tried over every round.
ALL_ROUNDS_TRIALS = sum(TRIALS_BY_ROUND.values())


class CachedPredictor:
    """Every session's walk-forward predictions, computed once, replayed by many entry rules."""

    def __init__(self, by_day: dict[date, dict[str, SymbolPrediction]], info: dict[str, Any]):
        self.by_day = by_day
        self.info = info

    def predictions(self, session: date, bars: Any) -> tuple[dict[str, SymbolPrediction], str]:
        return dict(self.by_day.get(session, {})), "wf-cached"

    def describe(self) -> dict[str, Any]:
        return dict(self.info)


def load_period(
    period: tuple[date, date],
) -> tuple[Settings, tuple[str, ...], dict[str, Any], list[date]]:
    """Default settings, every symbol of the data folder, its bars and the period's sessions."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    market = CsvMarketData(DATA_DIR)
    symbols = tuple(s for s in market.available_symbols())
    bars = load_bars(market, symbols, history_start(period[0], settings.train_years), period[1])
    return settings, symbols, bars, backtest_sessions(bars, symbols, *period, NyseCalendar())


def walk_forward(
    bars: dict[str, Any],
    sessions: list[date],
    symbols: tuple[str, ...],
    key: tuple[int, str],
    placebo: bool,
    settings: Settings,
    seed: int = 0,
    cache_as: str | None = None,
) -> CachedPredictor:
    """Every session's predictions; with `cache_as` (a period name) stored on disk, so round
    2's entry rules and re-runs share one walk-forward per label and placebo seed."""
    kind = f"placebo{seed}" if placebo else "real"
    path = OUT_DIR / f"predictions_{cache_as}_h{key[0]}_{key[1]}_{kind}.pkl"
    if cache_as and path.exists():
        by_day, info = pickle.loads(path.read_bytes())  # noqa: S301 (our own file)
        return CachedPredictor(by_day, info)
    horizon, normalisation = key
    config = WalkForwardConfig(
        seed=seed,
        retrain_every=63,
        train_years=settings.train_years,
        horizon=horizon,
        label_normalisation=normalisation,
        shuffle_labels=placebo,
    )
    predictor = WalkForwardPredictor(bars, sessions, symbols, config)
    by_day = {day: predictor.predictions(day, bars)[0] for day in sessions}
    info = predictor.describe()
    info.pop("retrains", None)
    if cache_as:
        path.write_bytes(pickle.dumps((by_day, info)))
    return CachedPredictor(by_day, info)


def backtest(
    bars: dict[str, Any],
    symbols: tuple[str, ...],
    period: tuple[date, date],
    predictor: CachedPredictor,
    cand: Candidate,
    settings: Settings,
    slippage_bps: float,
) -> BacktestResult:
    config = BacktestConfig(
        symbols=symbols,
        start=period[0],
        end=period[1],
        commission_bps=settings.sim_commission_bps,
        slippage_bps=slippage_bps,
        limits=RiskLimits.from_settings(settings),
        strategy=StrategyConfig(
            rebalance_margin=settings.strategy_rebalance_margin,
            min_holding_days=settings.strategy_min_holding_days,
            risk_budget=settings.strategy_risk_budget,
            entry_top_k=cand.top_k,
        ),
    )
    thresholds = Thresholds(cand.buy, cand.sell, cand.confidence)
    return run_backtest(bars, config, ModelSignals(predictor, thresholds))


def figures(result: BacktestResult) -> dict[str, Any]:
    metrics = compute_metrics(result)
    perf = metrics["performance"]
    equity = result.equity_series()
    returns = equity.pct_change().dropna()
    return {
        "sharpe": perf.get("sharpe_ratio"),
        "cagr": perf.get("annualized_return"),
        "max_dd": perf.get("max_drawdown"),
        "turnover": perf.get("turnover"),
        "avg_holding": perf.get("avg_holding_days"),
        "trades": perf.get("num_trades"),
        "exposure": perf.get("exposure"),
        "exit_reasons": metrics.get("exit_reasons"),
        "daily_returns": [float(r) for r in returns.to_numpy()],
        "benchmarks": {
            name: {k: b.get(k) for k in ("sharpe_ratio", "annualized_return", "max_drawdown")}
            for name, b in metrics["benchmarks"].items()
        },
    }


def _f(value: Any, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value * 100:.1f}%" if pct else f"{value:.2f}"


def line(cand: Candidate, real: dict[str, Any], placebo: dict[str, Any], seconds: float) -> str:
    spy = real["benchmarks"].get("spy_buy_and_hold", {})
    ew = real["benchmarks"].get("equal_weight_buy_and_hold", {})
    return (
        f"{cand.name}: Sharpe {_f(real['sharpe'])} CAGR {_f(real['cagr'], True)} "
        f"maxDD {_f(real['max_dd'], True)} turnover {_f(real['turnover'])} "
        f"hold {_f(real['avg_holding'])} trades {real['trades']} | placebo Sharpe "
        f"{_f(placebo['sharpe'])} CAGR {_f(placebo['cagr'], True)} maxDD "
        f"{_f(placebo['max_dd'], True)} trades {placebo['trades']} | "
        f"SPY {_f(spy.get('sharpe_ratio'))}"
        f" / {_f(spy.get('annualized_return'), True)} / {_f(spy.get('max_drawdown'), True)} | EW "
        f"{_f(ew.get('sharpe_ratio'))} / {_f(ew.get('annualized_return'), True)} / "
        f"{_f(ew.get('max_drawdown'), True)} | {seconds:.0f}s"
    )


def deflated(selection: dict[str, dict[str, Any]], name: str, n_trials: int) -> dict[str, float]:
    """DSR of `name`'s 2008-2015 daily returns, chosen among `n_trials` configurations (all
    rounds'), with the spread of the stored round-1 selection runs."""
    sharpes = trial_sharpes(r["real"]["daily_returns"] for r in selection.values())
    returns = np.asarray(selection[name]["real"]["daily_returns"])
    return deflated_sharpe_ratio(returns, n_trials=n_trials, trial_sharpes=sharpes)


def markdown(period_name: str) -> str:
    """The results of every stored run of `period_name` as a markdown table."""
    head = (
        "| config | h | label | entry | Sharpe | CAGR | maxDD | turnover | hold | trades "
        "| placebo Sharpe / CAGR / maxDD | SPY Sharpe / CAGR / maxDD | EW Sharpe / CAGR / maxDD |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for cand in CANDIDATES:
        path = OUT_DIR / f"{period_name}_{cand.name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        real, placebo = data["real"], data["placebo"]
        spy = real["benchmarks"].get("spy_buy_and_hold", {})
        ew = real["benchmarks"].get("equal_weight_buy_and_hold", {})
        entry = (
            f"top {cand.top_k}, buy >= {cand.buy:g}, conf >= {cand.confidence:g}"
            if cand.top_k
            else f"buy >= {cand.buy:g}, conf >= {cand.confidence:g}"
        ) + f", sell <= {cand.sell:g}"

        def trio(d: dict[str, Any], s: str, c: str, m: str) -> str:
            return f"{_f(d.get(s))} / {_f(d.get(c), True)} / {_f(d.get(m), True)}"

        rows.append(
            f"| {cand.name} | {cand.horizon} | {cand.normalisation} | {entry} | "
            f"{_f(real['sharpe'])} | {_f(real['cagr'], True)} | {_f(real['max_dd'], True)} | "
            f"{_f(real['turnover'])} | {_f(real['avg_holding'])} | {real['trades']} | "
            f"{trio(placebo, 'sharpe', 'cagr', 'max_dd')} | "
            f"{trio(spy, 'sharpe_ratio', 'annualized_return', 'max_drawdown')} | "
            f"{trio(ew, 'sharpe_ratio', 'annualized_return', 'max_drawdown')} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated configuration names")
    parser.add_argument("--holdout", help="finalists to run once on 2016-2021")
    parser.add_argument("--slippage-bps", type=float, default=5.0)
    parser.add_argument("--table", choices=list(PERIODS), help="print stored results only")
    parser.add_argument(
        "--placebo-seeds",
        type=int,
        default=0,
        help="with --only/--holdout: this many more placebos (seeds 1..N), the spread of the null",
    )
    parser.add_argument("--round", type=int, choices=(1, 2), default=1)
    parser.add_argument(
        "--n-trials",
        type=int,
        default=ALL_ROUNDS_TRIALS,
        help="N of the hold-out's deflated Sharpe ratio: all configurations tried over every "
        f"round (default {ALL_ROUNDS_TRIALS}: {TRIALS_BY_ROUND} by round)",
    )
    args = parser.parse_args()
    if args.n_trials < 1:
        parser.error("--n-trials must be >= 1")
    if args.round == 2:
        if args.table:
            print(round2_table(args.table))
        else:
            run_round2(args)
        return
    if args.table:
        print(markdown(args.table))
        return
    period_name = "holdout" if args.holdout else "selection"
    wanted = (args.holdout or args.only or "").split(",")
    chosen = [c for c in CANDIDATES if not wanted[0] or c.name in wanted]
    firsts = {c.label_key: i for i, c in reversed(list(enumerate(chosen)))}
    chosen.sort(key=lambda c: firsts[c.label_key])  # one label's predictions at a time
    period = PERIODS[period_name]
    settings, symbols, bars, sessions = load_period(period)
    print(f"{period_name} {period[0]}..{period[1]}: {len(sessions)} sessions", flush=True)
    predictors: dict[tuple[tuple[int, str], bool], CachedPredictor] = {}
    suffix = "" if args.slippage_bps == 5.0 else f"_slip{args.slippage_bps:g}"
    for cand in chosen:
        started = time.perf_counter()
        out: dict[str, Any] = {"candidate": cand.__dict__, "period": period_name}
        for placebo in (False, True):
            key = (cand.label_key, placebo)
            if key not in predictors:
                predictors = {k: v for k, v in predictors.items() if k[0] == cand.label_key}
                predictors[key] = walk_forward(
                    bars, sessions, symbols, cand.label_key, placebo, settings
                )
            result = backtest(
                bars, symbols, period, predictors[key], cand, settings, args.slippage_bps
            )
            out["placebo" if placebo else "real"] = figures(result)
        seconds = time.perf_counter() - started
        path = OUT_DIR / f"{period_name}_{cand.name}{suffix}.json"
        path.write_text(json.dumps(out, default=str))
        print(line(cand, out["real"], out["placebo"], seconds), flush=True)
    for cand in chosen if args.placebo_seeds else []:
        for seed in range(1, args.placebo_seeds + 1):
            predictor = walk_forward(
                bars, sessions, symbols, cand.label_key, True, settings, seed=seed
            )
            result = backtest(bars, symbols, period, predictor, cand, settings, args.slippage_bps)
            fig = figures(result)
            path = OUT_DIR / f"{period_name}_{cand.name}{suffix}_placebo_seed{seed}.json"
            path.write_text(json.dumps(fig, default=str))
            print(
                f"{cand.name} placebo seed {seed}: Sharpe {_f(fig['sharpe'])} CAGR "
                f"{_f(fig['cagr'], True)} maxDD {_f(fig['max_dd'], True)} trades {fig['trades']}",
                flush=True,
            )
    if period_name == "holdout":
        print(f"deflated Sharpe: N = {args.n_trials} configurations over every round")
        selection = {
            p.stem.removeprefix("selection_"): json.loads(p.read_text())
            for p in sorted(OUT_DIR.glob("selection_*.json"))
            if "_slip" not in p.stem and "_placebo_seed" not in p.stem
        }
        for cand in chosen:
            if cand.name in selection:
                dsr = deflated(selection, cand.name, args.n_trials)
                print(f"{cand.name}: 2008-2015 deflated Sharpe {dsr}")
            holdout = json.loads((OUT_DIR / f"holdout_{cand.name}{suffix}.json").read_text())
            returns = np.asarray(holdout["real"]["daily_returns"])
            sr = trial_sharpes(r["real"]["daily_returns"] for r in selection.values())
            print(
                f"{cand.name}: 2016-2021 deflated Sharpe "
                f"{deflated_sharpe_ratio(returns, n_trials=args.n_trials, trial_sharpes=sr)}"
            )


#: Round 1's 11 configurations that traded, annualised 2008-2015 Sharpe (research.md, table 1;
#: their JSON is not kept): the trials' spread for round 2's deflated Sharpe ratio.
ROUND1_SHARPES = (0.45, 0.84, 0.80, 0.49, 0.70, 0.64, 0.38, 0.83, 0.68, 1.14, 0.47)


def median_of(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.median(finite)) if finite else None


def round2_verdict(data: dict[str, Any]) -> dict[str, Any]:
    """The round-2 selection rule (research.md) applied to one configuration's stored run."""
    real = data["real"]
    spy = real["benchmarks"].get("spy_buy_and_hold", {})
    spy_sharpe, spy_dd = spy.get("sharpe_ratio") or 0.0, spy.get("max_drawdown") or -1.0
    placebo_sharpe = median_of([p["sharpe"] for p in data["placebos"]])
    placebo_dd = median_of([p["max_dd"] for p in data["placebos"]])

    def beats(sharpe: float | None, dd: float | None) -> bool:
        return sharpe is not None and dd is not None and sharpe > spy_sharpe and dd > spy_dd

    return {
        "placebo_sharpe": placebo_sharpe,
        "placebo_dd": placebo_dd,
        "beats_spy": beats(real["sharpe"], real["max_dd"]),
        "placebo_beats_spy": beats(placebo_sharpe, placebo_dd),
        "eligible": (real["trades"] or 0) >= 50
        and beats(real["sharpe"], real["max_dd"])
        and not beats(placebo_sharpe, placebo_dd),
        "contribution": (real["sharpe"] or 0.0) - (placebo_sharpe or 0.0),
    }


def round2_table(period_name: str) -> str:
    """Round 2's stored runs of `period_name`, with the rule's verdict and ranking."""
    rows = [
        "| config | Sharpe | CAGR | maxDD | exposure | turnover | hold | trades | placebo Sharpe "
        "(seeds 0/1/2, median) | placebo maxDD median | SPY Sharpe / maxDD | EW Sharpe / maxDD "
        "| beats SPY | placebo beats SPY | eligible | Sharpe - placebo |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ranked = []
    for cand in ROUND2:
        path = OUT_DIR / f"r2_{period_name}_{cand.name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        real, v = data["real"], round2_verdict(data)
        spy = real["benchmarks"].get("spy_buy_and_hold", {})
        ew = real["benchmarks"].get("equal_weight_buy_and_hold", {})
        seeds = "/".join(_f(p["sharpe"]) for p in data["placebos"])
        rows.append(
            f"| {cand.name} | {_f(real['sharpe'])} | {_f(real['cagr'], True)} | "
            f"{_f(real['max_dd'], True)} | {_f(real['exposure'], True)} | "
            f"{_f(real['turnover'])} | {_f(real['avg_holding'])} | {real['trades']} | "
            f"{seeds} ({_f(v['placebo_sharpe'])}) | {_f(v['placebo_dd'], True)} | "
            f"{_f(spy.get('sharpe_ratio'))} / {_f(spy.get('max_drawdown'), True)} | "
            f"{_f(ew.get('sharpe_ratio'))} / {_f(ew.get('max_drawdown'), True)} | "
            f"{'yes' if v['beats_spy'] else 'no'} | {'yes' if v['placebo_beats_spy'] else 'no'} | "
            f"{'yes' if v['eligible'] else 'no'} | {v['contribution']:.2f} |"
        )
        if v["eligible"]:
            ranked.append((v["contribution"], real["cagr"] or 0.0, cand.name))
    ranked.sort(reverse=True)
    if ranked:
        best = ranked[0][0]
        top = sorted((r for r in ranked if r[0] >= best - 0.1), key=lambda r: -r[1])
        order = [r[2] for r in top] + [r[2] for r in ranked if r[0] < best - 0.1]
        rows.append(f"\nRule's ranking of the eligible: {', '.join(order)}")
    else:
        rows.append("\nNo configuration is eligible.")
    return "\n".join(rows)


def run_round2(args: argparse.Namespace) -> None:
    """Round 2: each configuration beside three placebo seeds; predictions cached on disk."""
    period_name = "holdout" if args.holdout else "selection"
    wanted = [w for w in (args.holdout or args.only or "").split(",") if w]
    chosen = [c for c in ROUND2 if not wanted or c.name in wanted]
    period = PERIODS[period_name]
    settings, symbols, bars, sessions = load_period(period)
    print(f"{period_name} {period[0]}..{period[1]}: {len(sessions)} sessions", flush=True)
    for key in dict.fromkeys(c.label_key for c in chosen):
        started = time.perf_counter()
        real = walk_forward(bars, sessions, symbols, key, False, settings, 0, period_name)
        placebos = [
            walk_forward(bars, sessions, symbols, key, True, settings, seed, period_name)
            for seed in ROUND2_PLACEBO_SEEDS
        ]
        print(f"label {key}: predictions in {time.perf_counter() - started:.0f}s", flush=True)
        for cand in (c for c in chosen if c.label_key == key):
            out: dict[str, Any] = {"candidate": cand.__dict__, "period": period_name}
            out["real"] = figures(
                backtest(bars, symbols, period, real, cand, settings, args.slippage_bps)
            )
            out["placebos"] = [
                figures(backtest(bars, symbols, period, p, cand, settings, args.slippage_bps))
                for p in placebos
            ]
            (OUT_DIR / f"r2_{period_name}_{cand.name}.json").write_text(
                json.dumps(out, default=str)
            )
            v = round2_verdict(out)
            print(
                f"{line(cand, out['real'], out['placebos'][0], 0)} | placebo seeds "
                f"{'/'.join(_f(p['sharpe']) for p in out['placebos'])} | eligible "
                f"{v['eligible']} | contribution {v['contribution']:.2f}",
                flush=True,
            )
    if period_name == "holdout":
        selection = [
            json.loads(p.read_text())["real"]["daily_returns"]
            for p in sorted(OUT_DIR.glob("r2_selection_*.json"))
        ]
        trials = [s / np.sqrt(252) for s in ROUND1_SHARPES] + trial_sharpes(selection)
        print(f"deflated Sharpe: N = {args.n_trials} configurations over every round", flush=True)
        for cand in chosen:
            for name in ("selection", "holdout"):
                path = OUT_DIR / f"r2_{name}_{cand.name}.json"
                if path.exists():
                    returns = json.loads(path.read_text())["real"]["daily_returns"]
                    dsr = deflated_sharpe_ratio(
                        returns, n_trials=args.n_trials, trial_sharpes=trials
                    )
                    print(f"{cand.name} {name}: deflated Sharpe {dsr}", flush=True)


def trial_sharpes(runs: Iterable[list[float]]) -> list[float]:
    """Per-day Sharpe ratio of each run's daily returns (runs without variation left out)."""
    out = []
    for returns in runs:
        series = pd.Series(returns)
        std = float(series.std())
        if len(series) > 1 and std > 0:
            out.append(float(series.mean()) / std)
    return out


if __name__ == "__main__":
    main()
