"""Backtest reports: JSON in the seed's shape, a self-contained HTML page, a PNG equity chart.

The JSON keeps the seed's answer ({"status": "success", "performance": {"total_return", ...}})
and puts everything else beside it, so old clients keep working. The HTML page is one file with
inline CSS and inline SVG (no script, no font, no network): it opens from a mail attachment or
an air-gapped box. HTML and PNG are drawn from the JSON alone, so a stored run can be rendered
again later without re-running it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from app.backtest.metrics import compute_metrics, drawdown_series
from app.backtest.report_html import DRAWDOWN_COLOUR, SERIES, render_html
from app.backtest.results import BacktestResult

__all__ = ["render_html", "to_json_safe", "to_report", "write_png", "write_reports"]

#: The seed's keys first, in its order.
SEED_KEYS = ("total_return", "annualized_return", "sharpe_ratio", "max_drawdown", "win_rate")


def to_json_safe(value: Any) -> Any:
    """Dates as ISO strings, NaN/inf as None, dataclasses and numpy scalars as plain data."""
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if is_dataclass(value) and not isinstance(value, type):
        return to_json_safe(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, Sequence | set | tuple):
        return [to_json_safe(v) for v in value]
    return str(value)


def to_report(result: BacktestResult, metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report: the seed's {"status", "performance"} plus everything else beside it."""
    figures = dict(metrics or compute_metrics(result))
    perf = dict(figures["performance"])
    performance = {key: perf.pop(key, None) for key in SEED_KEYS}
    performance.update(perf)
    equity = result.equity_series()
    drawdown = drawdown_series(equity).to_numpy() if len(equity) else np.array([])
    curve = []
    for i, day in enumerate(result.days):
        point: dict[str, Any] = {
            "date": day.date,
            "equity": day.equity,
            "cash": day.cash,
            "exposure": day.exposure,
            "positions": day.positions,
            "drawdown": float(drawdown[i]),
        }
        for name, values in result.benchmarks.items():
            point[name] = values[i]
        curve.append(point)
    report = {
        "status": "success",
        "performance": performance,
        "benchmarks": figures["benchmarks"],
        "excess_return": figures["excess_return"],
        "exit_reasons": figures["exit_reasons"],
        "denied_by_rule": figures["denied_by_rule"],
        "per_symbol": figures["per_symbol"],
        "monthly_returns": figures["monthly_returns"],
        "params": result.params(),
        "model": result.model,
        "equity_curve": curve,
        "trades": [asdict(t) for t in result.trades],
        "orders": [asdict(o) for o in result.orders],
        "events": result.events,
        "warnings": result.warnings,
        "timings": {"backtest_seconds": result.seconds},
    }
    safe: dict[str, Any] = to_json_safe(report)
    return safe


def write_png(report: Mapping[str, Any], path: str | Path, title: str = "Equity") -> Path:
    """Equity vs benchmarks over the drawdown, with matplotlib's Agg canvas (no display, no
    pyplot global state, so it is safe in a worker thread)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curve = report.get("equity_curve") or []
    dates = np.array([np.datetime64(p["date"]) for p in curve])
    figure = Figure(figsize=(11, 6.5), dpi=100)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    top = figure.add_subplot(grid[0])
    bottom = figure.add_subplot(grid[1], sharex=top)
    for key, label, colour in SERIES:
        if curve and key in curve[0]:
            values = np.array([np.nan if p[key] is None else p[key] for p in curve], dtype=float)
            top.plot(dates, values, label=label, color=colour, linewidth=1.6)
    top.set_title(title)
    top.set_ylabel("equity")
    top.grid(True, alpha=0.3)
    top.legend(loc="upper left")
    top.tick_params(labelbottom=False)
    dd = np.array([p.get("drawdown") or 0.0 for p in curve], dtype=float) * 100
    bottom.fill_between(dates, dd, 0.0, color=DRAWDOWN_COLOUR, alpha=0.35, linewidth=0)
    bottom.plot(dates, dd, color=DRAWDOWN_COLOUR, linewidth=0.8)
    bottom.set_ylabel("drawdown %")
    bottom.grid(True, alpha=0.3)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png", bbox_inches="tight")
    return out


def write_reports(
    result: BacktestResult,
    *,
    json_path: str | Path | None = None,
    html_path: str | Path | None = None,
    png_path: str | Path | None = None,
    title: str = "Alpha Trader backtest",
) -> dict[str, Any]:
    """Build the JSON report once and write whichever files are asked for; returns it."""
    import json

    report = to_report(result)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=1))
    if html_path:
        Path(html_path).parent.mkdir(parents=True, exist_ok=True)
        Path(html_path).write_text(render_html(report, title), encoding="utf-8")
    if png_path:
        write_png(report, png_path, title)
    return report
