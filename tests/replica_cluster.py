"""A throwaway PostgreSQL primary with a streaming hot standby, on this machine.

``ReplicaCluster.create()`` runs initdb for a primary (trust auth, ``wal_level=replica``) on a
free port in 5450-5459, ``pg_basebackup -R`` of it into a second data directory, and starts
that as a hot standby on the next port. Both live in a temporary directory that ``destroy()``
removes. As root (CI, this machine) the servers run as the ``postgres`` OS user, since
PostgreSQL refuses to run as root. Any step that fails raises ``ClusterError`` with the
command's output and the server log's tail, so the tests that need the cluster fail with a
reason instead of being skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

PORTS = range(5450, 5460)  # this helper's own range on the shared machine
DATABASE = "cdr_replica_test"
WAIT_SECONDS = 60  # for a server to start, a standby to catch up (never asserted on)


class ClusterError(RuntimeError):
    pass


def _bindir() -> Path:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(out.stdout.strip())
        if (bindir / "initdb").exists():
            return bindir
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    raise ClusterError("no PostgreSQL server binaries (initdb): install postgresql")


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_pair() -> int:
    for port in PORTS[:-1]:
        if port_free(port) and port_free(port + 1):
            return port
    raise ClusterError(f"no two free neighbouring ports in {PORTS.start}-{PORTS.stop - 1}")


@dataclass
class ReplicaCluster:
    base: Path
    bindir: Path
    primary_port: int
    replica_port: int
    as_postgres: bool

    @property
    def primary_dir(self) -> Path:
        return self.base / "primary"

    @property
    def replica_dir(self) -> Path:
        return self.base / "replica"

    def url(self, port: int, database: str = DATABASE) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/{database}"

    # --- building ---------------------------------------------------------------------

    @classmethod
    def create(cls) -> ReplicaCluster:
        as_postgres = os.geteuid() == 0
        base = Path(tempfile.mkdtemp(prefix="cdr-replica-"))
        if as_postgres:
            shutil.chown(base, "postgres", "postgres")
        port = _free_port_pair()
        cluster = cls(base, _bindir(), port, port + 1, as_postgres)
        try:
            cluster._build()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def _run(self, *args: str, log: Path | None = None) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=WAIT_SECONDS * 2, check=False
        )
        if done.returncode != 0:
            tail = ""
            if log is not None and log.exists():
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise ClusterError(
                f"{' '.join(command)} exited {done.returncode}:\n"
                f"{done.stdout}{done.stderr}\n{tail}".rstrip()
            )

    def _build(self) -> None:
        self._run("initdb", "-D", str(self.primary_dir), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--locale=C.UTF-8")  # fmt: skip
        settings = [
            f"port = {self.primary_port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.base}'",
            "wal_level = replica",
            "max_wal_senders = 4",
            "hot_standby = on",
            "max_connections = 40",
            "shared_buffers = 32MB",
            "fsync = off",  # a throwaway cluster: no crash safety needed
            "full_page_writes = off",
        ]
        with (self.primary_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/replica_cluster.py\n" + "\n".join(settings) + "\n")
        self.start("primary")
        self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary_port),
                  "-U", "postgres", "-D", str(self.replica_dir), "-R", "-X", "stream",
                  "-c", "fast")  # fmt: skip
        with (self.replica_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {self.replica_port}\n")
        self.start("replica")
        with psycopg.connect(self.url(self.primary_port, "postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        self.wait_caught_up()

    def destroy(self) -> None:
        for which in ("replica", "primary"):
            data = self.base / which
            if (data / "postmaster.pid").exists():
                with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
                    self._run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)

    # --- operating --------------------------------------------------------------------

    def _log(self, which: str) -> Path:
        return self.base / f"{which}.log"

    def start(self, which: str) -> None:
        data = self.base / which
        log = self._log(which)
        self._run("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", str(WAIT_SECONDS),
                  "start", log=log)  # fmt: skip

    def stop(self, which: str) -> None:
        """A fast shutdown: open connections are ended, as when a server goes down."""
        self._run("pg_ctl", "-D", str(self.base / which), "-m", "fast", "-w", "stop",
                  log=self._log(which))  # fmt: skip

    def replica_running(self) -> bool:
        return (self.replica_dir / "postmaster.pid").exists()

    def wait_caught_up(self) -> None:
        """Until the standby is in recovery and has replayed everything the primary wrote."""
        deadline = time.monotonic() + WAIT_SECONDS
        with psycopg.connect(self.url(self.primary_port, "postgres"), autocommit=True) as primary:
            target = primary.execute("SELECT pg_current_wal_lsn()").fetchone()
            assert target is not None
            while True:
                try:
                    with psycopg.connect(
                        self.url(self.replica_port, "postgres"), autocommit=True, connect_timeout=5
                    ) as replica:
                        row = replica.execute(
                            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn() >= %s::pg_lsn",
                            [target[0]],
                        ).fetchone()
                    if row == (True, True):
                        return
                    state = f"in recovery, replayed up to the target: {row}"
                except psycopg.OperationalError as exc:
                    state = f"not answering: {exc}"
                if time.monotonic() > deadline:
                    raise ClusterError(f"the standby did not catch up ({state})")
                time.sleep(0.05)
