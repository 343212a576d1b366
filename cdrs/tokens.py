"""Minting, hashing and checking API tokens (the only place that sees a plain token)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from cdrs.models import ApiToken

TOKEN_PREFIX = "cdr_"
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
PREFIX_LENGTH = 10
SCOPES = ("read", "billing", "write")


def _digest(key: str, plain: str) -> str:
    return hmac.new(key.encode(), plain.encode(), hashlib.sha256).hexdigest()


def token_digest(plain: str) -> str:
    """HMAC-SHA256 of a plain token keyed with the server pepper (hex)."""
    return _digest(settings.CDR_TOKEN_PEPPER or settings.SECRET_KEY, plain)


def previous_token_digests(plain: str) -> list[str]:
    """The token's digests under the peppers being rotated out (CDR_TOKEN_PEPPER_PREVIOUS).

    A token stored under one of them is still accepted, and re-hashed with the current
    pepper on that use (``cdrs.auth``): rotating the pepper does not log every client out.
    """
    return [_digest(key, plain) for key in settings.CDR_TOKEN_PEPPER_PREVIOUS if key]


def split_token(plain: str) -> str | None:
    """The public prefix of a well-formed token, or None."""
    if not plain.startswith(TOKEN_PREFIX) or len(plain) > 200:
        return None
    rest = plain[len(TOKEN_PREFIX) :]
    prefix, sep, secret = rest.partition("_")
    if not sep or len(prefix) != PREFIX_LENGTH or len(secret) < 20:
        return None
    return prefix


def normalise_domains(domains: list[str] | tuple[str, ...]) -> list[str]:
    """Lower-cased, stripped, de-duplicated SIP domains, in a stable order."""
    return sorted({d.strip().lower() for d in domains if d.strip()})


@dataclass(frozen=True)
class MintedToken:
    token: ApiToken
    plain: str


def mint_token(
    *,
    username: str,
    scopes: list[str] | tuple[str, ...] = ("read",),
    domains: list[str] | tuple[str, ...] = (),
    expires_in_days: int | None = None,
    name: str = "",
) -> MintedToken:
    """Create a token for a user (created if missing); returns the plain token once.

    Least privilege: without ``scopes`` the token can only read; billing and write are
    always asked for by name.
    """
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(sorted(unknown))}")
    if not scopes:
        raise ValueError("a token needs at least one scope")
    if expires_in_days is not None and expires_in_days <= 0:
        raise ValueError("expires-in must be a positive number of days")
    expires_at: datetime | None = None
    if expires_in_days is not None:
        expires_at = timezone.now() + timedelta(days=expires_in_days)
    with transaction.atomic():
        user, _ = get_user_model().objects.get_or_create(username=username)
        token = ApiToken(
            user=user,
            name=name,
            scope_read="read" in scopes,
            scope_billing="billing" in scopes,
            scope_write="write" in scopes,
            domains=normalise_domains(domains),
            expires_at=expires_at,
        )
        plain = assign_secret(token)
        token.save()
    return MintedToken(token=token, plain=plain)


def assign_secret(token: ApiToken) -> str:
    """Give an unsaved token a fresh prefix and digest; returns the plain token."""
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH))
    plain = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    token.prefix = prefix
    token.digest = token_digest(plain)
    return plain


def token_is_live(token: ApiToken, now: datetime) -> bool:
    return token.enabled and (token.expires_at is None or token.expires_at > now)
