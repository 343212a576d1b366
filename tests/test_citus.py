"""Citus: what is distributed and how, and that de-duplication holds across shards.

The ``citus`` tests run only when DATABASE_URL is a Citus coordinator (``bin/test`` runs the
suite against the local 3-node cluster when it is up); the others run on every database,
since they pin behaviour that the Citus path must keep.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from importlib import import_module
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from cdrs import citus, jsonenc
from cdrs.ids import encode_id
from cdrs.models import Cdr, CdrNaturalKey
from tests.factories import cdr_payload, create_cdrs, create_generated

pytestmark = pytest.mark.django_db

# Distributed tables (a partitioned table's partitions left out) and their columns.
DISTRIBUTED_SQL = (
    "SELECT p.logicalrelid::regclass::text, column_to_column_name(p.logicalrelid, p.partkey) "
    "FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid "
    "WHERE NOT c.relispartition"
)


def test_a_key_claimed_for_a_cdr_whose_id_is_taken_is_given_back():
    """On Citus the natural key is claimed before the CDR is inserted; when the insert then
    finds the id taken, the claim must not outlive it."""
    (stored_id,) = create_cdrs(cdr_payload(call_id="first"))

    other = cdr_payload(call_id="second")
    assert create_cdrs(dict(other, id=encode_id(stored_id))) == [stored_id]  # a duplicate by id
    (new_id,) = create_cdrs(other)  # the same call without the id: new, stored once
    assert new_id != stored_id
    assert Cdr.objects.filter(call_id="second").count() == 1
    assert create_cdrs(other) == [new_id]  # and now a duplicate by natural key


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_flush_empties_the_id_registry_with_the_cdrs():
    """``flush`` (and so every transactional test) takes the id registry with the CDRs: on
    Citus, which runs no trigger, a stale registry called re-used ids duplicates."""
    payload = cdr_payload(id=encode_id(4711))
    assert create_cdrs(payload) == [4711]
    call_command("flush", "--no-input")
    with connection.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {citus.ID_REGISTRY}")
        assert cur.fetchone()[0] == 0
    assert create_cdrs(payload) == [4711] and Cdr.objects.count() == 1


@pytest.mark.citus
def test_cdrs_are_distributed_by_id_their_natural_keys_by_key_the_rest_stays_local():
    with connection.cursor() as cur:
        cur.execute(DISTRIBUTED_SQL)
        tables = dict(cur.fetchall())
    # A month-partitioned cdrs_cdr brings its id registry, distributed beside the CDRs.
    assert tables.pop(citus.ID_REGISTRY, "id") == "id"
    assert tables == {"cdrs_cdr": "id", "cdrs_cdr_natural_key": "natural_key"}
    with connection.cursor() as cur:
        cur.execute("SELECT count(DISTINCT groupid) FROM pg_dist_placement")
        assert cur.fetchone()[0] >= 2  # shards on more than one worker
    assert citus.in_use()


@pytest.mark.citus
def test_detail_by_id_reads_one_shard_and_a_list_reads_all_with_the_limit_pushed_down():
    (cdr_id,) = create_cdrs(cdr_payload())
    detail = Cdr.objects.filter(pk=cdr_id).explain()
    assert "Task Count: 1" in detail
    page = Cdr.objects.order_by("-started_at", "-id")[:50].explain()
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'cdrs_cdr'::regclass")
        shards = cur.fetchone()[0]
    assert f"Task Count: {shards}" in page
    assert page.count("Limit") >= 2  # on the coordinator and inside each shard's task


@pytest.mark.citus
def test_the_natural_key_table_holds_exactly_the_stored_cdrs_keys():
    ids = create_generated(300, seed=31)  # above SMALL_BATCH: the COPY path
    ids += create_cdrs(cdr_payload(), cdr_payload())  # the multi-row INSERT path
    assert create_generated(300, seed=31) == ids[:300]  # every one a duplicate, same ids
    stored = set(Cdr.objects.values_list("natural_key", "id"))
    assert set(CdrNaturalKey.objects.values_list("natural_key", "cdr_id")) == stored
    assert len(stored) == len(ids) == 302


@pytest.mark.citus
def test_retention_and_imports_on_citus_keep_the_key_table_and_registry_exact(tmp_path: Path):
    """No triggers on Citus: prune_cdrs deletes the registry rows and natural keys of what it
    prunes (whole partitions and batches); the fast backfill is off, so an import of empty
    months takes the ordinary path and claims its keys like the API."""
    from cdrs import partitions
    from cdrs.backfill import Backfill

    assert not Backfill.available()
    partitions.ensure(first=date(2024, 1, 1), today=date(2024, 3, 1), ahead=0)
    data = tmp_path / "old.ndjson"
    payloads = [
        cdr_payload(started=datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=7 * h))
        for h in range(250)  # above SMALL_BATCH, January to March 2024
    ]
    data.write_bytes(b"".join(jsonenc.dumps(p) + b"\n" for p in payloads))
    out = io.StringIO()
    call_command("import_cdrs", str(data), "--no-trailer", "--quiet", stdout=out)
    assert "created 250" in out.getvalue() and "new month partition" not in out.getvalue()
    call_command("prune_cdrs", "--before", "2024-02-10", stdout=io.StringIO())
    stored = set(Cdr.objects.values_list("natural_key", "id"))
    assert 0 < len(stored) < 250
    assert set(CdrNaturalKey.objects.values_list("natural_key", "cdr_id")) == stored
    with connection.cursor() as cur:
        cur.execute(f"SELECT id FROM {citus.ID_REGISTRY}")
        assert {pk for (pk,) in cur.fetchall()} == {pk for _, pk in stored}


# --- the migration on a populated table --------------------------------------------------------


@contextlib.contextmanager
def scratch_citus_database() -> Iterator[str]:
    """A new Citus database on DATABASE_URL's cluster (same workers), dropped afterwards."""
    server = urlsplit(os.environ["DATABASE_URL"])._replace(scheme="postgresql")
    params = connection.get_connection_params()
    nodes = citus.cluster_nodes(params)
    assert nodes, "needs a Citus coordinator"
    name = f"cdrcitus_{secrets.token_hex(4)}"
    admin_url = server._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        citus.make_citus_database(params, name, nodes)
        yield server._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        citus.drop_worker_databases(params, name, nodes)


