"""Citus, the distributed engine: what changes when the database is a Citus coordinator.

Nothing here runs on SQLite or on PostgreSQL without the ``citus`` extension. On a database
where ``CREATE EXTENSION citus`` was run and the workers registered, ``migrate`` (migration
0010_citus) distributes two tables and leaves every other one a plain table on the coordinator:

- ``cdrs_cdr`` by ``id`` (hash, ``citus.shard_count`` shards, 32 by default): detail by id
  and the ingest's conflict check on id read one shard; lists by time, filters, search,
  domain-limited tokens and counts run on every shard in parallel, each shard applying the
  filter, sort and LIMIT with its own indexes, the coordinator merging. No other column
  serves more of the query mix (see docs/scaling.md, "Citus").
- ``cdrs_cdr_natural_key`` (``CdrNaturalKey``) by ``natural_key``: Citus refuses a unique
  constraint without the distribution column, so ``cdr_natural_key_uniq`` is dropped from
  ``cdrs_cdr`` and this table's primary key keeps a natural key stored once
  (``claim_natural_keys``). The rows are copied from the CDRs when the table is distributed.

The counter, the statistics rollups, tokens, dead letters, Django's own tables and the
sequence behind generated ids stay on the coordinator: they are small, they are written in
the same transaction as the CDRs (a local table costs that transaction no extra node), and no
query joins them with the CDRs. The application connects to the coordinator only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from django.db import connection as default_connection

CDR_TABLE = "cdrs_cdr"
NATURAL_KEY_TABLE = "cdrs_cdr_natural_key"
# table -> distribution column
DISTRIBUTED = {CDR_TABLE: "id", NATURAL_KEY_TABLE: "natural_key"}
# A month-partitioned cdrs_cdr (primary key (id, started_at)) comes with a registry that
# keeps ids unique across partitions, filled by triggers on cdrs_cdr. Citus runs no trigger
# on a distributed table: there the registry is distributed by id beside the CDRs (the
# same shard holds an id's CDR and its registry row) and the ingest claims ids in it.
ID_REGISTRY = "cdrs_cdr_id"


def extension_installed(cursor: Any) -> bool:
    cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'")
    return cursor.fetchone() is not None


def _distributed_tables(cursor: Any) -> set[str]:
    cursor.execute("SELECT logicalrelid::regclass::text FROM pg_dist_partition")
    return {row[0] for row in cursor.fetchall()}


def _distributed(connection: Any = None) -> frozenset[str]:
    """The distributed tables (none without Citus), cached per connection: the cache lives
    on the connection wrapper and is reset whenever a new database session opens
    (``cdrs/pgbackend``), so it costs one or two catalog queries per session."""
    conn = connection or default_connection
    if conn.vendor != "postgresql":
        return frozenset()
    conn.ensure_connection()
    cached: frozenset[str] | None = getattr(conn, "cdr_citus", None)
    if cached is None:
        with conn.cursor() as cur:
            cached = frozenset(_distributed_tables(cur) if extension_installed(cur) else ())
        setattr(conn, "cdr_citus", cached)  # noqa: B010 (not an attribute of every backend)
    return cached


def in_use(connection: Any = None) -> bool:
    """Whether this database's CDR table is distributed by Citus."""
    return CDR_TABLE in _distributed(connection)


def distribute(connection: Any) -> None:
    """Distribute the CDR table and the natural-key table (migration 0010_citus; idempotent).

    Unique constraints of ``cdrs_cdr`` that lack ``id`` (the natural key's, whatever columns
    it was extended with) are dropped: ``cdrs_cdr_natural_key`` enforces them instead.
    """
    with connection.cursor() as cur:
        if not extension_installed(cur):
            return
        done = _distributed_tables(cur)
        if CDR_TABLE not in done:
            cur.execute(
                "SELECT con.conname FROM pg_constraint con "
                "JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attname = 'id' "
                "WHERE con.conrelid = %s::regclass AND con.contype IN ('u', 'p', 'x') "
                "AND NOT a.attnum = ANY(con.conkey)",
                [CDR_TABLE],
            )
            for (name,) in cur.fetchall():
                cur.execute(f'ALTER TABLE {CDR_TABLE} DROP CONSTRAINT "{name}"')
            # Citus refuses to distribute a table with triggers (the id registry's).
            cur.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                [CDR_TABLE],
            )
            for (name,) in cur.fetchall():
                cur.execute(f'DROP TRIGGER "{name}" ON {CDR_TABLE}')
            # Existing CDRs' keys, while both tables are still local (one plain INSERT).
            cur.execute(
                f"INSERT INTO {NATURAL_KEY_TABLE} (natural_key, cdr_id, started_at) "
                f"SELECT natural_key, id, started_at FROM {CDR_TABLE} ON CONFLICT DO NOTHING"
            )
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", [ID_REGISTRY])
        tables = [(t, c, "default") for t, c in DISTRIBUTED.items()]
        if cur.fetchone()[0]:
            tables.append((ID_REGISTRY, "id", CDR_TABLE))
        for table, column, colocate_with in tables:
            if table in done:
                continue
            cur.execute(f"SELECT EXISTS (SELECT 1 FROM {table})")
            had_rows = cur.fetchone()[0]
            cur.execute(
                "SELECT create_distributed_table(%s, %s, colocate_with => %s)",
                [table, column, colocate_with],
            )
            if had_rows:  # the rows were copied to the shards; the coordinator's are stale
                cur.execute("SELECT truncate_local_data_after_distributing_table(%s)", [table])
    connection.cdr_citus = None  # the next in_use() looks again


