"""The admin login locks a username at an address after repeated wrong passwords
(django-axes, counters in the shared cache), and answers a plain 503 page, not a 500, when
the database or the Redis holding the counters is down."""

from __future__ import annotations

import http.client
import io
import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest
from axes.handlers.proxy import AxesProxyHandler
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client, override_settings

from tests.api.test_throttling import DATABASE_CACHE, assert_counters_in
from tests.conftest import delete_redis_keys
from tests.test_ops import BASE_DIR, SUBPROCESS_TIMEOUT, gunicorn, manage, production_env

PASSWORD = "the-right-password-7"


@contextmanager
def axes_cache(caches: dict) -> Iterator[None]:
    """Settings' CACHES for django-axes too (its handler keeps the cache it started with)."""
    try:
        with override_settings(CACHES=caches):
            AxesProxyHandler.get_implementation(force=True)
            yield
    finally:
        AxesProxyHandler.get_implementation(force=True)


@pytest.fixture(params=["redis", "database"])
def cache_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "redis":
        yield "redis"
        return
    with axes_cache(DATABASE_CACHE):
        yield "database"


@pytest.fixture
def boss(db: None) -> User:
    return User.objects.create_superuser("boss", "boss@example.com", PASSWORD)


def browser(address: str) -> Client:
    """A client from ``address`` that sends the login form's CSRF token, as a browser does."""
    return Client(enforce_csrf_checks=True, REMOTE_ADDR=address)


def log_in(client: Client, username: str, password: str):
    form = client.get("/admin/login/?next=/admin/")
    assert form.status_code == 200
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.content.decode())
    assert csrf is not None
    return client.post(
        "/admin/login/?next=/admin/",
        {
            "username": username,
            "password": password,
            "next": "/admin/",
            "csrfmiddlewaretoken": csrf[1],
        },
    )


def logged_in(client: Client) -> bool:
    return client.get("/admin/").status_code == 200


def test_wrong_passwords_lock_the_login_even_for_the_right_password(cache_backend, boss):
    attacker = browser("203.0.113.60")
    for _ in range(4):
        response = log_in(attacker, "boss", "guess")
        assert response.status_code == 200  # the form again, with its error
        assert b"Please enter the correct username and password" in response.content
    locked = log_in(attacker, "boss", "guess")  # the 5th (CDR_ADMIN_LOGIN_FAILURES)
    assert locked.status_code == 429
    assert b"Too many login attempts" in locked.content
    assert locked["Retry-After"] == str(15 * 60)

    response = log_in(attacker, "boss", PASSWORD)
    assert response.status_code == 429
    assert not logged_in(attacker)
    assert_counters_in(cache_backend, table="cdr_cache")

    # The lock is for that username at that address: the real admin elsewhere logs in, and
    # another username at the attacker's address is not locked.
    admin = browser("198.51.100.20")
    response = log_in(admin, "boss", PASSWORD)
    assert (response.status_code, response["Location"]) == (302, "/admin/")
    assert logged_in(admin)
    assert log_in(attacker, "somebody", "guess").status_code == 200


def test_an_operator_can_lift_a_lock(cache_backend, boss):
    client = browser("203.0.113.63")
    with override_settings(AXES_FAILURE_LIMIT=2):
        log_in(client, "boss", "guess")
        assert log_in(client, "boss", "guess").status_code == 429
        call_command("axes_reset_ip_username", "203.0.113.63", "boss", stdout=io.StringIO())
        assert log_in(client, "boss", PASSWORD).status_code == 302


def test_the_lock_ends_after_the_cool_off(cache_backend, boss):
    client = browser("203.0.113.61")
    with override_settings(AXES_FAILURE_LIMIT=2, AXES_COOLOFF_TIME=timedelta(seconds=2)):
        assert log_in(client, "boss", "guess").status_code == 200
        assert log_in(client, "boss", "guess").status_code == 429
        assert log_in(client, "boss", PASSWORD).status_code == 429
        time.sleep(3.1)
        assert log_in(client, "boss", PASSWORD).status_code == 302
        assert logged_in(client)


def test_a_successful_login_clears_the_count(cache_backend, boss):
    client = browser("203.0.113.62")
    for _ in range(4):
        assert log_in(client, "boss", "guess").status_code == 200
    assert log_in(client, "boss", PASSWORD).status_code == 302
    client.post("/admin/logout/", {"csrfmiddlewaretoken": client.cookies["csrftoken"].value})
    for _ in range(4):  # four more wrong ones are allowed again
        assert log_in(client, "boss", "guess").status_code == 200


