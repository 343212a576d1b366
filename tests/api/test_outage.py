"""A database outage is a 503 with the contract's body, never a 500 or a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Runs in a child process whose DATABASE_URL points at a port where nothing listens: the
# real connection attempt fails, exactly as when PostgreSQL is down.
SCRIPT = """
import json, django
django.setup()
from django.test import Client
c = Client(raise_request_exception=False)
token = "Bearer cdr_abcdefghij_" + "x" * 40
out = {}
for path in ("/api/cdrs", "/api/cdrs/NzAw", "/api/cdrs/export", "/readyz", "/healthz"):
    r = c.get(path, HTTP_AUTHORIZATION=token)
    out[path] = [r.status_code, r.content.decode()]
r = c.post("/api/cdrs", "{}", content_type="application/json", HTTP_AUTHORIZATION=token)
out["POST"] = [r.status_code, r.content.decode()]
print(json.dumps(out))
"""


def test_api_answers_503_while_the_database_is_down():
    env = dict(os.environ)
    env.update(
        DATABASE_URL="postgres://postgres@127.0.0.1:1/cdrs",
        DJANGO_SETTINGS_MODULE="tests.settings",
        LOG_LEVEL="CRITICAL",
        ALLOWED_HOSTS="testserver",
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    results = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert results.pop("/healthz")[0] == 200  # the process itself is fine
    for path, (status, body) in results.items():
        assert status == 503, (path, status, body)
        error = json.loads(body)["errors"][0]
        assert error["code"] == "SERVICE_UNAVAILABLE", path
        assert "Traceback" not in body and "127.0.0.1:1" not in body
