"""A generated snowflake that collides with a stored id is redrawn, never lost as a duplicate."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.db import connection

from cdrs import jsonenc
from cdrs.ids import encode_id, snowflake
from cdrs.models import Cdr
from cdrs.selectors import cdr_total
from cdrs.services import ID_SEQUENCE, discard_low_bits_pool
from cdrs.validation import validate_cdr
from tests.factories import cdr_payload, create_cdrs

pytestmark = [pytest.mark.postgresql, pytest.mark.django_db]


def _occupy_next_generated_id(started_at: str, ahead: int = 1) -> list[int]:
    """Store CDRs (with explicit ids) where the next ``ahead`` generated ids will land."""
    discard_low_bits_pool()  # the next id comes from the sequence, not from a drawn block
    with connection.cursor() as cur:
        cur.execute(f"SELECT nextval('{ID_SEQUENCE}')")
        current = cur.fetchone()[0]
    when = validate_cdr(cdr_payload(started_at=started_at))["started_at"]
    taken = [snowflake(when, current + n) for n in range(1, ahead + 1)]
    create_cdrs(*[cdr_payload(id=encode_id(i), caller="999") for i in taken])
    return taken


def test_ingest_redraws_a_colliding_generated_id():
    taken = _occupy_next_generated_id("2024-03-01T00:00:00Z")
    new_id = create_cdrs(cdr_payload(started_at="2024-03-01T00:00:00Z"))[0]
    assert new_id not in taken
    assert Cdr.objects.count() == 2 == cdr_total()


def test_import_redraws_colliding_generated_ids(tmp_path):
    taken = _occupy_next_generated_id("2024-03-01T00:00:00Z", ahead=3)
    path = tmp_path / "c.ndjson"
    rows = [cdr_payload(started_at="2024-03-01T00:00:00Z") for _ in range(3)]
    path.write_bytes(b"".join(jsonenc.dumps(r) + b"\n" for r in rows))
    out = io.StringIO()
    call_command(
        "import_cdrs", str(path), "--no-trailer", "--quiet", stdout=out, stderr=io.StringIO()
    )
    assert "created 3, duplicates 0" in out.getvalue()
    assert Cdr.objects.count() == 6 == cdr_total()
    assert Cdr.objects.exclude(pk__in=taken).count() == 3
