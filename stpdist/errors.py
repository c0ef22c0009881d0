"""Exception types shared across stpdist.

`InputError` is bad input from the user: a file, array, argument or config value that is
wrong. Its message is one readable line naming what is wrong and what was expected; the
`stpdist` command prints it and exits 2, having written and deleted nothing.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input (file, array, argument, value); the message is one readable line."""
