"""The recipes that come with stpdist: the repository's `configs/` (one YAML config a model
and dataset, `debug.yaml`, `quickstart.yaml`, the sweeps). A wheel ships them inside the
package as `stpdist/recipes/`; in a checkout they are `configs/` beside the package. The
docs write them as `configs/mmnist/convlstm.yaml`: a path of that form (and only that
form) that is not in the current folder is read from the shipped recipes, with a line
saying so, so the docs' commands work after a plain `pip install` too. A file of the
user's own (or a link of theirs, even a broken one) always wins."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .console import launched_as_main

FOLDER_NAME = "configs"  # the recipes' folder in the repository, as the docs name it


def folder() -> Path | None:
    """The shipped recipes' folder, or None when this install has none."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "recipes", package.parent / FOLDER_NAME):
        if (candidate / "debug.yaml").is_file():
            return candidate
    return None


def shipped(path: str | Path) -> Path | None:
    """The shipped recipe that `path` names as the docs write it (`configs/…`, relative),
    or None: another path never falls back (a mistyped path of the user's is an error)."""
    path, recipes = Path(path), folder()
    if recipes is None or path.is_absolute() or ".." in path.parts:
        return None
    if len(path.parts) < 2 or path.parts[0] != FOLDER_NAME:
        return None
    candidate = recipes / Path(*path.parts[1:])
    return candidate if candidate.is_file() else None


def resolved(path: str) -> str:
    """`path` when something is there (a broken link too: the user's, said as not found);
    else the shipped recipe it names (said in one line, by the main process), else `path`
    unchanged (the reader then says it is not found)."""
    if os.path.lexists(path):
        return path
    recipe = shipped(path)
    if recipe is None:
        return path
    if launched_as_main():
        print(
            f"stpdist: {path} is not in {Path.cwd()}: using the recipe that comes with "
            f"stpdist, {recipe} (copy it to edit it)",
            file=sys.stderr,
        )
    return str(recipe)


def hint(path: str | Path) -> str:
    """For a config file not found: where the shipped recipes are, when it looks like one."""
    recipes = folder()
    if recipes is None or Path(path).suffix.lower() not in (".yaml", ".yml"):
        return ""
    return f" (the recipes that come with stpdist are in {recipes})"
