"""JSON request bodies with numbers parsed exactly (cost never goes through a float) and
bounded (see ``cdrs.values.loads_json``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser

from cdrs.api.errors import PayloadTooLarge
from cdrs.values import loads_json


def _read_bounded(stream: IO[bytes] | None, limit: int) -> bytes:
    """The whole body, or PayloadTooLarge (413) as soon as it is longer than ``limit``."""
    raw = stream.read(limit + 1) if stream is not None else b""
    if len(raw) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    return raw


class DecimalJSONParser(BaseParser):
    media_type = "application/json"

    def parse(
        self,
        stream: IO[bytes],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        raw = _read_bounded(stream, settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        try:
            return loads_json(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ParseError("request body is not UTF-8") from exc
        except (ValueError, RecursionError) as exc:
            raise ParseError(f"JSON parse error: {str(exc)[:200]}") from exc


class RawBodyParser(BaseParser):
    """Any media type, the body as bytes (at most CDR_WEBHOOK_MAX_BODY_BYTES), unparsed.

    For the PortSIP webhook: PortSIP does not document its Content-Type, and a 415 would
    only make the PBX retry and then drop the event. The view parses the JSON itself, so it
    can keep the exact text of an event it cannot store.
    """

    media_type = "*/*"

    def parse(  # type: ignore[override]  # raw bytes, by design
        self,
        stream: IO[bytes],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        return _read_bounded(stream, settings.CDR_WEBHOOK_MAX_BODY_BYTES)
