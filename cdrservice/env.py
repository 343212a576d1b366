"""Small typed readers for settings from the environment (healthchecks.io style)."""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from exc


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


SECRET_KEY_REQUIRED = (
    "SECRET_KEY must be set (without DATABASE_URL, bin/run generates one in .local-secret-key)"
)


def require_secret_key() -> None:
    """ImproperlyConfigured unless the settings have a SECRET_KEY (DEBUG brings its own)."""
    from django.conf import settings

    settings.INSTALLED_APPS  # noqa: B018 - loads the settings: their own errors come out as they are
    try:
        settings.SECRET_KEY  # noqa: B018 - Django refuses to hand out an empty one
    except ImproperlyConfigured:
        raise ImproperlyConfigured(SECRET_KEY_REQUIRED) from None
