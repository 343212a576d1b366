"""WSGI entry point (gunicorn cdrservice.wsgi)."""

import os

import django

from cdrs import timeouts
from cdrservice.body_limits import RequestBodyLimits
from cdrservice.env import require_secret_key
from cdrservice.handlers import ApiAwareWSGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cdrservice.settings")
require_secret_key()  # no secret, no service

django.setup(set_prefix=False)  # what get_wsgi_application() does, with our handler below
application = RequestBodyLimits(ApiAwareWSGIHandler())
timeouts.serve_requests()  # requests get a statement timeout; management commands do not
