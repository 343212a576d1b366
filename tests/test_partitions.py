"""Monthly partitions of the CDR table (PostgreSQL): conversion, de-duplication, pruning."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, close_old_connections, connection

from cdrs import partitions
from cdrs.ids import encode_id
from cdrs.models import Cdr
from cdrs.query.options import parse_list_options
from cdrs.selectors import cdr_get, cdr_id_where, cdr_list, cdr_total
from cdrs.services import cdr_ingest
from cdrs.tokens import mint_token
from cdrs.validation import validate_cdr
from tests.factories import cdr_payload, create_cdrs
from tests.helpers import AllQueries, scratch_postgresql

ROOT = Path(__file__).resolve().parent.parent
pg = pytest.mark.postgresql


def _at(year: int, month: int, day: int = 15) -> datetime:
    return datetime(year, month, day, 12, 0, tzinfo=UTC)


def _months(first: date, last: date) -> None:
    """Month partitions from ``first`` to ``last`` (as ``ensure`` on ``last``'s date)."""
    partitions.ensure(first=first, today=last, ahead=0)


def _rows_in(table: str) -> int:
    with connection.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return int(cur.fetchone()[0])


def _manage(url: str, *args: str) -> str:
    env = {**os.environ, "DATABASE_URL": url}
    env.setdefault("SECRET_KEY", "tests-only-secret-key-not-for-production-0123456789")
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# A row per ~hour and a half over four years, plus a few far from the rest: every column
# varies, NULLs included.
_LOAD = """
INSERT INTO cdrs_cdr (id, caller, caller_domain, caller_display_name, callee, callee_domain,
  callee_display_name, started_at, rang_at, answered_at, ended_at, call_id, direction,
  end_reason, reroute_reason, status_code, destination, outbound_caller_id, did_cid, trunk,
  duration, cost, billed_account, service_number, user_data, natural_key)
SELECT g, (100 + g % 900)::text, 't' || (g % 7) || '.example.com', 'User ' || g,
  (200 + g % 50)::text, 't' || (g % 5) || '.example.com', '', t, t + interval '1 second',
  CASE WHEN g % 3 > 0 THEN t + interval '4 seconds' END, t + interval '90 seconds',
  'call-' || g, 'INBOUND_CALL', 'CALLER_DISCONNECTED', '', 200, '', '', '', 'trunk-' || (g % 3),
  g % 600, CASE WHEN g % 4 > 0 THEN (g % 1000) / 1000.0 END, '', '', '', md5(g::text)::uuid
FROM (SELECT g, CASE WHEN g % 5000 = 0 THEN timestamptz '1999-12-31 23:59:59+00'
                     ELSE timestamptz '2022-01-01 00:00:00+00' + g * interval '97 minutes' END AS t
      FROM generate_series(1, 20000) g) s
"""
_CHECKSUM = "SELECT count(*), md5(string_agg(c::text, E'\\n' ORDER BY id)) FROM cdrs_cdr c"


@pg
def test_migration_converts_a_populated_table_without_losing_a_row():
    with scratch_postgresql("cdrpart_migrate") as url:
        _manage(url, "migrate", "cdrs", "0007", "-v0")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(_LOAD)
            before = conn.execute(_CHECKSUM).fetchone()
        assert before is not None and before[0] == 20000

        out = _manage(url, "migrate", "cdrs", "0008")
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute(_CHECKSUM).fetchone() == before
            kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'cdrs_cdr'")
            assert kind.fetchone() == ("p",)
            # one partition per month holding rows (49) and the default one at least
            assert _partition_count(conn) >= 50
            assert conn.execute("SELECT count(*) FROM cdrs_cdr_default").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM cdrs_cdr_id").fetchone() == (20000,)
            # Rows of months with no partition wait in the default partition.
            conn.execute(_LATE)
            before = conn.execute(_CHECKSUM).fetchone()
            assert conn.execute("SELECT count(*) FROM cdrs_cdr_default").fetchone() == (30,)
        assert "cdr_partitions" in out  # migrate ran --ensure

        # 0011: the default partition becomes spill partitions, and its rows move there.
        _manage(url, "migrate", "cdrs", "0011", "-v0")
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute(_CHECKSUM).fetchone() == before
            assert conn.execute("SELECT to_regclass('cdrs_cdr_default')").fetchone() == (None,)
            spills = _spill_counts(conn)
            assert spills["cdrs_cdr_spill_min_1999_12"] == 10
            assert spills["cdrs_cdr_spill_2000_01_2022_01"] == 10
            assert next(rows for n, rows in spills.items() if n.endswith("_max")) == 10
            assert sum(spills.values()) == 30
            assert _uncovered(conn.execute(_BOUNDS).fetchall()) == []
            assert conn.execute("SELECT count(*) FROM cdrs_cdr_id").fetchone() == (20030,)

        _manage(url, "migrate", "cdrs", "0010", "-v0")
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute(_CHECKSUM).fetchone() == before
            assert conn.execute("SELECT count(*) FROM cdrs_cdr_default").fetchone() == (30,)
            assert _spill_counts(conn) == {}

        _manage(url, "migrate", "cdrs", "0007", "-v0")
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute(_CHECKSUM).fetchone() == before
            kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'cdrs_cdr'")
            assert kind.fetchone() == ("r",)


# Ten rows in each of three months the conversion made no partition for: 1990, a gap
# month (2021-06, between 1999-12 and 2022-01) and 2041, after the months ahead.
_LATE = """
INSERT INTO cdrs_cdr SELECT id + 1000000 * k, caller, caller_domain, caller_display_name,
  callee, callee_domain, callee_display_name, t, NULL, NULL, t + interval '1 minute',
  call_id || '-late', direction, end_reason, reroute_reason, status_code, destination,
  outbound_caller_id, did_cid, trunk, duration, cost, billed_account, service_number,
  user_data, md5((id + 1000000 * k)::text)::uuid
FROM cdrs_cdr, (VALUES (1, timestamptz '1990-05-05 10:00:00+00'),
                       (2, timestamptz '2021-06-30 23:59:59+00'),
                       (3, timestamptz '2041-01-01 00:00:00+00')) AS late(k, t)
WHERE id <= 10
"""


def _partition_count(conn: psycopg.Connection[Any]) -> int:
    found = conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'cdrs_cdr'::regclass")
    row = found.fetchone()
    assert row is not None
    return int(row[0])


def _spill_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    names = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'cdrs_cdr'::regclass AND starts_with(c.relname, 'cdrs_cdr_spill_')"
    ).fetchall()
    counts = {}
    for (name,) in names:
        row = conn.execute(f"SELECT count(*) FROM {name}").fetchone()
        assert row is not None
        counts[name] = int(row[0])
    return counts


