"""DATABASE_REPLICA_URLS: how the settings read it (cdrservice/databases.py), and that
without it the settings are those of a single database, with no router."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from cdrservice import databases

PRIMARY_URL = "postgres://app:secret@db-primary:5432/cdrs"


def settings_with(**env: str) -> dict[str, Any]:
    """What cdrservice.settings makes of this environment, read in a fresh process."""
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_REPLICA_URLS"}}
    code = (
        "import json; from cdrservice import settings as s; print(json.dumps({"
        "'databases': s.DATABASES, 'routers': s.DATABASE_ROUTERS, "
        "'replicas': s.CDR_REPLICA_ALIASES, 'down_seconds': s.CDR_REPLICA_DOWN_SECONDS}, "
        "default=str))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, "SECRET_KEY": "x" * 50, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_without_replica_urls_there_is_one_database_and_no_router():
    found = settings_with(DATABASE_URL=PRIMARY_URL)
    assert list(found["databases"]) == ["default"]
    assert found["routers"] == [] and found["replicas"] == []
    assert found["databases"]["default"]["ENGINE"] == "cdrs.pgbackend"


@pytest.mark.parametrize(("value", "threshold"), [(None, 5), ("2", 2), ("off", None)])
def test_prepared_statements_follow_db_prepare_threshold(value, threshold):
    """Server-side binding with psycopg's prepared statements; ``off`` for a pooler in
    transaction mode (prepare_threshold None: nothing is prepared)."""
    extra = {"DB_PREPARE_THRESHOLD": value} if value is not None else {}
    options = settings_with(DATABASE_URL=PRIMARY_URL, **extra)["databases"]["default"]["OPTIONS"]
    assert options["server_side_binding"] is True
    assert options["prepare_threshold"] == threshold


def test_replica_urls_become_aliases_tuned_like_the_primary():
    found = settings_with(
        DATABASE_URL=PRIMARY_URL,
        DATABASE_REPLICA_URLS=(
            "postgres://app:secret@db-replica-a:5432/cdrs, "
            "postgresql://app:secret@db-replica-b:6432/cdrs?connect_timeout=5&sslmode=require"
        ),
        DB_CONN_MAX_AGE="120",
    )
    assert found["replicas"] == ["replica1", "replica2"]
    assert found["routers"] == ["cdrs.routers.ReplicaRouter"]
    assert list(found["databases"]) == ["default", "replica1", "replica2"]
    a, b = found["databases"]["replica1"], found["databases"]["replica2"]
    primary = found["databases"]["default"]
    for replica in (a, b):
        # The primary's engine (no-round-trip health check, statement timeout at connect).
        assert replica["ENGINE"] == primary["ENGINE"] == "cdrs.pgbackend"
        assert replica["CONN_MAX_AGE"] == primary["CONN_MAX_AGE"] == 120
        assert replica["CONN_HEALTH_CHECKS"] is True
        assert replica["TEST"] == {"MIRROR": "default"}  # no test database on a standby
    assert (a["HOST"], a["PORT"], a["NAME"]) == ("db-replica-a", 5432, "cdrs")
    prepared = {"server_side_binding": True, "prepare_threshold": 5}  # as the primary's
    assert a["OPTIONS"] == {"connect_timeout": databases.REPLICA_CONNECT_TIMEOUT, **prepared}
    assert b["OPTIONS"] == {"connect_timeout": 5, "sslmode": "require", **prepared}  # URL wins
    assert found["down_seconds"] == 10


POSTGRESQL = {"ENGINE": "cdrs.pgbackend"}
SQLITE = {"ENGINE": "django.db.backends.sqlite3"}


@pytest.mark.parametrize(
    ("primary", "replica_url", "message"),
    [
        (SQLITE, "postgres://h/cdrs", "needs a PostgreSQL DATABASE_URL"),
        (POSTGRESQL, "sqlite:///other.sqlite3", "entry 1 is not a postgres:// URL"),
        (POSTGRESQL, "mysqlx://h/cdrs", "entry 1: Scheme 'mysqlx://' is unknown"),
    ],
)
def test_replicas_must_be_postgresql(primary, replica_url, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        databases.replicas([replica_url], primary=primary, conn_max_age=0, prepare_threshold=None)
