"""import_cdrs with hostile rows and broken files: every row-level problem is a reject with its
line number in every mode, a broken .gz is one error line, and a re-run never crashes."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from cdrs import jsonenc
from cdrs.generator import generate_cdrs
from cdrs.models import Cdr
from cdrs.selectors import cdr_total
from tests.factories import cdr_payload
from tests.test_import import ROOT, _subprocess_env, run_import, write_csv

pytestmark = pytest.mark.django_db


def _with_member(row: dict, name: str, raw_value: bytes) -> bytes:
    return orjson.dumps(row)[:-1] + f',"{name}":'.encode() + raw_value + b"}"


# (raw NDJSON line, the field its error names); each is a row some PBX export could hold
# after corruption, and each crashed or hung the import before.
BAD_NDJSON_ROWS = [
    (_with_member(cdr_payload(), "caller", b'"\\ud800"'), "caller"),
    (_with_member(cdr_payload(), "caller_display_name", b'"Ana \\udc00"'), "caller_display_name"),
    (orjson.dumps(cdr_payload(started_at="2070-01-01T00:00:00Z")), "started_at"),
    (orjson.dumps(cdr_payload(started_at="9999-12-31T23:59:59-01:00")), "started_at"),
    (orjson.dumps(cdr_payload(ended_at="0001-01-01T00:00:00+01:00")), "ended_at"),
    (_with_member(cdr_payload(), "duration", b"1e100000000"), "record"),
    (_with_member(cdr_payload(), "cost", b"-1e100000000"), "record"),
    (_with_member(cdr_payload(), "status_code", b"9" * 5000), "record"),
    (_with_member(cdr_payload(), "\\ud800", b"1"), "\\ud800"),
]


def _mixed_ndjson(path: Path, valid: int = 30) -> tuple[Path, dict[int, str]]:
    """``valid`` good rows with the bad ones spread among them; returns {line: field}."""
    good = [jsonenc.dumps(r) for r in generate_cdrs(valid, seed=21)]
    lines: list[bytes] = []
    expected: dict[int, str] = {}
    step = max(1, valid // len(BAD_NDJSON_ROWS))
    for i, row in enumerate(good):
        lines.append(row)
        if i % step == step - 1 and len(expected) < len(BAD_NDJSON_ROWS):
            bad, field = BAD_NDJSON_ROWS[len(expected)]
            lines.append(bad)
            expected[len(lines)] = field
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, expected


@pytest.mark.usefixtures("hard_timeout")
def test_lenient_rejects_every_bad_row_with_its_line_and_a_rerun_finishes(tmp_path):
    path, expected = _mixed_ndjson(tmp_path / "mixed.ndjson")
    assert len(expected) == len(BAD_NDJSON_ROWS)
    rejects = tmp_path / "rejects.ndjson"
    for run in ("first", "re-run"):
        code, out, err = run_import(
            str(path), "--lenient", "--rejects", str(rejects), "--batch-rows", "7"
        )
        assert code == 1, err
        created, duplicates = (30, 0) if run == "first" else (0, 30)
        assert f"read 39, created {created}, duplicates {duplicates}, rejected 9" in out
        # stdlib json: the rejects keep lone surrogates as the escapes they came in as.
        entries = [json.loads(line) for line in rejects.read_bytes().splitlines()]
        assert {e["line"]: next(iter(e["errors"])) for e in entries} == expected
        for line, field in expected.items():
            assert f"line {line}: {field}" in err
        assert "Traceback" not in err
    assert entries[0]["record"]["caller"] == "\ud800"
    assert Cdr.objects.count() == 30 == cdr_total()


@pytest.mark.usefixtures("hard_timeout")
def test_strict_names_every_bad_row_and_stores_nothing(tmp_path):
    path, expected = _mixed_ndjson(tmp_path / "mixed.ndjson")
    code, out, err = run_import(str(path), "--batch-rows", "7")
    assert code == 1
    for line, field in expected.items():
        assert f"mixed.ndjson: line {line}: {field}: " in err
    assert "9 invalid row(s): nothing loaded (--strict)" in err
    assert "read 39, created 0, duplicates 0, rejected 9" in out
    assert Cdr.objects.count() == 0 == cdr_total()


@pytest.mark.usefixtures("hard_timeout")
@pytest.mark.parametrize("mode", ["--strict", "--lenient"])
def test_csv_rows_with_bad_bytes_or_numbers_are_rejects_with_their_lines(tmp_path, mode):
    rows = [
        cdr_payload(),
        cdr_payload(duration="1e100000000"),
        cdr_payload(cost="1e100000000"),
        cdr_payload(status_code="٥"),
        cdr_payload(duration="--5"),
        cdr_payload(started_at="9999-12-31T23:59:59-01:00"),
        cdr_payload(started_at="2069-09-06T15:47:36Z"),
        cdr_payload(caller="MARKER"),
        cdr_payload(),
    ]
    path = write_csv(tmp_path / "bad.csv", rows, (*cdr_payload(), "cost"))
    # Invalid UTF-8 (an encoded lone surrogate) in one row, as a corrupt export would have.
    path.write_bytes(path.read_bytes().replace(b"MARKER", b"10\xed\xa0\x801"))
    rejects = tmp_path / "rejects.ndjson"
    code, out, err = run_import(str(path), mode, "--rejects", str(rejects))
    assert code == 1
    expected = {
        3: "duration: must be an integer",
        4: "cost: must be a decimal number",
        5: "status_code: must be an integer",
        6: "duration: must be an integer",
        7: "started_at: out of range in UTC",
        8: "started_at: must be between 1970-01-01T00:00:00Z and 2069-09-06T15:47:35Z",
        9: "record: not valid UTF-8",
    }
    for line, why in expected.items():
        assert f"bad.csv: line {line}: {why}" in err
    if mode == "--strict":
        assert "read 9, created 0, duplicates 0, rejected 7" in out
        assert Cdr.objects.count() == 0
    else:
        assert "read 9, created 2, duplicates 0, rejected 7" in out
        assert Cdr.objects.count() == 2
        lines = [orjson.loads(x)["line"] for x in rejects.read_bytes().splitlines()]
        assert lines == sorted(expected)


def _broken_gzips(tmp_path: Path) -> dict[str, Path]:
    data = b"".join(jsonenc.dumps(r) + b"\n" for r in generate_cdrs(400, seed=5))
    packed = gzip.compress(data)
    truncated = tmp_path / "truncated.ndjson.gz"
    truncated.write_bytes(packed[: len(packed) * 2 // 3])
    corrupt = tmp_path / "corrupt.ndjson.gz"
    middle = len(packed) // 2
    corrupt.write_bytes(packed[:middle] + bytes(64) + packed[middle + 64 :])
    bad_crc = tmp_path / "bad-crc.ndjson.gz"
    bad_crc.write_bytes(packed[:-8] + bytes(8))
    return {"truncated": truncated, "corrupt": corrupt, "bad-crc": bad_crc}


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "bad-crc"])
def test_a_broken_gzip_is_one_error_line_strict_stores_nothing(tmp_path, kind):
    path = _broken_gzips(tmp_path)[kind]
    with pytest.raises(CommandError) as caught:
        call_command("import_cdrs", str(path), "--quiet", stdout=io.StringIO())
    message = str(caught.value)
    assert message.startswith(f"{path}: compressed data is truncated or corrupt (")
    assert "\n" not in message
    assert Cdr.objects.count() == 0


def test_a_truncated_gzip_keeps_whole_lenient_batches_and_a_rerun_fails_the_same_way(tmp_path):
    path = _broken_gzips(tmp_path)["truncated"]
    for _ in range(2):
        with pytest.raises(CommandError, match="compressed data is truncated or corrupt"):
            call_command("import_cdrs", str(path), "--lenient", "--batch-rows", "50", "--quiet")
        loaded = Cdr.objects.count()
        assert 0 < loaded < 400 and loaded % 50 == 0


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_the_real_command_prints_one_line_for_a_broken_gzip_and_no_traceback(tmp_path):
    for path in _broken_gzips(tmp_path).values():
        proc = subprocess.run(
            [sys.executable, "manage.py", "import_cdrs", str(path), "--quiet"],
            capture_output=True,
            cwd=ROOT,
            env=_subprocess_env(),
            timeout=120,
        )
        assert proc.returncode != 0
        assert b"Traceback" not in proc.stderr
        lines = proc.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and "compressed data is truncated or corrupt" in lines[0], lines


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_the_real_lenient_command_survives_bad_rows_deep_in_a_file(tmp_path):
    path = tmp_path / "deep.ndjson"
    good = [jsonenc.dumps(r) for r in generate_cdrs(3000, seed=8)]
    bad = [row for row, _field in BAD_NDJSON_ROWS[:5]]  # surrogates and out-of-range times
    path.write_bytes(b"\n".join(good[:2500] + bad + good[2500:]) + b"\n")
    rejects = tmp_path / "rejects.ndjson"
    cmd = [sys.executable, "manage.py", "import_cdrs", str(path), "--lenient", "--no-trailer"]
    cmd += ["--batch-rows", "1000", "--rejects", str(rejects), "--quiet"]
    for created, duplicates in ((3000, 0), (0, 3000)):
        proc = subprocess.run(
            cmd, capture_output=True, cwd=ROOT, env=_subprocess_env(), timeout=300
        )
        assert proc.returncode == 1 and b"Traceback" not in proc.stderr, proc.stderr[-2000:]
        summary = f"read 3005, created {created}, duplicates {duplicates}, rejected 5"
        assert summary.encode() in proc.stdout
        lines = [json.loads(x)["line"] for x in rejects.read_bytes().splitlines()]
        assert lines == [2501, 2502, 2503, 2504, 2505]
    assert Cdr.objects.count() == 3000 == cdr_total()
