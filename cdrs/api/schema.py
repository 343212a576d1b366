"""drf-spectacular hooks."""

from __future__ import annotations

from typing import Any


def strip_trailing_slashes(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Document PortSIP's paths (/api/cdrs); the router also accepts a trailing slash."""
    result["paths"] = {path.rstrip("/") or "/": item for path, item in result["paths"].items()}
    return result
