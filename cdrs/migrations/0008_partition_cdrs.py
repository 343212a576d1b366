"""PostgreSQL: ``cdrs_cdr`` becomes range-partitioned by month on ``started_at``.

The table is rebuilt: renamed aside, a partitioned table made LIKE it (columns, collations,
defaults, CHECK constraints), one partition for each month that holds rows plus the months
ahead and a DEFAULT partition, every row copied, then the keys and indexes built once over
the loaded rows. Unique constraints of a partitioned table must contain the partition key:
the primary key becomes ``(id, started_at)`` and the natural key's ``(natural_key,
started_at)``; ``cdrs_cdr_id`` (filled from the rows, kept by triggers) keeps ids unique
across partitions (see ``cdrs.models.Cdr``). Reversible: backwards rebuilds a plain table.

SQLite: only the natural key's unique constraint gains ``started_at`` (equivalent: the key
hashes started_at), so the model is one declaration on both.
"""

from datetime import UTC, date, datetime

from django.db import migrations, models

TABLE = "cdrs_cdr"
ASIDE = "cdrs_cdr_rebuilt"
REGISTRY = "cdrs_cdr_id"
MONTHS_AHEAD = 3
OLD_NATURAL_KEY = models.UniqueConstraint(fields=["natural_key"], name="cdr_natural_key_uniq")
NEW_NATURAL_KEY = models.UniqueConstraint(
    fields=["natural_key", "started_at"], name="cdr_natural_key_uniq"
)

# Statement triggers with transition tables: one INSERT ... SELECT per statement, however
# many rows it wrote. An id stored under another started_at makes the INSERT fail on the
# registry's primary key (services.cdr_ingest skips registered ids before inserting).
REGISTRY_SQL = f"""
CREATE TABLE {REGISTRY} (id bigint PRIMARY KEY, started_at timestamptz NOT NULL);
CREATE FUNCTION cdrs_cdr_id_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO {REGISTRY} (id, started_at) SELECT id, started_at FROM added_rows;
  RETURN NULL;
END $$;
CREATE FUNCTION cdrs_cdr_id_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM {REGISTRY} r USING removed_rows o WHERE r.id = o.id;
  RETURN NULL;
END $$;
CREATE FUNCTION cdrs_cdr_id_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM {REGISTRY} r USING old_rows o
    WHERE r.id = o.id AND NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.id = o.id);
  UPDATE {REGISTRY} r SET started_at = n.started_at FROM new_rows n
    WHERE r.id = n.id AND r.started_at <> n.started_at;
  INSERT INTO {REGISTRY} (id, started_at) SELECT n.id, n.started_at FROM new_rows n
    WHERE NOT EXISTS (SELECT 1 FROM old_rows o WHERE o.id = n.id);
  RETURN NULL;
END $$;
CREATE FUNCTION cdrs_cdr_id_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  TRUNCATE {REGISTRY};
  RETURN NULL;
END $$;
CREATE TRIGGER cdrs_cdr_id_added AFTER INSERT ON {TABLE} REFERENCING NEW TABLE AS added_rows
  FOR EACH STATEMENT EXECUTE FUNCTION cdrs_cdr_id_added();
CREATE TRIGGER cdrs_cdr_id_removed AFTER DELETE ON {TABLE} REFERENCING OLD TABLE AS removed_rows
  FOR EACH STATEMENT EXECUTE FUNCTION cdrs_cdr_id_removed();
CREATE TRIGGER cdrs_cdr_id_changed AFTER UPDATE ON {TABLE}
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION cdrs_cdr_id_changed();
CREATE TRIGGER cdrs_cdr_id_truncated AFTER TRUNCATE ON {TABLE}
  FOR EACH STATEMENT EXECUTE FUNCTION cdrs_cdr_id_truncated();
"""
DROP_REGISTRY_SQL = f"""
DROP TRIGGER IF EXISTS cdrs_cdr_id_added ON {TABLE};
DROP TRIGGER IF EXISTS cdrs_cdr_id_removed ON {TABLE};
DROP TRIGGER IF EXISTS cdrs_cdr_id_changed ON {TABLE};
DROP TRIGGER IF EXISTS cdrs_cdr_id_truncated ON {TABLE};
DROP FUNCTION IF EXISTS cdrs_cdr_id_added(), cdrs_cdr_id_removed(), cdrs_cdr_id_changed(),
  cdrs_cdr_id_truncated();
DROP TABLE IF EXISTS {REGISTRY};
"""


def _next_month(month):
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def _start(month):
    return datetime(month.year, month.month, 1, tzinfo=UTC)


