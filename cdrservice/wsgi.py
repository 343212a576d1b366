"""WSGI entry point (gunicorn cdrservice.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

from cdrs import timeouts
from cdrservice.body_limits import RequestBodyLimits
from cdrservice.env import require_secret_key

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cdrservice.settings")
require_secret_key()  # no secret, no service

application = RequestBodyLimits(get_wsgi_application())
timeouts.serve_requests()  # requests get a statement timeout; management commands do not
