"""The self-contained HTML backtest report: inline SVG charts (equity vs SPY and equal weight,
drawdown), metric and monthly tables, the trade list.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

STRATEGY_COLOUR = "#1f5fbf"
SPY_COLOUR = "#e8590c"
EW_COLOUR = "#2b8a3e"
DRAWDOWN_COLOUR = "#c92a2a"
SERIES = (
    ("equity", "Strategy", STRATEGY_COLOUR),
    ("spy_buy_and_hold", "SPY buy & hold", SPY_COLOUR),
    ("equal_weight_buy_and_hold", "Equal-weight buy & hold", EW_COLOUR),
)
#: Trades listed in the HTML page (the JSON has them all).
MAX_HTML_TRADES = 2000


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: Any, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value * 100:.{digits}f}%"


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5 or 5 times a power of ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        if value >= lo - step * 1e-9:
            ticks.append(round(value, 10))
        value += step
    return ticks


def _x_labels(dates: Sequence[str], limit: int = 12) -> list[tuple[int, str]]:
    """Indices and labels where a year (or, for short runs, a month) begins."""
    if not dates:
        return []
    years = {d[:4] for d in dates}
    key_len, fmt = (4, "year") if len(years) > 2 else (7, "month")
    marks = [
        (i, d[:key_len])
        for i, d in enumerate(dates)
        if i == 0 or d[:key_len] != dates[i - 1][:key_len]
    ]
    if fmt == "year" and marks and marks[0][0] == 0 and len(marks) > 1 and marks[1][0] < 40:
        marks = marks[1:]  # a stub first year would crowd the next label
    step = max(1, math.ceil(len(marks) / limit))
    return marks[::step]


def _svg_chart(
    dates: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None], str]],
    *,
    width: int,
    height: int,
    fmt: str,
    area: bool = False,
    title: str,
) -> str:
    """An inline SVG line (or area) chart over session indices, with grid, axes and legend."""
    left, right, top, bottom = 72, 16, 30, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for _, ys, _ in series for v in ys if v is not None and math.isfinite(v)]
    n = len(dates)
    if not values or n == 0:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img" aria-label="{_e(title)}"><text x="10" y="20">{_e(title)}: no data'
            "</text></svg>"
        )
    lo, hi = min(values), max(values)
    if area:
        hi = max(hi, 0.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 1.0, hi + 1.0
    pad = (hi - lo) * 0.05
    lo, hi = lo - (0 if area and lo >= 0 else pad), hi + (0 if area else pad)

    def x(i: int) -> float:
        return left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - lo) / (hi - lo))

    stride = max(1, math.ceil(n / 1500))
    keep = list(range(0, n, stride))
    if keep[-1] != n - 1:
        keep.append(n - 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}" class="chart">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="18" class="ctitle">{_e(title)}</text>',
    ]
    ticks = _nice_ticks(lo, hi)
    decimals = 0 if all(abs(t * 100 - round(t * 100)) < 1e-6 for t in ticks) else 1
    for tick in ticks:
        ty = y(tick)
        tick = tick + 0.0 if abs(tick) > 1e-12 else 0.0  # no "-0%"
        label = f"{tick * 100:.{decimals}f}%" if fmt == "pct" else f"{tick:,.0f}"
        parts.append(
            f'<line x1="{left}" y1="{ty:.1f}" x2="{width - right}" y2="{ty:.1f}" '
            'stroke="#e3e6ea" stroke-width="1"/>'
            f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end" class="tick">{label}</text>'
        )
    for i, label in _x_labels(dates):
        tx = x(i)
        parts.append(
            f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{top + plot_h}" '
            'stroke="#f0f2f4" stroke-width="1"/>'
            f'<text x="{tx:.1f}" y="{height - 8}" text-anchor="middle" class="tick">'
            f"{_e(label)}</text>"
        )
    parts.append(
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#adb5bd" stroke-width="1"/>'
    )
    for name, ys, colour in series:
        points = [(x(i), y(float(v))) for i in keep if (v := ys[i]) is not None]
        if not points:
            continue
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        if area:
            base = y(0.0)
            parts.append(
                f'<polygon points="{points[0][0]:.1f},{base:.1f} {path} '
                f'{points[-1][0]:.1f},{base:.1f}" fill="{colour}" fill-opacity="0.35" '
                f'stroke="{colour}" stroke-width="1.5"><title>{_e(name)}</title></polygon>'
            )
        else:
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2.2" '
                f'stroke-linejoin="round"><title>{_e(name)}</title></polyline>'
            )
    lx = left + 12
    for name, _ys, colour in series if len(series) > 1 else ():
        parts.append(
            f'<rect x="{lx}" y="{top + 8}" width="14" height="4" fill="{colour}"/>'
            f'<text x="{lx + 18}" y="{top + 14}" class="legend">{_e(name)}</text>'
        )
        lx += 30 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _monthly_table(monthly: Mapping[str, Mapping[str, float]]) -> str:
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    rows = []
    for year in sorted(monthly, key=int):
        cells = []
        total = 1.0
        for m in range(1, 13):
            value = monthly[year].get(str(m))
            if value is None:
                cells.append("")
                continue
            total *= 1 + value
            strength = min(abs(value) / 0.08, 1.0)
            colour = (
                f"rgba(43,138,62,{0.12 + 0.6 * strength:.2f})"
                if value >= 0
                else f"rgba(201,42,42,{0.12 + 0.6 * strength:.2f})"
            )
            cells.append(
                f'<span class="cell" style="background:{colour}">{value * 100:.1f}%</span>'
            )
        rows.append([_e(year), *cells, f"<b>{(total - 1) * 100:.1f}%</b>"])
    return _table(["Year", *months, "Year"], rows, "monthly")


_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:16px 24px;color:#212529;
background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 8px}
.sub{color:#495057;font-size:13px;margin-bottom:10px}
table{border-collapse:collapse;font-size:12px;margin-bottom:8px}
th,td{border:1px solid #dee2e6;padding:3px 7px;text-align:right}
th{background:#f1f3f5}td:first-child,th:first-child{text-align:left}
table.monthly td{padding:0}table.monthly td:first-child{padding:3px 7px}
.cell{display:block;padding:3px 6px}
.ctitle{font-size:13px;font-weight:600;fill:#212529}
.tick{font-size:11px;fill:#495057}.legend{font-size:12px;fill:#212529}
.warn{color:#a61e4d;font-size:13px}.chart{display:block}
.grid{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
"""