_BOUNDS = (
    "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c "
    "ON c.oid = i.inhrelid WHERE i.inhparent = 'cdrs_cdr'::regclass"
)


def _uncovered(bounds: list[tuple[str]]) -> list[str]:
    """The bounds of partitions of cdrs_cdr (``_BOUNDS``) that leave a hole: a start that
    is no partition's end, or an end that is no partition's start."""
    ranges = []
    for (expr,) in bounds:
        lo, _, hi = expr.removeprefix("FOR VALUES FROM (").removesuffix(")").partition(") TO (")
        ranges.append((lo, hi))
    starts = {lo for lo, _ in ranges}
    ends = {hi for _, hi in ranges}
    # Covered from MINVALUE to MAXVALUE with no hole: every start but MINVALUE is an end.
    return sorted((starts - ends - {"MINVALUE"}) | (ends - starts - {"MAXVALUE"}))


def _django_uncovered() -> list[str]:
    with connection.cursor() as cur:
        cur.execute(_BOUNDS)
        return _uncovered(cur.fetchall())


def _ingest(payload: dict[str, Any]) -> tuple[int, int, list[int]]:
    result = cdr_ingest(rows=[validate_cdr(dict(payload))])
    return result.created, result.duplicates, result.ids


@pg
@pytest.mark.django_db
def test_an_id_is_one_cdr_across_partitions():
    _months(date(2024, 1, 1), date(2025, 6, 1))
    first = cdr_payload(id=encode_id(4242), started=_at(2024, 1))
    assert _ingest(first)[:2] == (1, 0)
    # The same id under another started_at (another partition), alone or in a big batch.
    again = cdr_payload(id=encode_id(4242), started=_at(2025, 6), caller="555")
    assert _ingest(again) == (0, 1, [4242])
    batch = [cdr_payload(started=_at(2024, 2)) for _ in range(30)] + [again]
    result = cdr_ingest(rows=[validate_cdr(dict(p)) for p in batch])
    assert (result.created, result.duplicates, result.ids[-1]) == (30, 1, 4242)
    assert Cdr.objects.filter(pk=4242).count() == 1
    assert Cdr.objects.get(pk=4242).started_at == _at(2024, 1)
    assert Cdr.objects.count() == 31 == cdr_total()


