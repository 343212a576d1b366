"""Citus: the natural-key table, and on a Citus coordinator the distribution of the CDRs.

``CdrNaturalKey`` is created everywhere (so the schema is one on every backend) and used
only on Citus. The second step does nothing unless the database has the ``citus``
extension: there it distributes ``cdrs_cdr`` by id and ``cdrs_cdr_natural_key`` by natural
key, replacing ``cdr_natural_key_uniq`` (see ``cdrs/citus.py``). It must stay the last
migration that changes ``cdrs_cdr``'s constraints: it drops the ones Citus cannot keep.
"""

from django.db import migrations, models


def distribute(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from cdrs import citus

    citus.distribute(schema_editor.connection)


def undistribute(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from cdrs import citus

    citus.undistribute(schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [("cdrs", "0009_caller_callee_statistics")]

    operations = [
        migrations.CreateModel(
            name="CdrNaturalKey",
            fields=[
                ("natural_key", models.UUIDField(primary_key=True, serialize=False)),
                ("cdr_id", models.BigIntegerField()),
                ("started_at", models.DateTimeField()),
            ],
            options={"db_table": "cdrs_cdr_natural_key"},
        ),
        migrations.RunPython(distribute, undistribute),
    ]