def render_html(report: Mapping[str, Any], title: str = "Alpha Trader backtest") -> str:
    """One self-contained HTML page (inline CSS and SVG only) from a `to_report` dict."""
    curve = report.get("equity_curve") or []
    dates = [p["date"] for p in curve]
    params = report.get("params") or {}
    perf = report.get("performance") or {}
    benchmarks = report.get("benchmarks") or {}
    series = [
        (label, [p.get(key) for p in curve], colour)
        for key, label, colour in SERIES
        if curve and key in curve[0]
    ]
    equity_svg = _svg_chart(
        dates, series, width=1100, height=380, fmt="money", title="Equity vs buy-and-hold"
    )
    drawdown_svg = _svg_chart(
        dates,
        [("Drawdown", [p.get("drawdown") for p in curve], DRAWDOWN_COLOUR)],
        width=1100,
        height=200,
        fmt="pct",
        area=True,
        title="Drawdown",
    )
    symbols = params.get("symbols") or []
    sub = (
        f"{_e(params.get('first_session'))} to {_e(params.get('last_session'))} "
        f"({_e(params.get('sessions'))} sessions), {len(symbols)} symbols, capital "
        f"{_num(params.get('initial_capital'))}, commission {_e(params.get('commission_bps'))} "
        f"bps, slippage {_e(params.get('slippage_bps'))} bps; fills at the next open"
    )
    model = report.get("model") or {}
    if model.get("kind"):
        sub += f"; signals: {_e(model.get('kind'))}"
        thresholds = model.get("thresholds")
        if thresholds:
            sub += (
                f" (buy &ge; {_pct(thresholds.get('buy'))}, sell &le; "
                f"{_pct(thresholds.get('sell'))}, confidence &ge; "
                f"{_e(thresholds.get('confidence'))})"
            )
    columns = [("Strategy", perf)] + [
        (label, benchmarks[key]) for key, label, _c in SERIES[1:] if key in benchmarks
    ]
    metric_rows = [
        ("Total return", "total_return", _pct),
        ("CAGR", "annualized_return", _pct),
        ("Annualised volatility", "annualized_volatility", _pct),
        ("Sharpe", "sharpe_ratio", _num),
        ("Sortino", "sortino_ratio", _num),
        ("Calmar", "calmar_ratio", _num),
        ("Max drawdown", "max_drawdown", _pct),
        ("Longest drawdown (sessions)", "max_drawdown_duration_days", _num),
        ("Final equity", "final_equity", _num),
    ]
    metrics_table = _table(
        ["", *(name for name, _ in columns)],
        [
            [_e(label), *(fmt(col.get(key)) for _, col in columns)]
            for label, key, fmt in metric_rows
        ],
    )
    excess = report.get("excess_return") or {}
    excess_rows = [
        [
            _e(label),
            _pct(excess[key].get("total_return")),
            _pct(excess[key].get("annualized_return")),
        ]
        for key, label, _c in SERIES[1:]
        if key in excess
    ]
    trade_rows = [
        ("Closed trades", _num(perf.get("num_trades"))),
        ("Open at the end", _num(perf.get("open_trades"))),
        ("Win rate", _pct(perf.get("win_rate"))),
        ("Profit factor", _num(perf.get("profit_factor"))),
        ("Expectancy per trade", _num(perf.get("expectancy"))),
        ("Expectancy per trade (%)", _pct(perf.get("expectancy_pct"))),
        ("Average holding (sessions)", _num(perf.get("avg_holding_days"))),
        ("Average exposure", _pct(perf.get("exposure"))),
        ("Time in market", _pct(perf.get("time_in_market"))),
        ("Turnover (per year)", _num(perf.get("turnover"))),
        ("Commission paid", _num(perf.get("commission_paid"))),
        ("Orders (rejected at fill)", f"{perf.get('orders')} ({perf.get('rejected_orders')})"),
        ("Orders denied by the risk gate", _num(perf.get("denied_orders"))),
    ]
    exits = report.get("exit_reasons") or {}
    denied = report.get("denied_by_rule") or {}
    per_symbol = report.get("per_symbol") or []
    trades = report.get("trades") or []
    shown = trades[:MAX_HTML_TRADES]
    trade_table = _table(
        ["Symbol", "Entry", "Price", "Exit", "Price", "Reason", "Days", "P&L", "Return"],
        [
            [
                _e(t["symbol"]),
                _e(t["entry_date"]),
                _num(t["entry_price"]),
                _e(t["exit_date"]),
                _num(t["exit_price"]),
                f'<span title="{_e(t["exit_detail"])}">{_e(t["exit_reason"])}</span>',
                _num(t["holding_days"]),
                _num(t["pnl"]),
                _pct(t["return_pct"]),
            ]
            for t in shown
        ],
    )
    more = (
        f"<p class='sub'>First {len(shown)} of {len(trades)} trades (the JSON has all).</p>"
        if len(trades) > len(shown)
        else ""
    )
    warnings = "".join(f"<p class='warn'>{_e(w)}</p>" for w in report.get("warnings") or [])
    retrains = model.get("retrains") or []
    retrain_table = (
        "<h2>Model retraining (walk-forward)</h2>"
        + _table(
            ["Window from", "Trained to", "Last label", "Rows", "Val IC", "Seconds"],
            [
                [
                    _e(r.get("window_start")),
                    _e(r.get("train_end")),
                    _e(r.get("last_label_end")),
                    _num(r.get("n_train_rows")),
                    _num((r.get("validation") or {}).get("ic_mean"), 4),
                    _num(r.get("seconds")),
                ]
                for r in retrains
            ],
        )
        if retrains
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<div class="sub">{sub}</div>
{warnings}
{equity_svg}
{drawdown_svg}
<div class="grid">
<div><h2>Performance</h2>{metrics_table}
<h2>Excess return</h2>{_table(["Over", "Total", "Annualised"], excess_rows)}</div>
<div><h2>Trades</h2>{_table(["", ""], [[_e(a), b] for a, b in trade_rows])}</div>
<div><h2>Exit reasons</h2>{
        _table(["Reason", "Trades"], [[_e(k), _num(v)] for k, v in exits.items()])
    }
<h2>Denied by rule</h2>{_table(["Rule", "Orders"], [[_e(k), _num(v)] for k, v in denied.items()])}
</div>
</div>
<h2>Monthly returns</h2>{_monthly_table(report.get("monthly_returns") or {})}
<h2>Per symbol</h2>{
        _table(
            ["Symbol", "Trades", "Open", "Win rate", "P&L", "Avg return", "Avg days"],
            [
                [
                    _e(r["symbol"]),
                    _num(r["trades"]),
                    _num(r["open"]),
                    _pct(r["win_rate"]),
                    _num(r["pnl"]),
                    _pct(r["avg_return_pct"]),
                    _num(r["avg_holding_days"]),
                ]
                for r in per_symbol
            ],
        )
    }
{retrain_table}
<h2>Trade list</h2>{more}{trade_table}
</body></html>
"""
