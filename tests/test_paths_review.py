"""Paths as users have them, from a review of symlinks, odd names, overlaps and permissions
(no case deleted through a link; these did other harm):

- `--overwrite` onto a write-protected output (`chmod -R a-w`) replaced it anyway, then
  failed deleting the old copy (exit 1), and the hidden old copy stuck every later command;
  an empty write-protected folder was replaced without a word;
- a run copied with `cp -al` (or `cp -rs`) and resumed appended its lines to the original
  run's `metrics.jsonl`, through the link;
- a `.stpdist.lock` that is a link: its target was overwritten with the lock's content;
- a dangling link as `trainer.output_dir`: `FileExistsError` after the data was made;
- a checkpoint folder that is a link stayed as `.trash-…` after retention;
- `~` in a path setting made a folder named `~`; a validation split that is the training
  split trained and validated on the same data without a word."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli

from stpdist.config import load_config

DEBUG = str(ROOT / "configs" / "debug.yaml")


def _error_line(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def _protect(folder: Path, protect: bool = True) -> None:
    for path in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        path.chmod(mode & ~0o222 if protect else mode | 0o200)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A debug run (1 epoch), its folder as the cwd's runs/debug."""
    root = tmp_path_factory.mktemp("paths")
    run_cli("train", DEBUG, "trainer.max_epochs=1", "logging.num_samples=0", cwd=root, check=True)
    return root


def test_overwrite_onto_a_write_protected_output_is_refused_before_any_work(trained, tmp_path):
    np.save(tmp_path / "latest.npy", np.zeros((4, 1, 32, 32), np.float32))
    model = str(trained / "runs" / "debug")
    args = ("forecast", model, "latest.npy", "--samples", "0")
    run_cli(*args, "--out", "f", cwd=tmp_path, check=True)
    (tmp_path / "empty").mkdir()
    before = sorted(p.name for p in (tmp_path / "f").iterdir())
    _protect(tmp_path / "f")
    _protect(tmp_path / "empty")
    try:
        line = _error_line(run_cli(*args, "--out", "f", "--overwrite", cwd=tmp_path))
        assert line == (
            "stpdist: error: --out f: it is write-protected (mode dr-xr-xr-x), so it is not "
            "replaced: make it writable (chmod -R u+w) or name another --out"
        )
        line = _error_line(run_cli(*args, "--out", "empty", cwd=tmp_path))
        assert "--out empty: it is write-protected (mode dr-xr-xr-x)" in line
        assert sorted(p.name for p in (tmp_path / "f").iterdir()) == before
        assert not stat.S_IMODE((tmp_path / "f").stat().st_mode) & 0o222  # still protected
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    finally:
        _protect(tmp_path / "f", False)
        _protect(tmp_path / "empty", False)


