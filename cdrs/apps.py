from django.apps import AppConfig


class CdrsConfig(AppConfig):
    name = "cdrs"
    verbose_name = "Call detail records"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register every custom lookup here, once (never as an import side effect)."""
        from django.db.models import CharField
        from django.db.models.functions import Lower
        from django.db.models.signals import post_migrate

        from cdrs import lookups

        # caller_domain__lower__in=[...]: domain-limited tokens match domains case-insensitively.
        CharField.register_lookup(Lower)
        # ccontains/cstartswith/cendswith: the filter option's case-sensitive functions.
        lookups.register()
        post_migrate.connect(_ensure_partitions, sender=self)


def _ensure_partitions(using: str = "default", verbosity: int = 1, **_kwargs: object) -> None:
    """After ``migrate``: the month partitions ahead exist (as ``cdr_partitions --ensure``)."""
    from django.db import connections

    from cdrs import partitions

    def say(text: str) -> None:
        if verbosity >= 1:
            print(f"  cdr_partitions: {text}")

    conn = connections[using]
    if partitions.is_partitioned(conn):
        created = partitions.ensure(conn=conn, say=say)
        say(f"{len(created)} partition(s) created")
