"""Every write of CDRs: ingest (API and import), id assignment, de-duplication, counting."""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import random
import secrets
import threading
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, connection, transaction
from django.db.models import Field

from cdrs import citus, metrics, rollup
from cdrs.ids import LOW_MASK, snowflake
from cdrs.partitions import REGISTRY, has_registry
from cdrs.validation import INSERT_COLUMNS

if TYPE_CHECKING:
    from cdrs.models import ApiToken

COUNTER_SLOTS = 16
ID_SEQUENCE = "cdrs_cdr_id_low_seq"
_INSERT_CHUNK = 500  # rows per INSERT statement (SQLite allows 32766 parameters)
# Up to this many rows a batch is written with one multi-row INSERT and looked up with plain
# queries, on PostgreSQL too: the COPY path's temp tables cost four round trips, which is
# most of the time of a one-CDR POST or a PortSIP webhook event.
SMALL_BATCH = 20

# SQLite has no sequences: a per-process counter from a random start. The primary key still
# guarantees uniqueness; a collision is detected and the CDR gets a fresh id (see below).
_local_counter = itertools.count(secrets.randbits(22) ^ (os.getpid() << 8))
_local_lock = threading.Lock()


# PostgreSQL: values of ID_SEQUENCE this process has drawn and not used yet, for the
# database and process they were drawn in. A CDR without an id (a tenant's webhook event, a
# POST without one) needs one value: a round trip of its own (a quarter of a tenant's event)
# unless a block of them is at hand. Unused values of a block are lost when the process
# ends, as a sequence's cache loses them; the sequence has 2**63 of them.
LOW_BITS_BLOCK = 32
_low_bits_pool: list[int] = []
_low_bits_owner: tuple[int, str] | None = None
_low_bits_lock = threading.Lock()


def _draw_low_bits(n: int) -> list[int]:
    with connection.cursor() as cur:
        cur.execute(f"SELECT nextval('{ID_SEQUENCE}') FROM generate_series(1, %s)", [n])
        return [row[0] & LOW_MASK for row in cur.fetchall()]


def discard_low_bits_pool() -> None:
    """Forget the values drawn ahead: the next id is drawn from the sequence again."""
    global _low_bits_owner
    with _low_bits_lock:
        _low_bits_pool.clear()
        _low_bits_owner = None


def next_low_bits(n: int) -> list[int]:
    """``n`` values for the 22 low bits of snowflake ids, unique across processes and hosts."""
    global _low_bits_owner
    if n <= 0:
        return []
    if connection.vendor == "postgresql":
        if n > 1:
            return _draw_low_bits(n)
        # One value: from this process's block, drawn for this database. A forked process
        # (a gunicorn worker) or another database starts a block of its own.
        owner = (os.getpid(), str(connection.settings_dict["NAME"]))
        with _low_bits_lock:
            if _low_bits_owner != owner:
                _low_bits_pool.clear()
                _low_bits_owner = owner
            if not _low_bits_pool:
                _low_bits_pool.extend(reversed(_draw_low_bits(LOW_BITS_BLOCK)))
            return [_low_bits_pool.pop()]
    with _local_lock:
        return [next(_local_counter) & LOW_MASK for _ in range(n)]


def add_to_counter(delta: int) -> None:
    """Add ``delta`` to a random counter slot, inside the caller's transaction."""
    if delta == 0:
        return
    slot = random.randrange(COUNTER_SLOTS)
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO cdrs_counter (slot, rows) VALUES (%s, %s) "
            "ON CONFLICT (slot) DO UPDATE SET rows = cdrs_counter.rows + excluded.rows",
            [slot, delta],
        )
    metrics.count_ingested(delta)  # cdr_cdrs_ingested_total, on commit


@dataclass
class IngestResult:
    created: int = 0
    duplicates: int = 0
    ids: list[int] = field(default_factory=list)


STAGING_TABLE = "cdr_staging"
_COLS = ", ".join(INSERT_COLUMNS)
# PostgreSQL: an id the registry holds is taken (the same CDR, or another under another
# started_at, in another partition): the row is left out, and reported as a duplicate or
# given a new id below, instead of failing the INSERT on the registry (cdrs.partitions).
_ID_FREE = f"NOT EXISTS (SELECT 1 FROM {REGISTRY} r WHERE r.id = s.id)"


