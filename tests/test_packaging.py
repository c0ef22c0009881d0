"""stpdist as a user gets it from `pip install`, not from a checkout: the wheel carries the
recipes (`configs/` as `stpdist/recipes/`), its licence and `py.typed`, and the docs'
commands (`stpdist train configs/debug.yaml`) work in a folder of the user's own; the
source distribution holds the whole repository, so its tests run from it.

Before: the wheel held the Python files only. `stpdist train configs/debug.yaml` outside a
checkout said "config file not found", every recipe command likewise, and
`python -m stpdist.gpu_check` looked for recipes in site-packages; the sdist shipped the
test files without conftest.py (57 collection errors) and no licence text anywhere.

The builds call setuptools' PEP 517 hooks in a subprocess, on a copy of the working tree's
files (git's tracked and unignored ones), without build isolation: no network."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT


def _setuptools_table() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads TOML")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_the_package_list_names_every_subpackage_and_the_recipes():
    """pyproject lists the packages (the recipes' mapping needs a list, not `find`): a new
    subpackage left out of it would be missing from every wheel."""
    found = sorted(
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "stpdist").rglob("__init__.py")
    )
    config = _setuptools_table()
    assert sorted(config["packages"]) == sorted([*found, "stpdist.recipes"])
    assert config["package-dir"] == {"stpdist.recipes": "configs"}
    shipped = sorted(
        str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*") if p.is_file()
    )
    # every file of configs/ matched by the package-data globs (a deeper folder would not be)
    assert all(p.endswith(".yaml") and p.count("/") <= 1 for p in shipped), shipped


def _tree_copy(target: Path) -> set[str]:
    """The working tree's files that git tracks or would track, copied to `target`; their
    names."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    names = {name for name in listed if name and (ROOT / name).is_file()}
    for name in names:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target / name)
    return names


def _build(tree: Path, hook: str, out: Path) -> Path:
    out.mkdir()
    code = f"from setuptools import build_meta; print(build_meta.{hook}({str(out)!r}))"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, set[str]]:
    """A copy of the working tree, and its files' names."""
    folder = tmp_path_factory.mktemp("tree")
    return folder, _tree_copy(folder)


def test_the_wheel_ships_the_recipes_and_the_docs_commands_work_outside_a_checkout(tree, tmp_path):
    wheel = _build(tree[0], "build_wheel", tmp_path / "dist")
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = sorted(p.relative_to(ROOT / "configs") for p in (ROOT / "configs").rglob("*.yaml"))
    assert {f"stpdist/recipes/{p.as_posix()}" for p in recipes} <= names
    assert "stpdist/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith(".dist-info/METADATA")))
        .decode()
    )
    import stpdist

    assert f"\nVersion: {stpdist.__version__}\n" in metadata
    assert "\nLicense-Expression: Apache-2.0\n" in metadata

    # installed (the Python files and recipes only: the dependencies are this venv's), and
    # run from a folder that holds no configs/
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    user = tmp_path / "project"
    user.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "offline"}
    where = subprocess.run(
        [sys.executable, "-c", "import stpdist.recipes as r; print(r.__file__, r.folder())"],
        cwd=user, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert where == [str(site / "stpdist" / "recipes.py"), str(site / "stpdist" / "recipes")]
    command = [sys.executable, "-m", "stpdist", "train", "configs/debug.yaml"]
    proc = subprocess.run(
        [*command, "trainer.max_epochs=1", "data.synthesize.train=16"],
        cwd=user, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        f"stpdist: configs/debug.yaml is not in {user}: using the recipe that comes with "
        f"stpdist, {site / 'stpdist' / 'recipes' / 'debug.yaml'} (copy it to edit it)"
    ) in proc.stderr
    assert (user / "runs" / "debug" / "checkpoints").is_dir()

    # a name that is no recipe: not found, with where the recipes are
    proc = subprocess.run(
        [*command[:-1], "configs/mmnist/nothing.yaml"],
        cwd=user, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "stpdist: config error: config file not found: configs/mmnist/nothing.yaml (the "
        f"recipes that come with stpdist are in {site / 'stpdist' / 'recipes'})"
    )


def test_the_sdist_holds_the_repository(tree, tmp_path):
    """Every file git tracks (but .gitignore) is in the source distribution, tests and
    their helpers, recipes, docs and launch scripts included; nothing of a build."""
    sdist = _build(tree[0], "build_sdist", tmp_path / "dist")
    with tarfile.open(sdist) as archive:
        top = f"{sdist.name.removesuffix('.tar.gz')}/"
        names = {m.name.removeprefix(top) for m in archive.getmembers() if m.isfile()}
    tracked = tree[1] - {".gitignore"}
    assert tracked <= names, sorted(tracked - names)[:10]
    extra = {n for n in names - tracked if not n.startswith("stpdist.egg-info/")}
    assert extra == {"PKG-INFO", "setup.cfg"}, sorted(extra)


def test_fsdp_on_a_torch_without_fully_shard_is_a_config_error(monkeypatch):
    """pyproject allows torch 2.4; FSDP2's `fully_shard` is public from 2.6: the import
    error there named no setting."""
    import torch
    import torch.distributed.fsdp as fsdp_api

    from stpdist.config import ConfigError
    from stpdist.fsdp import shard

    monkeypatch.delattr(fsdp_api, "fully_shard")
    with pytest.raises(ConfigError) as caught:
        shard(torch.nn.Linear(2, 2), [])
    assert str(caught.value) == (
        "trainer.strategy: fsdp needs torch 2.6 or later (FSDP2's fully_shard); this is "
        f"torch {torch.__version__}: upgrade torch, or train with trainer.strategy: ddp"
    )
