"""cdrservice settings: everything that differs between deployments comes from the environment.

See README.md "Configuration" for every variable. DEBUG is off unless DEBUG=true; without
DEBUG there is no SECRET_KEY default: the service and every command that may sign or hash
refuse to start without one (cdrservice.env.require_secret_key, called by wsgi.py and
manage.py), and Django refuses any use of an empty one. Without DATABASE_URL (bin/run's local
SQLite mode) the key bin/run generated in .local-secret-key is used.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from cdrservice import databases
from cdrservice.env import env_bool, env_int, env_list, env_rate, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
# bin/run's local mode (no DATABASE_URL: SQLite) generates this file and serves with it; every
# manage.py command run there reads it too, so tokens it creates are the server's tokens.
LOCAL_SECRET_KEY_FILE = BASE_DIR / ".local-secret-key"
if not SECRET_KEY and not env_str("DATABASE_URL") and LOCAL_SECRET_KEY_FILE.is_file():
    SECRET_KEY = LOCAL_SECRET_KEY_FILE.read_text().strip()
if not SECRET_KEY and DEBUG:
    SECRET_KEY = "insecure-development-key-only-used-with-DEBUG-true-0123456789abcdef"
# Key for the token hashes; separate from SECRET_KEY so rotating one does not rotate both.
# Empty means SECRET_KEY (cdrs.tokens reads it then, so an empty SECRET_KEY is refused).
CDR_TOKEN_PEPPER = env_str("CDR_TOKEN_PEPPER")
# Peppers being rotated out (comma-separated): tokens hashed with them still work and are
# re-hashed with CDR_TOKEN_PEPPER on their next use (README "Rotating the token pepper").
CDR_TOKEN_PEPPER_PREVIOUS = env_list("CDR_TOKEN_PEPPER_PREVIOUS")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "cdrs",
]

MIDDLEWARE = [
    "cdrs.middleware.TrustedProxyMiddleware",  # before anything reads the scheme
    "cdrs.middleware.RequestLogMiddleware",
    "cdrs.metrics.MetricsMiddleware",  # metrics; not loaded when CDR_METRICS=false
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks: turns a lockout into a page
]

# /api/ requests (Bearer tokens, no cookies) skip the admin's middlewares: static files,
# sessions, CSRF, authentication, messages and the login lockout (cdrservice.handlers).
API_MIDDLEWARE = [
    m
    for m in MIDDLEWARE
    if m
    not in {
        "whitenoise.middleware.WhiteNoiseMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "axes.middleware.AxesMiddleware",
    }
]

ROOT_URLCONF = "cdrservice.urls"
WSGI_APPLICATION = "cdrservice.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "cdrs" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite file by default; DATABASE_URL (postgres://...) in production.
# PostgreSQL statements run this many times on a connection are prepared (cdrservice/databases).
_prepare = env_str("DB_PREPARE_THRESHOLD", "5")
DB_PREPARE_THRESHOLD = None if _prepare.lower() == "off" else int(_prepare)
DATABASES = {
    databases.PRIMARY: databases.primary(
        default_url=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("DB_CONN_MAX_AGE", 600),
        prepare_threshold=DB_PREPARE_THRESHOLD,
    )
}

# --- Read replicas (cdrs/routers.py; README "Read replicas") ---
# Hot standbys of the primary, comma-separated URLs: the API's list, detail, stats and
# export read from them in turn; everything else (writes, auth, the admin) uses the primary.
# Unset: no replica aliases and no router, exactly one database as before.
_replicas = databases.replicas(
    env_list("DATABASE_REPLICA_URLS"),
    primary=DATABASES[databases.PRIMARY],
    conn_max_age=env_int("DB_CONN_MAX_AGE", 600),
    prepare_threshold=DB_PREPARE_THRESHOLD,
)
DATABASES.update(_replicas)
CDR_REPLICA_ALIASES = list(_replicas)
DATABASE_ROUTERS = ["cdrs.routers.ReplicaRouter"] if _replicas else []
# Seconds a replica that failed to answer is left out before it is tried again.
CDR_REPLICA_DOWN_SECONDS = env_int("CDR_REPLICA_DOWN_SECONDS", 10)

# --- Shared cache: the rate limits' and the admin lockout's counters (README "Security") ---
# Every worker and app server must see the same counters, so never per-process memory:
# Redis when REDIS_URL is set, else a table in the database (migration cdrs 0004_cache_table).
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("REDIS_KEY_PREFIX", "cdrservice"),
            # A Redis that does not answer must not hold workers (the limits then fail open).
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "cdr_cache",
            # Culling past this count may drop live counters; expired ones go first.
            "OPTIONS": {"MAX_ENTRIES": 10000},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
if DEBUG:
    STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}

# Messages travel in a signed cookie, never the session table: the admin shows a new
# token's secret once as a message, and it must not be written to the database.
MESSAGE_STORAGE = "django.contrib.messages.storage.cookie.CookieStorage"

# Request bodies: a 1000-CDR ingest batch is well under this; larger is a 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("CDR_MAX_BODY_BYTES", 8 * 1024 * 1024)
# One PortSIP webhook event (a call and its targets) is a few kilobytes; its body is kept
# whole when it cannot be stored, so the limit is lower than for ingest batches.
CDR_WEBHOOK_MAX_BODY_BYTES = env_int("CDR_WEBHOOK_MAX_BODY_BYTES", 1024 * 1024)

# --- Security (manage.py check --deploy is clean when DEBUG is off) ---
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Proxies whose X-Forwarded-Proto / X-Forwarded-For count (IPs or CIDR networks; cdrs/net.py).
# None by default: the service then believes only the connection itself. gunicorn.conf.py
# gives gunicorn the same list (forwarded_allow_ips).
CDR_TRUSTED_PROXIES = env_list("CDR_TRUSTED_PROXIES")
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if CDR_TRUSTED_PROXIES else None
# Health probes come from the orchestrator over plain HTTP, never through the proxy.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SILENCED_SYSTEM_CHECKS = [
    # The service is usually behind a TLS-terminating proxy that redirects; opt in with
    # SECURE_SSL_REDIRECT=true when it is not.
    "security.W008",
]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["cdrs.auth.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["cdrs.api.permissions.HasScope"],
    "DEFAULT_RENDERER_CLASSES": ["cdrs.api.renderers.CdrJSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["cdrs.api.parsers.DecimalJSONParser"],
    "DEFAULT_FILTER_BACKENDS": [],
    "DEFAULT_PAGINATION_CLASS": None,
    "DEFAULT_THROTTLE_CLASSES": ["cdrs.throttling.TokenRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        # Requests per token; generous: a PBX posts one request per call or per batch.
        "token": env_rate("CDR_TOKEN_RATE", "6000/min"),
        # Rejected tokens per client IP (cdrs.auth); then 429 until the window has passed.
        "auth_failure": env_rate("CDR_AUTH_FAILURE_RATE", "30/10min"),
    },
    "EXCEPTION_HANDLER": "cdrs.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
    # `format` is the export's own option (csv|ndjson), not DRF's renderer override.
    "URL_FORMAT_OVERRIDE": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "cdrservice API",
    "DESCRIPTION": "Call detail records of a PBX, in the shape of the PortSIP PBX REST API.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "cdrs.api.schema.strip_trailing_slashes",
        "cdrs.api.schema.add_examples",
    ],
    # The schema and the docs page are public: a browser cannot send a Bearer header when
    # it opens /api/docs. API calls made from the page still need a token ("Authorize").
    "SERVE_AUTHENTICATION": [],
}

# Seconds an authenticated token is remembered per worker process (saves one query per
# request); a revoked token stops working within this time. 0 disables the cache.
CDR_TOKEN_CACHE_SECONDS = env_int("CDR_TOKEN_CACHE_SECONDS", 10)
# last_used_at is written at most this often per token.
CDR_TOKEN_LAST_USED_INTERVAL = 60

# --- Query limits (cdrs/timeouts.py, cdrs/query/options.py; README "Query limits and timeouts") ---
# Longest a single SQL statement of a web request may run on PostgreSQL (0: no limit).
CDR_STATEMENT_TIMEOUT_MS = env_int("CDR_STATEMENT_TIMEOUT_MS", 5000)
# The export's, per statement (opening it, each fetch of 2000 rows); 0: no limit.
CDR_EXPORT_STATEMENT_TIMEOUT_MS = env_int("CDR_EXPORT_STATEMENT_TIMEOUT_MS", 60000)
# Largest skip= the list accepts; deeper pages go by cursor (constant cost at any depth).
CDR_MAX_SKIP = env_int("CDR_MAX_SKIP", 100000)
# Retention (manage.py prune_cdrs, cdrs/retention.py): the default of --older-than, in days;
# 0: no default (prune_cdrs then needs --before or --older-than).
CDR_RETENTION_DAYS = env_int("CDR_RETENTION_DAYS", 0)

# --- Admin login: django-axes locks a username at an address after repeated failures ---
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_HANDLER = "axes.handlers.cache.AxesCacheHandler"  # counters in the shared cache above
AXES_FAILURE_LIMIT = env_int("CDR_ADMIN_LOGIN_FAILURES", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("CDR_ADMIN_LOCKOUT_MINUTES", 15))
# Username and address together: a guesser cannot lock a colleague out from elsewhere.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "cdrs.throttling.client_ip"
AXES_LOCKOUT_CALLABLE = "cdrs.throttling.admin_lockout_response"
AXES_ENABLE_ADMIN = False  # the cache handler keeps no attempt rows to show
AXES_VERBOSE = False  # no banner on stdout at every start (commands print their results there)

# --- metrics: Prometheus at /metrics (cdrs/metrics.py; CDR_METRICS_ALLOW limits who reads it) ---
CDR_METRICS = env_bool("CDR_METRICS", True)

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "cdrs.logging.JsonFormatter"}},
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "json",
        }
    },
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
    "loggers": {
        # Our request log replaces django.request's lines for 4xx (one line per request).
        "django.request": {"level": "ERROR"},
        "django.server": {"level": "WARNING"},
    },
}