def _stage_rows(cur: Any, rows: Sequence[dict[str, Any]]) -> None:
    """COPY validated rows into a per-connection temporary staging table (PostgreSQL).

    COPY costs a fraction of a multi-row INSERT for large batches: no SQL text to build
    and parse for thousands of parameters.
    """
    cur.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {STAGING_TABLE} (LIKE cdrs_cdr INCLUDING DEFAULTS)"
    )
    cur.execute(f"TRUNCATE {STAGING_TABLE}")
    # The raw psycopg cursor bypasses Django's error wrapping: without it a connection lost
    # mid-COPY escapes as psycopg.OperationalError, which callers (the API's 503, the
    # importer's one-line error, Django's "close an unusable connection") do not know.
    with (
        connection.wrap_database_errors,
        cur.connection.cursor().copy(f"COPY {STAGING_TABLE} ({_COLS}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row([row[c] for c in INSERT_COLUMNS])


def _insert_rows(rows: Sequence[dict[str, Any]]) -> set[int]:
    """INSERT ... ON CONFLICT DO NOTHING; returns the ids that were inserted.

    On Citus the natural key's unique constraint is a table of its own (``cdrs.citus``),
    as is the id registry of a partitioned CDR table: a row is inserted only after claiming
    its id and its key there, and what was claimed for a row not stored is given back.
    """
    if not citus.in_use():
        return _insert_cdr_rows(rows)
    ids = citus.claim_ids(rows)
    with_id = [row for row in rows if row["id"] in ids]
    keys = citus.claim_natural_keys(with_id)
    mine = [row for row in with_id if row["natural_key"] in keys]
    inserted = _insert_cdr_rows(mine, ids_claimed=True)
    citus.release_ids([row for row in with_id if row["id"] not in inserted])
    citus.release_natural_keys([row for row in mine if row["id"] not in inserted])
    return inserted


@functools.cache
def _insert_fields() -> list[Field[Any, Any]]:
    from cdrs.models import Cdr

    return [Cdr._meta.get_field(c) for c in INSERT_COLUMNS]  # type: ignore[misc]


def _insert_params(row: dict[str, Any], fields: list[Field[Any, Any]]) -> list[Any]:
    # The fields' own adapters: datetimes, UUIDs and decimals as each backend stores them.
    return [f.get_db_prep_save(row[f.name], connection) for f in fields]


@functools.cache
def _typed_values_row() -> str:
    """PostgreSQL: one VALUES row of INSERT_COLUMNS, typed (VALUES alone would take an
    all-NULL column for text). Cached: the types cost ~0.1 ms to work out per statement."""
    types = [f.db_type(connection) for f in _insert_fields()]
    return "(" + ", ".join(f"%s::{t}" for t in types) + ")"


def _insert_cdr_rows(rows: Sequence[dict[str, Any]], *, ids_claimed: bool = False) -> set[int]:
    """``ids_claimed``: the ids are ours in the registry already (Citus, ``cdrs.citus``), so
    no ``_ID_FREE`` check (Citus cannot run its correlated subquery on a temporary table or
    a VALUES list)."""
    if not rows:
        return set()
    check_ids = has_registry() and not ids_claimed

    if connection.vendor == "postgresql" and len(rows) > SMALL_BATCH:
        with connection.cursor() as cur:
            _stage_rows(cur, rows)
            where = f"WHERE {_ID_FREE}" if check_ids else ""
            cur.execute(
                f"INSERT INTO cdrs_cdr ({_COLS}) SELECT {_COLS} FROM {STAGING_TABLE} s "
                f"{where} ON CONFLICT DO NOTHING RETURNING id"
            )
            return {r[0] for r in cur.fetchall()}
    inserted: set[int] = set()
    model_fields = _insert_fields()
    if check_ids:
        # SELECT from VALUES, to skip registered ids as above.
        one = _typed_values_row()
        head = f"INSERT INTO cdrs_cdr ({_COLS}) SELECT * FROM (VALUES "
        tail = f") AS s ({_COLS}) WHERE {_ID_FREE} ON CONFLICT DO NOTHING RETURNING id"
    else:
        one = "(" + ", ".join(["%s"] * len(INSERT_COLUMNS)) + ")"
        head = f"INSERT INTO cdrs_cdr ({_COLS}) VALUES "
        tail = " ON CONFLICT DO NOTHING RETURNING id"
    with connection.cursor() as cur:
        for start in range(0, len(rows), _INSERT_CHUNK):
            chunk = rows[start : start + _INSERT_CHUNK]
            params: list[Any] = []
            for row in chunk:
                params.extend(_insert_params(row, model_fields))
            cur.execute(head + ", ".join([one] * len(chunk)) + tail, params)
            inserted.update(r[0] for r in cur.fetchall())
    return inserted


def _insert_rows_or_race(rows: Sequence[dict[str, Any]]) -> set[int]:
    """``_insert_rows``; on PostgreSQL none inserted when a concurrent writer registered
    one of their ids under another started_at first (its statement is undone).

    ``_ID_FREE`` only sees committed ids: two writers storing one id under two started_at
    values at once both pass it, and the later one's registry insert then fails. Its rows
    are then looked up like any other not inserted, and the id is found taken.
    """
    if not has_registry():
        return _insert_rows(rows)
    try:
        with transaction.atomic():
            return _insert_rows(rows)
    except IntegrityError as exc:
        if not _lost_registry_race(exc):
            raise
        return set()


def _lost_registry_race(exc: IntegrityError) -> bool:
    """Whether a write failed because a concurrent writer registered one of its ids first."""
    cause = getattr(exc.__cause__, "diag", None)
    return getattr(cause, "constraint_name", None) == f"{REGISTRY}_pkey"


LOOKUP_TABLE = "cdr_lookup"


# Partitioned PostgreSQL, one CDR: is its id stored (the registry), and which CDR holds its
# natural key (its started_at is the partition key, so one partition is probed). Plain SQL:
# the ORM's version cost ~0.5 ms of CPU a re-sent event to compile.
_ONE_CDR_LOOKUP_SQL = (
    f"SELECT id, NULL::uuid FROM {REGISTRY} WHERE id = %s "
    "UNION ALL SELECT id, natural_key FROM cdrs_cdr "
    "WHERE natural_key = %s::uuid AND started_at = %s"
)


def _ids_and_keys(found: list[tuple[Any, Any]]) -> tuple[dict[int, bool], dict[Any, int]]:
    """``_stored_ids``' answer from (id, NULL) rows for stored ids and (id, natural key)
    rows for stored natural keys."""
    by_id = {pk: True for pk, key in found if key is None}
    return by_id, {key.hex: pk for pk, key in found if key is not None}


def _stored_ids(rows: Sequence[dict[str, Any]]) -> tuple[dict[int, bool], dict[Any, int]]:
    """Which given ids exist, and the stored id of each natural key that exists."""
    from cdrs.models import Cdr

    if citus.in_use():
        return citus.stored_ids(rows)

    if connection.vendor == "postgresql" and len(rows) > SMALL_BATCH:
        # A join with the keys COPYed into a temp table: a re-import is all duplicates, and
        # IN lists of 10,000 parameters cost more to build and parse than the join to run.
        with connection.cursor() as cur:
            cur.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {LOOKUP_TABLE} "
                "(id bigint, natural_key uuid, started_at timestamptz)"
            )
            cur.execute(f"TRUNCATE {LOOKUP_TABLE}")
            with (
                connection.wrap_database_errors,  # as in stage_rows
                cur.connection.cursor().copy(
                    f"COPY {LOOKUP_TABLE} (id, natural_key, started_at) FROM STDIN"
                ) as copy,
            ):
                for row in rows:
                    copy.write_row((row["id"], row["natural_key"], row["started_at"]))
            ids_table = REGISTRY if has_registry() else "cdrs_cdr"
            # Ids in the registry (one index, not one per partition); natural keys with
            # their started_at, the partition key, so each probe reads one partition.
            cur.execute(
                f"SELECT c.id, NULL FROM {LOOKUP_TABLE} k JOIN {ids_table} c ON c.id = k.id "
                f"UNION ALL SELECT c.id, c.natural_key FROM {LOOKUP_TABLE} k "
                "JOIN cdrs_cdr c ON c.natural_key = k.natural_key "
                "AND c.started_at = k.started_at"
            )
            return _ids_and_keys(cur.fetchall())
    if len(rows) == 1 and connection.vendor == "postgresql" and has_registry():
        # One CDR (a re-sent webhook event or POST): both lookups in one statement.
        (row,) = rows
        with connection.cursor() as cur:
            cur.execute(_ONE_CDR_LOOKUP_SQL, [row["id"], row["natural_key"], row["started_at"]])
            return _ids_and_keys(cur.fetchall())
    ids = [r["id"] for r in rows]
    keys = [r["natural_key"] for r in rows]
    if has_registry():
        with connection.cursor() as cur:
            cur.execute(f"SELECT id FROM {REGISTRY} WHERE id = ANY(%s)", [ids])
            by_id = {pk: True for (pk,) in cur.fetchall()}
    else:
        by_id = {i: True for i in Cdr.objects.filter(pk__in=ids).values_list("pk", flat=True)}
    stored = Cdr.objects.filter(
        natural_key__in=keys, started_at__in={r["started_at"] for r in rows}
    ).values_list("natural_key", "pk")
    by_key = {key.hex: pk for key, pk in stored}
    return by_id, by_key


@functools.cache
def _one_statement_sql(check_ids: bool) -> str:
    """PostgreSQL: one CDR, its rollup rows and the counter in one data-modifying WITH.

    Parameters: the row (``_insert_params``), then the rollup slot twice and the counter
    slot. Returns the id when the CDR was stored; no row (and nothing written) when it was
    not: a duplicate, or its id taken. Kept under 4 kB: psycopg caches the parsing of
    shorter statements only (~0.1 ms a request).
    """
    where = f"WHERE {_ID_FREE}" if check_ids else ""
    stats, totals = rollup.upserts_sql("true", table="added")
    return (
        f"WITH s ({_COLS}) AS (VALUES {_typed_values_row()}), "
        f"added AS (INSERT INTO cdrs_cdr ({_COLS}) SELECT * FROM s {where} "
        "ON CONFLICT DO NOTHING RETURNING *), "
        f"stats AS ({stats}), totals AS ({totals}), "
        "counted AS (INSERT INTO cdrs_counter (slot, rows) SELECT %s, count(*) FROM added "
        "HAVING count(*) > 0 "
        "ON CONFLICT (slot) DO UPDATE SET rows = cdrs_counter.rows + excluded.rows) "
        "SELECT id FROM added"
    )


def _store_new_in_one_statement(row: dict[str, Any]) -> bool:
    """Store one new CDR (with its id) in one round trip; False when it was not stored.

    A webhook event or a one-CDR POST spent eight round trips in ``cdr_ingest`` (BEGIN,
    SAVEPOINT, INSERT, RELEASE, two rollup upserts, the counter, COMMIT), most of its time:
    one statement is atomic on its own. When nothing was stored (the CDR is a duplicate, or
    its id is taken, or a concurrent writer registered that id first) nothing was written,
    and ``cdr_ingest``'s general path finds out which.
    """
    sql = _one_statement_sql(has_registry())
    params = _insert_params(row, _insert_fields())
    params += [random.randrange(rollup.SLOTS)] * 2 + [random.randrange(COUNTER_SLOTS)]
    try:
        # Inside a caller's transaction a failed statement would end it: a savepoint then.
        # In autocommit (a request) the statement is its own transaction.
        with (
            transaction.atomic() if connection.in_atomic_block else nullcontext(),
            connection.cursor() as cur,
        ):
            cur.execute(sql, params)
            stored = cur.fetchone() is not None
    except IntegrityError as exc:
        if not _lost_registry_race(exc):
            raise
        return False  # see _insert_rows_or_race
    if stored:
        metrics.count_ingested(1)
    return stored


def _ingest_one(row: dict[str, Any]) -> IngestResult | None:
    """PostgreSQL: one CDR (a webhook event, a one-CDR POST) in the fewest round trips: one
    for a new CDR with its id, one more for a duplicate. None (nothing written, ``row`` as
    given) when it takes the general path: a generated id that collided, or a race."""
    given = row["id"]
    if given is None:
        row["id"] = snowflake(row["started_at"], next_low_bits(1)[0])
    if _store_new_in_one_statement(row):
        return IngestResult(created=1, ids=[row["id"]])
    row["id"] = given  # the general path tells a duplicate from a taken id by this
    stored = _stored_copy(row, given is None, *_stored_ids([row]))
    return None if stored is None else IngestResult(duplicates=1, ids=[stored])


def _stored_copy(
    row: dict[str, Any], generated: bool, by_id: dict[int, bool], by_key: dict[Any, int]
) -> int | None:
    """The id of the stored CDR that ``row`` (not inserted) duplicates; None when its
    generated id merely collided with another CDR's (a new id is drawn then)."""
    if row["natural_key"] in by_key:
        return by_key[row["natural_key"]]
    if not generated and row["id"] in by_id:
        return int(row["id"])
    return None


def cdr_ingest(*, rows: list[dict[str, Any]]) -> IngestResult:
    """Store validated CDRs (from ``validate_cdr``), all-or-nothing, skipping duplicates.

    A CDR is a duplicate when its id, or (without an id) its natural key, is already stored
    or came earlier in the same batch. Unique constraints decide, so concurrent senders of
    the same CDR store exactly one row. ``ids`` are in input order; a duplicate gets the id of
    the stored CDR.
    """
    if len(rows) == 1 and connection.vendor == "postgresql" and not citus.in_use():
        single = _ingest_one(rows[0])
        if single is not None:
            return single
    result = IngestResult(ids=[0] * len(rows))
    with transaction.atomic():
        pending = list(range(len(rows)))
        generated = {i for i in pending if rows[i]["id"] is None}
        for i, low in zip(sorted(generated), next_low_bits(len(generated)), strict=True):
            rows[i]["id"] = snowflake(rows[i]["started_at"], low)
        for _attempt in range(5):
            # First occurrence of each id / natural key in the batch goes to the database.
            first_by_id: dict[int, int] = {}
            first_by_key: dict[Any, int] = {}
            to_insert: list[int] = []
            for i in pending:
                row = rows[i]
                if row["id"] in first_by_id or row["natural_key"] in first_by_key:
                    continue
                first_by_id[row["id"]] = i
                first_by_key[row["natural_key"]] = i
                to_insert.append(i)
            inserted = _insert_rows_or_race([rows[i] for i in to_insert])
            # Statistics of exactly the rows stored, in this transaction (cdrs.rollup).
            rollup.add_inserted([rows[i] for i in to_insert if rows[i]["id"] in inserted])
            first_set = set(to_insert)
            not_created: list[int] = []
            for i in pending:
                if i in first_set and rows[i]["id"] in inserted:
                    result.created += 1
                    result.ids[i] = rows[i]["id"]
                else:
                    not_created.append(i)
            if not not_created:
                break
            # Only rows that were not stored need a look at what is (the common case: none).
            by_id, by_key = _stored_ids([rows[i] for i in not_created])
            retry: list[int] = []
            for i in not_created:
                stored = _stored_copy(rows[i], i in generated, by_id, by_key)
                if stored is None:
                    retry.append(i)  # a generated id collided: draw a new one
                else:
                    result.duplicates += 1
                    result.ids[i] = stored
            if not retry:
                break
            low_bits = next_low_bits(len(retry))
            for i, low in zip(retry, low_bits, strict=True):
                rows[i]["id"] = snowflake(rows[i]["started_at"], low)
            pending = retry
        else:  # pragma: no cover - needs five collisions in a row
            raise RuntimeError("could not assign unique ids")
        add_to_counter(result.created)
    return result


# --- ingest for a token: tenant isolation -------------------------------------------------
#
# A domain-limited token may store only CDRs of its domains, and no answer may tell it whether
# a CDR outside its domains exists. Two rules make the answer a function of what the token
# can see, and lose nothing:
#
# - Ids are one space shared by every tenant, so a chosen id that is free and one held by an
#   invisible CDR must be answered alike: such a token's id is honoured only for a CDR it can
#   see (a re-send is a duplicate, as for anyone); a new CDR always gets an assigned id.
# - For such a token a CDR is the same as a stored one when the natural key *and* both
#   domains match (the stored one is then visible to it). A CDR whose natural key is held by
#   another CDR with other domains (visible or not) is stored too, under a key scoped to its
#   domains, so the unique constraint still stores it exactly once.


class OutsideTokenDomains(Exception):
    """CDRs of a domain-limited token with neither domain in its set (nothing was stored)."""

    def __init__(self, indexes: list[int]) -> None:
        super().__init__(f"{len(indexes)} CDR(s) outside the token's domains")
        self.indexes = indexes


def _lower_domains(row: dict[str, Any]) -> tuple[str, str]:
    return (row["caller_domain"] or "").lower(), (row["callee_domain"] or "").lower()


def scoped_natural_key(plain_key: str, row: dict[str, Any]) -> str:
    """The natural key of a CDR whose plain key another CDR with other domains holds."""
    caller_domain, callee_domain = _lower_domains(row)
    raw = "\0".join(("scoped", plain_key, caller_domain, callee_domain)).encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def cdr_ingest_for_token(*, rows: Sequence[dict[str, Any]], token: ApiToken) -> IngestResult:
    """``cdr_ingest`` for a client's token: a domain-limited token stays inside its domains.

    Raises ``OutsideTokenDomains`` (before writing anything) when a CDR has neither
    caller_domain nor callee_domain in the token's domains. The result never carries the id
    of a CDR the token cannot see, and never differs by whether such a CDR exists. Tokens
    without domains get exactly ``cdr_ingest``.
    """
    domains = set(token.domains or ())
    if not domains:
        return cdr_ingest(rows=list(rows))
    outside = [i for i, row in enumerate(rows) if not domains.intersection(_lower_domains(row))]
    if outside:
        raise OutsideTokenDomains(outside)
    from cdrs.selectors import stored_domains, visible_cdr_ids

    rows = list(rows)
    plain_keys = [row["natural_key"] for row in rows]
    # One CDR (a webhook event) needs no transaction of its own: each ingest below writes it
    # whole or not at all, and the second runs only when the first wrote nothing. That
    # keeps the one-statement insert (``_ingest_one``): 2 round trips instead of 7 (the id
    # check and the insert; the new CDR's id comes from the worker's block of low bits).
    with transaction.atomic() if len(rows) > 1 else nullcontext():
        given = {row["id"] for row in rows if row["id"] is not None}
        own_ids = visible_cdr_ids(token=token, ids=given)
        for row in rows:
            if row["id"] not in own_ids:
                row["id"] = None
        kept_ids = [row["id"] for row in rows]
        result = cdr_ingest(rows=rows)
        pending: list[int] = list(range(len(rows)))
        for _attempt in range(3):
            # A row answered with another CDR's id matched it by natural key (an own id is
            # answered as itself): the same CDR only if the domains match too.
            matched = {i: result.ids[i] for i in pending if result.ids[i] != rows[i]["id"]}
            if not matched:  # all stored as new (the common case)
                break
            domains_by_id = stored_domains(set(matched.values()))
            other = [i for i, pk in matched.items() if domains_by_id[pk] != _lower_domains(rows[i])]
            if not other:
                break
            for i in other:
                rows[i]["natural_key"] = scoped_natural_key(plain_keys[i], rows[i])
                rows[i]["id"] = kept_ids[i]
            again = cdr_ingest(rows=[rows[i] for i in other])
            for position, i in enumerate(other):
                result.ids[i] = again.ids[position]
            result.created += again.created
            result.duplicates -= again.created
            pending = other
        else:  # pragma: no cover - a scoped key is only ever held by a CDR of the same domains
            raise RuntimeError("could not tell a stored CDR from a new one")
    return result
