"""API tokens in the admin: create one (the secret is shown once), list, edit, revoke.

The token form types its SIP domains as plain text.
"""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from cdrs import fields as spine
from cdrs.admin.common import EMPTY
from cdrs.models import ApiToken
from cdrs.tokens import assign_secret, normalise_domains, token_is_live

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


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """API tokens: create (the secret is shown once), list, edit scopes/domains, revoke.

    Only the public prefix is ever displayed; the digest is neither shown, nor searchable,
    nor filterable, and the plain token exists only in the response after it is created.
    """

    form = ApiTokenForm
    list_display = (
        "prefix",
        "name",
        "user",
        "scopes_column",
        "domains_column",
        "enabled",
        "state",
        "expires_at",
        "last_used_at",
        "created_at",
    )
    list_display_links = ("prefix", "name")
    list_filter = ("enabled", "scope_read", "scope_billing", "scope_write")
    list_select_related = ("user",)
    search_fields = ("=prefix", "name", "user__username")
    ordering = ("-created_at", "-id")
    actions = ("revoke_tokens",)
    add_fieldsets = (
        (None, {"fields": ("user", "name")}),
        ("Scopes", {"fields": ("scope_read", "scope_billing", "scope_write")}),
        ("Limits", {"fields": ("domains", "expires_at", "enabled")}),
    )
    change_fieldsets = (
        (None, {"fields": ("prefix", "user", "name")}),
        ("Scopes", {"fields": ("scope_read", "scope_billing", "scope_write")}),
        ("Limits", {"fields": ("domains", "expires_at", "enabled")}),
        ("Use", {"fields": ("state", "created_at", "last_used_at")}),
    )

    def get_fieldsets(self, request: HttpRequest, obj: ApiToken | None = None) -> Any:
        return self.change_fieldsets if obj is not None else self.add_fieldsets

    def get_readonly_fields(
        self, request: HttpRequest, obj: ApiToken | None = None
    ) -> tuple[str, ...]:
        if obj is None:
            return ()
        # A token stays with the user it was made for: give another user a new token.
        return ("prefix", "user", "state", "created_at", "last_used_at")

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        # Most tokens are made by the person who will use them.
        return {"user": request.user.pk, **super().get_changeform_initial_data(request)}

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "user":
            kwargs["queryset"] = db_field.related_model.objects.filter(is_active=True).order_by(
                "username"
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # ?digest__startswith=... would reveal the digest a character at a time.
        if lookup.split("__", 1)[0] == "digest":
            return False
        return super().lookup_allowed(lookup, value, request)

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        plain = None if change else assign_secret(obj)
        super().save_model(request, obj, form, change)
        if plain is not None:
            # Shown on the page the admin is redirected to, then gone: only the digest is
            # stored. format_html escapes the token, so the message may be marked safe.
            messages.success(
                request,
                format_html(
                    'New API token for {}: <code id="new-api-token">{}</code> — copy it now, '
                    "it is shown only this once.",
                    obj.user,
                    plain,
                ),
            )

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        tokens = list(queryset.filter(enabled=True))
        ApiToken.objects.filter(pk__in=[t.pk for t in tokens]).update(enabled=False)
        for token in tokens:
            self.log_change(request, token, [{"changed": {"fields": ["enabled"]}}])
        wait = settings.CDR_TOKEN_CACHE_SECONDS
        self.message_user(
            request,
            f"Revoked {len(tokens)} token(s)."
            + (f" They stop working within {wait} s." if wait > 0 else ""),
            messages.SUCCESS,
        )

    @admin.display(description="Scopes")
    def scopes_column(self, obj: ApiToken) -> str:
        return ", ".join(obj.scopes) or EMPTY

    @admin.display(description="Domains")
    def domains_column(self, obj: ApiToken) -> str:
        return ", ".join(obj.domains) if obj.domains else "all"

    @admin.display(description="State")
    def state(self, obj: ApiToken) -> str:
        if not obj.enabled:
            return "revoked"
        return "active" if token_is_live(obj, timezone.now()) else "expired"