def undistribute(connection: Any) -> None:
    """Back to local tables on the coordinator (migration 0010_citus reversed)."""
    with connection.cursor() as cur:
        if not extension_installed(cur):
            return
        done = _distributed_tables(cur)
        for table in (ID_REGISTRY, *DISTRIBUTED):
            if table in done:
                cur.execute("SELECT undistribute_table(%s)", [table])
        cur.execute(
            "SELECT 1 FROM pg_constraint WHERE conname = 'cdr_natural_key_uniq' "
            "AND conrelid = %s::regclass",
            [CDR_TABLE],
        )
        if cur.fetchone() is None:
            cur.execute(
                f"ALTER TABLE {CDR_TABLE} ADD CONSTRAINT cdr_natural_key_uniq UNIQUE (natural_key)"
            )
    connection.cdr_citus = None


# --- the natural-key constraint (and the id registry), kept by the ingest ----------------------


def claim_ids(rows: Sequence[dict[str, Any]]) -> set[int]:
    """With a distributed id registry, claim each row's id there; returns the ids claimed
    (all of them without a registry: the CDR table's primary key is then enough)."""
    if ID_REGISTRY not in _distributed() or not rows:
        return {r["id"] for r in rows}
    with default_connection.cursor() as cur:
        cur.execute(
            f"INSERT INTO {ID_REGISTRY} (id, started_at) "
            "SELECT * FROM unnest(%s::bigint[], %s::timestamptz[]) "
            "ON CONFLICT DO NOTHING RETURNING id",
            [[r["id"] for r in rows], [r["started_at"] for r in rows]],
        )
        return {pk for (pk,) in cur.fetchall()}


def release_ids(rows: Sequence[dict[str, Any]]) -> None:
    """Give back ids claimed for rows that were not stored after all."""
    if ID_REGISTRY not in _distributed() or not rows:
        return
    with default_connection.cursor() as cur:
        cur.execute(f"DELETE FROM {ID_REGISTRY} WHERE id = ANY(%s)", [[r["id"] for r in rows]])


def claim_natural_keys(rows: Sequence[dict[str, Any]]) -> set[str]:
    """Claim each row's natural key for its id; returns the keys (hex) this call claimed.

    A key already claimed, by a committed CDR or by a transaction still running (the insert
    waits for it, as a unique index does), is not returned: that CDR is a duplicate.
    """
    if not rows:
        return set()
    with default_connection.cursor() as cur:
        cur.execute(
            f"INSERT INTO {NATURAL_KEY_TABLE} (natural_key, cdr_id, started_at) "
            "SELECT * FROM unnest(%s::uuid[], %s::bigint[], %s::timestamptz[]) "
            "ON CONFLICT DO NOTHING RETURNING natural_key",
            [
                [str(r["natural_key"]) for r in rows],
                [r["id"] for r in rows],
                [r["started_at"] for r in rows],
            ],
        )
        return {key.hex for (key,) in cur.fetchall()}


def release_natural_keys(rows: Sequence[dict[str, Any]]) -> None:
    """Give back keys claimed for rows that were not stored after all (their id was taken)."""
    if not rows:
        return
    with default_connection.cursor() as cur:
        cur.execute(
            f"DELETE FROM {NATURAL_KEY_TABLE} WHERE natural_key = ANY(%s::uuid[])",
            [[str(r["natural_key"]) for r in rows]],
        )


def stored_ids(rows: Sequence[dict[str, Any]]) -> tuple[dict[int, bool], dict[str, int]]:
    """``services._stored_ids`` on Citus: ids looked up on their shards, keys in their table."""
    with default_connection.cursor() as cur:
        cur.execute(f"SELECT id FROM {CDR_TABLE} WHERE id = ANY(%s)", [[r["id"] for r in rows]])
        by_id = {pk: True for (pk,) in cur.fetchall()}
        cur.execute(
            f"SELECT natural_key, cdr_id FROM {NATURAL_KEY_TABLE} "
            "WHERE natural_key = ANY(%s::uuid[])",
            [[str(r["natural_key"]) for r in rows]],
        )
        by_key = {key.hex: pk for key, pk in cur.fetchall()}
    return by_id, by_key


