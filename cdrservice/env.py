"""Small typed readers for settings from the environment (healthchecks.io style)."""

from __future__ import annotations

import functools
import os
import re

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


_RATE_RE = re.compile(r"\s*(\d+)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour|d|day)s?\s*")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@functools.lru_cache(maxsize=64)  # DRF's throttles parse their rate on every request
def parse_rate(text: str) -> tuple[int, int]:
    """``"6000/min"`` -> (6000, 60), ``"30/10min"`` -> (30, 600): requests per window seconds.

    DRF's own rates ("100/min"); an optional count before the unit allows longer windows.
    """
    match = _RATE_RE.fullmatch(text.lower())
    count, per = (int(match[1]), int(match[2] or 1)) if match else (0, 0)
    if match is None or count < 1 or per < 1:
        raise ValueError(f"not a rate: {text!r} (e.g. 6000/min, 30/10min, 100/s, off)")
    return count, per * _UNIT_SECONDS[match[3][0]]


def env_rate(name: str, default: str) -> str | None:
    """A rate like ``6000/min`` or ``30/10min`` (checked at startup); ``off`` means no limit."""
    raw = os.environ.get(name, default).strip()
    if raw.lower() in {"off", "none"}:
        return None
    try:
        parse_rate(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: {exc}") from None
    return raw


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
