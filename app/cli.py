"""The `flask --app app ...` commands: database migrations and users."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup, with_appcontext

from app.container import services
from app.errors import AppError
from app.services import migrations


def register_cli(app: Flask) -> None:
    app.cli.add_command(db_group)
    app.cli.add_command(create_user)


db_group = AppGroup("db", help="Database schema migrations (Alembic).")


@db_group.command("upgrade", help="Apply migrations up to REVISION (default: head).")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    svc = services()
    migrations.upgrade(svc.settings.sql_url, revision)
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
