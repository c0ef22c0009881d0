"""matplotlib's folders where the home folder cannot be written (`stpdist/userdirs.py`):
fresh interpreters, since the setting is made as stpdist is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = (
    "import os, stpdist, matplotlib, matplotlib.font_manager; "
    "print(os.environ.get('MPLCONFIGDIR')); print(matplotlib.get_cachedir())"
)


def _run(tmp_path, home: str, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CACHE_HOME",
                                                            "XDG_CONFIG_HOME")}  # fmt: skip
    env.update(HOME=home, TMPDIR=str(tmp_path), OMP_NUM_THREADS="1", **extra)
    return subprocess.run(
        [sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.skipif(not os.path.isfile("/proc/version"), reason="needs /proc (Linux)")
def test_an_unwritable_home_gets_a_private_folder_made_once_and_no_warning(tmp_path):
    """An admin review: with a home that cannot be written (a compute node's read-only
    home), every process importing matplotlib warned and built its font cache again in a
    new temporary folder. /proc/version is a file: nothing can be made under it, even by
    root."""
    private = tmp_path / f"stpdist-matplotlib-{os.getuid()}"
    for _ in range(2):  # made, then reused
        done = _run(tmp_path, "/proc/version")
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [str(private), str(private)], done.stdout
        assert "Matplotlib created a temporary" not in done.stderr, done.stderr
    assert oct(private.stat().st_mode & 0o777) == "0o700"
    assert any(private.glob("fontlist-*.json"))  # the font cache, kept for the next process


def test_a_writable_home_or_a_chosen_folder_is_left_to_matplotlib(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    done = _run(tmp_path, str(home))
    assert done.stdout.split() == ["None", str(home / ".cache" / "matplotlib")], done.stderr
    chosen = tmp_path / "chosen"
    done = _run(tmp_path, "/proc/version", MPLCONFIGDIR=str(chosen))
    assert done.stdout.split() == [str(chosen), str(chosen)], done.stderr
    assert not (tmp_path / f"stpdist-matplotlib-{os.getuid()}").exists()


@pytest.mark.skipif(not os.path.isfile("/proc/version"), reason="needs /proc (Linux)")
def test_a_private_folder_others_may_write_or_a_link_is_not_used(tmp_path):
    """A folder of that name others may write (made by someone else in a shared /tmp)
    could plant a matplotlibrc: it is not used, and matplotlib falls back as without
    stpdist (its warning, a temporary folder)."""
    private = tmp_path / f"stpdist-matplotlib-{os.getuid()}"
    private.mkdir(mode=0o777)
    private.chmod(0o777)
    done = _run(tmp_path, "/proc/version")
    assert str(private) not in done.stdout, done.stdout  # matplotlib's own temporary one
    assert "Matplotlib created a temporary" in done.stderr, done.stderr
    private.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    private.symlink_to(elsewhere)
    done = _run(tmp_path, "/proc/version")
    assert str(private) not in done.stdout and str(elsewhere) not in done.stdout, done.stdout
    assert not any(elsewhere.iterdir())
