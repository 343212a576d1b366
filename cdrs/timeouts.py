"""Statement timeouts on PostgreSQL: no single query of a web request may hold the database.

The web process (``cdrservice/wsgi.py``: gunicorn, runserver) calls ``serve_requests()``;
from then on every database connection it opens starts with ``statement_timeout`` =
``CDR_STATEMENT_TIMEOUT_MS``, sent as a startup parameter (``cdrs/pgbackend``), so a
request pays no round trip for it however long the connection lives (``CONN_MAX_AGE``).
The export raises it to ``CDR_EXPORT_STATEMENT_TIMEOUT_MS`` with ``SET LOCAL`` inside its
own transaction, which ends with the export. Management commands (migrate, import_cdrs)
never call ``serve_requests()`` and run without a limit. SQLite has no statement timeout.

A statement that runs out of time is cancelled by the server (psycopg ``QueryCanceled``);
the API answers it with 503 SERVICE_UNAVAILABLE (``cdrs/api/errors.py``).
"""

from __future__ import annotations

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from psycopg import errors as pg_errors

_serving = False


def serve_requests() -> None:
    """Limit the statements of every connection this process opens from now on."""
    global _serving
    _serving = True


def startup_options() -> str:
    """libpq ``options`` for a new connection: ``-c statement_timeout=N`` when serving."""
    ms = settings.CDR_STATEMENT_TIMEOUT_MS
    return f"-c statement_timeout={ms}" if _serving and ms > 0 else ""


def use_export_timeout(alias: str = DEFAULT_DB_ALIAS) -> None:
    """Switch the current transaction on ``alias`` to the export's statement timeout
    (PostgreSQL)."""
    connection = connections[alias]
    if _serving and connection.vendor == "postgresql":
        with connection.cursor() as cur:
            # An int from the settings; SET takes no bind parameters.
            ms = int(settings.CDR_EXPORT_STATEMENT_TIMEOUT_MS)
            cur.execute(f"SET LOCAL statement_timeout = {ms}")


def is_query_cancelled(exc: BaseException) -> bool:
    """Whether a database error is PostgreSQL cancelling a statement (its timeout)."""
    return isinstance(exc.__cause__, pg_errors.QueryCanceled)
