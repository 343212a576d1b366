"""DATABASES from the environment: the primary (DATABASE_URL) and its read replicas
(DATABASE_REPLICA_URLS), each parsed by dj-database-url with the same engine tweaks.

Pure functions of their arguments (settings.py passes the environment in), so a test can
build the dictionaries without reloading the settings.
"""

from __future__ import annotations

from typing import Any, cast

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

PRIMARY = "default"
# Seconds a replica may take to accept a connection before a request reads elsewhere (a
# replica host that vanished would otherwise hold a request for the OS's TCP timeout).
# A URL's own ?connect_timeout= wins.
REPLICA_CONNECT_TIMEOUT = 2


def tuned(config: dict[str, Any], *, prepare_threshold: int | None) -> dict[str, Any]:
    """A dj-database-url dictionary with this service's engine and options."""
    if config["ENGINE"] == "django.db.backends.postgresql":
        # The same backend with a health check that needs no round trip and the web
        # process's statement timeout as a startup parameter (cdrs/pgbackend).
        config["ENGINE"] = "cdrs.pgbackend"
        # Parameters bound by the server, and a statement run ``prepare_threshold`` times
        # on a connection is prepared (psycopg): a request's queries then skip PostgreSQL's
        # parse and plan, which cost more than running them (a page: ~0.6 ms planning, 0.1
        # ms executing). None (DB_PREPARE_THRESHOLD=off) behind a pooler in transaction
        # mode (PgBouncer before 1.21).
        config.setdefault("OPTIONS", {}).update(
            {"server_side_binding": True, "prepare_threshold": prepare_threshold}
        )
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # WAL lets readers go on while one writer writes; the timeout waits for the lock.
        config.setdefault("OPTIONS", {}).update(
            {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}
        )
    return config


def primary(
    *, default_url: str, conn_max_age: int, prepare_threshold: int | None
) -> dict[str, Any]:
    """The primary from DATABASE_URL (``default_url`` when it is unset)."""
    config = dj_database_url.config(
        default=default_url, conn_max_age=conn_max_age, conn_health_checks=True
    )
    return tuned(cast(dict[str, Any], config), prepare_threshold=prepare_threshold)


def replica_alias(number: int) -> str:
    return f"replica{number}"


def replicas(
    urls: list[str],
    *,
    primary: dict[str, Any],
    conn_max_age: int,
    prepare_threshold: int | None,
) -> dict[str, dict[str, Any]]:
    """``{"replica1": {...}, ...}`` for DATABASE_REPLICA_URLS, in the order given.

    Replicas are PostgreSQL hot standbys of a PostgreSQL primary. Under test they are
    mirrors of the primary (Django creates no test database on them: a standby is read-only).
    """
    if urls and primary["ENGINE"] != "cdrs.pgbackend":
        raise ImproperlyConfigured("DATABASE_REPLICA_URLS needs a PostgreSQL DATABASE_URL")
    found: dict[str, dict[str, Any]] = {}
    for number, url in enumerate(urls, start=1):
        try:
            parsed = dj_database_url.parse(url, conn_max_age=conn_max_age, conn_health_checks=True)
        except ValueError as exc:  # an unknown scheme
            raise ImproperlyConfigured(f"DATABASE_REPLICA_URLS entry {number}: {exc}") from None
        config = tuned(cast(dict[str, Any], parsed), prepare_threshold=prepare_threshold)
        if config["ENGINE"] != "cdrs.pgbackend":
            raise ImproperlyConfigured(
                f"DATABASE_REPLICA_URLS entry {number} is not a postgres:// URL"
            )
        config.setdefault("OPTIONS", {}).setdefault("connect_timeout", REPLICA_CONNECT_TIMEOUT)
        config["TEST"] = {"MIRROR": PRIMARY}
        found[replica_alias(number)] = config
    return found
