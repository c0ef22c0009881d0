"""The recipes that come with stpdist: the repository's `configs/` (one YAML config a model
and dataset, `debug.yaml`, `quickstart.yaml`, the sweeps). A wheel ships them inside the
package as `stpdist/recipes/`; in a checkout they are `configs/` beside the package. The
docs write them as `configs/mmnist/convlstm.yaml`: a path of that form that is not in the
current folder is read from the shipped recipes, with a line saying so, so the docs'
commands work after a plain `pip install` too. A file of the user's own always wins."""

from __future__ import annotations

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
    """The shipped recipe that `path` (`configs/mmnist/convlstm.yaml`, or
    `mmnist/convlstm.yaml`, relative) names, or None."""
    path, recipes = Path(path), folder()
    if recipes is None or path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    inside = Path(*path.parts[1:]) if path.parts[0] == FOLDER_NAME else path
    candidate = recipes / inside
    return candidate if inside.parts and candidate.is_file() else None


def resolved(path: str) -> str:
    """`path` when it exists; else the shipped recipe it names (said in one line, by the
    main process), else `path` unchanged (the reader then says it is not found)."""
    if Path(path).exists():
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
