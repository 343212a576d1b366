"""HTTP status -> the contract's error ``code``: the one table (no Django imports).

Read by the API's exception handler (``cdrs.api.errors``), by the gunicorn worker for the
answers it gives before Django sees a request (``cdrservice.gunicorn_worker``), and by the
OpenAPI schema's ``code`` enum. Any other status is ``UNKNOWN`` (5xx) or ``VALIDATE_FAILED``.
"""

from __future__ import annotations

from typing import Final

ERROR_CODE_BY_STATUS: Final[dict[int, str]] = {
    400: "VALIDATE_FAILED",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    408: "REQUEST_TIMEOUT",
    413: "PAYLOAD_TOO_LARGE",
    414: "URI_TOO_LONG",  # gunicorn, before Django
    415: "UNSUPPORTED_MEDIA_TYPE",
    417: "EXPECTATION_FAILED",  # gunicorn, before Django
    429: "THROTTLED",
    431: "HEADERS_TOO_LARGE",  # gunicorn, before Django
    501: "NOT_IMPLEMENTED",  # gunicorn, before Django
    503: "SERVICE_UNAVAILABLE",
}
# Every code an error body can carry (the OpenAPI enum): the ones above, plus UNKNOWN.
ERROR_CODES: Final[tuple[str, ...]] = (*ERROR_CODE_BY_STATUS.values(), "UNKNOWN")


def error_code(status: int) -> str:
    """The contract's code for an error status."""
    return ERROR_CODE_BY_STATUS.get(status, "UNKNOWN" if status >= 500 else "VALIDATE_FAILED")