def _plain_indexes(cur, table):
    """(name, definition) of the table's indexes that back no constraint."""
    cur.execute(
        "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = to_regclass(%s) "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid) "
        "ORDER BY i.relname",
        [table],
    )
    # A partitioned table's indexes read "ON ONLY table": recreated, they cover every part.
    return [(name, sql.replace(" ON ONLY ", " ON ")) for name, sql in cur.fetchall()]


def _key_constraints(cur, table):
    cur.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s) "
        "AND contype IN ('p', 'u')",
        [table],
    )
    return [row[0] for row in cur.fetchall()]


def _set_aside(cur):
    """Rename the table out of the way, with its key constraints and plain indexes dropped
    or renamed (index names are per schema); returns the plain index definitions."""
    indexes = _plain_indexes(cur, TABLE)
    for name, _sql in indexes:
        cur.execute(f'DROP INDEX "{name}"')
    cur.execute(f"ALTER TABLE {TABLE} RENAME TO {ASIDE}")
    for name in _key_constraints(cur, ASIDE):
        cur.execute(f'ALTER TABLE {ASIDE} RENAME CONSTRAINT "{name}" TO "{name}_aside"')
    return [sql for _name, sql in indexes]


def partition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        model = apps.get_model("cdrs", "Cdr")
        schema_editor.remove_constraint(model, OLD_NATURAL_KEY)
        schema_editor.add_constraint(model, NEW_NATURAL_KEY)
        return
    with schema_editor.connection.cursor() as cur:
        indexes = _set_aside(cur)
        cur.execute(
            f"CREATE TABLE {TABLE} (LIKE {ASIDE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
            "PARTITION BY RANGE (started_at)"
        )
        cur.execute(
            f"SELECT DISTINCT date_trunc('month', started_at AT TIME ZONE 'UTC')::date FROM {ASIDE}"
        )
        wanted = {row[0] for row in cur.fetchall()}
        month = date(datetime.now(UTC).year, datetime.now(UTC).month, 1)
        for _ in range(MONTHS_AHEAD + 1):
            wanted.add(month)
            month = _next_month(month)
        for month in sorted(wanted):
            # Bounds as literals: DDL takes no bind parameters.
            lo, hi = _start(month).isoformat(), _start(_next_month(month)).isoformat()
            cur.execute(
                f"CREATE TABLE cdrs_cdr_p{month.year:04d}_{month.month:02d} PARTITION OF "
                f"{TABLE} FOR VALUES FROM ('{lo}') TO ('{hi}')"
            )
        cur.execute(f"CREATE TABLE cdrs_cdr_default PARTITION OF {TABLE} DEFAULT")
        cur.execute(f"INSERT INTO {TABLE} SELECT * FROM {ASIDE}")
        cur.execute(
            f"ALTER TABLE {TABLE} ADD CONSTRAINT cdrs_cdr_pkey PRIMARY KEY (id, started_at)"
        )
        cur.execute(
            f"ALTER TABLE {TABLE} ADD CONSTRAINT cdr_natural_key_uniq "
            "UNIQUE (natural_key, started_at)"
        )
        for sql in indexes:
            cur.execute(sql)
        cur.execute(REGISTRY_SQL)
        # The triggers were made after the copy: the registry gets the rows in one go (and
        # fails here, changing nothing, if the plain table somehow held an id twice).
        cur.execute(f"INSERT INTO {REGISTRY} (id, started_at) SELECT id, started_at FROM {TABLE}")
        cur.execute(f"DROP TABLE {ASIDE}")
        cur.execute(f"ANALYZE {TABLE}")


def unpartition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        model = apps.get_model("cdrs", "Cdr")
        schema_editor.remove_constraint(model, NEW_NATURAL_KEY)
        schema_editor.add_constraint(model, OLD_NATURAL_KEY)
        return
    with schema_editor.connection.cursor() as cur:
        cur.execute(DROP_REGISTRY_SQL)
        indexes = _set_aside(cur)
        cur.execute(f"CREATE TABLE {TABLE} (LIKE {ASIDE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        cur.execute(f"INSERT INTO {TABLE} SELECT * FROM {ASIDE}")
        cur.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT cdrs_cdr_pkey PRIMARY KEY (id)")
        cur.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT cdr_natural_key_uniq UNIQUE (natural_key)")
        for sql in indexes:
            cur.execute(sql)
        cur.execute(f"DROP TABLE {ASIDE}")  # and its partitions
        cur.execute(f"ANALYZE {TABLE}")


class Migration(migrations.Migration):
    dependencies = [("cdrs", "0007_rate_counter")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveConstraint(model_name="cdr", name="cdr_natural_key_uniq"),
                migrations.AddConstraint(model_name="cdr", constraint=NEW_NATURAL_KEY),
            ],
            database_operations=[migrations.RunPython(partition, unpartition)],
        )
    ]
