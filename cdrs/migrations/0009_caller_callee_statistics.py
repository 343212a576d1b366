"""Finer planner statistics for ``caller`` and ``callee`` (PostgreSQL; a no-op on SQLite).

``filter=caller eq '101'&top=50`` should walk cdr_caller_started_idx newest first and stop
after 51 rows. With the default statistics target (100 most common values), a PBX's ~1,000
extensions do not fit the list, so an extension with 1,600 calls was estimated at 40 rows:
the planner then fetched all 1,600 rows and sorted them (16 ms instead of 0.13 ms, measured
at 1M CDRs). A target of 1000 keeps every extension of such a PBX in the list; external
numbers (one call each) stay out of it and are estimated as rare, which they are.

On the partitioned table (0008) the ALTER reaches every partition; partitions made later get
the same targets from ``cdrs.partitions.tune_statistics``.
"""

from django.db import migrations

COLUMNS = ("caller", "callee")


def finer(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for column in COLUMNS:
        schema_editor.execute(f'ALTER TABLE cdrs_cdr ALTER COLUMN "{column}" SET STATISTICS 1000')
    # Only these two columns: 0008 has just analyzed the rest (minutes at 10M rows).
    schema_editor.execute(f"ANALYZE cdrs_cdr ({', '.join(COLUMNS)})")


def default(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for column in COLUMNS:
        schema_editor.execute(f'ALTER TABLE cdrs_cdr ALTER COLUMN "{column}" SET STATISTICS -1')


class Migration(migrations.Migration):
    dependencies = [("cdrs", "0008_partition_cdrs")]

    operations = [migrations.RunPython(finer, default)]
