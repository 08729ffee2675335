"""The `flask --app app ...` commands: database migrations and users."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import click
from flask import Flask
from flask.cli import AppGroup, with_appcontext
from tqdm import tqdm

from app.broker.venue import alpaca_market_data
from app.cli.ai import register_ai_cli
from app.cli.backtest import backtest_command
from app.container import services
from app.domain import MarketData
from app.errors import AppError
from app.market.cache import CachedMarketData
from app.market.sources import CsvMarketData
from app.market.symbols import parse_symbol
from app.market.universe import configured_universe, feature_universe
from app.market.validation import rejection_counts
from app.store import migrations
from app.tasks.celery_app import declare_queues


def register_cli(app: Flask) -> None:
    app.cli.add_command(db_group)
    app.cli.add_command(create_user)
    app.cli.add_command(data_group)
    register_ai_cli(app)
    app.cli.add_command(backtest_command)


db_group = AppGroup("db", help="Database schema migrations (Alembic).")


@db_group.command("upgrade", help="Apply migrations up to REVISION (default: head).")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    svc = services()
    migrations.upgrade(svc.settings.sql_url, revision)
    declare_queues(svc.celery)
    password = svc.settings.effective_admin_password
    if password and svc.users.ensure_admin(svc.settings.admin_username, password):
        click.echo(f"created admin user {svc.settings.admin_username!r}")
    click.echo(f"database at {revision}")


@db_group.command("downgrade", help="Revert migrations down to REVISION.")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    migrations.downgrade(services().settings.sql_url, revision)
    click.echo(f"database at {revision}")


@db_group.command("current", help="Show the database's revision.")
def db_current() -> None:
    click.echo(migrations.current(services().settings.sql_url) or "(empty)")


@click.command("create-user", help="Create a user, or reset its password with --reset.")
@with_appcontext
@click.argument("username")
@click.password_option(help="The password (prompted when omitted).")
@click.option("--reset", is_flag=True, help="Set a new password for an existing user.")
def create_user(username: str, password: str, reset: bool) -> None:
    users = services().users
    try:
        if reset:
            users.set_password(username, password)
            click.echo(f"password of {username!r} reset")
        else:
            users.create_user(username, password)
            click.echo(f"user {username!r} created")
    except AppError as exc:
        raise click.ClickException(exc.message) from None


data_group = AppGroup(
    "data", help="Daily bars: download from Alpaca or import CSVs into the cache."
)


def _symbols_option(value: str | None) -> list[str]:
    if not value:
        svc = services()  # what the cycles load: the universe (UNIVERSE) and SPY
        return feature_universe(configured_universe(svc.settings, svc.venue.market).symbols)
    return [parse_symbol(part) for part in value.split(",") if part.strip()]


@data_group.command("download", help="Fetch daily bars from Alpaca into the bar cache.")
@click.option("--symbols", help="Comma-separated symbols (default: the universe, UNIVERSE).")
@click.option("--start", type=click.DateTime(["%Y-%m-%d"]), required=True)
@click.option("--end", type=click.DateTime(["%Y-%m-%d"]), help="Default: today.")
@click.option("--chunk", default=20, show_default=True, help="Symbols per request batch.")
def data_download(symbols: str | None, start: datetime, end: datetime | None, chunk: int) -> None:
    settings = services().settings
    if not (settings.alpaca_api_key and settings.alpaca_api_secret):
        raise click.ClickException("ALPACA_API_KEY and ALPACA_API_SECRET are needed to download")
    upstream = alpaca_market_data(settings)
    _fill_cache(
        upstream, _symbols_option(symbols), start.date(), (end or datetime.now(UTC)).date(), chunk
    )


@data_group.command("import", help="Import SYMBOL.csv files (date,open,high,low,close,volume).")
@click.option(
    "--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True
)
@click.option("--symbols", help="Comma-separated symbols (default: every CSV in the folder).")
@click.option("--start", type=click.DateTime(["%Y-%m-%d"]), default="1990-01-02", show_default=True)
@click.option("--end", type=click.DateTime(["%Y-%m-%d"]), help="Default: today.")
def data_import(data_dir: Path, symbols: str | None, start: datetime, end: datetime | None) -> None:
    source = CsvMarketData(data_dir)
    wanted = (
        [parse_symbol(s) for s in symbols.split(",") if s.strip()]
        if symbols
        else source.available_symbols()
    )
    _fill_cache(source, wanted, start.date(), (end or datetime.now(UTC)).date(), chunk=1)


def _fill_cache(
    upstream: MarketData, symbols: list[str], start: date, end: date, chunk: int
) -> None:
    before = rejection_counts()
    cache = CachedMarketData(upstream, services().db)
    stored = 0
    with tqdm(total=len(symbols), unit="symbol", desc="bars") as progress:
        for i in range(0, len(symbols), chunk):
            group = symbols[i : i + chunk]
            try:
                frames = cache.get_daily_bars(group, start, end)
            except AppError as exc:
                raise click.ClickException(exc.message) from None
            stored += sum(len(f) for f in frames.values())
            progress.update(len(group))
    after = rejection_counts()
    rejected = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    click.echo(
        f"{len(symbols)} symbols, {stored} bars in the cache, "
        f"{cache.upstream_requests} upstream requests"
    )
    if rejected:
        click.echo("rejected bars: " + ", ".join(f"{k}={v}" for k, v in sorted(rejected.items())))
