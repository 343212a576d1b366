"""Read replicas against a real streaming replica (tests/replica_cluster.py), through HTTP
with real tokens: reads on the replica, writes on the primary, a replica going down, cursors
across both.

The cluster is built once per run. While a test runs, Django's primary ("default") is the
throwaway primary and the replica aliases come from ``cdrservice.databases.replicas``, as
DATABASE_REPLICA_URLS would make them. These tests commit for real (replication only carries
committed rows), so each works in a domain of its own and reads through a token limited to
it. If the cluster cannot be built they fail, saying why; on SQLite they are deselected like
every other ``postgresql`` test.
"""

from __future__ import annotations

import contextlib
import copy
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, connections, router, transaction
from django.test import Client

from cdrs import routers
from cdrs.tokens import mint_token
from cdrservice import databases
from tests.factories import cdr_payload
from tests.replica_cluster import DATABASE, ClusterError, ReplicaCluster, port_free

pytestmark = [pytest.mark.postgresql, pytest.mark.replica]

# The tables the read endpoints read (quoted by the ORM, bare in hand-written SQL).
CDR_TABLES = re.compile(r"\bcdrs_(cdr|counter|hourly_stats|hourly_totals)\b")
TOKEN_TABLE = re.compile(r"\bcdrs_api_token\b")
T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def replica_cluster() -> Iterator[ReplicaCluster]:
    try:
        cluster = ReplicaCluster.create()
    except (ClusterError, OSError, subprocess.SubprocessError, psycopg.Error) as exc:
        pytest.fail(
            f"could not build the throwaway primary + streaming replica these tests need "
            f"(initdb, pg_basebackup -R, pg_ctl on ports 5450-5459): {exc}",
            pytrace=False,
        )
    cluster_migrated["done"] = False
    yield cluster
    cluster.destroy()


cluster_migrated = {"done": False}


@dataclass
class Replicated:
    """The service pointed at the cluster: its primary and the replica aliases."""

    cluster: ReplicaCluster
    replicas: list[str]
    domain: str

    def client(self, scopes: tuple[str, ...] = ("read",)) -> Client:
        minted = mint_token(
            username=f"repl-{uuid.uuid4().hex[:12]}", scopes=scopes, domains=(self.domain,)
        )
        return Client(HTTP_AUTHORIZATION=f"Bearer {minted.plain}")

    def ingest(self, count: int) -> list[str]:
        """``count`` CDRs of this test's domain through POST, a minute apart; their ids."""
        items = [
            cdr_payload(started=T0 + timedelta(minutes=i), caller_domain=self.domain)
            for i in range(count)
        ]
        response = self.client(("write",)).post(
            "/api/cdrs", orjson.dumps({"items": items}), content_type="application/json"
        )
        assert response.status_code == 201, response.content
        ids: list[str] = orjson.loads(response.content)["ids"]
        return ids


def _free_port_outside(cluster: ReplicaCluster) -> int:
    for port in range(5459, 5449, -1):
        if port not in (cluster.primary_port, cluster.replica_port) and port_free(port):
            return port
    raise ClusterError("no free port in 5450-5459 for a replica that is down")


@pytest.fixture
def replicated(
    replica_cluster: ReplicaCluster, django_db_blocker: Any, settings: Any
) -> Iterator[Callable[..., Replicated]]:
    """``replicated(replicas=1, dead=0)``: the service with ``replicas`` aliases for the
    cluster's standby (all the same server) and ``dead`` more for a port nobody listens on."""
    cluster = replica_cluster
    default = connections[DEFAULT_DB_ALIAS]
    saved = copy.deepcopy(default.settings_dict)
    added: list[str] = []

    def make(replicas: int = 1, dead: int = 0) -> Replicated:
        if not cluster.replica_running():
            cluster.start("replica")
        cluster.wait_caught_up()
        default.close()
        default.settings_dict.update(
            NAME=DATABASE,
            HOST="127.0.0.1",
            PORT=cluster.primary_port,
            USER="postgres",
            PASSWORD="",
        )
        dead_port = _free_port_outside(cluster)
        urls = [cluster.url(cluster.replica_port)] * replicas
        urls += [cluster.url(dead_port)] * dead
        configs = databases.replicas(
            urls,
            primary=default.settings_dict,
            conn_max_age=default.settings_dict["CONN_MAX_AGE"],
            prepare_threshold=settings.DB_PREPARE_THRESHOLD,
        )
        # Django fills in each alias's missing keys as it does for settings.DATABASES.
        filled = connections.configure_settings({DEFAULT_DB_ALIAS: {}, **configs})
        for alias in configs:
            connections.settings[alias] = filled[alias]
            added.append(alias)
        settings.CDR_REPLICA_ALIASES = list(configs)
        settings.DATABASE_ROUTERS = ["cdrs.routers.ReplicaRouter"]
        settings.CDR_REPLICA_DOWN_SECONDS = 3600  # a replica found down stays out in a test
        routers.forget_failures()
        if not cluster_migrated["done"]:
            call_command("migrate", verbosity=0)
            cluster_migrated["done"] = True
        return Replicated(cluster, list(configs), f"{uuid.uuid4().hex[:10]}.replica.test")

    with django_db_blocker.unblock():
        try:
            yield make
        finally:
            routers.forget_failures()
            for alias in added:
                connections[alias].close()
                del connections[alias]
                del connections.settings[alias]
            default.close()
            default.settings_dict.clear()
            default.settings_dict.update(saved)


