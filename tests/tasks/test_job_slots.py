"""The training and tuning slots are leases: a task that no worker holds, with no queued
message and no recent heartbeat, is lost (a kill -9) and frees its slot at once, not after an
age limit; one that a live worker holds keeps it."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest
from flask import Flask

from app.container import Services
from app.store import tasks as task_service
from app.tasks import job_slots
from app.tasks.job_slots import JobKind
from tests import support
from tests.conftest import Auth

FIT = "app.tasks.fit_models"


def _svc(app: Flask) -> Services:
    svc: Services = app.extensions["alpha_trader"]
    return svc


def _heartbeats(svc: Services) -> job_slots.TaskHeartbeats:
    return job_slots.heartbeats_for(svc.redis, svc.settings.database_dir)


def _orphan(svc: Services) -> tuple[str, str]:
    """A training recorded, whose messages died with a worker killed -9: its fit id and one
    data part's id."""
    fit_id, part_id = str(uuid4()), str(uuid4())
    task_service.record(svc.db, fit_id, FIT, {"subtasks": [part_id]}, "sim start-up")
    return fit_id, part_id


def test_a_lost_training_frees_the_slot_at_once(app: Flask) -> None:
    """Before: 409 naming a task no worker would ever run, for 6 hours."""
    svc = _svc(app)
    fit_id, part_id = _orphan(svc)
    client = app.test_client()
    headers = Auth(client).headers()

    started = client.post("/api/training/start/batch", headers=headers, json={})
    assert started.status_code == 202, started.get_json()
    assert started.get_json()["task_id"] != fit_id
    lost = client.get(f"/api/tasks/{fit_id}", headers=headers).get_json()
    assert lost["state"] == "REVOKED"
    assert "no worker holds it" in lost["error"]
    assert svc.celery.AsyncResult(part_id).state == "REVOKED"  # a chord_unlock waiting ends
    assert _heartbeats(svc).given_up(fit_id)  # a late redelivered copy does nothing


def test_a_heartbeat_holds_the_slot_until_it_is_stale(app: Flask) -> None:
    svc = _svc(app)
    fit_id, _ = _orphan(svc)
    beats = _heartbeats(svc)
    beats.beat([fit_id])
    assert job_slots.running_task(svc.db, svc.celery, JobKind.TRAINING, beats) == fit_id
    assert svc.celery.AsyncResult(fit_id).state == "PENDING"
    assert job_slots.running_task(svc.db, svc.celery, JobKind.TRAINING, beats, 0.0) is None
    assert svc.celery.AsyncResult(fit_id).state == "REVOKED"


def test_a_finished_task_is_never_marked_lost(app: Flask) -> None:
    svc = _svc(app)
    fit_id, _ = _orphan(svc)
    svc.celery.backend.mark_as_done(fit_id, {"version": "v1"})
    assert job_slots.running_task(svc.db, svc.celery, JobKind.TRAINING, _heartbeats(svc)) is None
    assert svc.celery.AsyncResult(fit_id).state == "SUCCESS"
    assert not _heartbeats(svc).given_up(fit_id)


@pytest.fixture
def worker(backend: dict[str, Any], tmp_path: Any) -> Iterator[support.Process]:
    env = support.service_env(**{k: str(v) for k, v in backend.items()})
    args = [
        str(support.BIN / "celery"),
        "--app",
        "app.make_celery",
        "worker",
        "--queues",
        "default,training",
        "--concurrency",
        "1",
        "--loglevel",
        "INFO",
        "--hostname",
        f"slots-{tmp_path.name}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    process = support.Process(args, env, tmp_path / "worker.log")
    yield process
    process.stop(signal.SIGKILL)


@pytest.mark.integration
def test_a_live_worker_holds_the_slot_and_its_kill_frees_it(
    app: Flask, worker: support.Process
) -> None:
    """A real worker holds a part of the training (a data task due in an hour): its beats keep
    the slot past the stale limit; SIGKILL the worker and the slot is free within that limit."""
    svc = _svc(app)
    fit_id, part_id = _orphan(svc)
    beats = _heartbeats(svc)
    svc.celery.send_task(
        "app.tasks.prepare_symbol_bars",
        args=["AAPL", "2020-01-02", "2020-02-03"],
        kwargs={"job": fit_id},
        task_id=part_id,
        countdown=3600,
    )
    stale = 3 * job_slots.HEARTBEAT_SECONDS

    def slot() -> str | None:
        return job_slots.running_task(svc.db, svc.celery, JobKind.TRAINING, beats, stale)

    try:
        support.wait_until(lambda: beats.age(fit_id) is not None, 60, "the worker's beat")
    except AssertionError:
        raise AssertionError(worker.output()[-3000:]) from None
    held_since = time.monotonic()
    while time.monotonic() - held_since < stale + job_slots.HEARTBEAT_SECONDS:
        assert slot() == fit_id, worker.output()[-3000:]
        time.sleep(0.5)

    worker.stop(signal.SIGKILL)
    support.wait_until(lambda: slot() is None, 4 * stale, "the slot freed")
    assert svc.celery.AsyncResult(fit_id).state == "REVOKED"
    assert svc.celery.AsyncResult(part_id).state == "REVOKED"


def test_a_chord_whose_lost_part_was_released_ends_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Celery's chord poller logs the released part with a traceback; `make run` shows none."""
    from celery.exceptions import TaskRevokedError

    try:
        raise TaskRevokedError(job_slots.LOST)
    except TaskRevokedError:
        logging.getLogger("celery.app.builtins").exception("Chord %r raised", "g1")
    (record,) = [r for r in caplog.records if r.name == "celery.app.builtins"]
    assert record.levelname == "WARNING"
    assert record.exc_info is None
