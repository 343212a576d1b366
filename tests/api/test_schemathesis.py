"""schemathesis against our own /api/schema, with a token of each scope.

The service runs in-process (Django's WSGI handler, real database, real tokens); every
operation gets generated valid and invalid requests. Checks: no 5xx, every status code is
documented for its operation, content types and headers as documented, and every body
conforms to its schema. Bounded (a few dozen examples per operation, no deadline) so the file
runs in a few minutes on a loaded 2-core machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cdrs.generator import demo_cdrs
from cdrs.tokens import mint_token
from tests.factories import create_cdrs

pytestmark = pytest.mark.django_db

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
SCOPES = {
    "read": ("read",),
    "read+billing": ("read", "billing"),
    "read+billing+write": ("read", "billing", "write"),
}
EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}


@pytest.fixture
def wsgi_app() -> Iterator[WSGIHandler]:
    # As Django's test client does: requests must not close the connection that holds the
    # test's transaction.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield WSGIHandler()
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def stored_ids() -> list[int]:
    """Demo CDRs, so lists, details and exports answer with real rows."""
    return create_cdrs(*list(demo_cdrs(40))[-20:])


def _run(operation: Any, mode: GenerationMode, headers: dict[str, str]) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        database=None,  # no .hypothesis/ directory in the work tree
        suppress_health_check=list(HealthCheck),
        derandomize=True,  # the same requests every run: a failure reproduces
    )
    def check(case: Any) -> None:
        response = case.call(headers=headers)
        case.validate_response(response, checks=CHECKS, headers=headers)

    check()


@pytest.mark.parametrize("scope", SCOPES)
def test_every_operation_conforms_to_the_schema(wsgi_app, stored_ids, scope):
    token = mint_token(username=f"schemathesis-{scope}", scopes=SCOPES[scope]).plain
    headers = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema?format=json", wsgi_app)
    # An operation the schema cannot describe (Err) fails here, as it should.
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert {f"{op.method.upper()} {op.path}" for op in operations} == {
        "GET /api/cdrs",
        "POST /api/cdrs",
        "GET /api/cdrs/{id}",
        "GET /api/cdrs/export",
        "GET /api/cdrs/stats",
        "POST /api/webhooks/portsip",
    }
    for operation in operations:
        for mode in EXAMPLES:
            _run(operation, mode, headers)
        if operation.path == "/api/cdrs/{id}":
            # Generated ids almost never exist: also ask for stored ones, both spellings.
            from cdrs.ids import encode_id

            for spelling in (encode_id(stored_ids[0]), str(stored_ids[-1])):
                case = operation.Case(path_parameters={"id": spelling})
                response = case.call(headers=headers)
                assert response.status_code == 200
                case.validate_response(response, checks=CHECKS, headers=headers)
