"""Folders of the user's that libraries stpdist loads write to.

matplotlib (the sample pictures) keeps its font cache under `~/.config/matplotlib` and
`~/.cache/matplotlib`. Where those cannot be written (a cluster's compute node with a
read-only home, a service account without one) every process it is imported in warns and
builds its font cache again in a new temporary folder: each rank, each worker, each
command. stpdist then points it at a private folder of the user's in the temporary folder,
made once and reused.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from collections.abc import MutableMapping
from pathlib import Path


def _writable(folder: Path) -> bool:
    """Whether `folder` is a writable folder, or could be made in the nearest existing one
    above it (as matplotlib makes it), without making anything."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def _matplotlib_folders(env: MutableMapping[str, str]) -> list[Path]:
    """Where matplotlib would keep its configuration and cache (its own rules)."""
    home = env.get("HOME") or (Path.home() if "HOME" not in env else "")
    if not home:
        return []
    if sys.platform.startswith(("linux", "freebsd")):
        config = env.get("XDG_CONFIG_HOME") or Path(home, ".config")
        cache = env.get("XDG_CACHE_HOME") or Path(home, ".cache")
        return [Path(config, "matplotlib"), Path(cache, "matplotlib")]
    return [Path(home, ".matplotlib")]


def private_matplotlib_folder(env: MutableMapping[str, str] = os.environ) -> Path | None:
    """Set `MPLCONFIGDIR` to `<tmp>/stpdist-matplotlib-<uid>` (made 0700, used only when
    the user owns it and no one else may write it) where matplotlib's own folders cannot be
    written and `MPLCONFIGDIR` is not set; before matplotlib is imported. Returns the
    folder set, or None."""
    if env.get("MPLCONFIGDIR") or ("matplotlib" in sys.modules and env is os.environ):
        return None
    try:
        folders = _matplotlib_folders(env)
    except (RuntimeError, KeyError, OSError):  # no home at all (no passwd entry)
        folders = []
    if folders and all(_writable(folder) for folder in folders):
        return None
    if not hasattr(os, "getuid"):
        return None
    private = Path(tempfile.gettempdir(), f"stpdist-matplotlib-{os.getuid()}")
    try:
        private.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        found = os.lstat(private)
    except OSError:
        return None
    # another user's folder of that name, a link, or one others may write: not used
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o022:
        return None
    env["MPLCONFIGDIR"] = str(private)
    return private