@contextlib.contextmanager
def queries_by_alias(*aliases: str) -> Iterator[dict[str, list[str]]]:
    """The SQL each alias answered meanwhile (this thread's connections: the test client's);
    a statement that failed (a replica gone) is not counted."""
    seen: dict[str, list[str]] = {alias: [] for alias in aliases}
    with contextlib.ExitStack() as stack:
        for alias in aliases:

            def record(execute: Any, sql: str, params: Any, many: bool, ctx: Any, a=alias):
                result = execute(sql, params, many, ctx)
                seen[a].append(sql)
                return result

            stack.enter_context(connections[alias].execute_wrapper(record))
        yield seen


def cdr_reads(sqls: list[str]) -> list[str]:
    return [s for s in sqls if CDR_TABLES.search(s)]


def in_recovery(alias: str) -> bool:
    with connections[alias].cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        return bool(cur.fetchone()[0])


def get_all(client: Client, url: str) -> tuple[int, bytes]:
    """Status and whole body, streamed ones (the export) read to the end."""
    response: Any = client.get(url)  # the stubs know no streaming_content on it
    if response.streaming:
        return response.status_code, b"".join(response.streaming_content)
    return response.status_code, response.content


def same_answer(one: bytes, other: bytes) -> bool:
    """Equal bodies; a list's next_cursor aside (signed with a timestamp, the same position)."""
    if one.startswith(b'{"count"'):
        return {**orjson.loads(one), "next_cursor": None} == {
            **orjson.loads(other),
            "next_cursor": None,
        }
    return one == other


def read_urls(first_id: str) -> dict[str, str]:
    return {
        "list": "/api/cdrs?top=3",
        "detail": f"/api/cdrs/{first_id}",
        "stats": "/api/cdrs/stats?group_by=hour",
        "export": "/api/cdrs/export?format=ndjson",
    }


def test_reads_go_to_the_replica_and_writes_to_the_primary(replicated):
    service = replicated(replicas=1)
    replica = service.replicas[0]
    with queries_by_alias(DEFAULT_DB_ALIAS, replica) as seen:
        ids = service.ingest(5)
    assert seen[replica] == []  # the write and every read inside it: the primary
    assert any(s.startswith("INSERT INTO cdrs_cdr ") for s in seen[DEFAULT_DB_ALIAS])

    service.cluster.wait_caught_up()
    reader = service.client()  # minted just now, on the primary: usable at once
    for name, url in read_urls(ids[0]).items():
        with queries_by_alias(DEFAULT_DB_ALIAS, replica) as seen:
            status, body = get_all(reader, url)
        assert status == 200, (name, body)
        assert cdr_reads(seen[replica]), f"{name} did not read the CDRs on the replica"
        assert cdr_reads(seen[DEFAULT_DB_ALIAS]) == [], f"{name} read CDRs on the primary"
        # The token lookup stays on the primary.
        assert any(TOKEN_TABLE.search(s) for s in seen[DEFAULT_DB_ALIAS])
        assert not any(TOKEN_TABLE.search(s) for s in seen[replica])
    assert in_recovery(replica) and not in_recovery(DEFAULT_DB_ALIAS)  # a real standby

    listed = orjson.loads(reader.get("/api/cdrs?top=10").content)
    assert listed["count"] == 5
    assert [item["id"] for item in listed["items"]] == list(reversed(ids))  # replicated rows
    export = get_all(reader, "/api/cdrs/export")[1].splitlines()
    assert orjson.loads(export[-1]) == {"export_complete": True, "rows": 5}


