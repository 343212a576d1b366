"""Settings for the test suite: production settings plus test-only keys and no token cache."""

import os

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
