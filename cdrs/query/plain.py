"""Plain query filters (beyond PortSIP), one django-filter FilterSet.

django-filter gives typed parsing, readable errors and the OpenAPI parameters for free;
each filter is AND-ed with the rest and with ``filter``/``search``.

Requests don't instantiate the FilterSet: an instance deep-copies every filter and builds
a new Form class, 1.5 ms per request on this machine, longer than the query of a one-day
window. ``plain_filter_q`` cleans the given values with each filter's own form field and
turns them into one ``Q`` with each filter's own field name and lookup, which is what
``FilterSet.filter_queryset`` would do (none of these filters has a ``method``, ``distinct``
or ``exclude``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import django_filters
from django import forms
from django.core.validators import EMPTY_VALUES
from django.db.models import Q, QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field

from cdrs.fields import DIRECTIONS, DURATION_MAX, END_REASONS, FIELDS_BY_NAME
from cdrs.models import Cdr
from cdrs.values import parse_integer, parse_rfc3339


class Rfc3339Field(forms.Field):
    default_error_messages = {
        "invalid": "expected an RFC 3339 timestamp such as 2024-05-01T00:00:00Z"
    }

    def to_python(self, value: Any) -> datetime | None:
        if value in (None, ""):
            return None
        try:
            return parse_rfc3339(str(value))
        except ValueError as exc:
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid") from exc


@extend_schema_field(OpenApiTypes.DATETIME)
class Rfc3339Filter(django_filters.Filter):
    field_class = Rfc3339Field


class StrictBooleanField(forms.Field):
    default_error_messages = {"invalid": "expected true or false"}

    def to_python(self, value: Any) -> bool | None:
        if value in (None, ""):
            return None
        text = str(value).lower()
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
        raise forms.ValidationError(self.error_messages["invalid"], code="invalid")


@extend_schema_field(OpenApiTypes.BOOL)
class AnsweredFilter(django_filters.Filter):
    field_class = StrictBooleanField

    def filter(self, qs: QuerySet[Cdr], value: bool | None) -> QuerySet[Cdr]:
        if value is None:
            return qs
        return qs.filter(as_q(self, value))


class AsciiIntegerField(forms.IntegerField):
    """forms.IntegerField for ASCII digits only, bounded before converting (int() alone
    takes "٥" and converts up to 4,300 digits)."""

    def to_python(self, value: Any) -> int | None:
        if value in self.empty_values:
            return None
        try:
            return parse_integer(str(value).strip())
        except ValueError:
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid") from None


class IntegerFilter(django_filters.NumberFilter):
    field_class = AsciiIntegerField


def _text(name: str) -> django_filters.CharFilter:
    """Equality on the string field ``name``, no longer than the field itself."""
    return django_filters.CharFilter(field_name=name, max_length=FIELDS_BY_NAME[name].max_length)


def _choice(values: tuple[str, ...]) -> django_filters.ChoiceFilter:
    return django_filters.ChoiceFilter(choices=[(v, v) for v in values])


class CdrPlainFilterSet(django_filters.FilterSet):
    """``started_after``..``answered``: see API.md, "Plain filters"."""

    started_after = Rfc3339Filter(
        field_name="started_at", lookup_expr="gte", label="started_at ≥ (RFC 3339)"
    )
    started_before = Rfc3339Filter(
        field_name="started_at", lookup_expr="lt", label="started_at < (RFC 3339)"
    )
    caller = _text("caller")
    callee = _text("callee")
    call_id = _text("call_id")
    direction = _choice(DIRECTIONS)
    end_reason = _choice(END_REASONS)
    trunk = _text("trunk")
    caller_domain = _text("caller_domain")
    callee_domain = _text("callee_domain")
    min_duration = IntegerFilter(
        field_name="duration", lookup_expr="gte", min_value=0, max_value=DURATION_MAX
    )
    max_duration = IntegerFilter(
        field_name="duration", lookup_expr="lte", min_value=0, max_value=DURATION_MAX
    )
    answered = AnsweredFilter(label="answered (true/false)")

    class Meta:
        model = Cdr
        fields: list[str] = []


PLAIN_FILTER_NAMES: tuple[str, ...] = tuple(CdrPlainFilterSet.base_filters)
# One form field per filter, made once: fields are stateless validators.
_FORM_FIELDS: dict[str, forms.Field] = {
    name: f.field for name, f in CdrPlainFilterSet.base_filters.items()
}


class PlainFilterError(ValueError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def as_q(f: django_filters.Filter, value: Any) -> Q:
    """The condition ``f`` applies for a cleaned ``value`` (as its ``filter`` method does)."""
    if isinstance(f, AnsweredFilter):
        return Q(answered_at__isnull=not value)
    return Q(**{f"{f.field_name}__{f.lookup_expr}": value})


def plain_filter_q(data: Mapping[str, str]) -> Q:
    """AND of the plain filters in ``data`` (name -> raw text); PlainFilterError if invalid."""
    where = Q()
    for name, raw in data.items():
        try:
            value = _FORM_FIELDS[name].clean(raw)
        except forms.ValidationError as exc:
            raise PlainFilterError(name, exc.messages[0]) from exc
        if value in EMPTY_VALUES:
            continue  # an empty parameter filters nothing, as in django-filter
        where &= as_q(CdrPlainFilterSet.base_filters[name], value)
    return where
