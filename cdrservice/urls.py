"""Routes: /api/ (CDRs, schema, docs), /admin/, /healthz, /readyz, /metrics."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from cdrs import health, metrics
from cdrs.api.schema import SchemaView
from cdrs.api.views import CdrViewSet

router = SimpleRouter()
router.trailing_slash = "/?"  # PortSIP's paths have none; a trailing slash is accepted too
router.register("cdrs", CdrViewSet, basename="cdr")

urlpatterns = [
    path("api/schema", SchemaView.as_view(), name="schema"),
    path("api/docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/", include(router.urls)),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
]

handler400 = "cdrs.api.errors.json_400"
handler404 = "cdrs.api.errors.json_404"
handler500 = "cdrs.api.errors.json_500"
