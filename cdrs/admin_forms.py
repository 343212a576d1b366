"""Forms of the admin: the API token form, with its SIP domains typed as plain text."""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone

from cdrs import fields as spine
from cdrs.models import ApiToken
from cdrs.tokens import normalise_domains

_SEPARATORS = re.compile(r"[\s,;]+")
# A limited token compares these with caller_domain/callee_domain, so one longer than those
# columns could never match anything.
_DOMAIN_MAX = spine.FIELDS_BY_NAME["caller_domain"].max_length or 1024
_DOMAINS_MAX = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class DomainListField(forms.Field):
    """SIP domains as one line of text ("a.example.com, b.example.org"), stored as a list.

    Commas, semicolons and whitespace all separate; the list is normalised exactly as
    ``manage.py create_token --domain`` does (``cdrs.tokens.normalise_domains``), so the admin
    and the command store the same thing for the same input.
    """

    widget = forms.TextInput(attrs={"size": 80, "placeholder": "every domain"})

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return ", ".join(value)
        return value

    def to_python(self, value: Any) -> list[str]:
        if value in (None, ""):
            return []
        if isinstance(value, list | tuple):
            return normalise_domains([str(v) for v in value])
        return normalise_domains(_SEPARATORS.split(str(value)))

    def validate(self, value: Any) -> None:
        super().validate(value)
        if len(value) > _DOMAINS_MAX:
            raise ValidationError(f"At most {_DOMAINS_MAX} domains.", code="too_many")
        bad = [d for d in value if len(d) > _DOMAIN_MAX or _CONTROL.search(d)]
        if bad:
            raise ValidationError(
                "Not a SIP domain: %(bad)s", code="invalid", params={"bad": ", ".join(bad)[:200]}
            )


class ApiTokenForm(forms.ModelForm):
    """Create or edit a token's user, name, scopes, domains, expiry and enabled flag.

    ``prefix`` and ``digest`` are not editable model fields, so they are never in this form;
    the admin gives a new token its secret in ``save_model``.
    """

    domains = DomainListField(
        required=False,
        help_text=(
            "Limit the token to CDRs whose caller or callee domain is one of these "
            "(separated by commas or spaces). Empty: every domain."
        ),
    )

    class Meta:
        model = ApiToken
        fields = [
            "user",
            "name",
            "scope_read",
            "scope_billing",
            "scope_write",
            "domains",
            "expires_at",
            "enabled",
        ]
        help_texts = {
            "name": "A note on what the token is for (shown in the token list).",
            "scope_read": "List and detail of CDRs.",
            "scope_billing": "Sees and may filter on cost and billed account. "
            "Off unless ticked: grant it only to tokens that need it.",
            "scope_write": "Ingest CDRs (POST /api/cdrs). Off unless ticked.",
            "expires_at": "Empty: never expires.",
            "enabled": "Untick to revoke the token.",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance._state.adding:
            # Least privilege: a new token starts with read only (the model's column default
            # still says billing); billing and write are ticked on purpose, as with
            # `manage.py create_token --scope`.
            self.initial["scope_billing"] = False
            self.initial["scope_write"] = False

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        scopes = ("scope_read", "scope_billing", "scope_write")
        if not any(cleaned.get(name) for name in scopes):
            # Same rule as mint_token: a token without a scope could never do anything.
            raise ValidationError("A token needs at least one scope.", code="no_scope")
        expires_at = cleaned.get("expires_at")
        if (
            expires_at is not None
            and "expires_at" in self.changed_data
            and expires_at <= timezone.now()
        ):
            self.add_error("expires_at", "The expiry must be in the future.")
        return cleaned
