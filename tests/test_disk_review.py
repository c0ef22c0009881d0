"""What runs leave on disk, from a review of a user's disk over many runs and kills:
weights files readable by the run folder's group (safetensors wrote them 0600 whatever the
umask), the line of a run aborted before its first checkpoint ("newest checkpoint None"),
and a superseded checkpoint's warning. SIGTERM to forecast: test_forecast_large_inputs;
inspect's pictures folder: test_convert."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

DEBUG = str(ROOT / "configs" / "debug.yaml")


@pytest.fixture
def umask_027():
    before = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_weights_files_follow_the_umask_as_every_other_file(tmp_path, umask_027):
    """A checkpoint's and an exported model folder's `model.safetensors` with the mode of
    the files beside them (0640 under umask 027), not 0600."""
    run_cli("train", DEBUG, "trainer.max_epochs=1", cwd=tmp_path, check=True)
    checkpoint = next((tmp_path / "runs" / "debug" / "checkpoints").glob("step-*"))
    assert _mode(checkpoint / "model.safetensors") == _mode(checkpoint / "config.yaml") == 0o640
    run_cli("export", "runs/debug", "--out", "model", cwd=tmp_path, check=True)
    assert _mode(tmp_path / "model" / "model.safetensors") == 0o640


def test_a_run_aborted_before_its_first_checkpoint_says_it_starts_over(tmp_path, monkeypatch):
    """A second Ctrl-C before any checkpoint said 'newest checkpoint None; resume with …'."""
    from stpdist.trainer import Trainer

    def abort(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", abort)
    proc = run_cli("train", DEBUG, "trainer.max_epochs=1", cwd=tmp_path)
    assert proc.returncode == 130, proc.stderr[-2000:]
    line = next(x for x in proc.stderr.splitlines() if "second Ctrl-C" in x)
    assert line.startswith("stpdist: aborted on a second Ctrl-C; no checkpoint yet: stpdist train ")
    assert line.endswith(" --resume auto starts over"), line
    assert "None" not in line


def test_a_restart_from_scratch_names_the_earlier_starts_wandb_run(tmp_path):
    """Each start killed before its first checkpoint left an offline wandb folder of its
    own run id, which no line named (tracker.json names the newest only)."""
    import json

    pytest.importorskip("wandb")
    run = tmp_path / "runs" / "debug"
    run.mkdir(parents=True)
    # what a start killed before its first checkpoint leaves: its record, its wandb folder
    (run / "tracker.json").write_text(json.dumps({"run_id": "earlier1", "project": "stpdist"}))
    (run / "wandb" / "offline-run-20261206_120000-earlier1").mkdir(parents=True)
    proc = run_cli(
        "train", DEBUG, "trainer.max_epochs=1", "logging.trackers=[wandb]", "--resume", "auto",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    new = json.loads((run / "tracker.json").read_text())["run_id"]
    assert new != "earlier1"
    said = proc.stdout + proc.stderr
    assert (
        f"runs/debug/tracker.json named the tracker run earlier1 of an earlier start, which "
        f"left no checkpoint: this training is a new run, {new}; the earlier run's wandb "
        "folders stay (runs/debug/wandb/*-earlier1): delete them if you do not want them"
    ) in said, said[-3000:]


def test_sigterm_is_taken_over_only_where_it_would_end_the_process():
    """`main` called from a program with a SIGTERM handler of its own (or SIGTERM ignored)
    leaves it in place; with the default action, the command's own handler is on for the
    command and the default is back after."""
    import signal

    from stpdist.console import sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    try:
        for theirs in (lambda signum, frame: None, signal.SIG_IGN):
            signal.signal(signal.SIGTERM, theirs)
            with sigterm_as_interrupt():
                assert signal.getsignal(signal.SIGTERM) is theirs
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)
