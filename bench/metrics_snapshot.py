"""Render docs/metrics.png: a few Prometheus metrics of a sim run, for the README.

Starts the same loopback stack as tests/integration/test_prometheus.py (gunicorn, a Celery
worker with beat in sim mode, a real Prometheus scraping both every second), lets it trade for
a while, then asks Prometheus's query_range API for portfolio value, orders, prediction
confidence and cycle duration and plots them. Needs Debian's `prometheus` package.

    .venv/bin/python -m bench.metrics_snapshot [--seconds 90] [--out docs/metrics.png]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: before pyplot is imported
import matplotlib.dates as mdates
import matplotlib.pyplot as plt

from tests.integration.test_prometheus import (
    PROMETHEUS,
    ObservedStack,
    observed_stack,
    prometheus_available,
)

ROOT = Path(__file__).resolve().parents[1]

#: (panel title, unit, [(PromQL, legend label or None for the series' own labels)])
PANELS: list[tuple[str, str, list[tuple[str, str | None]]]] = [
    ("Portfolio value", "USD", [("alpha_portfolio_value_usd", "equity")]),
    (
        "Orders submitted (cumulative)",
        "orders",
        [("sum by (side) (alpha_orders_submitted_total)", None)],
    ),
    (
        "Prediction confidence",
        "confidence",
        [
            (
                "histogram_quantile(0.5, sum by (le) "
                "(rate(alpha_prediction_confidence_bucket[$__rate_interval])))",
                "p50",
            ),
            (
                "histogram_quantile(0.9, sum by (le) "
                "(rate(alpha_prediction_confidence_bucket[$__rate_interval])))",
                "p90",
            ),
        ],
    ),
    (
        "Trading cycle duration",
        "seconds",
        [
            (
                "histogram_quantile(0.95, sum by (le) "
                "(rate(alpha_cycle_duration_seconds_bucket[$__rate_interval])))",
                "p95",
            ),
            (
                "sum(rate(alpha_cycle_duration_seconds_sum[$__rate_interval]))"
                " / sum(rate(alpha_cycle_duration_seconds_count[$__rate_interval]))",
                "mean",
            ),
        ],
    ),
]


def _series(
    result: list[dict[str, Any]],
) -> list[tuple[dict[str, str], list[datetime], list[float]]]:
    out = []
    for item in result:
        times, values = [], []
        for ts, raw in item["values"]:
            value = float(raw)
            if math.isfinite(value):
                times.append(datetime.fromtimestamp(float(ts), UTC))
                values.append(value)
        out.append((item["metric"], times, values))
    return out


def render(stack: ObservedStack, start: float, end: float, out: Path) -> None:
    """Query each panel over [start, end] and draw a 2x2 figure to `out`."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    for ax, (title, unit, queries) in zip(axes.flat, PANELS, strict=True):
        for expr, label in queries:
            for metric, times, values in _series(stack.query_range(expr, start, end, "2s")):
                name = label or ", ".join(f"{k}={v}" for k, v in metric.items() if k != "__name__")
                ax.plot(times, values, label=name or expr)
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    fig.suptitle(
        f"Alpha Trader sim run scraped by Prometheus ({end - start:.0f} s, one replayed "
        "session every 2 s)"
    )
    fig.autofmt_xdate()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0, help="how long the sim runs")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "metrics.png")
    args = parser.parse_args()
    if not prometheus_available():
        raise SystemExit(f"Prometheus not found at {PROMETHEUS}: apt-get install prometheus")
    os.environ["ENV_FILE"] = ""  # a developer's .env must not change the picture
    with (
        tempfile.TemporaryDirectory(prefix="metrics-snapshot-") as tmp,
        observed_stack(Path(tmp)) as stack,
    ):
        start = time.time()
        time.sleep(args.seconds)
        end = time.time()
        render(stack, start, end, args.out)
    print(f"wrote {args.out} ({args.seconds:.0f} s of sim trading)")


if __name__ == "__main__":
    main()
