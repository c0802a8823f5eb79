"""User-facing errors.

A ``UserError`` is a mistake the user can fix (bad config, data, checkpoint, weights path, command line). Its message is
one line that names the problem and the fix. Command-line entry points wrap ``main`` in :func:`cli_main`, which prints
that line and exits with status 2 instead of a traceback. Library code raises; it never calls ``sys.exit``.
"""

from __future__ import annotations

import sys
from typing import Callable, NoReturn

__all__ = [
    "UserError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "WeightsError",
    "RunDirError",
    "USER_ERROR_EXIT_CODE",
    "cli_main",
]

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A problem in the user's input; the message says what is wrong and how to fix it."""


class ConfigError(UserError):
    """Invalid configuration file, override or value."""


class DataError(UserError):
    """Missing, empty, corrupt or mismatched dataset."""


class CheckpointError(UserError):
    """Checkpoint that cannot be loaded safely or does not match."""


class WeightsError(UserError):
    """Missing or corrupt FID Inception weights."""


class RunDirError(UserError):
    """Run directory that cannot be created or written."""


def cli_main(main: Callable[[], int | None]) -> NoReturn:
    """Run a CLI ``main``; print a ``UserError`` as one line and exit 2, else exit with main's status."""
    try:
        status = main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(int(status or 0))
