"""The DEFAULT partition of ``cdrs_cdr`` becomes spill partitions over every uncovered range.

A DEFAULT partition has no range, so while one is attached PostgreSQL cannot scan the
month partitions in order: a query without a time bound (the first page, a caller filter)
merges every month instead of reading the newest month's index and stopping. Range
partitions from MINVALUE to the first month, between months, and from the last month to
MAXVALUE keep the DEFAULT partition's promise (an insert never fails for want of a
partition) and keep the order (``cdrs.partitions`` explains the layout). The rows of the
DEFAULT partition move into the spill partition covering them; ids and started_at stay, so
the id registry stays as it is. Reversed, the spill partitions fold back into a DEFAULT one.
"""

from django.db import migrations

DEFAULT_PARTITION = "cdrs_cdr_default"


def to_spills(apps, schema_editor):
    from cdrs import partitions

    conn = schema_editor.connection
    if not partitions.is_partitioned(conn):
        return
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", [DEFAULT_PARTITION])
        if not cur.fetchone()[0]:
            return
        cur.execute(f"ALTER TABLE {partitions.TABLE} DETACH PARTITION {DEFAULT_PARTITION}")
        partitions.cover(cur)
        spills = [p for p in partitions.partitions(conn) if p.spill]
        partitions.copy_rows(cur, DEFAULT_PARTITION, spills)
        cur.execute(f"DROP TABLE {DEFAULT_PARTITION}")


def to_default(apps, schema_editor):
    from cdrs import partitions

    conn = schema_editor.connection
    if not partitions.is_partitioned(conn):
        return
    with conn.cursor() as cur:
        spills = [p for p in partitions.partitions(conn) if p.spill]
        for spill in spills:
            cur.execute(f"ALTER TABLE {partitions.TABLE} DETACH PARTITION {spill.name}")
        cur.execute(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF {partitions.TABLE} DEFAULT")
        everything = partitions.Partition(DEFAULT_PARTITION, None, None, 0)
        for spill in spills:
            partitions.copy_rows(cur, spill.name, [everything])
            cur.execute(f"DROP TABLE {spill.name}")


class Migration(migrations.Migration):
    dependencies = [("cdrs", "0010_citus")]

    operations = [migrations.RunPython(to_spills, to_default)]