@pg
@pytest.mark.no_citus(
    "Citus runs no trigger on a distributed table: there the ingest claims ids in the "
    "registry (cdrs.citus.claim_ids), and a raw INSERT bypasses it"
)
@pytest.mark.django_db
def test_the_database_refuses_an_id_under_a_second_started_at():
    (cdr_id,) = create_cdrs(cdr_payload(started=_at(2024, 3)))
    with pytest.raises(IntegrityError), connection.cursor() as cur:
        cur.execute(
            "INSERT INTO cdrs_cdr SELECT id + 0, caller, caller_domain, caller_display_name, "
            "callee, callee_domain, callee_display_name, started_at + interval '40 days', "
            "rang_at, answered_at, ended_at, call_id, direction, end_reason, reroute_reason, "
            "status_code, destination, outbound_caller_id, did_cid, trunk, duration, cost, "
            "billed_account, service_number, user_data, gen_random_uuid() FROM cdrs_cdr "
            "WHERE id = %s",
            [cdr_id],
        )


@pg
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_of_one_id_under_different_times_store_one_cdr():
    _months(date(2024, 1, 1), date(2024, 12, 1))
    senders = 6
    barrier = threading.Barrier(senders)
    answers: list[tuple[int, int, list[int]]] = []

    def send(month: int) -> None:
        try:
            barrier.wait()
            answers.append(_ingest(cdr_payload(id=encode_id(777), started=_at(2024, month))))
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=send, args=(m + 1,)) for m in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(answers) == senders
    assert sorted(a[:2] for a in answers) == [(0, 1)] * (senders - 1) + [(1, 0)]
    assert {a[2][0] for a in answers} == {777}
    assert Cdr.objects.filter(pk=777).count() == 1 == cdr_total()
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM cdrs_cdr_id")
        assert cur.fetchone()[0] == 1


@pg
@pytest.mark.django_db
def test_a_started_at_window_reads_only_its_partitions():
    _months(date(2024, 1, 1), date(2024, 6, 1))
    create_cdrs(*[cdr_payload(started=_at(2024, m)) for m in range(1, 7)])
    march, april = datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC)
    qs = Cdr.objects.filter(started_at__gte=march, started_at__lt=april)
    plan = qs.order_by("-started_at").explain()
    assert "cdrs_cdr_p2024_03" in plan
    for other in ("p2024_01", "p2024_02", "p2024_04", "p2024_05", "p2024_06", "spill"):
        assert f"cdrs_cdr_{other}" not in plan, plan
    assert qs.count() == 1


