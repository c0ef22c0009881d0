"""Sample pictures in long unattended runs: a picture that cannot be written (a full disk,
a folder that cannot be made) is one warning naming the folder and the run goes on; with
`logging.samples_every_n_validations` they are drawn at validations 1, N+1, 2N+1, …,
across a resume as without one, and the metrics at every validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import TinyModule, loader

from stpdist import Trainer
from stpdist.config import ConfigError, LoggingConfig
from stpdist.tracking import Tracker


def trainer(tmp_path: Path, every: int = 1, **fields) -> Trainer:
    """Validations after steps 2, 4, 6, 8 (2 steps an epoch), a checkpoint at each."""
    fields = {
        "max_epochs": None,
        "max_steps": 8,
        "val_every_n_steps": 2,
        "val_every_n_epochs": 0,
        "progress_bar": False,
        "output_dir": tmp_path / "run",
        **fields,
    }
    pictures = LoggingConfig(num_samples=1, trackers=[], samples_every_n_validations=every)
    return Trainer(logging=pictures, **fields)


def _validation_steps(run: Path) -> list[int]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if "val/num_samples" in row]


def _pictured(run: Path) -> dict[str, list[str]]:
    return {
        folder.name: sorted(p.name for p in folder.iterdir())
        for folder in sorted((run / "samples").iterdir())
        if folder.is_dir()
    }


def test_a_picture_that_cannot_be_written_is_a_warning_and_training_goes_on(
    tmp_path, capsys, monkeypatch
):
    """A full disk while the pictures were written ended a long run (OSError, no path)."""

    import stpdist.visualize as visualize

    run = tmp_path / "run"
    # step 2: the folder cannot be made (a file holds its name); step 4: the panel's write
    # fails with ENOSPC, as on a full disk (drawn aside: written to /dev/full, whose
    # link in the step's folder the drawn file then replaced)
    (run / "samples").mkdir(parents=True)
    blocked = run / "samples" / "step-00000002"
    blocked.write_text("not a folder")
    full = run / "samples" / "step-00000004"
    save_panel = visualize.save_panel

    def disk_full_at_step_4(path, *args, **kwargs):
        if kwargs.get("step") == 4:
            with open("/dev/full", "wb") as device:
                device.write(b"x" * 65536)
                device.flush()
        return save_panel(path, *args, **kwargs)

    monkeypatch.setattr(visualize, "save_panel", disk_full_at_step_4)
    trainer(tmp_path, max_steps=6).fit(TinyModule(), loader(8), loader(4, shuffle=False))
    warned = [line for line in capsys.readouterr().err.splitlines() if "sample pictures" in line]
    assert len(warned) == 2, warned
    assert warned[0].startswith(f"{blocked}: the sample pictures of step 2 were not written")
    assert "FileExistsError" in warned[0] and "training goes on" in warned[0]
    assert warned[1].startswith(f"{full}: the sample pictures of step 4 were not written")
    assert "No space left on device" in warned[1]
    # said once: later validations still try (and step 6 did write its pictures)
    assert [("later validations still try" in w) for w in warned] == [True, False]
    assert _validation_steps(run) == [2, 4, 6]
    assert blocked.read_text() == "not a folder"  # not ours: left as it was
    assert not full.exists()  # this validation's (partly written) files removed
    assert _pictured(run) == {
        "step-00000006": ["00000000.gif", "00000000.png"],
    }
    assert (run / "checkpoints" / "step-00000006").is_dir()


def test_partly_written_pictures_of_a_failed_validation_are_removed(tmp_path, monkeypatch):
    """The panel written, the disk full during the GIF: neither is left behind, nor a
    folder of others' files removed; Ctrl-C is not taken for a picture failure."""
    import errno

    import stpdist.visualize as visualize

    def half_a_gif(path, *args, **kwargs):
        Path(path).write_bytes(b"GIF89a")  # the first bytes, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(visualize, "save_gif", half_a_gif)
    tracker = Tracker(tmp_path, LoggingConfig(num_samples=1, trackers=[]))
    tracker.is_main = True
    frames = np.zeros((2, 1, 4, 4), "float32")
    sample = [("a/b", frames, frames, frames)]
    assert tracker.log_samples(sample, {}, step=3) is None
    assert not (tmp_path / "samples" / "step-00000003").exists()
    keep = tmp_path / "samples" / "step-00000005" / "notes.txt"
    keep.parent.mkdir()
    keep.write_text("mine")
    assert tracker.log_samples(sample, {}, step=5) is None
    assert sorted(p.name for p in keep.parent.iterdir()) == ["notes.txt"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(visualize, "save_panel", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tracker.log_samples(sample, {}, step=7)


def test_pictures_every_second_validation_and_the_same_ones_across_a_resume(tmp_path):
    """Every validation wrote its pictures: thousands of folders in a long run."""
    run = tmp_path / "run"
    trainer(tmp_path, every=2).fit(TinyModule(), loader(8), loader(4, shuffle=False))
    assert _validation_steps(run) == [2, 4, 6, 8]  # metrics at every validation
    assert _pictured(run) == {
        "step-00000002": ["00000000.gif", "00000000.png"],
        "step-00000006": ["00000000.gif", "00000000.png"],
    }
    # stopped after step 6 and resumed: validation 4 (step 8) is still not drawn
    again = tmp_path / "again"
    trainer(again, every=2, max_steps=6).fit(TinyModule(), loader(8), loader(4, shuffle=False))
    trainer(again, every=2).fit(TinyModule(), loader(8), loader(4, shuffle=False), resume="auto")
    assert _validation_steps(again / "run") == [2, 4, 6, 8]
    assert _pictured(again / "run") == _pictured(run)


def test_samples_every_n_validations_must_be_a_positive_integer(tmp_path):
    with pytest.raises(ConfigError, match=r"'logging.samples_every_n_validations' is 0; expected"):
        trainer(tmp_path, every=0)
