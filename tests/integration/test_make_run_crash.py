"""Issue 23: a crash must not leave training locked. The literal sequence in a fresh clone:
`make run`, SIGKILL to the whole process tree the moment the first training is queued, `make
run` again: a model is trained and the sim replay trades within minutes (before: every
training answered 409 naming the dead task, and the replay held at its first session for the
slot's 6-hour age limit)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests import support
from tests.integration.test_make_run import (
    MakeRun,
    _alive,
    assert_trades,
    login,
    session_pids,
    start,
    user_env,
)

pytestmark = pytest.mark.integration

#: A smaller training than the default 32 symbols over 5 years: the same path, sooner.
SMALL_TRAINING = {
    "WATCHLIST": "AAPL,MSFT,GOOGL,NVDA,JPM,XOM,KO,WMT,SPY",
    "TRAIN_YEARS": "2",
}


def training_recorded(database: Path) -> bool:
    """The start-up training's record is written just before its messages are sent: watching
    the database (not the log, which honcho's buffered output delays) catches that moment."""
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=0.1)) as db:
            row = db.execute(
                "SELECT count(*) FROM task_runs WHERE name = 'app.tasks.fit_models'"
            ).fetchone()
    except sqlite3.Error:  # not created or not migrated yet
        return False
    return bool(row and row[0])


def kill_tree(stack: MakeRun) -> None:
    """SIGKILL to every process of the run at once, as a power cut or the OOM killer would."""
    tree = session_pids(stack.popen.pid)
    while tree:
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        tree = _alive(tree) | session_pids(stack.popen.pid)
    stack.popen.wait(10)


@pytest.mark.timeout(1500)  # one install into a new .venv (about 80 s here, more on CI)
def test_make_run_killed_as_its_first_training_is_queued_trains_after_a_restart(
    tmp_path: Path,
) -> None:
    clone = tmp_path / "alpha"
    subprocess.run(["git", "clone", "--quiet", str(support.ROOT), str(clone)], check=True)
    port = support.free_port()
    env = {**user_env(port), **SMALL_TRAINING}
    base = f"http://127.0.0.1:{port}"

    first = MakeRun(clone, env, tmp_path / "first.log")
    deadline = time.monotonic() + 900  # the first start installs the virtualenv
    while not training_recorded(clone / "database" / "alpha_trader.db"):
        if time.monotonic() > deadline or first.popen.poll() is not None:
            kill_tree(first)
            raise AssertionError(first.output()[-5000:])
        time.sleep(0.01)
    kill_tree(first)

    second = start(clone, env, tmp_path / "second.log", base, timeout=180)
    try:
        assert_trades(base, login(base), second)
    except BaseException:
        kill_tree(second)  # honcho's children have sessions of their own: the whole tree
        raise AssertionError(second.output()[-8000:]) from None
    second.ctrl_c()
