"""The field list in cdrs/fields.py is the spine: the model must hold exactly its fields."""

from __future__ import annotations

from typing import Any, cast

from django.db.models import Field

from cdrs.fields import ALL_FIELD_NAMES, CDR_FIELDS
from cdrs.models import Cdr


def test_model_fields_are_the_spine_plus_the_natural_key() -> None:
    model_fields = [f.name for f in Cdr._meta.concrete_fields]
    assert sorted(model_fields) == sorted([*ALL_FIELD_NAMES, "natural_key"])


def test_model_limits_match_the_spine() -> None:
    for spec in CDR_FIELDS:
        # Every spine name is a concrete column (the test above), never a relation.
        field = cast("Field[Any, Any]", Cdr._meta.get_field(spec.name))
        assert field.null == spec.nullable, spec.name
        if spec.max_length is not None:
            assert field.max_length == spec.max_length, spec.name


def test_selector_rows_are_typed_with_the_spine_fields_in_order() -> None:
    from cdrs.selectors import CdrRow

    assert tuple(CdrRow.__annotations__) == ALL_FIELD_NAMES
