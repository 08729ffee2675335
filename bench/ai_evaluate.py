"""Walk-forward evaluation of the pooled and per-symbol models on the real daily bars.

Why: the default model mode is decided by out-of-sample figures, not by taste. Test window
2019-01-01..2021-12-31, all 32 symbols of /work/shared/data/daily, retrained every 63 sessions
on the preceding 10 years (labels known before each window only). Settings were fixed before
looking at the test window and are printed with the figures; nothing here is tuned on it.

    .venv/bin/python -m bench.ai_evaluate [--modes pooled per_symbol] [--retrain-every 63]

Writes bench/out/evaluate_<mode>.json and prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

# Before lightgbm/xgboost load (see app/ai/__init__.py): spinning OpenMP threads on a shared box.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from app.ai.ensemble import DEFAULT_LGBM_PARAMS, DEFAULT_XGB_PARAMS, MODES
from app.ai.evaluation import evaluate
from app.ai.features import build_features
from app.market.sources import CsvMarketData

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data" / "daily"
OUT_DIR = ROOT / "bench" / "out"
START, END = "2019-01-01", "2021-12-31"
HISTORY_START = "2004-01-01"


def print_figures(result: dict[str, Any]) -> None:
    m, s, t = result["metrics"], result["settings"], result["timings"]
    print(f"\n=== mode={s['mode']}  {s['start']}..{s['end']} ===")
    print(
        f"settings: retrain_every={s['retrain_every']} sessions, train_years={s['train_years']}, "
        f"members={s['n_lgbm']} LightGBM + {s['n_xgb']} XGBoost, windows={len(result['windows'])}"
    )
    print(f"rows={m['n_rows']} days={m['n_days']} symbols={m['n_symbols']}")
    print(
        f"IC mean={m['ic_mean']:.4f} std={m['ic_std']:.4f} ICIR={m['icir']:.3f} "
        f"(annualised {m['icir_annualised']:.2f}); IC>0 on {m['ic_positive_days']:.1%} of days"
    )
    print(
        f"rank IC mean={m['rank_ic_mean']:.4f} std={m['rank_ic_std']:.4f} "
        f"rank ICIR={m['rank_icir']:.3f} (annualised {m['rank_icir_annualised']:.2f})"
    )
    print(
        f"hit rate={m['hit_rate']:.4f} (share of up labels {m['base_rate_up']:.4f}); "
        f"time-series IC per symbol={m['time_series_ic_mean']:.4f}"
    )
    print(
        f"top-minus-bottom quintile: {m['top_minus_bottom_quintile_daily'] * 1e4:.2f} bp/day "
        f"(t={m['top_minus_bottom_quintile_t']:.2f})"
    )
    sig = m["signals"]
    print(
        f"confidence mean={m['confidence_mean']:.3f} max={m['confidence_max']:.3f}; signals at "
        f"buy>={sig['thresholds']['buy']}, sell<={sig['thresholds']['sell']}, "
        f"conf>={sig['thresholds']['confidence']}: BUY={sig['BUY']} SELL={sig['SELL']} "
        f"HOLD={sig['HOLD']}"
    )
    print("reliability (confidence bin -> realised hit rate):")
    print(f"  {'bin':>17}  {'count':>6}  {'mean conf':>9}  {'hit rate':>8}")
    for row in m["reliability"]:
        print(
            f"  [{row['lo']:.3f}, {row['hi']:.3f}]  {row['count']:>6}  "
            f"{row['mean_confidence']:>9.3f}  {row['hit_rate']:>8.3f}"
        )
    print(
        f"timings: features {t['features_seconds']:.1f}s, train {t['train_seconds']:.1f}s, "
        f"predict {t['predict_seconds']:.1f}s, wall {t['wall_seconds']:.1f}s"
    )


def compare_daily_ic(a: dict[str, Any], b: dict[str, Any], key: str = "ic") -> str:
    """Paired difference of two runs' daily ICs over the same days, with its t statistic."""
    left = {row["date"]: row[key] for row in a["daily_ic"] if row[key] is not None}
    right = {row["date"]: row[key] for row in b["daily_ic"] if row[key] is not None}
    diffs = [left[d] - right[d] for d in sorted(left.keys() & right.keys())]
    n = len(diffs)
    mean = sum(diffs) / n
    std = (sum((x - mean) ** 2 for x in diffs) / (n - 1)) ** 0.5
    return f"{key}: mean difference {mean:+.4f} over {n} days (paired t={mean / std * n**0.5:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--retrain-every", type=int, default=63)
    parser.add_argument("--train-years", type=float, default=10.0)
    parser.add_argument("--n-lgbm", type=int, default=3)
    parser.add_argument("--n-xgb", type=int, default=3)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--skip-placebo", action="store_true", help="skip the shuffled-label pooled run"
    )
    args = parser.parse_args()
    shown = ("learning_rate", "num_leaves", "min_data_in_leaf", "lambda_l2", "num_boost_round")
    print("LightGBM:", {k: DEFAULT_LGBM_PARAMS[k] for k in shown})
    shown = ("eta", "max_depth", "min_child_weight", "lambda", "num_boost_round")
    print("XGBoost:", {k: DEFAULT_XGB_PARAMS[k] for k in shown})

    wall0 = time.perf_counter()
    market = CsvMarketData(DATA_DIR)
    symbols = market.available_symbols()
    bars = market.get_daily_bars(symbols, HISTORY_START, END)
    features = build_features(bars, bars.get("SPY"))
    elapsed = time.perf_counter() - wall0
    print(f"{len(symbols)} symbols, {len(features)} feature rows, {elapsed:.1f}s")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    runs: list[tuple[str, bool]] = [(mode, False) for mode in args.modes]
    if not args.skip_placebo:
        runs.append(("pooled", True))
    results: dict[str, dict[str, Any]] = {}
    for mode, placebo in runs:
        result = evaluate(
            bars,
            bars.get("SPY"),
            START,
            END,
            mode,  # type: ignore[arg-type]
            retrain_every=args.retrain_every,
            train_years=args.train_years,
            progress=not args.no_progress,
            n_lgbm=args.n_lgbm,
            n_xgb=args.n_xgb,
            features=features,
            shuffle_labels=placebo,
        )
        name = f"{mode}_placebo" if placebo else mode
        results[name] = result
        path = OUT_DIR / f"evaluate_{name}.json"
        path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
        if placebo:
            print("\n### placebo: training labels shuffled within each training set ###")
        print_figures(result)
        print(f"written {path.relative_to(ROOT)}")
    if "pooled" in results and "per_symbol" in results:
        print("\npooled minus per_symbol:")
        for key in ("ic", "rank_ic"):
            print("  " + compare_daily_ic(results["pooled"], results["per_symbol"], key))
    print(f"\ntotal wall {time.perf_counter() - wall0:.1f}s")


if __name__ == "__main__":
    main()
