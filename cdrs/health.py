"""/healthz (process up) and /readyz (database reachable and migrated); no auth, cheap."""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse

from cdrs.api.errors import error_body

_migrated = False  # once true for this process it stays true: migrations only move forward


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    global _migrated
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
        if not _migrated:
            executor = MigrationExecutor(connection)
            plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
            if plan:
                body = error_body(503, f"{len(plan)} database migration(s) not applied")
                return JsonResponse(body, status=503)
            _migrated = True
    except DatabaseError:
        return JsonResponse(error_body(503, "database unavailable"), status=503)
    return JsonResponse({"status": "ready"})
