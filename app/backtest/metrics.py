"""Figures of a backtest: returns, risk, trades, and the same figures for buy-and-hold.

Conventions, so figures compare across runs: daily returns are close-to-close on the equity
curve; annualisation uses 252 sessions; the risk-free rate is 0; ratios that cannot be
computed (no variance, no losses, fewer than two days) are None, never NaN or infinity.
Benchmarks buy at the open of the second session (the first fill the strategy can get), pay
the same slippage and commission once, and hold to the end.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from app.domain import BarFrame

if TYPE_CHECKING:
    from app.backtest.results import BacktestResult, Trade

__all__ = [
    "TRADING_DAYS",
    "buy_and_hold",
    "compute_metrics",
    "drawdown_series",
    "equity_metrics",
    "monthly_returns",
    "per_symbol_table",
    "trade_metrics",
]

TRADING_DAYS = 252


def _num(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def buy_and_hold(
    bars: Mapping[str, BarFrame],
    symbols: Sequence[str],
    sessions: Sequence[date],
    capital: float,
    commission_bps: float = 0.0,
    slippage_bps: float = 0.0,
) -> list[float] | None:
    """Equity of equal money in each symbol bought at the open of sessions[1], held.

    Symbols without a bar at that open are left out (None when none is left); later missing
    bars carry the last close forward.
    """
    if not sessions:
        return None
    if len(sessions) == 1:
        return [capital]
    index = pd.DatetimeIndex(np.array(sessions, dtype="datetime64[D]").astype("M8[s]"))
    entry = index[1]
    per_symbol: list[np.ndarray] = []
    for symbol in symbols:
        frame = bars.get(symbol)
        if frame is None or entry not in frame.index:
            continue
        open_price = float(frame.at[entry, "open"])
        closes = frame["close"].astype(float).reindex(index).ffill().to_numpy()
        cost = open_price * (1 + slippage_bps / 1e4) * (1 + commission_bps / 1e4)
        per_symbol.append(closes / cost)
    if not per_symbol:
        return None
    growth = np.vstack(per_symbol).mean(axis=0)
    curve = capital * growth
    curve[0] = capital
    return list(curve.tolist())


def drawdown_series(equity: pd.Series) -> pd.Series:
    """Equity / running peak - 1 (0 at new highs, negative under water)."""
    return equity / equity.cummax() - 1.0


def equity_metrics(equity: pd.Series) -> dict[str, Any]:
    """Return and risk figures of an equity curve indexed by session date."""
    equity = equity.astype(float)
    n = len(equity)
    first = float(equity.iloc[0]) if n else float("nan")
    last = float(equity.iloc[-1]) if n else float("nan")
    out: dict[str, Any] = {
        "initial_equity": _num(first),
        "final_equity": _num(last),
        "total_return": _num(last / first - 1.0) if n and first > 0 else None,
        "annualized_return": None,
        "annualized_volatility": None,
        "sharpe_ratio": None,
        "sortino_ratio": None,
        "calmar_ratio": None,
        "max_drawdown": 0.0 if n else None,
        "max_drawdown_duration_days": 0,
        "max_drawdown_peak": None,
        "max_drawdown_trough": None,
        "max_drawdown_recovery": None,
        "days": n,
        "best_day": None,
        "worst_day": None,
    }
    if n < 2 or first <= 0:
        return out
    returns = equity.pct_change().dropna()
    periods = len(returns)
    growth = last / first
    if growth > 0:
        out["annualized_return"] = _num(growth ** (TRADING_DAYS / periods) - 1.0)
    std = float(returns.std(ddof=1)) if periods > 1 else 0.0
    mean = float(returns.mean())
    if std > 0:
        out["annualized_volatility"] = _num(std * math.sqrt(TRADING_DAYS))
        out["sharpe_ratio"] = _num(mean / std * math.sqrt(TRADING_DAYS))
    downside = float(np.sqrt(np.mean(np.minimum(returns.to_numpy(), 0.0) ** 2)))
    if downside > 0:
        out["sortino_ratio"] = _num(mean / downside * math.sqrt(TRADING_DAYS))
    out["best_day"] = _num(float(returns.max()))
    out["worst_day"] = _num(float(returns.min()))

    dd = drawdown_series(equity)
    values = dd.to_numpy()
    trough_pos = int(np.argmin(values))
    max_dd = float(values[trough_pos])
    out["max_drawdown"] = _num(max_dd)
    if max_dd < 0:
        peak_pos = int(np.argmax(equity.to_numpy()[: trough_pos + 1]))
        out["max_drawdown_peak"] = _iso(equity.index[peak_pos])
        out["max_drawdown_trough"] = _iso(equity.index[trough_pos])
        after = np.flatnonzero(values[trough_pos:] >= 0)
        out["max_drawdown_recovery"] = (
            _iso(equity.index[trough_pos + int(after[0])]) if len(after) else None
        )
        if out["annualized_return"] is not None:
            out["calmar_ratio"] = _num(out["annualized_return"] / abs(max_dd))
    # Longest stretch under a previous peak, in sessions (to the end if never recovered).
    longest = current = 0
    for value in values:
        current = current + 1 if value < 0 else 0
        longest = max(longest, current)
    out["max_drawdown_duration_days"] = longest
    return out


def _iso(value: Any) -> str:
    return str(pd.Timestamp(value).date().isoformat())


def trade_metrics(trades: Sequence[Trade]) -> dict[str, Any]:
    """Win rate, profit factor, expectancy and holding time over closed round trips."""
    closed = [t for t in trades if not t.open]
    pnls = np.array([t.pnl for t in closed], dtype=float)
    rets = np.array([t.return_pct for t in closed], dtype=float)
    wins = pnls[pnls > 0]
    losses = pnls[pnls < 0]
    gross_loss = float(-losses.sum())
    return {
        "num_trades": len(closed),
        "open_trades": sum(1 for t in trades if t.open),
        "win_rate": _num(float((pnls > 0).mean())) if len(pnls) else None,
        "profit_factor": _num(float(wins.sum()) / gross_loss) if gross_loss > 0 else None,
        "expectancy": _num(float(pnls.mean())) if len(pnls) else None,
        "expectancy_pct": _num(float(rets.mean())) if len(rets) else None,
        "avg_win": _num(float(wins.mean())) if len(wins) else None,
        "avg_loss": _num(float(losses.mean())) if len(losses) else None,
        "best_trade_pct": _num(float(rets.max())) if len(rets) else None,
        "worst_trade_pct": _num(float(rets.min())) if len(rets) else None,
        "avg_holding_days": _num(float(np.mean([t.holding_days for t in closed])))
        if closed
        else None,
        "realized_pnl": float(pnls.sum()) if len(pnls) else 0.0,
        "commission_paid": float(sum(t.commission for t in trades)),
    }


def per_symbol_table(trades: Sequence[Trade]) -> list[dict[str, Any]]:
    """One row per traded symbol: closed trades, wins, P&L, average return and holding."""
    groups: dict[str, list[Trade]] = defaultdict(list)
    for trade in trades:
        groups[trade.symbol].append(trade)
    rows = []
    for symbol in sorted(groups):
        group = groups[symbol]
        closed = [t for t in group if not t.open]
        rows.append(
            {
                "symbol": symbol,
                "trades": len(closed),
                "open": len(group) - len(closed),
                "win_rate": _num(sum(t.pnl > 0 for t in closed) / len(closed)) if closed else None,
                "pnl": float(sum(t.pnl for t in group)),
                "avg_return_pct": _num(float(np.mean([t.return_pct for t in closed])))
                if closed
                else None,
                "avg_holding_days": _num(float(np.mean([t.holding_days for t in closed])))
                if closed
                else None,
            }
        )
    return rows


def monthly_returns(equity: pd.Series) -> dict[int, dict[int, float]]:
    """{year: {month: return}} from month-end equity (the first month from the first day)."""
    if len(equity) < 2:
        return {}
    month_end = equity.groupby([equity.index.year, equity.index.month]).last()
    starts = month_end.shift(1)
    starts.iloc[0] = float(equity.iloc[0])
    out: dict[int, dict[int, float]] = defaultdict(dict)
    for (year, month), value in (month_end / starts - 1.0).items():
        out[int(year)][int(month)] = float(value)
    return dict(out)


def compute_metrics(result: BacktestResult) -> dict[str, Any]:
    """Everything the reports show: the strategy, each benchmark, excess returns, tables."""
    equity = result.equity_series()
    performance = equity_metrics(equity)
    performance.update(trade_metrics(result.trades))
    exposure = np.array([d.exposure for d in result.days], dtype=float)
    performance["exposure"] = _num(float(exposure.mean())) if len(exposure) else None
    performance["time_in_market"] = _num(float((exposure > 0).mean())) if len(exposure) else None
    traded = sum(
        o.qty * o.fill_price for o in result.orders if o.fill_price is not None and o.fill_date
    )
    years = max(len(result.days) - 1, 1) / TRADING_DAYS
    mean_equity = float(equity.mean()) if len(equity) else 0.0
    performance["turnover"] = _num(traded / 2.0 / mean_equity / years) if mean_equity > 0 else None
    performance["traded_notional"] = float(traded)
    performance["orders"] = len(result.orders)
    performance["rejected_orders"] = sum(1 for o in result.orders if o.status == "rejected")
    performance["denied_orders"] = len(result.denied)

    benchmarks: dict[str, dict[str, Any]] = {}
    excess: dict[str, dict[str, float | None]] = {}
    for name, curve in result.benchmarks.items():
        figures = equity_metrics(pd.Series(curve, index=equity.index))
        benchmarks[name] = figures
        excess[name] = {
            "total_return": _diff(performance["total_return"], figures["total_return"]),
            "annualized_return": _diff(
                performance["annualized_return"], figures["annualized_return"]
            ),
        }
    denied_rules = Counter(str(d["rule"]) for d in result.denied)
    return {
        "performance": performance,
        "benchmarks": benchmarks,
        "excess_return": excess,
        "exit_reasons": result.exit_reasons(),
        "denied_by_rule": dict(sorted(denied_rules.items())),
        "per_symbol": per_symbol_table(result.trades),
        "monthly_returns": monthly_returns(equity),
    }


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b
