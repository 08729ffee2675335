"""Exposition: the registries /metrics serves (multiprocess-aware for gunicorn and Celery pool
children), dead-process cleanup and the per-process CPU/RSS sampler.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Gauge
from prometheus_client import multiprocess as _multiprocess

from app.metrics import multiprocess_dir

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- exposition


def collector_registry() -> CollectorRegistry:
    """What a metrics endpoint outside Flask (the Celery worker's) should serve.

    In multiprocess mode: every process's files merged (the pool children do the work, the
    parent serves); otherwise this process's default registry.
    """
    path = multiprocess_dir()
    if not path:
        return REGISTRY
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry


def mark_process_dead(pid: int) -> None:
    """Drop a finished process's live gauges (in progress tasks, CPU, memory)."""
    if multiprocess_dir():
        _multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


# ---------------------------------------------------------------------------- process_* metrics

_PROCESS_CPU: Gauge | None = None
_PROCESS_RSS: Gauge | None = None
# A process that forks while its sampler thread holds prometheus_client's value lock would
# hand its child a lock nobody releases. The sampler writes only under this lock, and a fork
# waits for it (os.register_at_fork), so the child always inherits a free one.
_FORK_GUARD = threading.Lock()
_sampler_pid: int | None = None


def _release_fork_guard() -> None:
    _FORK_GUARD.release()


os.register_at_fork(
    before=_FORK_GUARD.acquire,
    after_in_parent=_release_fork_guard,
    after_in_child=_release_fork_guard,
)


def _process_gauges() -> tuple[Gauge, Gauge]:
    global _PROCESS_CPU, _PROCESS_RSS
    if _PROCESS_CPU is None or _PROCESS_RSS is None:
        # Not registered: in single-process mode the default registry's ProcessCollector
        # already exports these names.
        _PROCESS_CPU = Gauge(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds (sampled by the process)",
            ["role"],
            registry=None,
            multiprocess_mode="liveall",
        )
        _PROCESS_RSS = Gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes (sampled by the process)",
            ["role"],
            registry=None,
            multiprocess_mode="liveall",
        )
    return _PROCESS_CPU, _PROCESS_RSS


def _resident_bytes() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        import resource

        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024.0


def sample_process(role: str) -> None:
    """Write this process's CPU seconds and resident memory once."""
    cpu, rss = _process_gauges()
    times = os.times()
    with _FORK_GUARD:
        cpu.labels(role=role).set(times.user + times.system)
        rss.labels(role=role).set(_resident_bytes())


def start_process_sampler(role: str, interval: float = 5.0) -> bool:
    """Sample this process's CPU and memory every `interval` seconds (multiprocess mode only).

    Call it in each process that should appear (gunicorn worker, Celery parent and pool
    child); once per process, a forked child needs its own call. Returns whether it started.
    Not in Celery's embedded beat: billiard closes the file descriptors it inherits, the
    metric files' among them, so no metric can be written there.
    """
    global _sampler_pid
    if not multiprocess_dir() or _sampler_pid == os.getpid():
        return False
    _sampler_pid = os.getpid()
    sample_process(role)

    def loop() -> None:
        pid = os.getpid()
        while _sampler_pid == pid:
            time.sleep(interval)
            try:
                sample_process(role)
            except Exception:  # never let a metrics hiccup end the thread silently
                log.exception("process metrics sampling failed")

    threading.Thread(target=loop, name=f"metrics-sampler-{role}", daemon=True).start()
    return True


class _DefaultRegistryView:
    """Makes the process's default registry (these metrics, process and GC collectors) part
    of an app's /metrics registry when there is no multiprocess directory to merge from."""

    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()


def app_registry() -> CollectorRegistry:
    """The registry one Flask app's /metrics serves: its HTTP metrics, plus these metrics in
    single-process mode (in multiprocess mode the exporter merges every process's files)."""
    registry = CollectorRegistry(auto_describe=True)
    if multiprocess_dir() is None:
        registry.register(_DefaultRegistryView())  # type: ignore[arg-type]
    return registry
