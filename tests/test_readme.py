"""README.md, followed as written: `bin/run`, then its curl lines and manage.py commands.

A copy of the project in a scratch directory gets a `.venv` whose `python` and `gunicorn`
are this interpreter's (and an up-to-date install stamp, so `bin/run` installs nothing);
then the real `bin/run` starts there (SQLite, no DATABASE_URL, no SECRET_KEY: the local
mode), on a free loopback port. Every `curl` line of the README's API section must answer
2xx with data, and every token created the way the README says must work against that
server.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.helpers import scratch_postgresql

ROOT = Path(__file__).resolve().parent.parent
# What a fresh clone does not have (local state, caches, generated benchmark data).
SKIP_COPY = {
    ".venv",
    ".git",
    "staticfiles",
    ".run",
    ".local-secret-key",
    "__pycache__",
    ".hypothesis",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
}


def _not_in_a_fresh_clone(directory: str, names: list[str]) -> list[str]:
    return [
        n
        for n in names
        if n in SKIP_COPY
        or n.startswith("db.sqlite3")
        or (Path(directory).name == "bench" and n == "data")
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _code_blocks(markdown: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", markdown, flags=re.DOTALL)


def _commands(block: str) -> list[str]:
    """Shell commands of a block: continuation lines and multi-line quotes joined."""
    commands: list[str] = []
    pending = ""
    for line in block.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        commands.append(pending.strip())
        pending = ""
    return [c for c in commands if c and not c.startswith("#")]


def readme_curl_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The API in brief", 1)[1].split("\n## ", 1)[0]
    return [c for block in _code_blocks(section) for c in _commands(block) if c.startswith("curl")]


def readme_manage_lines(heading: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return [
        c
        for block in _code_blocks(section)
        for c in _commands(block)
        if c.startswith(".venv/bin/python manage.py")
    ]


def _fake_venv(project: Path) -> None:
    """`.venv/bin/python` and `gunicorn` of this interpreter; bin/run then installs nothing."""
    bin_dir = project / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, target in (
        ("python", sys.executable),
        ("gunicorn", str(Path(sys.executable).with_name("gunicorn"))),
    ):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{target}" "$@"\n')
        script.chmod(0o755)
    requirements = (project / "requirements.txt").read_bytes()
    stamp = hashlib.sha256(requirements + requirements).hexdigest()  # as bin/_venv.sh does
    (project / ".venv" / ".installed-requirements.txt").write_text(stamp + "\n")


def _local_env(**extra: str) -> dict[str, str]:
    """The environment of a newcomer's shell: no DATABASE_URL, no SECRET_KEY, no settings."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update(extra)
    return env


class DemoServer:
    def __init__(self, project: Path, port: int, token: str, env: dict[str, str]) -> None:
        self.project = project
        self.port = port
        self.token = token
        self.env = env  # what the README's commands run with on this path


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)],
)
def demo_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DemoServer]:
    """The README's two paths: bare `bin/run` (SQLite), or DATABASE_URL + SECRET_KEY exported
    and `manage.py seed_demo` after `bin/run` (PostgreSQL)."""
    with contextlib.ExitStack() as stack:
        if request.param == "postgresql":
            database = stack.enter_context(scratch_postgresql("cdrreadme"))
            env = _local_env(DATABASE_URL=database, SECRET_KEY=secrets.token_urlsafe(50))
        else:
            env = _local_env()
        yield from _serve(tmp_path_factory, env)


