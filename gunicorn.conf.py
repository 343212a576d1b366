"""gunicorn settings for cdrservice (bin/run, the Dockerfile and the benchmarks use this)."""

import os

bind = os.environ.get("BIND", f"0.0.0.0:{os.environ.get('PORT', '8887')}")
# Sync workers: every request is a short database round trip; measured in bench/ against
# gthread, sync gave the best req/s per core on 2 cores. One worker per core by default.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
# Recycle workers now and then (bounded memory over months), not all at once.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "20000"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "2000"))
# Exports stream for minutes: the timeout applies to a silent worker, not to a long response.
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
