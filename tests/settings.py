"""Settings for the test suite: production settings plus test-only keys and no token cache."""

import os
import uuid

os.environ.setdefault("SECRET_KEY", "tests-only-secret-key-not-for-production-0123456789")
os.environ.setdefault("CDR_TOKEN_PEPPER", "tests-only-pepper")

from cdrservice.settings import *  # noqa: F403

CDR_TOKEN_CACHE_SECONDS = 0  # each test sees token changes at once; test_auth checks the cache
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES["staticfiles"] = {  # noqa: F405
    "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
}
# No collected static files in the test process (tests/test_ops.py checks WhiteNoise serving
# them under gunicorn with production settings); without a root WhiteNoise warns per request.
STATIC_ROOT = None  # type: ignore[assignment]
# Rate limit counters in the real Redis (as in production with REDIS_URL), under a prefix of
# this run's own that tests/conftest.py empties after each test; tests/test_throttling.py
# runs the same limits on the database cache.
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": TEST_REDIS_URL,
        "KEY_PREFIX": f"cdrtest-{uuid.uuid4().hex}",
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
}

# bin/test's replica run (DATABASE_REPLICA_URLS set): each replica alias is a test mirror of
# the primary that uses the primary's connection and refuses writes (tests/mirror_backend),
# so every test's reads go through the router and see the test's own rows.
for _alias in CDR_REPLICA_ALIASES:  # noqa: F405
    DATABASES[_alias]["ENGINE"] = "tests.mirror_backend"  # noqa: F405
    DATABASES[_alias]["TEST"] = {"MIRROR": "default"}  # noqa: F405
