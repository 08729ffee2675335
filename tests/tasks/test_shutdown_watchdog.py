"""The worker's shutdown watchdog: armed as the worker initialises (before its pool forks
anything, so an early Ctrl-C never starts a thread mid-fork), and it ends a warm shutdown that
outlasts WORKER_SHUTDOWN_GRACE_SECONDS. Run in a child interpreter: the watchdog's exit would
end the test process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests import support

CHILD = textwrap.dedent(
    """
    import threading, time
    from celery.signals import worker_init, worker_shutting_down
    import app.tasks.celery_app  # noqa: F401  (connects the signal handlers)

    worker_init.send(sender=None)
    watchdogs = [t for t in threading.enumerate() if t.name == "shutdown-watchdog"]
    in_bootstrap = [t for t in threading._limbo.values() if t.name == "shutdown-watchdog"]
    print("armed", len(watchdogs), "in bootstrap", len(in_bootstrap), flush=True)
    worker_shutting_down.send(sender=None, sig="SIGINT", how="Warm", exitcode=0)
    print("stop requested", flush=True)
    time.sleep(30)
    print("still here", flush=True)
    """
)


def test_the_watchdog_is_armed_at_init_and_ends_a_shutdown_past_its_grace(tmp_path: Path) -> None:
    env = support.service_env(
        WORKER_SHUTDOWN_GRACE_SECONDS="1",
        DATABASE_DIR=str(tmp_path),
        LOG_LEVEL="WARNING",
    )
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=env,
        cwd=support.ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = done.stdout + done.stderr
    assert "armed 1 in bootstrap 0" in out, out
    assert "stop requested" in out, out
    assert "still here" not in out, out
    assert "leaving them" in out, out
    assert done.returncode == 1, out
    assert "Traceback" not in out, out
