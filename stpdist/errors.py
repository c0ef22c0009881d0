"""Exception types shared across stpdist.

`InputError` is bad input from the user: a file, array, argument or config value that is
wrong. Its message is one readable line naming what is wrong and what was expected; the
`stpdist` command prints it and exits 2, having written and deleted nothing.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class InputError(ValueError):
    """Bad user input (file, array, argument, value); the message is one readable line."""


def alike(exc: BaseException) -> BaseException:
    """`exc` marked as one that every rank of a run raises alike (the same checkpoint, the
    same choice sent to all): the command line says it once, from the main process."""
    exc.alike_on_every_rank = True  # type: ignore[attr-defined]
    return exc


PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "remote worker crash")
"""What gloo says when another rank's process is gone."""


def peer_lost(exc: BaseException) -> bool:
    """Whether `exc` is a collective's error for another rank's process gone."""
    return any(sign in str(exc) for sign in PEER_LOST)


class MissingInput(InputError, FileNotFoundError):
    """An input file or folder that is not there (or holds nothing to read): bad input, so
    the CLI exits 2 with the message; still a `FileNotFoundError` for callers that test for
    a missing file."""


class OutputExists(InputError, FileExistsError):
    """An output that is already there and must not be replaced (a used folder without
    `--overwrite`, a run folder holding an earlier run): bad input (exit 2); still a
    `FileExistsError` for callers that test for it."""


def require_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """`module`, a dependency of the pip extra `extra` that a default install lacks: when it
    (or a package it needs) is missing, an ImportError that says what needs it and how to
    install it, rather than a bare "No module named ...". `purpose` completes "... needs",
    e.g. "decoding KTH videos"."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or module
        raise ImportError(
            f"{purpose} needs {module} ({missing} is missing): pip install 'stpdist[{extra}]'"
        ) from exc
