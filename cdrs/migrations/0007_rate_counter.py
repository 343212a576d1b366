"""The rate limit counters' own table (cdrs.models.RateCounter), unlogged on PostgreSQL."""

from django.db import migrations, models


def unlogged(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        # No crash safety needed: a request's count then writes no WAL and waits for no flush.
        schema_editor.execute("ALTER TABLE cdrs_rate_counter SET UNLOGGED")


class Migration(migrations.Migration):
    dependencies = [("cdrs", "0006_cache_table")]

    operations = [
        migrations.CreateModel(
            name="RateCounter",
            fields=[
                ("key", models.CharField(max_length=255, primary_key=True, serialize=False)),
                ("count", models.IntegerField()),
                ("expires_at", models.BigIntegerField()),
            ],
            options={
                "db_table": "cdrs_rate_counter",
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(count__gte=1), name="rate_counter_count_positive"
                    )
                ],
            },
        ),
        migrations.RunPython(unlogged, migrations.RunPython.noop),
    ]
