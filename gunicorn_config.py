"""gunicorn settings, from the environment where it matters.

The app is loaded once in the master (preload_app) and each worker drops the inherited database
pool after fork. Without Redis, one worker with threads keeps the login rate limit exact (its
counters live in memory); with Redis, several workers share the counters and the blocklist.
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


def post_fork(server, worker):
    from app.extensions import db

    db.dispose()


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
