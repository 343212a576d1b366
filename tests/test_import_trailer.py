"""import_cdrs checks the export's trailer: a file cut short or edited is refused whole."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from cdrs.models import Cdr
from tests.factories import create_generated, delete_all_cdrs

pytestmark = pytest.mark.django_db


def export_body(client, fmt: str) -> bytes:
    response = client.get(f"/api/cdrs/export?format={fmt}")
    assert response.status_code == 200
    return b"".join(response.streaming_content)


def import_file(path: Path, *args: str) -> str:
    out = io.StringIO()
    call_command("import_cdrs", str(path), *args, "--quiet", stdout=out, stderr=io.StringIO())
    return out.getvalue()


def exported(client_ro, tmp_path: Path, fmt: str, rows: int = 30) -> tuple[Path, bytes]:
    """An export of ``rows`` CDRs written to a file, the database emptied again."""
    create_generated(rows, seed=21)
    body = export_body(client_ro, fmt)
    delete_all_cdrs()
    path = tmp_path / f"export.{fmt}"
    path.write_bytes(body)
    return path, body


def cut(body: bytes, lines: int) -> bytes:
    """``body`` without its last ``lines`` lines, as a dropped connection would leave it."""
    return b"".join(body.splitlines(keepends=True)[:-lines])


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
@pytest.mark.parametrize("mode", ["--strict", "--lenient"])
def test_an_export_cut_short_is_refused(client_ro, tmp_path, fmt, mode):
    path, body = exported(client_ro, tmp_path, fmt)
    for lost in (1, 2, 10):  # the trailer alone, or rows too
        path.write_bytes(cut(body, lost))
        with pytest.raises(CommandError, match="does not end with an export trailer"):
            import_file(path, mode, "--batch-rows", "1000")
        assert Cdr.objects.count() == 0
    path.write_bytes(body)
    assert "created 30" in import_file(path, mode)


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_a_trailer_that_miscounts_is_refused_even_with_no_trailer(client_ro, tmp_path, fmt):
    path, body = exported(client_ro, tmp_path, fmt)
    lines = body.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:5] + lines[6:]))  # one row taken out of the middle
    for extra in ((), ("--no-trailer",)):
        with pytest.raises(CommandError, match="trailer counts 30 rows, the file has 29"):
            import_file(path, *extra)
        assert Cdr.objects.count() == 0


def test_no_trailer_imports_a_file_that_never_had_one(client_ro, tmp_path):
    path, body = exported(client_ro, tmp_path, "ndjson")
    path.write_bytes(cut(body, 1))
    assert "read 30, created 30" in import_file(path, "--no-trailer")


def test_concatenated_ndjson_exports_import_and_rows_after_the_last_trailer_do_not(
    client_ro, tmp_path
):
    _, body_a = exported(client_ro, tmp_path, "ndjson", rows=10)
    create_generated(5, seed=22)
    body_b = export_body(client_ro, "ndjson")
    delete_all_cdrs()
    both = tmp_path / "both.ndjson"
    both.write_bytes(body_a + body_b)
    assert "read 15, created 15" in import_file(both)
    delete_all_cdrs()
    both.write_bytes(body_a + cut(body_b, 1))  # the second export cut short
    with pytest.raises(CommandError, match="does not end with an export trailer"):
        import_file(both)
    assert Cdr.objects.count() == 0


def test_generated_files_end_with_a_trailer_unless_asked_not_to(tmp_path):
    with_trailer, without = tmp_path / "a.csv", tmp_path / "b.csv"
    call_command("generate_cdrs", "--rows", "12", "--format", "csv", "-o", str(with_trailer))
    call_command(
        "generate_cdrs", "--rows", "12", "--format", "csv", "-o", str(without), "--no-trailer"
    )
    assert with_trailer.read_bytes().endswith(b"\r\n#export_complete rows=12\r\n")
    assert with_trailer.read_bytes().startswith(without.read_bytes())
    assert "created 12" in import_file(with_trailer)
    with pytest.raises(CommandError, match="--no-trailer imports a file that never had one"):
        import_file(without)


def test_lenient_keeps_the_batches_committed_before_the_missing_trailer(client_ro, tmp_path):
    path, body = exported(client_ro, tmp_path, "ndjson")
    path.write_bytes(cut(body, 5))  # 26 of 30 rows, no trailer
    with pytest.raises(CommandError, match="lenient: batches committed before it stay"):
        import_file(path, "--lenient", "--batch-rows", "10")
    assert Cdr.objects.count() == 20  # two whole batches; the third never filled up
    path.write_bytes(body)
    assert "created 10, duplicates 20" in import_file(path, "--lenient")
