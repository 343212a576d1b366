"""Fixtures: an HTTP client with a real Bearer token minted per test."""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any, cast

import django.test.client
import psycopg
import pytest
import redis
from _pytest.faulthandler import fault_handler_stderr_fd_key
from django.conf import settings
from django.test import Client

from cdrs import selectors
from cdrs.tokens import mint_token
from cdrservice.handlers import ApiChainMixin
from tests.helpers import AllQueries, scratch_postgresql


class ApiAwareClientHandler(ApiChainMixin, django.test.client.ClientHandler):
    """The test client's handler with production's split: /api/ through API_MIDDLEWARE."""


# Every test client (Client() builds its handler from this module global) serves requests
# the way cdrservice.wsgi does; tests/test_handlers.py checks both against each other.
django.test.client.ClientHandler = ApiAwareClientHandler  # type: ignore[misc]


def _on_postgresql() -> bool:
    return os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))


@functools.cache
def on_citus() -> bool:
    """Whether DATABASE_URL names a Citus coordinator (its test database will be one too)."""
    if not _on_postgresql():
        return False
    url = os.environ["DATABASE_URL"].replace("postgres://", "postgresql://", 1)
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            found = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone()
    except psycopg.OperationalError:  # no such database (only its test_ one is made): not Citus
        return False
    return found is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``postgresql`` (EXPLAIN plans, COPY, row locks) only run against it, tests
    marked ``citus`` only against a Citus coordinator; on Citus, tests marked ``no_citus``
    are skipped with their reason (shown in the summary)."""
    if settings.CDR_REPLICA_ALIASES:
        # The replica run (tests/mirror_backend): the read endpoints query the replica
        # aliases, so every test that may use the database may use them too.
        for item in items:
            if (marker := item.get_closest_marker("django_db")) is not None:
                every = pytest.mark.django_db(
                    *marker.args, **{**marker.kwargs, "databases": "__all__"}
                )
                item.add_marker(every, append=False)
    dropped = []
    if not _on_postgresql():
        dropped = [i for i in items if i.get_closest_marker("postgresql") is not None]
    if not on_citus():
        dropped += [i for i in items if i.get_closest_marker("citus") is not None]
    else:
        for item in items:
            if (marker := item.get_closest_marker("no_citus")) is not None:
                item.add_marker(pytest.mark.skip(reason=f"not on Citus: {marker.args[0]}"))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        gone = set(map(id, dropped))
        items[:] = [i for i in items if id(i) not in gone]


def delete_redis_keys(url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (never FLUSHDB: other programs share this Redis)."""
    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        return client.delete(*keys) if keys else 0


@pytest.fixture(autouse=True)
def _fresh_rate_limit_counters() -> Iterator[None]:
    """Each test starts with no rate limit or lockout counters (they live in Redis)."""
    yield
    prefix = cast(str, settings.CACHES["default"]["KEY_PREFIX"])  # the Redis test settings
    delete_redis_keys(settings.TEST_REDIS_URL, prefix)


@pytest.fixture(autouse=True)
def _newest_hour_looked_up_afresh() -> None:
    """A filtered list page on partitioned PostgreSQL reads recent months first, from the
    newest stored hour a process keeps for a minute (``cdrs.selectors``): each test looks
    it up afresh, so its statements do not depend on what the tests before it stored."""
    selectors.forget_newest_stored_hour()


class ApiClient(Client):
    """Django's test client with a real token in every request's Authorization header."""

    def __init__(self, plain_token: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plain_token = plain_token
        if plain_token is not None:
            self.defaults["HTTP_AUTHORIZATION"] = f"Bearer {plain_token}"


@pytest.fixture
def api_client(db: None) -> Callable[..., ApiClient]:
    """``api_client(scopes=("read",), domains=())`` -> a client with a freshly minted token."""

    def make(
        scopes: tuple[str, ...] = ("read", "billing", "write"),
        domains: tuple[str, ...] = (),
        username: str = "integrator",
        expires_in_days: int | None = None,
    ) -> ApiClient:
        minted = mint_token(
            username=username,
            scopes=scopes,
            domains=domains,
            expires_in_days=expires_in_days,
        )
        client = ApiClient(minted.plain)
        client.token = minted.token  # type: ignore[attr-defined]
        return client

    return make


@pytest.fixture
def client_ro(api_client: Callable[..., ApiClient]) -> ApiClient:
    """A read-only token (no billing, no write)."""
    return api_client(scopes=("read",))


@pytest.fixture
def client_full(api_client: Callable[..., ApiClient]) -> ApiClient:
    return api_client(scopes=("read", "billing", "write"))


@pytest.fixture
def empty_postgresql() -> Iterator[str]:
    # Only requested by the postgresql-marked case, which runs only against PostgreSQL.
    with scratch_postgresql("cdrops_empty") as url:
        yield url


HARD_TIMEOUT_SECONDS = 30


@pytest.fixture
def hard_timeout(request: pytest.FixtureRequest) -> Iterator[None]:
    """Ends the whole run (exit status 1, every thread's traceback on stderr) when a test
    outlives HARD_TIMEOUT_SECONDS.

    For tests whose failure mode is a hang inside one long C call, such as
    int(Decimal("1e100000000")): that call holds the GIL, so neither a signal handler nor a
    watchdog thread written in Python (pytest-timeout's two methods) runs until it returns.
    faulthandler's watchdog is a C thread that needs no GIL.
    """
    # The real stderr that pytest's faulthandler plugin keeps (fd 2 is captured during tests).
    stderr_fd = request.config.stash.get(fault_handler_stderr_fd_key, 2)
    faulthandler.dump_traceback_later(HARD_TIMEOUT_SECONDS, exit=True, file=stderr_fd)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@contextlib.contextmanager
def _queries_on_every_alias(num: int, *, exact: bool, info: str | None = None) -> Iterator[Any]:
    """pytest-django's query count, over the primary and the replica aliases together."""
    with AllQueries() as captured:
        yield captured
    done = len(captured)
    if done != num if exact else done > num:
        sqls = "\n\n".join(f"[{q['alias']}] {q['sql']}" for q in captured.captured_queries)
        expected = f"{num}" if exact else f"{num} or less"
        pytest.fail(
            f"Expected to perform {expected} queries but {done} were done\n{info or ''}\n{sqls}"
        )


@pytest.fixture
def django_assert_num_queries(django_assert_num_queries: Any) -> Any:
    """In the replica run the read endpoints' queries are on the replica alias: count both."""
    if not settings.CDR_REPLICA_ALIASES:
        return django_assert_num_queries
    return functools.partial(_queries_on_every_alias, exact=True)


@pytest.fixture
def django_assert_max_num_queries(django_assert_max_num_queries: Any) -> Any:
    if not settings.CDR_REPLICA_ALIASES:
        return django_assert_max_num_queries
    return functools.partial(_queries_on_every_alias, exact=False)
