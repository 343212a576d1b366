#!/usr/bin/env python
"""Django's command-line utility for cdrservice."""

import os
import sys

# Commands that read only the code and the migrations, never a secret: they run without
# SECRET_KEY (CI's `makemigrations --check`). Every other command needs one.
SECRET_FREE_COMMANDS = {
    "makemigrations",
    "showmigrations",
    "sqlmigrate",
    "help",
    "version",
    "--help",
    "-h",
    "--version",
}


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cdrservice.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    from cdrservice.env import require_secret_key

    try:
        if (sys.argv[1:2] or ["help"])[0] not in SECRET_FREE_COMMANDS:
            require_secret_key()
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        sys.exit(f"configuration error: {exc}")


if __name__ == "__main__":
    main()
