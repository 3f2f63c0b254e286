"""The one base class for failures a user can act on.

Anything raised as a `DelineoError` carries a message that names the file or setting and what to
do; the CLI prints it as one line (exit 2) and the GUI shows it in a dialog. Anything else is a
bug and goes to the log with its traceback.
"""

from __future__ import annotations


class DelineoError(Exception):
    """A failure caused by input or environment, with a message meant for the user."""


def is_user_error(e: BaseException) -> bool:
    return isinstance(e, DelineoError | FileNotFoundError | PermissionError | IsADirectoryError)
