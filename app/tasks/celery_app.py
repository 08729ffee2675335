"""celery_init_app: Flask's pattern, so every task runs inside the app context.

Also the worker's observability: task counts, durations and failures for Prometheus (from the
pool children), an HTTP metrics endpoint on METRICS_PORT served by the parent, and the app's
log handler kept in place, so worker logs are redacted and carry the cycle id like the API's.
"""

from __future__ import annotations

import hmac
import logging
import os
import sys
import threading
import time
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from celery import Celery, Task
from celery.app import backends as celery_backends
from celery.apps.worker import Worker as CommandLineWorker
from celery.signals import (
    setup_logging,
    task_failure,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from flask import Flask
from prometheus_client import make_wsgi_app, start_http_server
from prometheus_client.exposition import ThreadingWSGIServer

from app import metrics, metrics_export
from app.config import Settings, TradingMode, load_settings
from app.extensions import db
from app.logging_setup import app_handler, configure_logging
from app.store.database import private_sqlite_file
from app.tasks.celery_config import TRAINING_QUEUE, celery_settings

log = logging.getLogger(__name__)


def celery_init_app(app: Flask, settings: Settings) -> Celery:
    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery = Celery(app.name, task_cls=FlaskTask)
    celery.config_from_object(celery_settings(settings))
    for url in (settings.broker_url, settings.result_backend):  # the embedded broker's files
        private_sqlite_file(url)
    celery.set_default()
    app.extensions["celery"] = celery
    celery.loader.import_default_modules()  # register the tasks in the API process too
    # The result backend's module imported now, in the main thread, before any daemon thread
    # starts: beat once died at start-up on a half-initialised celery.backends.database
    # ("partially initialized module ... has no attribute 'DatabaseBackend'"), a thread having
    # been importing it at the same moment.
    celery_backends.by_url(celery.conf.result_backend, celery.loader)

    @worker_ready.connect(weak=False)
    def _train_when_sim_has_no_model(sender: Any = None, **_kwargs: Any) -> None:
        """Sim mode out of the box: the training worker trains a model first if none exists
        (the trader, which does not serve the training queue, leaves it alone)."""
        if settings.trading_mode is not TradingMode.SIM or not settings.sim_auto_train:
            return
        if TRAINING_QUEUE not in _consumed_queues(sender):
            return
        with app.app_context():
            from app.container import services
            from app.tasks.training import train_first_sim_model

            train_first_sim_model(services(), requested_by="sim start-up")

    return celery


def declare_queues(celery: Celery) -> None:
    """Create every task queue on the broker before any worker starts (`db upgrade` does).

    The embedded SQLite transport makes a queue's row on first use; with a trader and its beat
    and a worker starting at once, two processes can insert the same row and one of them dies
    (UNIQUE constraint failed: kombu_queue.name)."""
    with celery.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in celery.amqp.queues.values():
            queue.bind(channel).declare()


def _consumed_queues(consumer: Any) -> set[str]:
    """The queues a starting worker serves (its --queues), from the worker_ready sender."""
    try:
        return set(consumer.app.amqp.queues.consume_from or ())
    except AttributeError:
        return {TRAINING_QUEUE}  # unknown: behave as the single worker of old did


@worker_process_init.connect
def _dispose_pool_after_fork(**_kwargs: Any) -> None:
    """Prefork children must not share the parent's database connections.

    Each child also leaves the worker's process group: a process manager (honcho, a terminal's
    Ctrl-C) signals the whole group, and a child killed while it holds the pool's queue lock
    left the parent waiting for that lock forever. The parent alone stops its children: a
    running task finishes, or is left for reconciliation when the parent is killed."""
    db.dispose()
    os.setpgid(0, 0)
    metrics_export.start_process_sampler("worker-pool")


@setup_logging.connect
def _keep_app_logging(loglevel: int | str | None = None, **_kwargs: Any) -> None:
    """Celery would replace the root handler, and with it the secret redaction and cycle ids;
    connecting here makes it leave logging to us. Only its --loglevel is applied."""
    if app_handler() is None:
        configure_logging(loglevel or logging.INFO, json_format=False)
    elif loglevel:
        logging.getLogger().setLevel(loglevel)


@worker_ready.connect
def _serve_worker_metrics(**_kwargs: Any) -> None:
    """The worker's /metrics: every pool child's files merged, served by the parent."""
    metrics_export.start_process_sampler("worker")
    settings = load_settings()
    port, addr = settings.metrics_port, settings.metrics_addr
    if port is None:
        return
    try:
        if settings.metrics_token:
            _serve_guarded_metrics(addr, port, settings.metrics_token)
        else:
            start_http_server(port, addr=addr, registry=metrics_export.collector_registry())
    except OSError as exc:  # a busy port must not stop trading
        log.error("worker metrics endpoint on %s:%d failed to start: %s", addr, port, exc)
        return
    log.info("worker metrics on http://%s:%d/metrics", addr, port)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the worker's log."""


def _serve_guarded_metrics(addr: str, port: int, token: str) -> None:
    """The worker's /metrics behind the same bearer token as the API's (METRICS_TOKEN)."""
    expected = f"Bearer {token}".encode()
    exposition = make_wsgi_app(metrics_export.collector_registry())

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        sent = str(environ.get("HTTP_AUTHORIZATION", "")).encode()
        if not hmac.compare_digest(sent, expected):
            start_response("401 Unauthorized", [("Content-Type", "application/json")])
            return [b'{"error": {"code": "unauthorized", "message": "metrics need the token"}}']
        return exposition(environ, start_response)

    server = make_server(addr, port, guarded, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()


@worker_process_shutdown.connect
def _pool_child_exit(pid: int | None = None, **_kwargs: Any) -> None:
    metrics_export.mark_process_dead(pid or os.getpid())


_STOP_REQUESTED = threading.Event()
_watchdog_lock = threading.Lock()
_watchdog: list[threading.Thread] = []


def _start_shutdown_watchdog() -> None:
    """A daemon thread that leaves WORKER_SHUTDOWN_GRACE_SECONDS after a stop request.

    Started as the worker initialises, before its pool exists, and returns only once the
    thread runs: a thread still in CPython's bootstrap while the pool's supervisor forks a
    child (as during a stop that comes before the worker is ready) can die with a KeyError in
    threading._limbo, which printed a traceback on an early Ctrl-C."""
    with _watchdog_lock:
        if _watchdog:
            return
        grace = load_settings().worker_shutdown_grace_seconds
        running = threading.Event()

        def watch() -> None:
            running.set()  # the bootstrap is over: the thread left _limbo before run()
            _STOP_REQUESTED.wait()
            time.sleep(grace)
            log.warning("tasks still running %.1fs after the stop request: leaving them", grace)
            logging.shutdown()
            os._exit(1)

        thread = threading.Thread(target=watch, name="shutdown-watchdog", daemon=True)
        thread.start()
        running.wait()
        _watchdog.append(thread)


@worker_init.connect
def _arm_shutdown_watchdog(**_kwargs: Any) -> None:
    _start_shutdown_watchdog()


@worker_shutting_down.connect
def _bound_warm_shutdown(**_kwargs: Any) -> None:
    """A warm shutdown waits for running tasks; a training run would outlast any process
    manager's grace and end in SIGKILL. Past WORKER_SHUTDOWN_GRACE_SECONDS the worker leaves:
    its pool children die with it (PDEATHSIG), late-acked tasks are redelivered, and a trading
    cycle cut short is reconciled by the next one, as after a crash."""
    _start_shutdown_watchdog()  # armed at init; kept for a worker built without it
    _STOP_REQUESTED.set()


@worker_shutdown.connect
def _worker_exit(sender: Any = None, **_kwargs: Any) -> None:
    """Mark the metrics dead, then end a command-line worker at once.

    By now the shutdown is complete (tasks finished, pool joined, beat stopped), but billiard's
    exit-time finalizers still join pool threads that each sleep up to a second: a stop took
    5-6 s, past honcho's 5 s grace, and Ctrl-C on `make run` ended in SIGKILL."""
    metrics_export.mark_process_dead(os.getpid())
    if isinstance(sender, CommandLineWorker):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(sender.exitcode or 0)


def _task_name(sender: Any, task: Any = None) -> str:
    return str(getattr(task or sender, "name", None) or "unknown")


@task_prerun.connect
def _task_prerun(
    sender: Any = None, task_id: str | None = None, task: Any = None, **_kwargs: Any
) -> None:
    metrics.task_started(task_id, _task_name(sender, task))


@task_postrun.connect
def _task_postrun(
    sender: Any = None,
    task_id: str | None = None,
    task: Any = None,
    state: str | None = None,
    **_kwargs: Any,
) -> None:
    metrics.task_finished(task_id, _task_name(sender, task), state)


@task_failure.connect
def _task_failure(
    sender: Any = None, exception: BaseException | None = None, **_kwargs: Any
) -> None:
    metrics.task_failed(_task_name(sender), exception)
