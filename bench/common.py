"""Helpers shared by bench/run.py and bench/ingest.py (no Django import: they drive the
project only through manage.py, gunicorn and HTTP, as an operator would)."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DATA = BENCH / "data"
RESULTS = BENCH / "results"
LOGS = DATA / "logs"
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python")
GUNICORN = str(VENV_BIN / "gunicorn")
UVICORN = str(VENV_BIN / "uvicorn")
MANAGE = str(ROOT / "manage.py")
# A fixed key: the service and the floor must share it (cursors, token digests).
BENCH_SECRET_KEY = "bench-only-secret-key-not-for-production-0123456789abcdefghijklmnop"


# wrk Lua: every thread numbered (``tid``) and kept, so done() can sum per-thread counters.
WRK_THREADS_LUA = """local threads = {}
local nthreads = 0
function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
  table.insert(threads, thread)
end"""


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", flush=True)


def service_env(database_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("DEBUG", "DJANGO_SETTINGS_MODULE"):
        env.pop(name, None)
    env.update(DATABASE_URL=database_url, SECRET_KEY=BENCH_SECRET_KEY)
    # S4 takes its deep cursor from a skip=<deep> page and S4-skip measures that page by
    # OFFSET, for seconds on 10M rows: past the service's skip cap and statement timeout.
    env.setdefault("CDR_MAX_SKIP", str(2**31 - 1))
    env.setdefault("CDR_STATEMENT_TIMEOUT_MS", "0")
    # One token drives all the load: a rate it never reaches keeps the per-token counting
    # (and its cost) in the measurement without turning requests into 429s.
    env.setdefault("CDR_TOKEN_RATE", "100000000/min")
    env.update(extra)
    return env


def with_dbname(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def db_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def pg_connect(url: str, **kw) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, **kw)


def ensure_database(url: str, *, recreate: bool = False) -> None:
    name = db_name(url)
    with pg_connect(with_dbname(url, "postgres")) as c:
        exists = c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and recreate:
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            c.execute(f'DROP DATABASE "{name}"')
            exists = None
        if not exists:
            c.execute(f'CREATE DATABASE "{name}"')


def manage(args: list[str], env: dict[str, str], *, capture: bool = True) -> str:
    cmd = [PYTHON, MANAGE, *args]
    log("$ " + " ".join(shlex.quote(a) for a in cmd[1:]))
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
    )
    if proc.returncode not in (0,):
        if capture:
            sys.stderr.write(proc.stdout or "")
            sys.stderr.write(proc.stderr or "")
        raise SystemExit(f"manage.py {args[0]} failed with exit status {proc.returncode}")
    return proc.stdout or ""


def mint_token(env: dict[str, str]) -> str:
    out = manage(
        ["create_token", "bench", "--scope", "read", "--scope", "billing", "--scope", "write"],
        env,
    )
    return out.strip().splitlines()[-1].strip()


def free_port(preferred: int) -> int:
    for port in [preferred, *range(preferred + 1, preferred + 50)]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit(f"no free port near {preferred}")


class Server:
    """A gunicorn started with the project's gunicorn.conf.py, as production starts it, or
    (``command``) another server that forks its workers itself and listens on ``port``."""

    def __init__(
        self,
        name: str,
        app: str,
        port: int,
        env: dict[str, str],
        workers: int,
        extra_args: list[str] | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{name}.log"
        env = dict(env)
        env.update(BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY=str(workers))
        self.cmd = command or [GUNICORN, "-c", "gunicorn.conf.py", *(extra_args or []), app]
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        log(
            f"starting {name}: BIND=127.0.0.1:{port} WEB_CONCURRENCY={workers} "
            + " ".join(shlex.quote(a) for a in self.cmd)
        )
        self.proc = subprocess.Popen(
            self.cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.pid = self.proc.pid
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200 and len(self.workers()) > 0:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.name} did not become ready; see {self.log_path}")

    def workers(self) -> list[int]:
        return children_of(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def children_of(pid: int) -> list[int]:
    """The worker processes of a server's master: its children, less the resource tracker
    that multiprocessing's spawn start (uvicorn --workers) runs beside the workers."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the comm field may contain spaces: ppid is the 2nd field after the closing paren
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and not _is_resource_tracker(int(entry)):
            out.append(int(entry))
    return out


