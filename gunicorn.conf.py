"""gunicorn settings for cdrservice (bin/run, the Dockerfile and the benchmarks use this)."""

import os

bind = os.environ.get("BIND", f"0.0.0.0:{os.environ.get('PORT', '8887')}")
# cdrservice.gunicorn_loop.LoopWorker: connections on an event loop (a slow client, trickling
# headers or not reading an export, holds a buffer, not a thread), the app run on the loop's
# thread for the API's short requests (no handoff between threads: detail by id 1,000-1,300
# -> 1,700-1,900 req/s on 2 cores, bench/README.md "Server") and in a pool of
# GUNICORN_THREADS threads for the long ones (export, statistics, search, admin). Both it and
# cdrservice.gunicorn_worker.ThreadWorker (gthread, the default before) bound how long a
# request may take to arrive, cap its head and answer protocol errors with JSON bodies.
# Each thread that has run a query keeps its own database connection (DB_CONN_MAX_AGE):
# PostgreSQL needs max_connections above WEB_CONCURRENCY x (GUNICORN_THREADS + 1).
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "cdrservice.gunicorn_loop.LoopWorker")
threads = int(os.environ.get("GUNICORN_THREADS", "32"))
# Recycle workers now and then (bounded memory over months), not all at once.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "20000"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "2000"))
# A worker silent this long is restarted. A threaded worker's main loop reports on its own;
# a sync worker streaming an export reports through the post_fork hook below.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
# Request heads: the contract's 2,000-character filter, percent-encoded, can take 24,000
# bytes (4-byte UTF-8 characters); gunicorn's request-line limit stops at 8,190 unless
# lifted (0), so our workers cap the whole head instead (GUNICORN_MAX_REQUEST_HEAD_BYTES).
# Any other worker class keeps gunicorn's largest finite limit.
_CAPPING_WORKERS = (
    "cdrservice.gunicorn_loop.LoopWorker",
    "cdrservice.gunicorn_worker.ThreadWorker",
)
limit_request_line = 0 if worker_class in _CAPPING_WORKERS else 8190
limit_request_field_size = 32768
# Proxies: X-Forwarded-Proto (and the rest) count only from the addresses in
# CDR_TRUSTED_PROXIES; none by default (gunicorn's own default trusts 127.0.0.1).
forwarded_allow_ips = os.environ.get("CDR_TRUSTED_PROXIES", "").replace(" ", "")
# Our middleware logs one JSON line per request (with request id and token prefix), so
# gunicorn's own access log stays off unless asked for; errors go to stderr.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
access_log_format = (
    '{"time":"%(t)s","remote":"%(h)s","method":"%(m)s","path":"%(U)s",'
    '"status":%(s)s,"bytes":%(B)s,"duration_ms":%(M)s}'
)
errorlog = "-"
# No control socket (gunicorn 25+ opens one in $HOME by default): nothing here uses it, and
# several instances on one host would contend for the same path.
control_socket_disable = True
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")


def post_fork(server, worker):
    """Let long streaming responses tell the arbiter this worker is alive (cdrs.heartbeat)."""
    from cdrs import heartbeat

    heartbeat.install(worker.notify)