# --- retention: what the registry's triggers and the unique index did on plain PostgreSQL ---


def forget_deleted(ids: Sequence[int]) -> None:
    """Deleted CDRs leave the id registry and the natural-key table (no trigger on Citus;
    a key left behind would make a re-sent copy of the CDR a duplicate of nothing)."""
    if not in_use() or not ids:
        return
    with default_connection.cursor() as cur:
        if ID_REGISTRY in _distributed():
            cur.execute(f"DELETE FROM {ID_REGISTRY} WHERE id = ANY(%s)", [list(ids)])
        cur.execute(f"DELETE FROM {NATURAL_KEY_TABLE} WHERE cdr_id = ANY(%s)", [list(ids)])


def forget_keys_between(cur: Any, first: Any, end: Any) -> None:
    """A pruned month partition (started_at in [first, end)): its CDRs' natural keys go.
    Keyed by started_at, not joined by id: the key table is distributed by key."""
    if in_use():
        cur.execute(
            f"DELETE FROM {NATURAL_KEY_TABLE} WHERE started_at >= %s AND started_at < %s",
            [first, end],
        )


# --- test databases on a Citus coordinator ------------------------------------------------------


def _conninfo(params: dict[str, Any], **overrides: Any) -> str:
    merged = {k: v for k, v in params.items() if k in _LIBPQ_KEYS and v not in (None, "")}
    merged.update(overrides)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in merged.items()})


_LIBPQ_KEYS = {"host", "port", "user", "password", "dbname", "sslmode", "connect_timeout"}


def cluster_nodes(params: dict[str, Any]) -> list[tuple[str, int]] | None:
    """The (host, port) of the coordinator then each worker, as registered in the database of
    ``params`` (libpq keywords); None when that database is not a Citus coordinator."""
    try:
        with psycopg.connect(_conninfo(params, connect_timeout=10)) as conn:
            if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone():
                rows = conn.execute(
                    "SELECT nodename, nodeport FROM pg_dist_node "
                    "WHERE noderole = 'primary' ORDER BY groupid, nodeid"
                ).fetchall()
                return [(str(host), int(port)) for host, port in rows] or None
    except psycopg.OperationalError:  # no such database yet: not a Citus one
        return None
    return None


@contextlib.contextmanager
def _autocommit(params: dict[str, Any], host: str, port: int, dbname: str) -> Iterator[Any]:
    with psycopg.connect(
        _conninfo(params, host=host, port=port, dbname=dbname, connect_timeout=10),
        autocommit=True,
    ) as conn:
        yield conn


def make_citus_database(params: dict[str, Any], name: str, nodes: list[tuple[str, int]]) -> None:
    """Turn the (just created, empty) coordinator database ``name`` into a Citus database
    with the same workers as ``nodes``: a fresh database of that name on each worker with
    the extension, then the extension and the node registration on the coordinator."""
    coordinator, workers = nodes[0], nodes[1:]
    with _autocommit(params, coordinator[0], coordinator[1], name) as conn:
        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone():
            return  # a kept test database (--reuse-db, keepdb) that is one already
    for host, port in workers:
        with _autocommit(params, host, port, "postgres") as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        with _autocommit(params, host, port, name) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
    with _autocommit(params, coordinator[0], coordinator[1], name) as conn:
        conn.execute("SET client_min_messages = warning")
        conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
        conn.execute("SELECT citus_set_coordinator_host(%s, %s)", coordinator)
        for host, port in workers:
            conn.execute("SELECT citus_add_node(%s, %s)", (host, port))


def drop_worker_databases(params: dict[str, Any], name: str, nodes: list[tuple[str, int]]) -> None:
    for host, port in nodes[1:]:
        with _autocommit(params, host, port, "postgres") as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def describe(connection: Any) -> list[str]:
    """Lines for ``manage.py cdr_citus``: the nodes, then each distributed table."""
    lines = []
    with connection.cursor() as cur:
        cur.execute(
            "SELECT nodename, nodeport, groupid = 0 FROM pg_dist_node "
            "WHERE noderole = 'primary' ORDER BY groupid"
        )
        for host, port, is_coordinator in cur.fetchall():
            lines.append(f"node {host}:{port} ({'coordinator' if is_coordinator else 'worker'})")
        cur.execute(
            "SELECT p.logicalrelid::regclass::text, "
            "column_to_column_name(p.logicalrelid, p.partkey), p.colocationid, "
            "(SELECT count(*) FROM pg_dist_shard s WHERE s.logicalrelid = p.logicalrelid) "
            "FROM pg_dist_partition p ORDER BY 1"
        )
        rows = cur.fetchall()
    for table, column, colocation, shards in rows:
        lines.append(f"table {table}: by {column}, {shards} shards, colocation group {colocation}")
    if not rows:
        lines.append("no distributed table: run migrate, or cdr_citus --distribute")
    return lines
