"""manage.py import_cdrs: formats, strict/lenient, rejects, gz, stdin, duplicates, interruption."""

from __future__ import annotations

import gzip
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC
from pathlib import Path

import orjson
import pytest
from django.core.management import call_command
from django.db import connection

from cdrs import jsonenc
from cdrs.fields import ALL_FIELD_NAMES
from cdrs.generator import generate_cdrs
from cdrs.ids import encode_id
from cdrs.models import Cdr
from cdrs.selectors import cdr_total
from cdrs.wire import csv_escape
from tests.factories import cdr_payload

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


def run_import(*args: str) -> tuple[int, str, str]:
    """import_cdrs of files written by hand here, without the export's trailer."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        call_command("import_cdrs", *args, "--no-trailer", "--quiet", stdout=out, stderr=err)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def write_csv(path: Path, rows: list[dict], header: tuple[str, ...] | None = None) -> Path:
    import csv

    header = header or tuple(rows[0])
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if row.get(h) is None else row[h] for h in header])
    return path


def write_ndjson(path: Path, rows: list[dict]) -> Path:
    path.write_bytes(b"".join(jsonenc.dumps(r) + b"\n" for r in rows))
    return path


def test_csv_import_then_rerun_counts_duplicates(tmp_path):
    rows = list(generate_cdrs(50, seed=3))
    path = write_csv(tmp_path / "cdrs.csv", rows)
    code, out, _ = run_import(str(path))
    assert code == 0
    assert "read 50, created 50, duplicates 0, rejected 0" in out
    assert Cdr.objects.count() == 50 == cdr_total()
    code, out, _ = run_import(str(path))
    assert "read 50, created 0, duplicates 50, rejected 0" in out
    assert Cdr.objects.count() == 50 == cdr_total()


def test_ndjson_with_ids_nulls_and_offsets(tmp_path):
    rows = [
        cdr_payload(id=encode_id(1234), started_at="2024-01-01T12:00:00+02:00", trunk=None),
        cdr_payload(answered_at=None, cost=None),
    ]
    path = write_ndjson(tmp_path / "cdrs.ndjson", rows)
    code, out, _ = run_import(str(path))
    assert code == 0 and "created 2" in out
    first = Cdr.objects.get(pk=1234)
    assert first.started_at.isoformat() == "2024-01-01T10:00:00+00:00"
    assert first.trunk == ""


def test_empty_csv_cells_are_nulls_and_empty_strings(tmp_path):
    row = cdr_payload(answered_at=None, trunk="")
    path = write_csv(tmp_path / "x.csv", [row])
    assert run_import(str(path))[0] == 0
    stored = Cdr.objects.get()
    assert stored.answered_at is None and stored.trunk == ""


def test_strict_rejects_the_whole_file_with_line_numbers(tmp_path):
    rows = [cdr_payload(), cdr_payload(status_code="abc"), cdr_payload(), cdr_payload()]
    rows[3]["direction"] = "NOPE"
    path = write_csv(tmp_path / "bad.csv", rows)
    code, out, err = run_import(str(path))
    assert code == 1
    assert "line 3: status_code: must be an integer" in err
    assert "line 5: direction: must be one of" in err
    assert "nothing loaded" in err
    assert "read 4, created 0, duplicates 0, rejected 2" in out
    assert Cdr.objects.count() == 0 and cdr_total() == 0


def test_strict_loads_nothing_even_when_bad_row_is_after_several_batches(tmp_path):
    rows = [cdr_payload() for _ in range(25)] + [cdr_payload(duration=-5)]
    path = write_ndjson(tmp_path / "late-bad.ndjson", rows)
    code, _, err = run_import(str(path), "--batch-rows", "5")
    assert code == 1 and "line 26: duration" in err
    assert Cdr.objects.count() == 0


def test_lenient_loads_valid_rows_and_writes_rejects(tmp_path):
    rows = [cdr_payload(), cdr_payload(caller="x" * 300), cdr_payload()]
    path = write_ndjson(tmp_path / "mixed.ndjson", rows)
    with path.open("ab") as fh:
        fh.write(b"{broken json\n")
    rejects = tmp_path / "rejects.ndjson"
    code, out, _ = run_import(str(path), "--lenient", "--rejects", str(rejects))
    assert code == 1  # some rows were rejected
    assert "read 4, created 2, duplicates 0, rejected 2" in out
    assert Cdr.objects.count() == 2
    entries = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    assert [(e["line"], sorted(e["errors"])) for e in entries] == [(2, ["caller"]), (4, ["record"])]
    assert entries[0]["record"]["caller"] == "x" * 300


def test_lenient_with_no_rejects_exits_zero(tmp_path):
    path = write_ndjson(tmp_path / "ok.ndjson", [cdr_payload()])
    assert run_import(str(path), "--lenient")[0] == 0


def test_gzip_input(tmp_path):
    rows = list(generate_cdrs(20, seed=9))
    plain = write_csv(tmp_path / "c.csv", rows)
    gz = tmp_path / "c.csv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    code, out, _ = run_import(str(gz))
    assert code == 0 and "created 20" in out


def test_csv_edge_cases_quotes_newlines_and_formula_prefixes(tmp_path):
    tricky = {
        "caller_display_name": 'He said "hi", then\r\nleft',
        "user_data": '=HYPERLINK("http://evil")',
        "destination": "+4420123",
        "callee_display_name": "'quoted",
        "did_cid": "@home",
    }
    row = cdr_payload(**tricky)
    header = tuple(row)
    # The way our export writes it: formula-safe cells with a leading apostrophe.
    escaped = {k: csv_escape(v) if isinstance(v, str) else v for k, v in row.items()}
    path = write_csv(tmp_path / "tricky.csv", [escaped], header)
    code, _, err = run_import(str(path))
    assert code == 0, err
    stored = Cdr.objects.get()
    for key, value in tricky.items():
        assert getattr(stored, key) == value


def test_bad_header_and_unknown_format_are_clear_errors(tmp_path):
    from django.core.management.base import CommandError

    bad = tmp_path / "h.csv"
    bad.write_text("caller,colour\n1,red\n")
    with pytest.raises(CommandError, match="unknown column"):
        run_import(str(bad))
    weird = tmp_path / "data.txt"
    weird.write_text("{}\n")
    with pytest.raises(CommandError, match="--format"):
        run_import(str(weird))
    with pytest.raises(CommandError, match="No such file"):
        run_import(str(tmp_path / "missing.csv"))


def _subprocess_env() -> dict[str, str]:
    """Environment that points a child process at this test's database."""
    env = dict(os.environ)
    s = connection.settings_dict
    env["DATABASE_URL"] = f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    return env


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_stdin_import_through_the_real_command(tmp_path):
    data = b"".join(jsonenc.dumps(r) + b"\n" for r in generate_cdrs(30, seed=4))
    proc = subprocess.run(
        [sys.executable, "manage.py", "import_cdrs", "-", "--format", "ndjson", "--no-trailer"],
        input=data,
        capture_output=True,
        cwd=ROOT,
        env=_subprocess_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert b"stdin: read 30, created 30" in proc.stdout
    assert Cdr.objects.count() == 30


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("backfill", [False, True], ids=["row-by-row", "backfill"])
def test_killed_import_leaves_whole_batches_and_rerun_finishes(tmp_path, backfill):
    total = 60_000
    path = tmp_path / "big.ndjson"
    per_month: Counter[str] = Counter()
    with path.open("wb") as fh:
        for row in generate_cdrs(total, seed=11, days=365):
            per_month[row["started_at"][:7]] += 1
            fh.write(jsonenc.dumps(row) + b"\n")
    cmd = [sys.executable, "manage.py", "import_cdrs", str(path), "--lenient", "--no-trailer"]
    cmd += ["--batch-rows", "2000"] + ([] if backfill else ["--no-backfill"])
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while Cdr.objects.count() < 4000 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    loaded = Cdr.objects.count()
    assert 0 < loaded < total, "the import should have been killed mid-file"
    if backfill:  # the months were empty: they load whole, at the end of the file
        stored = Counter(
            t.astimezone(UTC).strftime("%Y-%m")
            for t in Cdr.objects.values_list("started_at", flat=True)
        )
        assert all(stored[month] == per_month[month] for month in stored)
    else:
        assert loaded % 2000 == 0  # only whole batches
    assert cdr_total() == loaded
    rerun = subprocess.run(cmd, cwd=ROOT, env=_subprocess_env(), capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"read {total}, created {total - loaded}, duplicates {loaded}".encode() in rerun.stdout
    assert Cdr.objects.count() == total == cdr_total()


def test_header_may_be_any_subset_in_any_order(tmp_path):
    row = cdr_payload()
    header = ("started_at", "ended_at", "direction", "end_reason", "call_id", "caller")
    path = write_csv(tmp_path / "few.csv", [row], header)
    assert run_import(str(path))[0] == 0
    assert Cdr.objects.get().callee == ""
    assert set(ALL_FIELD_NAMES) >= set(header)


def _reltuples() -> float:
    with connection.cursor() as cur:
        cur.execute("SELECT reltuples FROM pg_class WHERE relname = 'cdrs_cdr'")
        return float(cur.fetchone()[0])


@pytest.mark.postgresql
@pytest.mark.no_citus(
    "ANALYZE runs on the shards: the coordinator's pg_class.reltuples for cdrs_cdr stays 0"
)
def test_a_large_import_analyzes_the_table(tmp_path):
    # reltuples is what ANALYZE records (transactionally, so visible inside the test's
    # transaction): the planner's row estimate is then the table's real size.
    path = write_ndjson(tmp_path / "a.ndjson", list(generate_cdrs(57, seed=11)))
    before = _reltuples()
    code, _out, err = run_import(str(path), "--analyze-threshold", "50")
    assert code == 0
    assert "analyzed the CDR table (57 CDRs created)" in err
    assert _reltuples() == Cdr.objects.count() == 57 != before


@pytest.mark.postgresql
def test_small_imports_and_no_analyze_leave_statistics_to_autovacuum(tmp_path):
    before = _reltuples()
    small = write_ndjson(tmp_path / "small.ndjson", list(generate_cdrs(20, seed=12)))
    assert run_import(str(small), "--analyze-threshold", "50")[2] == ""
    large = write_ndjson(tmp_path / "large.ndjson", list(generate_cdrs(60, seed=13)))
    code, _out, err = run_import(str(large), "--analyze-threshold", "50", "--no-analyze")
    assert code == 0 and "analyzed" not in err
    assert _reltuples() == before
