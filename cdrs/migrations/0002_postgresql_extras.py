"""PostgreSQL-only parts of the schema; each step is a no-op on SQLite.

- the sequence behind the 22 low bits of snowflake ids (unique across processes and hosts);
- byte-order ("C") collation on the string columns, so ordering and gt/lt comparisons are
  the same on every server whatever its locale (and btree indexes serve startswith);
- pg_trgm and the trigram GIN index that serves ``search``: its expression is exactly what
  cdrs.search.SearchDocument emits (tests/test_indexes.py checks the planner uses it).
"""

from django.db import migrations

STRING_LIMITS = {
    "caller": 256,
    "caller_domain": 1024,
    "caller_display_name": 1024,
    "callee": 256,
    "callee_domain": 1024,
    "callee_display_name": 1024,
    "call_id": 1024,
    "destination": 1024,
    "outbound_caller_id": 64,
    "did_cid": 1024,
    "trunk": 1024,
    "billed_account": 1024,
    "service_number": 1024,
    "user_data": 8192,
}
SEARCH_COLUMNS = (
    "caller",
    "caller_display_name",
    "callee",
    "callee_display_name",
    "call_id",
    "destination",
    "outbound_caller_id",
    "did_cid",
)
# GET /api/cdrs?search=term: UPPER(doc) LIKE UPPER('%term%') over the searchable fields.
SEARCH_INDEX_SQL = (
    "CREATE INDEX IF NOT EXISTS cdr_search_trgm_idx ON cdrs_cdr USING gin ((UPPER("
    + " || E'\\n' || ".join(f'"cdrs_cdr"."{c}"' for c in SEARCH_COLUMNS)
    + ")) gin_trgm_ops)"
)


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    run = schema_editor.execute
    run("CREATE SEQUENCE IF NOT EXISTS cdrs_cdr_id_low_seq AS bigint CYCLE")
    for name, limit in STRING_LIMITS.items():
        run(f'ALTER TABLE cdrs_cdr ALTER COLUMN "{name}" TYPE varchar({limit}) COLLATE "C"')
    run("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    run(SEARCH_INDEX_SQL)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("DROP INDEX IF EXISTS cdr_search_trgm_idx")
    schema_editor.execute("DROP SEQUENCE IF EXISTS cdrs_cdr_id_low_seq")


class Migration(migrations.Migration):
    dependencies = [("cdrs", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