@pg
@pytest.mark.django_db
def test_detail_by_id_reads_one_partition(client_full):
    _months(date(2024, 1, 1), date(2024, 6, 1))
    ids = create_cdrs(*[cdr_payload(started=_at(2024, m)) for m in range(1, 7)])
    foreign = create_cdrs(cdr_payload(id=encode_id(99), started=_at(2024, 2)))[0]
    months = ("2024_01", "2024_02", "2024_03", "2024_04", "2024_05", "2024_06", "spill")
    for cdr_id, month in ((ids[4], "2024_05"), (foreign, "2024_02")):
        where = cdr_id_where(cdr_id)
        assert where is not None
        plan = Cdr.objects.filter(where).explain()
        assert [m for m in months if f"cdrs_cdr_p{m}" in plan or f"cdrs_cdr_{m}" in plan] == [
            month
        ], plan
        response = client_full.get(f"/api/cdrs/{encode_id(cdr_id)}")
        assert response.status_code == 200
        assert response.json()["items"][0]["id"] == encode_id(cdr_id)
    assert cdr_id_where(123456) is None
    assert client_full.get(f"/api/cdrs/{encode_id(123456)}").status_code == 404


def _page_statements(queries: AllQueries) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if 'ORDER BY "cdrs_cdr"' in q["sql"]]


@pg
@pytest.mark.django_db
def test_a_filtered_page_reads_the_recent_months_first_and_pages_alike(client_full):
    """A filtered page newest first reads the months from the one before the newest CDR's
    (PostgreSQL then plans only those), and the whole table only when they do not fill it;
    every page, cursor pages included, is the one the table's order gives."""
    _months(date(2024, 1, 1), date(2024, 6, 1))
    busy = [cdr_payload(caller="301", started=_at(2024, 5 + n % 2, 1 + n % 28)) for n in range(60)]
    busy += [cdr_payload(caller="301", started=_at(2024, 1, 1 + n)) for n in range(10)]
    rare = [cdr_payload(caller="302", started=_at(2024, m)) for m in (1, 2, 2)]
    create_cdrs(*busy, *rare, *[cdr_payload(caller="303", started=_at(2024, 6))])

    def walk(caller: str, top: int) -> tuple[list[str], list[list[str]]]:
        seen, statements = [], []
        params = {"filter": f"caller eq '{caller}'", "top": str(top)}
        while True:
            with AllQueries() as queries:
                body = client_full.get("/api/cdrs", params).json()
            seen += [i["id"] for i in body["items"]]
            statements.append(_page_statements(queries))
            if not body["next_cursor"]:
                return seen, statements
            params = {**params, "cursor": body["next_cursor"]}

    def expected(caller: str) -> list[str]:
        stored = Cdr.objects.filter(caller=caller).order_by("-started_at", "-id")
        return [encode_id(pk) for pk in stored.values_list("pk", flat=True)]

    ids, statements = walk("301", 50)
    assert ids == expected("301") and len(ids) == 70
    (first,) = statements[0]  # May and June fill the first page: one statement
    assert "\"started_at\" >= ('2024-05-01T00:00:00+00:00'::timestamptz)" in first, first
    ids, statements = walk("301", 7)  # cursor pages down to January
    assert ids == expected("301")
    # Pages 9 and 10 (the last 4 of May, then January's last 7) cannot fill 7 + 1 rows
    # from the cursor's month and the one before: those read the whole table.
    assert [len(s) for s in statements] == [1] * 8 + [2] * 2
    ids, statements = walk("302", 50)
    assert ids == expected("302") and len(ids) == 3
    assert len(statements[0]) == 2  # nothing since May: then the whole table, as before

    # A CDR newer than the newest hour the process keeps (for a minute) is still first.
    (later,) = create_cdrs(cdr_payload(caller="301", started=_at(2024, 7)))
    assert walk("301", 50)[0][0] == encode_id(later)


