"""gunicorn settings for cdrservice (bin/run, the Dockerfile and the benchmarks use this)."""

import os

bind = os.environ.get("BIND", f"0.0.0.0:{os.environ.get('PORT', '8887')}")
# One sync worker per core by default: every request is a short database round trip.
# Not gthread: when a gthread worker is recycled (max_requests) or stopped, connections it
# has accepted but not yet read are reset (tests/test_ops.py sees it under load). A sync
# worker is silent to the arbiter while it streams, so long exports report progress through
# the post_fork hook below (tests/test_export_streaming.py).
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
# Recycle workers now and then (bounded memory over months), not all at once.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "20000"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "2000"))
# A worker silent this long is restarted; a streaming export beats while it makes progress.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
# Our middleware logs one JSON line per request (with request id and token prefix), so
# gunicorn's own access log stays off unless asked for; errors go to stderr.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
access_log_format = (
    '{"time":"%(t)s","remote":"%(h)s","method":"%(m)s","path":"%(U)s",'
    '"status":%(s)s,"bytes":%(B)s,"duration_ms":%(M)s}'
)
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")


def post_fork(server, worker):
    """Let long streaming responses tell the arbiter this worker is alive (cdrs.heartbeat)."""
    from cdrs import heartbeat

    heartbeat.install(worker.notify)
