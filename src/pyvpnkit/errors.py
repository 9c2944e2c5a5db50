"""Errors a user can cause: the CLI prints each as one line and exits with its code.

The exit codes follow docker run and unshare: 2 for a bad command line (as
argparse), 125 when pyvpnkit itself could not set up (namespace, TAP, file,
socket), 126 when the command cannot be executed, 127 when it is not found.
"""

from __future__ import annotations

USAGE = 2
SETUP_FAILED = 125
NOT_EXECUTABLE = 126
NOT_FOUND = 127


class UserError(Exception):
    """A problem with what the user asked for; the message names the option and value."""

    def __init__(self, message: str, exit_code: int = USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code
