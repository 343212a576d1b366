from django.apps import AppConfig


class CdrsConfig(AppConfig):
    name = "cdrs"
    verbose_name = "Call detail records"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register every custom lookup here, once (never as an import side effect)."""
        from django.db.models import CharField
        from django.db.models.functions import Lower

        from cdrs import lookups

        # caller_domain__lower__in=[...]: domain-limited tokens match domains case-insensitively.
        CharField.register_lookup(Lower)
        # ccontains/cstartswith/cendswith: the filter option's case-sensitive functions.
        lookups.register()