@pytest.mark.django_db
def test_an_unreachable_redis_is_a_503_page_at_login():
    unreachable = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    with axes_cache(unreachable):
        client = Client(raise_request_exception=False)
        response = client.post("/admin/login/", {"username": "boss", "password": "x"})
    assert response.status_code == 503
    assert b"Service unavailable" in response.content
    assert response["Retry-After"] == "5"


# In a child process whose DATABASE_URL points at a port where nothing listens.
DATABASE_DOWN = """
import json, django
django.setup()
from django.test import Client
c = Client(raise_request_exception=False)
out = {}
r = c.post("/admin/login/?next=/admin/", {"username": "boss", "password": "x", "next": "/admin/"})
out["login"] = [r.status_code, r.get("Retry-After"), r.content.decode()]
c.cookies["sessionid"] = "a" * 32  # a browser that was logged in
for path in ("/admin/", "/admin/cdrs/cdr/"):
    r = c.get(path)
    out[path] = [r.status_code, r.get("Retry-After"), r.content.decode()]
print(json.dumps(out))
"""


@pytest.mark.parametrize("store", ["redis", "database"])
def test_the_admin_answers_a_plain_503_page_while_the_database_is_down(tmp_path, store):
    env = production_env(
        tmp_path,
        DATABASE_URL="postgres://postgres:secret-pw@127.0.0.1:1/cdrs",
        ALLOWED_HOSTS="testserver",
        LOG_LEVEL="CRITICAL",
    )
    if store == "redis":
        env.update(REDIS_URL=settings.TEST_REDIS_URL, REDIS_KEY_PREFIX="cdrtest-outage")
    done = subprocess.run(
        [sys.executable, "-c", DATABASE_DOWN],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for what, (status, retry_after, body) in results.items():
        assert status == 503, (what, status, body)
        assert retry_after == "5", what
        assert "Service unavailable" in body, what
        assert "Server Error" not in body and "Traceback" not in body, what
        assert "127.0.0.1:1" not in body and "secret-pw" not in body, what


def form_login(base: str, username: str, password: str) -> int:
    """Log in through the admin form over real HTTP, as a browser would; the status."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/admin/login/")
        form = conn.getresponse()
        page = form.read().decode()
        cookie = SimpleCookie()
        for header in form.headers.get_all("Set-Cookie") or []:
            cookie.load(header)
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert form.status == 200 and csrf is not None
        body = urlencode(
            {"username": username, "password": password, "csrfmiddlewaretoken": csrf[1]}
        )
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"csrftoken={cookie['csrftoken'].value}",
        }
        conn.request("POST", "/admin/login/?next=/admin/", body, headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.parametrize("store", ["redis", "database"])
def test_two_app_servers_share_the_admin_lockout(tmp_path, store):
    # Production settings, but the admin's pages link static files without collectstatic.
    (tmp_path / "lockout_settings.py").write_text(
        "from cdrservice.settings import *  # noqa: F403\n"
        "STORAGES['staticfiles'] = "
        "{'BACKEND': 'django.contrib.staticfiles.storage.StaticFilesStorage'}\n"
    )
    env = production_env(
        tmp_path,
        DJANGO_SETTINGS_MODULE="lockout_settings",
        PYTHONPATH=str(tmp_path),
        LOG_LEVEL="WARNING",
        CDR_ADMIN_LOGIN_FAILURES="4",
    )
    prefix = f"cdrtest-admin-{secrets.token_hex(6)}"
    if store == "redis":
        env.update(REDIS_URL=settings.TEST_REDIS_URL, REDIS_KEY_PREFIX=prefix)
    assert manage("migrate", "--no-input", "-v", "0", env=env).returncode == 0
    created = manage(
        "createsuperuser",
        "--no-input",
        "--username",
        "boss",
        "--email",
        "boss@example.com",
        env={**env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD},
    )
    assert created.returncode == 0, created.stderr
    try:
        with ExitStack() as stack:
            first = stack.enter_context(gunicorn(env, tmp_path))
            second = stack.enter_context(gunicorn(env, tmp_path))
            statuses = [form_login(base, "boss", "guess") for base in (first, second) * 2]
            assert statuses == [200, 200, 200, 429]  # the 4th failure locks
            for base in (first, second):  # 4 failures between them: locked on both
                assert form_login(base, "boss", PASSWORD) == 429
    finally:
        if store == "redis":
            assert delete_redis_keys(settings.TEST_REDIS_URL, prefix) > 0