def manage(*args: str, url: str) -> str:
    env = dict(os.environ, DATABASE_URL=url, DJANGO_SETTINGS_MODULE="cdrservice.settings")
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# The migration that distributes, and the one before it (numbers change as migrations land).
CITUS_MIGRATION = next(
    p.stem for p in (Path(__file__).parents[1] / "cdrs" / "migrations").glob("*_citus.py")
)
BEFORE_CITUS = import_module(f"cdrs.migrations.{CITUS_MIGRATION}").Migration.dependencies[0][1]
CHECKSUM = (
    "SELECT count(*), md5(string_agg(id::text || natural_key::text, ',' ORDER BY id)) FROM {}"
)


@pytest.mark.citus
def test_migrate_distributes_a_populated_table_without_losing_a_row(tmp_path: Path):
    data = tmp_path / "cdrs.csv"
    with scratch_citus_database() as url:
        manage("migrate", "cdrs", BEFORE_CITUS, "--verbosity", "0", url=url)
        manage(
            "generate_cdrs",
            "--rows",
            "500",
            "--seed",
            "5",
            "--format",
            "csv",
            "-o",
            str(data),
            url=url,
        )
        manage("import_cdrs", str(data), "--quiet", url=url)  # a plain local table still
        with psycopg.connect(url) as conn:
            before = conn.execute(CHECKSUM.format("cdrs_cdr")).fetchone()
        assert before is not None
        assert before[0] == 500

        manage("migrate", "--verbosity", "0", url=url)

        with psycopg.connect(url) as conn:
            assert conn.execute(CHECKSUM.format("cdrs_cdr")).fetchone() == before
            keys = "(SELECT natural_key, cdr_id AS id FROM cdrs_cdr_natural_key) k"
            assert conn.execute(CHECKSUM.format(keys)).fetchone() == before
            tables: dict[str, str] = dict(conn.execute(DISTRIBUTED_SQL).fetchall())
            tables.pop(citus.ID_REGISTRY, None)
            assert tables == {"cdrs_cdr": "id", "cdrs_cdr_natural_key": "natural_key"}
            # The coordinator's own copy was emptied: the shards hold the rows.
            local = conn.execute("SELECT pg_relation_size('cdrs_cdr')").fetchone()
            assert local == (0,)
        # Re-importing the same file: every row a duplicate, found through the shards.
        assert "created 0, duplicates 500" in manage("import_cdrs", str(data), url=url)


@pytest.mark.citus
def test_cdr_citus_shows_the_nodes_and_distributes_idempotently():
    out = io.StringIO()
    call_command("cdr_citus", "--distribute", stdout=out)
    lines = out.getvalue().splitlines()
    assert sum(line.endswith("(worker)") for line in lines) >= 2
    assert any(line.startswith("table cdrs_cdr: by id, ") for line in lines)
    assert any(line.startswith("table cdrs_cdr_natural_key: by natural_key, ") for line in lines)


@pytest.mark.postgresql
@pytest.mark.no_citus("the opposite case: a database without the citus extension")
def test_cdr_citus_refuses_a_database_without_citus():
    with pytest.raises(CommandError, match="citus extension is not installed"):
        call_command("cdr_citus", stdout=io.StringIO())
    assert not citus.in_use()