@pg
@pytest.mark.django_db
def test_detail_and_an_unfiltered_page_are_planned_once_per_connection():
    """Their statements keep LIMIT in the text, so PostgreSQL reuses one generic plan that
    prunes at run time; with LIMIT as a parameter it planned every run anew (a page over
    43 partitions 3 ms, a detail read 0.2 ms, against 0.3 and 0.1 on a plain table)."""
    _months(date(2024, 1, 1), date(2024, 6, 1))
    ids = create_cdrs(*[cdr_payload(started=_at(2024, m)) for m in range(1, 7)])
    token = mint_token(username="plans", scopes=("read",)).token
    options = parse_list_options({"top": ["2"]}, billing=False)
    # psycopg prepares a statement on its 6th run; PostgreSQL plans its first 5 runs
    # as prepared for their values, then compares.
    for n in range(14):
        assert cdr_get(token=token, cdr_id=ids[n % 6]) is not None
        assert len(cdr_list(token=token, options=options).rows) == 2
    with connection.cursor() as cur:
        cur.execute(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE %s",
            ['%FROM "cdrs_cdr"%LIMIT %'],
        )
        plans = sorted((sql.rsplit(" ", 1)[1], generic, custom) for sql, generic, custom in cur)
        cur.execute("SHOW constraint_exclusion")
        assert cur.fetchone()[0] == "off"  # no CHECK constraint tests per partition planned
    # LIMIT 1: detail; LIMIT 3: the page's recent months (May and June hold 2 of its 3
    # rows), then the whole table.
    assert [limit for limit, _g, _c in plans] == ["1", "3", "3"], plans
    assert all(generic > 0 and custom <= 5 for _limit, generic, custom in plans), plans


@pg
@pytest.mark.django_db
def test_detail_reads_a_pbx_id_through_the_registry_first(client_full):
    """An id whose bits cannot be a snowflake of ours for a likely time (a PBX's: 2000 or
    after tomorrow) skips the snowflake read; found or not, every id costs the same reads
    by the path its bits choose."""
    _months(date(2024, 1, 1), date(2024, 6, 1))
    generated = create_cdrs(cdr_payload(started=_at(2024, 5)))[0]
    foreign = create_cdrs(cdr_payload(id=encode_id(99), started=_at(2024, 2)))[0]
    client_full.get("/api/cdrs?top=1")  # the token's last-used time written once

    def reads(cdr_id: int, status: int) -> int:
        with AllQueries() as queries:
            assert client_full.get(f"/api/cdrs/{encode_id(cdr_id)}").status_code == status
        return len(queries) - 1  # the token's

    assert reads(generated, 200) == 1  # its own month, by the time in its bits
    assert reads(foreign, 200) == 2  # the registry, then its month
    assert reads(98, 404) == 2  # as a PBX's id that exists
    assert reads(generated + 1, 404) == 3  # as one of ours that exists, then the registry


@pg
@pytest.mark.django_db
def test_split_default_moves_rows_into_their_month():
    # No partition for 2019: the rows land in the spill partition before the first month.
    ids = create_cdrs(*[cdr_payload(started=_at(2019, m)) for m in (3, 3, 4)])
    assert _spill_rows() == 3
    out = io.StringIO()
    call_command("cdr_partitions", "--split-default", "--ensure", stdout=out)
    assert re.search(
        r"moved 2 rows from cdrs_cdr_spill_min_\d{4}_\d\d to cdrs_cdr_p2019_03", out.getvalue()
    )
    assert re.search(
        r"moved 1 rows from cdrs_cdr_spill_2019_04_\d{4}_\d\d to cdrs_cdr_p2019_04",
        out.getvalue(),
    )
    assert _spill_rows() == 0
    assert _rows_in("cdrs_cdr_p2019_03") == 2 and _rows_in("cdrs_cdr_p2019_04") == 1
    assert sorted(Cdr.objects.values_list("pk", flat=True)) == sorted(ids)
    assert Cdr.objects.filter(cdr_id_where(ids[2])).count() == 1
    assert cdr_total() == 3
    # The id registry still holds them: re-sending is a duplicate.
    assert _ingest(cdr_payload(id=encode_id(ids[0]), started=_at(2020, 1)))[:2] == (0, 1)
    again = io.StringIO()
    call_command("cdr_partitions", "--split-default", "--ensure", stdout=again)
    assert "split-default: 0 rows moved" in again.getvalue()
    assert "ensure: 0 partition(s) created" in again.getvalue()
    assert _django_uncovered() == []