def _is_resource_tracker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"multiprocessing.resource_tracker" in f.read()
    except OSError:
        return False


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (state first); [] when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def cpu_ticks(pid: int, *, reaped_children: bool = False) -> int:
    """User + system CPU ticks of ``pid``; with ``reaped_children`` also those of its
    children that have exited and been waited for (a gunicorn master's recycled workers, the
    postmaster's ended backends), so a sum over a phase stays whole across restarts."""
    fields = _stat(pid)
    if len(fields) < 15:
        return 0
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks


def parent_pid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if len(fields) > 1 else None


def postmaster_pid(conn: psycopg.Connection) -> int | None:
    """The PostgreSQL server's main process (the parent of every backend)."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    return parent_pid(row[0]) if row else None


class RssSampler(threading.Thread):
    """Samples VmRSS of a gunicorn master's workers every ``interval`` seconds."""

    def __init__(self, master_pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.master_pid = master_pid
        self.interval = interval
        self.max_kb = 0
        self.max_by_pid: dict[int, int] = {}
        self.samples = 0
        self._halt = threading.Event()
        self.paused = False

    def run(self) -> None:
        while not self._halt.is_set():
            if not self.paused:
                self.sample()
            self._halt.wait(self.interval)

    def sample(self) -> None:
        for pid in children_of(self.master_pid):
            kb = rss_kb(pid)
            if kb is None:
                continue
            self.samples += 1
            self.max_by_pid[pid] = max(self.max_by_pid.get(pid, 0), kb)
            self.max_kb = max(self.max_kb, kb)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def wait_idle(servers: list[Server], database_url: str, timeout: float = 180) -> float:
    """Wait until no query runs in the benchmark database and the workers stop burning CPU
    (a slow request wrk gave up on keeps a worker busy after wrk has exited)."""
    started = time.monotonic()
    name = db_name(database_url)
    with pg_connect(database_url) as c:
        while time.monotonic() - started < timeout:
            active = c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state = 'active' "
                "AND pid <> pg_backend_pid()",
                (name,),
            ).fetchone()[0]
            pids = [p for s in servers for p in s.workers()]
            before = sum(cpu_ticks(p) for p in pids)
            time.sleep(0.3)
            after = sum(cpu_ticks(p) for p in pids)
            if active == 0 and after - before <= 2:
                break
    return time.monotonic() - started


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": str(os.cpu_count()),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "cpu": cpu,
        "kernel": platform.release(),
    }


def versions(database_url: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    with pg_connect(database_url) as c:
        pg = c.execute("SHOW server_version").fetchone()[0]
    wrk = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
        m = re.search(r"wrk (\S+)", out)
        wrk = m.group(1) if m else "?"
    found = {
        "python": platform.python_version(),
        "django": version("django"),
        "djangorestframework": version("djangorestframework"),
        "psycopg": version("psycopg"),
        "gunicorn": version("gunicorn"),
        "orjson": version("orjson"),
    }
    # the FastAPI peer's stack (bench/requirements.txt), when installed
    for package in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "asyncpg"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    found.update(postgresql=pg, wrk=wrk)
    return found


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def command_line() -> str:
    return ".venv/bin/python " + " ".join(shlex.quote(a) for a in sys.argv)


def generated(rows: int, env: dict[str, str], *, seed: int = 1, fmt: str = "csv") -> Path:
    """The cached file of ``rows`` CDRs from the project's generator (made once)."""
    DATA.mkdir(parents=True, exist_ok=True)
    suffix = "" if seed == 1 else f"-seed{seed}"
    path = DATA / f"cdrs-{rows}{suffix}.{fmt}"
    if path.exists():
        log(f"reusing {path.relative_to(ROOT)} ({path.stat().st_size / 1e6:,.0f} MB)")
        return path
    part = DATA / f"cdrs-{rows}{suffix}.part.{fmt}"
    started = time.monotonic()
    manage(
        [
            "generate_cdrs",
            "--rows",
            str(rows),
            "--seed",
            str(seed),
            "--format",
            fmt,
            "-o",
            str(part),
            "--no-trailer",  # rows only: a bare COPY and the POST batches read every line
        ],
        env,
    )
    part.rename(path)
    log(f"generated {rows:,} rows in {time.monotonic() - started:,.0f} s")
    return path


def csv_for(rows: int, env: dict[str, str]) -> Path:
    return generated(rows, env, seed=1, fmt="csv")


# --- other people's load on the machine -------------------------------------------------------
def _busy_jiffies() -> int:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]


