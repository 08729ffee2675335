"""`flask --app app train | optimize | evaluate`: the AI service from the command line."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
from flask.cli import with_appcontext

from app.ai.evaluation import evaluate
from app.ai.training import fit_and_save, load_bars, training_window
from app.ai.tuning import optimize
from app.ai.tuning_storage import storage_url_for
from app.container import services
from app.market.calendar import NyseCalendar
from app.market.sources import CsvMarketData
from app.market.universe import BENCHMARK, configured_universe, feature_universe

MODES = click.Choice(["pooled", "per-symbol", "per_symbol"])


def _symbols(value: str | None, default: list[str]) -> list[str]:
    from app.market.symbols import parse_symbol

    return [parse_symbol(s) for s in value.split(",") if s.strip()] if value else default


@click.command("train", help="Train the universe's (UNIVERSE) model now, on data before today.")
@click.option("--mode", type=MODES, help="Default: MODEL_MODE.")
@click.option("--symbols", help="Comma-separated (default: the universe, UNIVERSE).")
@with_appcontext
def train_command(mode: str | None, symbols: str | None) -> None:
    svc = services()
    with click.progressbar(length=3, label="training") as bar:
        last = [0]

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(done - last[0])
            last[0] = done

        result = fit_and_save(
            settings=svc.settings,
            db=svc.db,
            market=svc.venue.market,
            store=svc.models,
            today=svc.venue.today(),
            symbols=_symbols(symbols, []),  # none: the universe's
            mode=mode,
            progress=progress,
        )
    click.echo(json.dumps(result, indent=2, default=str))


@click.command("optimize", help="Tune hyperparameters with Optuna (shared study storage).")
@click.option("--mode", type=MODES, help="Default: MODEL_MODE.")
@click.option("--symbols", help="Comma-separated (default: the universe, UNIVERSE).")
@click.option("--n-trials", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--timeout", type=click.IntRange(10, 86_400), default=600, show_default=True)
@with_appcontext
def optimize_command(mode: str | None, symbols: str | None, n_trials: int, timeout: int) -> None:
    svc = services()
    settings = svc.settings
    start, end = training_window(svc.venue.today(), settings.train_years, NyseCalendar())
    universe = configured_universe(settings, svc.venue.market)
    bars = load_bars(svc.venue.market, _symbols(symbols, list(universe.symbols)), start, end)
    result = optimize(
        bars,
        bars.get(BENCHMARK),
        mode=(mode or settings.model_mode).replace("-", "_"),  # type: ignore[arg-type]
        storage_url=settings.optuna_storage or storage_url_for(settings.sql_url),
        n_trials=n_trials,
        timeout=timeout,
        train_end=end,
        best_params_dir=settings.best_params_dir,
        horizon=settings.ai_prediction_horizon_days,
        normalisation=settings.ai_label_normalisation,
        feature_set=settings.ai_feature_set,
        progress=True,
    )
    click.echo(json.dumps(result, indent=2, default=str))


@click.command("evaluate", help="Walk-forward evaluation: IC, rank IC, ICIR, hit rate.")
@click.option(
    "--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True
)
@click.option("--start", type=click.DateTime(["%Y-%m-%d"]), required=True)
@click.option("--end", type=click.DateTime(["%Y-%m-%d"]), required=True)
@click.option("--symbols", help="Comma-separated (default: every CSV in the folder).")
@click.option("--mode", type=MODES, default="pooled", show_default=True)
@click.option("--retrain-every", type=click.IntRange(1, 2520), default=63, show_default=True)
@click.option("--train-years", type=click.FloatRange(1, 30), default=10.0, show_default=True)
@click.option("--horizon", type=click.IntRange(1, 60), help="Default: AI_PREDICTION_HORIZON_DAYS.")
@click.option(
    "--label-normalisation",
    type=click.Choice(["raw", "excess", "rank"]),
    help="Default: AI_LABEL_NORMALISATION.",
)
@click.option("--placebo", is_flag=True, help="Shuffle the training labels (no skill possible).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@with_appcontext
def evaluate_command(
    data_dir: Path,
    start: datetime,
    end: datetime,
    symbols: str | None,
    mode: str,
    retrain_every: int,
    train_years: float,
    horizon: int | None,
    label_normalisation: str | None,
    placebo: bool,
    output: Path,
) -> None:
    if start > end:
        raise click.BadParameter("must not be after --end", param_hint="--start")
    settings = services().settings
    horizon = horizon or settings.ai_prediction_horizon_days
    normalisation = label_normalisation or settings.ai_label_normalisation
    source = CsvMarketData(data_dir)
    wanted = _symbols(symbols, source.available_symbols())
    history = start.date() - timedelta(days=int(train_years * 366) + 200)
    bars = source.get_daily_bars(feature_universe(wanted), history, end.date())
    result: dict[str, Any] = evaluate(
        bars,
        bars.get(BENCHMARK),
        start.date(),
        end.date(),
        mode.replace("-", "_"),  # type: ignore[arg-type]
        retrain_every=retrain_every,
        train_years=train_years,
        progress=True,
        thresholds=settings,
        horizon=horizon,
        normalisation=normalisation,
        shuffle_labels=placebo,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, default=str))
    m = result["metrics"]
    figures = "  ".join(
        f"{label} {m[key]:.4f}" if m.get(key) is not None else f"{label} n/a"
        for label, key in (
            ("IC", "ic_mean"),
            ("rank IC", "rank_ic_mean"),
            ("ICIR", "icir"),
            ("rank IC t", "rank_ic_t"),
            ("rank IC t (non-overlapping)", "rank_ic_t_non_overlapping"),
            ("hit rate", "hit_rate"),
        )
    )
    label = f"h={horizon} {normalisation}" + (" placebo" if placebo else "")
    click.echo(f"{mode} ({label}): {figures} -> {output}")
    click.echo("reliability: confidence bin | count | mean confidence | realised hit rate")
    for row in m["reliability"]:
        click.echo(
            f"  {row['lo']:.3f}-{row['hi']:.3f} | {row['count']} | "
            f"{row['mean_confidence']:.3f} | {row['hit_rate']:.3f}"
        )


def register_ai_cli(app: Any) -> None:
    for command in (train_command, optimize_command, evaluate_command):
        app.cli.add_command(command)