def _spill_rows() -> int:
    return sum(_rows_in(p.name) for p in partitions.partitions() if p.spill)


@pg
@pytest.mark.django_db
def test_every_instant_has_a_partition_and_the_months_scan_in_order():
    _months(date(2024, 1, 1), date(2024, 6, 1))
    parts = partitions.partitions()
    assert parts[0].name == "cdrs_cdr_spill_min_2024_01"
    assert parts[-1].name.endswith("_max") and parts[-1].spill
    # From the first instant a CDR may start at to the last, every time finds a partition.
    far = [datetime(1970, 1, 1, tzinfo=UTC), _at(2024, 3), _at(2031, 1), _at(2069, 9, 5)]
    create_cdrs(*[cdr_payload(started=at) for at in far])
    assert Cdr.objects.count() == 4
    assert _django_uncovered() == []
    with connection.cursor() as cur:
        # No DEFAULT partition: the planner can read the months' indexes newest first and
        # stop at the page's end (an ordered Append), instead of merging every partition.
        cur.execute("SET LOCAL enable_sort = off")
        plan = Cdr.objects.order_by("-started_at", "-id")[:50].explain()
    assert "Merge Append" not in plan and "Append" in plan, plan


@pg
@pytest.mark.django_db
def test_ensure_leaves_a_month_with_rows_in_the_default_partition_to_split_default():
    create_cdrs(cdr_payload(started=_at(2031, 2)))
    say: list[str] = []
    created = partitions.ensure(
        first=date(2031, 1, 1), today=date(2031, 3, 1), ahead=0, say=say.append
    )
    assert created == ["cdrs_cdr_p2031_01", "cdrs_cdr_p2031_03"]
    assert any("cdrs_cdr_p2031_02" in line and "--split-default" in line for line in say)


@pytest.mark.django_db
def test_cdr_partitions_command():
    out = io.StringIO()
    call_command("cdr_partitions", "--ensure", stdout=out)
    if connection.vendor == "postgresql":
        assert "ensure:" in out.getvalue()
        call_command("cdr_partitions", "--list", stdout=out)
        assert "cdrs_cdr_spill_min_" in out.getvalue()
    else:
        assert (
            out.getvalue().strip() == "nothing to do on SQLite (the CDR table is not partitioned)"
        )


@pg
@pytest.mark.django_db(transaction=True)
def test_a_table_held_by_a_long_read_makes_ensure_fail_clearly_and_change_nothing(monkeypatch):
    monkeypatch.setattr(partitions, "DETACH_LOCK_TIMEOUT_MS", 100)
    monkeypatch.setattr(partitions, "DETACH_ATTEMPTS", 2)
    before = [p.name for p in partitions.partitions()]
    params = connection.get_connection_params()
    with psycopg.connect(**params) as reader:  # an export's open transaction
        reader.execute("SELECT count(*) FROM cdrs_cdr")
        out = io.StringIO()
        with pytest.raises(CommandError, match="stayed busy; nothing changed, run it again"):
            call_command("cdr_partitions", "--ensure", "--ahead", "8", stdout=out)
    assert "the CDR table stayed busy (attempt 2), trying again" in out.getvalue()
    assert [p.name for p in partitions.partitions()] == before
    call_command("cdr_partitions", "--ensure", "--ahead", "8", stdout=out)  # no reader now
    assert len(partitions.partitions()) > len(before)
