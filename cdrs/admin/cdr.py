"""The CDR admin: the change list and a CDR's page, read-only for everyone."""

from __future__ import annotations

from django.contrib import admin

from cdrs.admin.cdr_detail import CdrDetailAdmin
from cdrs.admin.cdr_list import CdrListAdmin
from cdrs.models import Cdr


@admin.register(Cdr)
class CdrAdmin(CdrListAdmin, CdrDetailAdmin):
    """CDRs, read-only for everyone: they are records, removed only by retention tooling."""
