"""Routes: /api/ (CDRs, PortSIP webhook, schema, docs), /admin/, /healthz, /readyz, /metrics."""

from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from cdrs import health, metrics
from cdrs.admin.dashboard import dashboard_view
from cdrs.api.schema import SchemaView
from cdrs.api.stats import CdrStatsView
from cdrs.api.views import CdrViewSet
from cdrs.api.webhooks import PortsipWebhookView

router = SimpleRouter()
router.trailing_slash = "/?"  # PortSIP's paths have none; a trailing slash is accepted too
router.register("cdrs", CdrViewSet, basename="cdr")

urlpatterns = [
    path("api/schema", SchemaView.as_view(), name="schema"),
    path("api/docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    # With or without a trailing slash and never a redirect: PortSIP would not follow one
    # with its POST, and a 404 makes it drop the event.
    re_path(r"^api/webhooks/portsip/?$", PortsipWebhookView.as_view(), name="portsip-webhook"),
    # Before the router: its detail route /api/cdrs/{id} would take "stats" for an id.
    re_path(r"^api/cdrs/stats/?$", CdrStatsView.as_view(), name="cdr-stats"),
    path("api/", include(router.urls)),
    # Staff only (admin_view); linked from the admin index (cdrs/templates/admin/index.html).
    path("admin/dashboard/", admin.site.admin_view(dashboard_view), name="admin-dashboard"),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
]

handler400 = "cdrs.api.errors.json_400"
handler404 = "cdrs.api.errors.json_404"
handler500 = "cdrs.api.errors.json_500"
