"""Logs: secrets never appear, and each line of a trading cycle carries the cycle's id."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from app.logging_setup import app_handler, configure_logging, current_cycle_id, cycle_context

SECRETS = {
    "authorization": ("headers: Authorization: Bearer eyJhbGciOi.J9.sig-nature", "eyJhbGciOi"),
    "api key": ("alpaca api_key=PKSECRETKEY123 rejected", "PKSECRETKEY123"),
    "api secret": ('{"secret": "s3cr3t-value"}', "s3cr3t-value"),
    "db password": (
        "cannot connect to postgresql+psycopg://alpha:hunter2@db:5432/alpha",
        "hunter2",
    ),
    "discord webhook": (
        "notify https://discord.com/api/webhooks/123456/AbCdEf-token failed",
        "AbCdEf-token",
    ),
}


@pytest.fixture(params=[False, True], ids=["plain", "json"])
def captured(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """The handler configure_logging installs, writing to a buffer for the test."""
    configure_logging("INFO", json_format=request.param)
    handler = app_handler()
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    yield buffer
    handler.setStream(previous)
    configure_logging("INFO", json_format=False)


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_secrets_are_redacted(captured: io.StringIO, kind: str) -> None:
    message, secret = SECRETS[kind]
    log = logging.getLogger("tests.redaction")
    log.warning(message)
    log.warning("as an argument: %s", message)
    try:
        raise RuntimeError(message)
    except RuntimeError:
        log.exception("in a traceback")
    output = captured.getvalue()
    assert secret not in output, output
    assert output.count("***") >= 3


def test_every_line_of_a_cycle_carries_its_id(captured: io.StringIO) -> None:
    log = logging.getLogger("tests.cycle")
    log.warning("before")
    with cycle_context("c0ffee") as cycle_id:
        assert current_cycle_id() == cycle_id == "c0ffee"
        log.warning("inside")
        logging.getLogger("app.trading.orders").warning("another module")
    log.warning("after")
    assert current_cycle_id() is None
    lines = captured.getvalue().splitlines()
    if lines[0].startswith("{"):
        entries = [json.loads(line) for line in lines]
        assert [e.get("cycle_id") for e in entries] == [None, "c0ffee", "c0ffee", None]
    else:
        assert ["[cycle=c0ffee]" in line for line in lines] == [False, True, True, False]


def test_cycle_ids_are_fresh_by_default() -> None:
    with cycle_context() as first, cycle_context() as second:
        assert first != second
        assert current_cycle_id() == second
    assert current_cycle_id() is None


def test_celery_leaves_the_app_handler_in_place() -> None:
    """Celery's worker replaces root handlers unless someone handles setup_logging; the
    app does, so worker logs stay redacted and tagged with cycle ids."""
    from celery import Celery
    from celery.app.log import Logging

    import app.tasks.celery_app  # noqa: F401 - connects the receivers

    configure_logging("INFO", json_format=False)
    handler = app_handler()
    was_setup = Logging._setup
    Logging._setup = False
    try:
        Celery("probe").log.setup_logging_subsystem(loglevel="WARNING")
    finally:
        Logging._setup = was_setup
    root = logging.getLogger()
    assert handler in root.handlers
    assert root.level == logging.WARNING
    configure_logging("INFO", json_format=False)