def test_a_resumed_copy_of_a_run_made_with_hard_links_leaves_the_original_alone(trained, tmp_path):
    original = tmp_path / "runs" / "debug"
    shutil.copytree(trained / "runs" / "debug", original)
    shutil.copytree(original, tmp_path / "runs" / "copy", copy_function=os.link)  # cp -al
    assert (tmp_path / "runs" / "copy" / "metrics.jsonl").stat().st_nlink == 2
    before = (original / "metrics.jsonl").read_bytes()
    run_cli(
        "train", DEBUG, "trainer.max_epochs=2", "trainer.output_dir=runs/copy",
        "logging.num_samples=0", "--resume", "auto", cwd=tmp_path, check=True,
    )  # fmt: skip
    assert (original / "metrics.jsonl").read_bytes() == before
    copied = (tmp_path / "runs" / "copy" / "metrics.jsonl").read_bytes()
    assert copied.startswith(before) and len(copied) > len(before)


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_kept(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("precious\n")
    (tmp_path / "runs" / "L").mkdir(parents=True)
    (tmp_path / "runs" / "L" / ".stpdist.lock").symlink_to(victim)
    proc = run_cli("train", DEBUG, "trainer.output_dir=runs/L", cwd=tmp_path)
    assert _error_line(proc) == (
        "stpdist: error: runs/L/.stpdist.lock is a symbolic link; a run's lock file is a "
        "file of the run folder's own, written on each start (the link's target would be "
        "overwritten): remove the link"
    )
    assert victim.read_text() == "precious\n"


def test_a_dangling_link_as_output_dir_trains_into_its_target(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "dang").symlink_to(tmp_path / "elsewhere" / "deep")
    run_cli(
        "train", DEBUG, "trainer.max_epochs=1", "trainer.output_dir=runs/dang",
        "logging.num_samples=0", cwd=tmp_path, check=True,
    )  # fmt: skip
    assert (tmp_path / "runs" / "dang").is_symlink()
    assert any((tmp_path / "elsewhere" / "deep" / "checkpoints").glob("step-*"))


def test_retention_removes_a_linked_checkpoint_as_a_link(trained, tmp_path):
    """The archive the link points to stays whole; no `.trash-…` is left."""
    shutil.copytree(trained / "runs" / "debug", tmp_path / "runs" / "debug")
    checkpoints = tmp_path / "runs" / "debug" / "checkpoints"
    (step,) = checkpoints.glob("step-*")
    archive = tmp_path / "archive" / step.name
    shutil.move(step, archive)
    step.symlink_to(archive)
    run_cli(
        "train", DEBUG, "trainer.max_epochs=3", "trainer.checkpoint.keep_last=1",
        "trainer.checkpoint.keep_best=0", "logging.num_samples=0", "--resume", "auto",
        cwd=tmp_path, check=True,
    )  # fmt: skip
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000024"]
    assert (archive / "model.safetensors").is_file()


def test_a_home_folder_in_a_path_setting_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_config(
        DEBUG,
        ["trainer.output_dir=~/runs/x", "data.root=~/data/d", "data.synthesize.root=~/data/d",
         "model.init_weights=~/w/run", "model.evaluation.lpips_weights=~/w/alex.pth"],
    )  # fmt: skip
    home = tmp_path / "home"
    assert cfg.trainer.output_dir == str(home / "runs" / "x")
    assert cfg.data.root == cfg.data.synthesize.root == str(home / "data" / "d")
    assert cfg.model.init_weights == str(home / "w" / "run")  # (no test had these two)
    assert cfg.model.evaluation.lpips_weights == str(home / "w" / "alex.pth")


def test_validating_on_the_training_split_is_warned_of(trained):
    """On the data the config generated with its three splits; the run said besides that
    the data was "generated with other settings than data.synthesize (train 32 → 8)"."""
    proc = run_cli(
        "train", DEBUG, "trainer.max_epochs=1", "data.val_split=train", "logging.num_samples=0",
        "trainer.output_dir=runs/on-train", cwd=trained,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the validation split train is the training split train" in proc.stderr
    assert "other settings" not in proc.stdout + proc.stderr


def test_a_hard_linked_lock_file_gets_one_of_its_own(tmp_path):
    """A run folder copied with `cp -al` while its lock file was left (a killed run): the
    copy wrote into the original's lock file, and the two folders locked each other."""
    from stpdist.runlock import LOCK_FILE, RunLock

    original, copy = tmp_path / "A", tmp_path / "B"
    original.mkdir()
    (original / LOCK_FILE).write_text("")
    copy.mkdir()
    os.link(original / LOCK_FILE, copy / LOCK_FILE)
    with RunLock(copy), RunLock(original) as lock:  # both held at once: two folders
        assert lock.held
        assert (copy / LOCK_FILE).stat().st_ino != (original / LOCK_FILE).stat().st_ino
        assert str(original) not in (copy / LOCK_FILE).read_text()


def test_a_write_protected_folder_among_foreign_files_is_refused_as_foreign(tmp_path):
    """The foreign files are the refusal; making a folder stpdist would never replace
    writable was the first advice."""
    (tmp_path / "proj" / "go" / "mod").mkdir(parents=True)
    (tmp_path / "proj" / "notes.txt").write_text("mine\n")
    _protect(tmp_path / "proj" / "go")
    try:
        proc = run_cli(
            "synth", "moving-digits", "--out", "proj", "--train", "4", "--val", "2",
            "--test", "2", "--frames", "4", "--size", "16", "--digit-size", "8",
            "--workers", "1", "--overwrite", cwd=tmp_path,
        )  # fmt: skip
        line = _error_line(proc)
        assert "which no stpdist conversion wrote" in line and "write-protected" not in line
    finally:
        _protect(tmp_path / "proj" / "go", False)


def test_only_the_docs_form_of_a_recipe_path_falls_back_and_a_broken_link_is_the_users(
    tmp_path, monkeypatch
):
    from stpdist.recipes import resolved

    monkeypatch.chdir(tmp_path)
    assert resolved("debug.yaml") == "debug.yaml"  # a bare name: the user's, not found
    assert resolved("mmnist/convlstm.yaml") == "mmnist/convlstm.yaml"
    assert resolved("configs/debug.yaml").endswith("debug.yaml")
    assert resolved("configs/debug.yaml") != "configs/debug.yaml"  # the shipped one
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "debug.yaml").symlink_to(tmp_path / "moved" / "debug.yaml")
    assert resolved("configs/debug.yaml") == "configs/debug.yaml"  # theirs: said not found


def test_the_write_protected_refusal_is_every_ranks(tmp_path):
    """On 2 ranks the main process alone refused (in its staging), and the other rank said
    "another rank of this run stopped … run it again": every rank checks the folder now,
    before the process group's work, and the command line says the refusal once."""
    from stpdist.errors import InputError
    from stpdist.inference import check_output_folder

    (tmp_path / "out").mkdir()
    _protect(tmp_path / "out")
    try:
        with pytest.raises(InputError) as caught:
            check_output_folder(tmp_path / "out", overwrite=True)
        assert getattr(caught.value, "alike_on_every_rank", False)
    finally:
        _protect(tmp_path / "out", False)


def test_an_out_in_a_folder_that_cannot_be_written_is_named_not_its_staging(tmp_path, monkeypatch):
    """A writable-looking `--out` in a read-only parent failed with the bare "Permission
    denied: '.../.ds.staging-<pid>'" of a hidden folder the user never named. The kernel's
    refusal is injected here (the tests run as root, whom a mode does not stop)."""
    (tmp_path / "ro").mkdir()
    real_mkdir = os.mkdir

    def refused(path, *args, **kwargs):
        if Path(os.fsdecode(path)).parent.name == "ro":
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refused)
    for out in ("ro/ds", "ro/deeper/ds"):
        line = _error_line(
            run_cli(
                "synth", "moving-digits", "--out", out, "--train", "2", "--val", "2", cwd=tmp_path
            )
        )
        assert line == (
            f"stpdist: error: --out {out}: cannot write in ro (Permission denied); the output "
            "is written beside it and then renamed into place, so its folder must be "
            "writable: name another --out"
        ), line
    assert os.listdir(tmp_path / "ro") == []


def test_forecast_refuses_its_out_before_surveying_the_inputs(trained, tmp_path):
    """A refused `--out` came after the inputs' survey: minutes for a large file, and its
    units warning printed above the error as if it mattered."""
    np.save(tmp_path / "dim.npy", np.full((4, 1, 32, 32), 0.5, np.float32))  # [0, 1]: warned
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("mine\n")
    model = str(trained / "runs" / "debug")
    proc = run_cli("forecast", model, "dim.npy", "--out", "taken", cwd=tmp_path)
    assert "--out taken" in _error_line(proc)
    assert "the values lie within [0, 1]" not in proc.stderr, proc.stderr
    done = run_cli("forecast", model, "dim.npy", "--out", "f", "--samples", "0", cwd=tmp_path)
    assert done.returncode == 0 and "the values lie within [0, 1]" in done.stderr, done.stderr