def _serve(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Iterator[DemoServer]:
    project = tmp_path_factory.mktemp("fresh") / "cdrservice"
    shutil.copytree(
        ROOT,
        project,
        ignore=_not_in_a_fresh_clone,
    )
    _fake_venv(project)
    port = _free_port()
    log = (project / "bin-run.log").open("w+")
    proc = subprocess.Popen(
        ["bin/run"],
        cwd=project,
        env={**env, "PORT": str(port), "BIND": f"127.0.0.1:{port}", "LOG_LEVEL": "WARNING"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (project / "bin-run.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "bin/run did not start serving"
                time.sleep(0.5)
        printed = (project / "bin-run.log").read_text()
        if "DATABASE_URL" in env:  # bin/run loads nothing there: the README's seed_demo line
            seeded = subprocess.run(
                [".venv/bin/python", "manage.py", "seed_demo"],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert seeded.returncode == 0, seeded.stderr
            printed = seeded.stdout
        token = re.search(r"^\s+(cdr_\S+)$", printed, flags=re.MULTILINE)
        assert token, printed[-3000:]
        yield DemoServer(project, port, token.group(1), env)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _curl(server: DemoServer, command: str, token: str) -> tuple[int, bytes]:
    """Run one README curl command (port and $T swapped in); (status, body or -o file)."""
    args = [
        a.replace("$T", token).replace("127.0.0.1:8887", f"127.0.0.1:{server.port}")
        for a in shlex.split(command, comments=True)
    ]
    done = subprocess.run(
        [*args, "-sS", "--max-time", "30", "-w", "\n%{http_code}"],
        cwd=server.project,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition(b"\n")
    if "-o" in args:
        body = (server.project / args[args.index("-o") + 1]).read_bytes()
    return int(status), body


def test_readme_has_the_examples_this_test_runs():
    lines = readme_curl_lines()
    assert len(lines) >= 8
    assert any("/api/cdrs/export" in c for c in lines)
    assert any("-X POST" in c for c in lines)


@pytest.mark.parametrize("command", readme_curl_lines())
def test_every_readme_curl_line_answers_with_data(demo_server, command):
    status, body = _curl(demo_server, command, demo_server.token)
    assert 200 <= status < 300, (status, body[:500])
    if "/export" in command and "format=csv" in command:
        rows = body.decode().splitlines()
        assert rows[0].startswith("id,caller,") and len(rows) > 1, body[:500]
        return
    data = orjson.loads(body)
    if "-X POST" in command:
        assert data["created"] + data["duplicates"] == 1 and data["ids"]
    else:
        assert data["items"], data


def test_tokens_created_as_the_readme_says_work_against_the_server(demo_server):
    lines = readme_manage_lines("Tokens")
    created = [c for c in lines if " create_token " in c]
    assert len(created) >= 3
    for command in created:
        args = shlex.split(command, comments=True)
        done = subprocess.run(
            args, cwd=demo_server.project, env=demo_server.env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        token = done.stdout.strip().splitlines()[-1]
        status, _ = _curl(
            demo_server,
            "curl -H 'Authorization: Bearer $T' " + ("'http://127.0.0.1:8887/api/cdrs?top=1'"),
            token,
        )
        # Recognised by the server: 200 with read, 403 (scope) for a write-only token.
        assert status == (200 if "--scope write" not in command else 403), command
    listed = subprocess.run(
        [".venv/bin/python", "manage.py", "list_tokens"],
        cwd=demo_server.project,
        env=demo_server.env,
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0 and "billing-export" in listed.stdout, listed.stderr


def test_first_admin_user_as_the_readme_says(demo_server):
    readme = (ROOT / "README.md").read_text()
    assert "`.venv/bin/python manage.py createsuperuser`" in readme
    done = subprocess.run(
        [".venv/bin/python", "manage.py", "createsuperuser", "--no-input"],
        cwd=demo_server.project,
        env=dict(
            demo_server.env,
            DJANGO_SUPERUSER_USERNAME="admin",
            DJANGO_SUPERUSER_EMAIL="admin@example.com",
            DJANGO_SUPERUSER_PASSWORD="a-long-demo-password-1",
        ),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    with urllib.request.urlopen(f"http://127.0.0.1:{demo_server.port}/admin/login/") as page:
        assert page.status == 200


def _readyz_count(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(
        r'^cdr_http_requests_total\{[^}]*endpoint="readyz"[^}]*method="GET"[^}]*\} (\S+)$',
        text,
        flags=re.MULTILINE,
    )
    return float(found.group(1)) if found else 0.0


def test_metrics_under_bin_run_add_up_every_worker(demo_server):
    # bin/run starts 2 workers: /metrics must show their sum whichever worker answers.
    directory = demo_server.project / ".run" / "prometheus"
    before = _readyz_count(demo_server.port)
    for _ in range(30):  # /readyz: nothing else calls it (the startup poll uses /healthz)
        with urllib.request.urlopen(f"http://127.0.0.1:{demo_server.port}/readyz", timeout=10):
            pass
    scrapes = {_readyz_count(demo_server.port) for _ in range(8)}
    assert scrapes == {before + 30}, (before, scrapes)
    assert list(directory.glob("*.db")), "no multiprocess files in bin/run's directory"
