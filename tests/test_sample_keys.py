"""Sample keys come from data (shard member names, a user's dataset): they become picture
file names only after sanitising, so a key such as "/abs/x" or "../../../../escape/x" never
writes outside the run folder, and keys that sanitise alike get distinct names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from helpers import TinyModule, loader

from stpdist import Trainer
from stpdist.config import LoggingConfig


class KeyedBatches:
    """An eval source (the Trainer's protocol: `iterate(ctx)` → (inputs, targets, keys))
    of one batch: 3 input frames → 2 target frames of 1×4×4, keyed as given; a data
    source of the user's names them like this (shard streams take member names)."""

    def __init__(self, keys: list[str]) -> None:
        g = torch.Generator().manual_seed(0)
        self.keys = keys
        self.frames = torch.rand(len(keys), 5, 1, 4, 4, generator=g)

    def iterate(self, ctx):
        yield self.frames[:, :3], self.frames[:, 3:], list(self.keys)


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_validation_sample_keys_cannot_leave_the_run_folder(tmp_path):
    """Through the trainer's own validation → Tracker.log_samples: an absolute key, a key
    climbing out with `..`, and two keys that sanitise alike."""
    outside = tmp_path / "abs" / "x"  # absolute, but inside tmp_path: the test stays tidy
    keys = [str(outside), "../../../../escape/x", "a/b", "a_b"]
    run = tmp_path / "deep" / "er" / "run"  # `../../../../` from its samples/step-N/ → deep/
    trainer = Trainer(
        output_dir=run,
        progress_bar=False,
        max_epochs=1,
        logging=LoggingConfig(num_samples=4),
    )
    trainer.fit(TinyModule(), loader(8, 4), KeyedBatches(keys))
    trainer.close()
    escaped = sorted(p.relative_to(tmp_path) for p in _files(tmp_path) - _files(run))
    assert escaped == []
    folder = run / "samples" / "step-00000002"
    stems = {p.stem for p in folder.glob("*.png") if p.name != "lead_time.png"}
    assert stems == {outside.as_posix().strip("/").replace("/", "_"), "escape_x", "a_b", "a_b-2"}
    assert len(list(folder.glob("*.gif"))) == 4


def test_sanitised_names_are_plain_distinct_and_never_empty():
    from stpdist.visualize import sample_file_stems

    keys = ["/abs/x", "../../../../escape/x", "a/b", "a_b", "a.b", "A_B", "..", "", "ok-1"]
    stems = sample_file_stems(keys)
    assert stems == [
        "abs_x",
        "escape_x",
        "a_b",
        "a_b-2",
        "a_b-3",
        "A_B-4",
        "sample",
        "sample-2",
        "ok-1",
    ]
    assert all(Path(s).name == s and not s.startswith(".") for s in stems)
    assert len(sample_file_stems(["x" * 400])[0]) <= 100  # within file-name limits


def test_save_samples_writes_inside_its_folder_only(tmp_path):
    """The writer `stpdist predict`, `forecast` and `inspect` call for their pictures."""
    from stpdist.visualize import save_samples

    frames = np.random.default_rng(0).random((3, 1, 4, 4))
    folder = tmp_path / "out" / "samples"
    keys = [str(tmp_path / "elsewhere" / "x"), "../../x", "../../x"]
    written = save_samples(folder, [(k, frames, frames, frames) for k in keys])
    assert _files(tmp_path) == _files(folder)
    assert [stem for stem, _, _ in written][1:] == ["x", "x-2"]
    assert all(png.parent == folder and gif.parent == folder for _, png, gif in written)
