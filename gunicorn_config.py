"""gunicorn settings, from the environment where it matters.

The app is loaded once in the master (preload_app) and each worker drops the inherited database
pool after fork. Without Redis, one worker with threads keeps the login rate limit exact (its
counters live in memory); with Redis, several workers share the counters and the blocklist.

With PROMETHEUS_MULTIPROC_DIR set every worker writes its metrics there and /metrics, served by
any worker, merges them; child_exit forgets a dead worker's live gauges. The directory must be
emptied before the service starts (make run does; docker-compose mounts a tmpfs).
"""

import os

bind = os.environ.get("BIND", f"127.0.0.1:{os.environ.get('PORT', '5000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", "2" if os.environ.get("REDIS_URL") else "1"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 30
keepalive = 5
preload_app = True
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss pid=%(p)s'
errorlog = "-"

# gunicorn's own limits, checked before Flask sees a request. Their answers (400 for a bad
# request line, 414 for a long one, 431 / 400 for too many or too large headers) are gunicorn's
# small text/HTML pages: the one place the API answers without JSON. The limits are far above
# what any client of this API sends: the longest URL is a bars query (< 200 bytes) and the
# largest header an Authorization with a JWT (< 1 KB).
limit_request_line = 8190  # bytes in "METHOD /path?query HTTP/1.1"; gunicorn's maximum
limit_request_fields = 100  # header count
limit_request_field_size = 16380  # bytes in one header line


def post_fork(server, worker):
    """In the new worker: no inherited database connections; sample its CPU and memory."""
    from app import metrics_export
    from app.extensions import db

    db.dispose()
    metrics_export.start_process_sampler("api")


def child_exit(server, worker):
    """In the master, when a worker has gone: drop its live gauges (CPU, memory, in-flight)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
