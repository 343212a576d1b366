"""Keep-alive signal from long responses to the process manager (gunicorn).

A gunicorn sync worker tells its arbiter it is alive only between requests, so a worker
streaming a long export would be killed ``timeout`` seconds in. gunicorn.conf.py's post_fork
hook installs the worker's ``notify`` here, and the export calls ``beat()`` as it makes
progress. Outside gunicorn (tests, runserver) ``beat`` does nothing.
"""

from __future__ import annotations

from collections.abc import Callable


def _nothing() -> None:
    return None


_beat: Callable[[], None] = _nothing


def install(notify: Callable[[], None]) -> None:
    global _beat
    _beat = notify


def beat() -> None:
    _beat()