def test_a_read_inside_a_transaction_on_the_primary_stays_on_the_primary(replicated):
    service = replicated(replicas=1)

    @routers.reads_from_replica
    def where_reads_go() -> tuple[str, str]:
        outside = routers.read_alias()
        with transaction.atomic():
            inside = routers.read_alias()
        return outside, inside

    assert where_reads_go() == (service.replicas[0], DEFAULT_DB_ALIAS)
    assert routers.read_alias() == DEFAULT_DB_ALIAS  # outside any read endpoint


def test_replicas_never_migrate(replicated):
    service = replicated(replicas=1)
    assert router.allow_migrate(DEFAULT_DB_ALIAS, "cdrs")
    assert not router.allow_migrate(service.replicas[0], "cdrs")
    assert not router.allow_migrate(service.replicas[0], "auth")


def test_reads_take_turns_and_skip_a_replica_that_is_down(replicated):
    service = replicated(replicas=2, dead=1)
    live, dead = service.replicas[:2], service.replicas[2]
    ids = service.ingest(2)
    service.cluster.wait_caught_up()
    reader = service.client()
    served: dict[str, int] = dict.fromkeys([*service.replicas, DEFAULT_DB_ALIAS], 0)
    for _ in range(6):
        with queries_by_alias(*served) as seen:
            response = reader.get(f"/api/cdrs/{ids[0]}")
        assert response.status_code == 200
        for alias, sqls in seen.items():
            served[alias] += len(cdr_reads(sqls))
    assert served[live[0]] > 0 and served[live[1]] > 0  # round-robin over the live ones
    assert served[dead] == 0 and served[DEFAULT_DB_ALIAS] == 0  # never the primary
    assert routers.is_down(dead) and not any(routers.is_down(a) for a in live)


def test_replica_going_down_mid_test_reads_answer_from_the_primary(replicated):
    service = replicated(replicas=1)
    replica = service.replicas[0]
    ids = service.ingest(4)
    service.cluster.wait_caught_up()
    reader = service.client()
    before = {}
    for name, url in read_urls(ids[0]).items():
        with queries_by_alias(replica) as seen:
            before[name] = get_all(reader, url)
        assert before[name][0] == 200 and cdr_reads(seen[replica]), name

    service.cluster.stop("replica")  # its open connection is ended, new ones are refused
    for name, url in read_urls(ids[0]).items():
        with queries_by_alias(DEFAULT_DB_ALIAS) as seen:
            after = get_all(reader, url)
        assert after[0] == 200, (name, after[1])
        assert cdr_reads(seen[DEFAULT_DB_ALIAS]), f"{name} was not answered by the primary"
        assert same_answer(after[1], before[name][1]), name
    assert routers.is_down(replica)
    metrics = reader.get("/metrics").content.decode()
    assert f'cdr_db_replica_failures_total{{alias="{replica}"}}' in metrics

    # Writes never needed the replica.
    more = service.ingest(1)
    detail = reader.get(f"/api/cdrs/{more[0]}")
    assert detail.status_code == 200  # the primary has it at once


def test_cursors_are_valid_on_the_primary_and_on_the_replica(replicated):
    service = replicated(replicas=1)
    replica = service.replicas[0]
    ids = list(reversed(service.ingest(7)))  # newest first, as the list orders them
    service.cluster.wait_caught_up()
    reader = service.client()

    def page(url: str, expect_on: str) -> dict[str, Any]:
        with queries_by_alias(DEFAULT_DB_ALIAS, replica) as seen:
            response = reader.get(url)
        assert response.status_code == 200, response.content
        others = [a for a in seen if a != expect_on]
        assert cdr_reads(seen[expect_on]) and not any(cdr_reads(seen[a]) for a in others)
        data: dict[str, Any] = orjson.loads(response.content)
        return data

    first = page("/api/cdrs?top=3", expect_on=replica)
    assert [i["id"] for i in first["items"]] == ids[0:3]

    service.cluster.stop("replica")
    second = page(f"/api/cdrs?top=3&cursor={first['next_cursor']}", expect_on=DEFAULT_DB_ALIAS)
    assert [i["id"] for i in second["items"]] == ids[3:6]  # replica's cursor, on the primary

    service.cluster.start("replica")
    service.cluster.wait_caught_up()
    routers.forget_failures()
    third = page(f"/api/cdrs?top=3&cursor={second['next_cursor']}", expect_on=replica)
    assert [i["id"] for i in third["items"]] == ids[6:7]  # primary's cursor, on the replica
    assert third["next_cursor"] is None