class CpuMeter:
    """CPU used on this machine by processes that are not part of the benchmark.

    ours: the gunicorn masters and workers, PostgreSQL's processes serving the benchmark
    database plus its background processes, this Python process and the children it waited
    for (wrk). Everything else busy on the machine is "foreign": another engineer's tests or
    load. Reported as a percentage of all CPUs."""

    def __init__(self, servers: list[Server], database_url: str) -> None:
        self.servers = servers
        self.url = database_url
        self.ncpu = os.cpu_count() or 1
        self._conn = pg_connect(database_url)

    def _our_pids(self) -> list[int]:
        pids = [os.getpid()]
        for s in self.servers:
            pids.append(s.pid)
            pids.extend(s.workers())
        rows = self._conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s OR backend_type <> "
            "'client backend'",
            (db_name(self.url),),
        ).fetchall()
        pids.extend(r[0] for r in rows)
        return pids

    def snapshot(self) -> tuple[float, int, dict[int, int], float]:
        pids = self._our_pids()
        # The gunicorn masters and the postmaster with their exited children: a worker
        # recycled or a backend ended during a phase stays counted as ours.
        parents = {s.pid for s in self.servers}
        if (postmaster := postmaster_pid(self._conn)) is not None:
            parents.add(postmaster)
            pids.append(postmaster)
        ticks = {p: cpu_ticks(p, reaped_children=p in parents) for p in pids}
        ch = os.times()
        return time.monotonic(), _busy_jiffies(), ticks, ch.children_user + ch.children_system

    def foreign_pct(self, a: tuple, b: tuple) -> float:
        t0, busy0, ticks0, ch0 = a
        t1, busy1, ticks1, ch1 = b
        hz = os.sysconf("SC_CLK_TCK")
        # Totals, not per process: a worker booted by a recycle (or its new backend) spent
        # all its ticks in the window, and one that exited moved its ticks into its
        # parent's, which both snapshots count. (Backends of other databases that end in the
        # window count as ours too: the postmaster cannot tell them apart.)
        ours = max(0, sum(ticks1.values()) - sum(ticks0.values()))
        ours += int((ch1 - ch0) * hz)
        foreign = max(0, (busy1 - busy0) - ours)
        elapsed = max(t1 - t0, 1e-6)
        return 100.0 * foreign / hz / elapsed / self.ncpu

    def wait_quiet(self, threshold: float = 10.0, max_wait: float = 60.0) -> tuple[float, float]:
        """Wait (at most max_wait s) for 2 consecutive 1-second windows with foreign CPU below
        threshold %; returns (seconds waited, foreign % of the last window)."""
        started = time.monotonic()
        calm = 0
        pct = 0.0
        while time.monotonic() - started < max_wait:
            a = self.snapshot()
            time.sleep(1.0)
            pct = self.foreign_pct(a, self.snapshot())
            calm = calm + 1 if pct < threshold else 0
            if calm >= 2:
                break
        return time.monotonic() - started, pct

    def close(self) -> None:
        self._conn.close()


def git_revision() -> str:
    """The checked-out commit, and whether the service's code has uncommitted changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "cdrs", "cdrservice", "gunicorn.conf.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "?"
    return rev + (" + uncommitted changes in cdrs/" if dirty else "")


def gunicorn_settings(env: dict[str, str], workers: int) -> str:
    """What gunicorn.conf.py gives under ``env``: worker class, workers, threads."""
    code = (
        "exec(open('gunicorn.conf.py').read()); "
        "print(worker_class, workers, threads, max_requests, keepalive)"
    )
    env = dict(env, WEB_CONCURRENCY=str(workers))
    out = subprocess.run(
        [PYTHON, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    ).stdout.split()
    if len(out) != 5:
        return "?"
    cls, n, threads, max_requests, keepalive = out
    return (
        f"{n} {cls} workers × {threads} threads, max_requests {max_requests}, "
        f"keepalive {keepalive} s"
    )
