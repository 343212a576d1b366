"""gunicorn settings for cdrservice (bin/run, the Dockerfile and the benchmarks use this)."""

import os

bind = os.environ.get("BIND", f"0.0.0.0:{os.environ.get('PORT', '8887')}")
# One worker per core by default. gthread, not sync: a sync worker is silent while it
# streams, so the arbiter kills it `timeout` seconds into a long export (a slow client
# reading a 10M-row export takes minutes); gthread workers keep telling the arbiter they
# are alive. tests/test_export_streaming.py shows sync cutting an export off.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = int(os.environ.get("GUNICORN_THREADS", "2"))
# Recycle workers now and then (bounded memory over months), not all at once.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "20000"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "2000"))
# A worker that stops answering the arbiter this long is restarted (long exports are fine).
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
