"""The database cache's table (settings.CACHES without REDIS_URL): rate limit and admin
lockout counters. Created here so every deployment has it after ``migrate``, whichever
cache the settings name at that moment."""

from django.core.management import call_command
from django.db import migrations

TABLE = "cdr_cache"


def create(apps, schema_editor):
    call_command("createcachetable", TABLE, database=schema_editor.connection.alias, verbosity=0)
    if schema_editor.connection.vendor == "postgresql":
        # Counters need no crash safety: unlogged, the commit of each counted request writes
        # no WAL and waits for no flush (logged, it added about twice the time per request).
        schema_editor.execute(f"ALTER TABLE {schema_editor.quote_name(TABLE)} SET UNLOGGED")


def drop(apps, schema_editor):
    schema_editor.execute(f"DROP TABLE IF EXISTS {schema_editor.quote_name(TABLE)}")


class Migration(migrations.Migration):
    dependencies = [("cdrs", "0005_hourly_stats")]

    operations = [migrations.RunPython(create, drop)]
