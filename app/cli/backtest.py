"""`flask --app app backtest ...`: a backtest from the command line, with a progress bar.

Same service as the API task (app.backtest.requests.run_request), so a figure from the CLI and one
from the API agree.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from flask.cli import with_appcontext
from tqdm import tqdm

from app.backtest.report import SEED_KEYS, to_report, write_png
from app.backtest.report_html import render_html
from app.backtest.requests import BacktestRequest, collect_locally, run_request
from app.backtest.results import ProgressFn
from app.config import Settings
from app.container import services
from app.domain import MarketData
from app.errors import AppError
from app.market.sources import CsvMarketData
from app.market.universe import resolve_universe
from app.tasks.walk_forward import collect_on_workers

_DATE = click.DateTime(["%Y-%m-%d"])


@click.command("backtest", help="Replay the live strategy over past bars and write reports.")
@with_appcontext
@click.option(
    "--data-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Directory of SYMBOL.csv bars, flat or the broad layout's daily/ and etf/ folders "
    "(default: the service's market data).",
)
@click.option("--symbols", help="Comma-separated symbols to trade (instead of the universe).")
@click.option(
    "--universe",
    help="watchlist, a shipped universe (broad) or a file of symbols, one a line: what the "
    "run trades; its ETFs only feed the features (default: UNIVERSE).",
)
@click.option("--start", type=_DATE, required=True)
@click.option("--end", type=_DATE, required=True)
@click.option("--initial-capital", type=click.FloatRange(min=0, min_open=True), default=100_000.0)
@click.option("--commission-bps", type=click.FloatRange(min=0), help="Default: SIM_COMMISSION_BPS.")
@click.option("--slippage-bps", type=click.FloatRange(min=0), help="Default: SIM_SLIPPAGE_BPS.")
@click.option("--retrain-every", type=click.IntRange(min=1), default=63, show_default=True)
@click.option(
    "--model",
    type=click.Choice(["walk_forward", "current", "sma_cross", "momentum"]),
    default="walk_forward",
    show_default=True,
    help="Retrain during the run, use the saved current model as is, the SMA 20/50 rule, or "
    "the 12-1 momentum rule (top k by past return, rebalanced on each month's first session).",
)
@click.option(
    "--momentum-lookback",
    type=int,
    help="--model momentum: sessions back the return starts (default 252, 12 months).",
)
@click.option(
    "--momentum-skip",
    type=int,
    help="--model momentum: recent sessions left out, short-term reversal (default 21, 1 month).",
)
@click.option(
    "--momentum-top-k",
    type=int,
    help="--model momentum: names held (default RISK_MAX_POSITIONS: every position filled).",
)
@click.option("--buy-threshold", type=float, help="Default: AI_SIGNAL_BUY_THRESHOLD.")
@click.option("--sell-threshold", type=float, help="Default: AI_SIGNAL_SELL_THRESHOLD.")
@click.option("--confidence-threshold", type=float, help="Default: AI_CONFIDENCE_THRESHOLD.")
@click.option(
    "--placebo",
    is_flag=True,
    help="Train the walk-forward models on shuffled labels: what no skill earns.",
)
@click.option(
    "--workers",
    type=click.Choice(["local", "celery"]),
    default="local",
    show_default=True,
    help="Where walk-forward windows train: in this process, or as tasks on the training "
    "queue for every Celery worker that serves it (on any host, with the same market data).",
)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--png", "png_path", type=click.Path(dir_okay=False, path_type=Path))
def backtest_command(
    data_dir: Path | None,
    symbols: str | None,
    universe: str | None,
    start: datetime,
    end: datetime,
    initial_capital: float,
    commission_bps: float | None,
    slippage_bps: float | None,
    retrain_every: int,
    model: str,
    momentum_lookback: int | None,
    momentum_skip: int | None,
    momentum_top_k: int | None,
    buy_threshold: float | None,
    sell_threshold: float | None,
    confidence_threshold: float | None,
    placebo: bool,
    workers: str,
    output: Path,
    html_path: Path | None,
    png_path: Path | None,
) -> None:
    svc = services()
    market: MarketData = CsvMarketData(data_dir) if data_dir else svc.venue.market
    wanted, feature_only = _symbols_to_trade(symbols, universe, svc.settings, market)
    request = BacktestRequest(
        symbols=wanted,
        feature_symbols=feature_only,
        start=start.date(),
        end=end.date(),
        initial_capital=initial_capital,
        commission_bps=commission_bps,
        slippage_bps=slippage_bps,
        retrain_every=retrain_every,
        model=model,  # type: ignore[arg-type]
        buy_threshold=buy_threshold,
        sell_threshold=sell_threshold,
        confidence_threshold=confidence_threshold,
        placebo=placebo,
        momentum_lookback=momentum_lookback,
        momentum_skip=momentum_skip,
        momentum_top_k=momentum_top_k,
    )
    bundle = svc.models.load_current() if model == "current" else None
    collect = collect_on_workers if workers == "celery" else collect_locally
    with _Bars() as bars:
        try:
            result = run_request(
                request,
                svc.settings,
                market,
                bundle=bundle,
                progress=bars.progress("session"),
                collect=lambda plan: collect(plan, bars.progress("window")),
                data_dir=str(data_dir.resolve()) if data_dir else None,
            )
        except AppError as exc:
            raise click.ClickException(exc.message) from None
    report = to_report(result)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1))
    if html_path:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(render_html(report), encoding="utf-8")
    if png_path:
        write_png(report, png_path)
    perf = report["performance"]
    click.echo(
        ", ".join(f"{key}={perf.get(key)}" for key in SEED_KEYS)
        + f", trades={perf.get('num_trades')}"
    )
    click.echo(
        ", ".join(
            f"{key}={perf.get(key)}"
            for key in ("turnover", "avg_holding_days", "exposure", "annualized_volatility")
        )
    )
    for name, figures in report["benchmarks"].items():
        click.echo(
            f"{name}: "
            + ", ".join(
                f"{key}={figures.get(key)}"
                for key in ("total_return", "annualized_return", "sharpe_ratio", "max_drawdown")
            )
        )
    click.echo(f"report written to {output}")


def _symbols_to_trade(
    symbols: str | None, universe: str | None, settings: Settings, market: MarketData
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(traded, feature-only) symbols: --symbols as given, else the universe's."""
    if symbols:
        return tuple(s.strip().upper() for s in symbols.split(",") if s.strip()), ()
    try:
        chosen = resolve_universe(universe or settings.universe, settings.watchlist, market)
    except (ValueError, AppError) as exc:
        raise click.BadParameter(str(exc), param_hint="--universe") from None
    return chosen.tradable, chosen.feature_only


class _Bars:
    """A progress bar per unit (walk-forward windows, then sessions), made when first used."""

    def __init__(self) -> None:
        self._bars: dict[str, tqdm[Any]] = {}

    def progress(self, unit: str) -> ProgressFn:
        def update(done: int, total: int) -> None:
            bar = self._bars.get(unit)
            if bar is None:
                bar = self._bars[unit] = tqdm(total=total, unit=unit, desc=f"{unit}s")
            bar.total = total
            bar.update(done - bar.n)

        return update

    def __enter__(self) -> _Bars:
        return self

    def __exit__(self, *_exc: object) -> None:
        for bar in self._bars.values():
            bar.close()
