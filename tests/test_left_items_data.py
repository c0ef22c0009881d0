"""What `predict`, `forecast` and the converters left to fix: pictures that cannot be
written (a full disk) are one warning and leave the predictions complete; a sample key
that two ranks predict is refused naming both; `shard arrays` names the chunk file whose
times are out of order; SEVIR's and TaxiBJ's overlapping windows count each frame once in
the split statistics."""

from __future__ import annotations

import errno
import os
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, run_ranks

from stpdist.data.format import SplitWriter, read_index
from stpdist.trainer import load_predictions

DEBUG = str(Path(__file__).parent.parent / "configs" / "debug.yaml")


# ---------------------------------------------------------------- pictures on a full disk
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The debug config trained for one epoch, and 3 input sequences (arrays) to forecast."""
    root = tmp_path_factory.mktemp("pictures")
    run_cli("train", DEBUG, "trainer.max_epochs=1", "logging.num_samples=0", cwd=root, check=True)
    (root / "arrays").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(root / "arrays" / f"seq{i}.npy", rng.integers(0, 255, (4, 1, 32, 32)) * 1.0)
    return root


def full_disk(monkeypatch) -> list[Path]:
    """The GIF writer fills the disk: a partly written file, then ENOSPC (the panels before
    it are written whole). A full disk cannot be made in a test; the writer that meets it
    is replaced. Returns the GIFs it was asked to write."""
    import stpdist.visualize

    asked = []

    def write_half(path, *args, **kwargs):
        asked.append(Path(path))
        Path(path).write_bytes(b"GIF89a\x20\x00")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(stpdist.visualize, "save_gif", write_half)
    return asked


COMMANDS = {
    "predict": (("predict", DEBUG), [f"test_{i:07d}" for i in range(8)]),
    "forecast": (("forecast", "runs/debug", "arrays"), [f"seq{i}" for i in range(3)]),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_pictures_that_meet_a_full_disk_leave_the_predictions_complete(
    trained, monkeypatch, command
):
    """It stopped the command (exit 1) and lost the predictions with the staging folder:
    now one warning naming the pictures' folder (as the user finds it, not the staging
    folder), no picture left (the whole panel nor the partial GIF), every prediction."""
    args, keys = COMMANDS[command]
    asked = full_disk(monkeypatch)
    out = trained / command
    proc = run_cli(*args, "--samples", "2", "--out", str(out), cwd=trained)
    assert proc.returncode == 0, proc.stderr
    assert len(asked) == 1  # the first sample's GIF: its panel was written, whole
    said = [line for line in proc.stderr.splitlines() if "sample pictures" in line]
    assert len(said) == 1, proc.stderr
    assert said[0].startswith(
        f"{out / 'samples'}: the sample pictures were not written (OSError: [Errno "
        f"{errno.ENOSPC}] No space left on device: {asked[0].name}); they are left out"
    )
    assert ".staging-" not in proc.stderr
    assert not (out / "samples").exists() and "pictures: " not in proc.stdout
    assert sorted(load_predictions(out)) == keys
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []


def test_save_samples_into_a_folder_that_cannot_be_made_warns_or_raises_when_strict(
    tmp_path, caplog
):
    """A real OSError (the folder's parent is a file): a warning and [] by default, raised
    with `strict` (training's tracker, which removes its validation's files itself)."""
    import logging

    from stpdist.visualize import save_samples

    (tmp_path / "file").write_text("not a folder")
    frames = np.zeros((2, 1, 4, 4), np.float32)
    samples = [("k", frames, frames, frames)]
    with caplog.at_level(logging.WARNING, logger="stpdist"):
        assert save_samples(tmp_path / "file" / "samples", samples) == []
    (said,) = [record.getMessage() for record in caplog.records]
    assert said.startswith(f"{tmp_path / 'file' / 'samples'}: the sample pictures were not")
    with pytest.raises(OSError):
        save_samples(tmp_path / "file" / "samples", samples, strict=True)
    with pytest.raises(ValueError, match="for data of 1 channels"):  # the caller's error
        save_samples(tmp_path / "ok", samples, channel_names=["a", "b"])


# ---------------------------------------------------------------- a key on two ranks
RANKS_SCRIPT = """
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, {tests!r})
from helpers import TinyModule

from stpdist.errors import InputError
from stpdist.trainer import Trainer


class Keyed(Dataset):
    def __init__(self, keys):
        self.keys = keys
        self.frames = torch.rand(len(keys), 5, 1, 4, 4, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        return self.frames[i, :3], self.frames[i, 3:]

    def key(self, i):
        return self.keys[i]


out = Path(sys.argv[1])
said = []
trainer = Trainer(output_dir=out / "run", progress_bar=False)
rank = trainer.accelerator.process_index
torch.manual_seed(0)
module = TinyModule()
for name, keys in (("unique", ["a", "b", "c", "d"]), ("shared", ["a", "b", "c", "a"])):
    folder = out / name
    try:  # ranks 0 and 1 each get two samples: the key 'a' on both in "shared"
        trainer.predict(module, DataLoader(Keyed(keys), batch_size=2), out=folder, metrics=False)
        said.append(f"rank {{rank}} {{name}}: accepted")
    except InputError as exc:
        said.append(f"rank {{rank}} {{name}}: refused: {{exc}}")
trainer.close()
(out / f"said-{{rank}}.txt").write_text("\\n".join(said))
"""


def test_a_sample_key_on_two_ranks_is_refused_naming_it_and_the_ranks(tmp_path):
    """Each rank refused a key met twice in its own share only: 'a' predicted by rank 0
    and by rank 1 was written twice, and `load_predictions` kept one. Gathered after the
    pass, on 2 gloo ranks: refused on both, naming the key and the ranks."""
    script = tmp_path / "keys.py"
    script.write_text(RANKS_SCRIPT.format(tests=str(Path(__file__).parent)))
    proc = run_ranks([str(script), str(tmp_path)], 2, timeout=120, cwd=tmp_path)
    said = sorted(
        line for r in (0, 1) for line in (tmp_path / f"said-{r}.txt").read_text().split("\n")
    )
    refusal = (
        "refused: sample key 'a' appears on ranks 0 and 1 in the test data; predictions are "
        "written by key and one would replace the other: give each sample its own key"
    )
    assert said == [
        f"rank 0 shared: {refusal}",
        "rank 0 unique: accepted",
        f"rank 1 shared: {refusal}",
        "rank 1 unique: accepted",
    ], proc.stdout + proc.stderr


# ---------------------------------------------------------------- chunks out of time order
def hourly_chunk(path: Path, hours: list[int]) -> None:
    """A chunk of `shard arrays` series mode: frames and their times (hours of 2020-01-01)."""
    times = np.datetime64("2020-01-01T00", "h") + np.array(hours) * np.timedelta64(1, "h")
    np.savez(path, data=np.zeros((len(hours), 4, 4), np.float32), time=times)


@pytest.mark.parametrize("inside", [False, True])
def test_a_chunk_out_of_time_order_is_named(tmp_path, inside):
    """It said "<folder>: times do not increase at frame 8", a position in the whole
    series: the file at fault (and the one before it) must be found by hand."""
    from stpdist.data.sources.generic import GenericArrays
    from stpdist.errors import InputError

    hourly_chunk(tmp_path / "chunk1.npz", [0, 1, 2, 3])
    if inside:  # one chunk's own times go back
        hourly_chunk(tmp_path / "chunk2.npz", [4, 6, 5, 7])
        hourly_chunk(tmp_path / "chunk10.npz", [8, 9, 10, 11])
    else:  # chunk10 (read after chunk2: names in natural order) holds the earlier hours
        hourly_chunk(tmp_path / "chunk2.npz", [8, 9, 10, 11])
        hourly_chunk(tmp_path / "chunk10.npz", [4, 5, 6, 7])
    with pytest.raises(InputError) as refused:
        GenericArrays(str(tmp_path), num_frames=2, time_key="time").splits()
    if inside:
        assert str(refused.value) == (
            f"{tmp_path / 'chunk2.npz'}: times do not increase at frame 2 (2020-01-01T06:00 "
            "then 2020-01-01T05:00): remove the repeated or misplaced frames"
        )
    else:
        assert str(refused.value) == (
            f"{tmp_path / 'chunk10.npz'}: times go back: it starts at 2020-01-01T04:00, not "
            f"after the end of {tmp_path / 'chunk2.npz'} (2020-01-01T11:00), the chunk before "
            "it in name order (digit runs compared as numbers: chunk2 before chunk10); chunks "
            "are read in name order: name them in time order, or remove the time steps they "
            "both hold"
        )


# ---------------------------------------------------------------- each frame counted once
def by_hand(folder: Path, windows: list[np.ndarray], scale: float):
    """The statistics of a split of these windows with no series position in their
    metadata: every window's frames counted, as the converters wrote them before."""
    with SplitWriter(folder, "train", value_scale=scale) as writer:
        for number, window in enumerate(windows):
            writer.write(f"w{number:04d}", np.ascontiguousarray(window))
    index = read_index(folder)
    return index.mean, index.std, index.min, index.max


def check_counted_once(index, frames_TCHW: np.ndarray, scale: float) -> None:
    values = frames_TCHW.astype(np.float64) / scale
    np.testing.assert_allclose(index.mean, [values.mean()], rtol=1e-12)
    np.testing.assert_allclose(index.std, [values.std()], rtol=1e-9)
    assert (index.min, index.max) == ([float(values.min())], [float(values.max())])


def test_sevir_windows_count_each_frame_of_each_event_once(tmp_path):
    """25-frame windows every 12 frames: frames 12 and 24 of each 49-frame event were
    counted twice. Two events in one split: each event's frames count once (frame 0 of the
    second event is not frame 0 of the first). Windows that do not overlap: bitwise the
    statistics of every window's frames, as before."""
    pytest.importorskip("h5py")
    from test_weather import sevir_layout

    from stpdist.data.convert import convert
    from stpdist.data.sources.sevir import Sevir

    events = sevir_layout(tmp_path / "sevir")  # train: S001 and S002, 49×1×16×16 each
    catalog = str(tmp_path / "sevir" / "CATALOG.csv")
    index = convert(Sevir(catalog), tmp_path / "overlap", progress=False)["train"]
    assert index.num_samples == 6  # windows at 0, 12 and 24 of each event
    check_counted_once(index, np.concatenate([events["S001"], events["S002"]]), 255.0)
    index = convert(Sevir(catalog, num_frames=12, stride=12), tmp_path / "apart", progress=False)
    windows = [events[e][s : s + 12] for e in ("S001", "S002") for s in (0, 12, 24, 36)]
    expected = by_hand(tmp_path / "hand", windows, 255.0)
    train = index["train"]
    assert (train.mean, train.std, train.min, train.max) == expected


def taxibj_month(path: Path, month: int, seed: int) -> np.ndarray:
    """A TaxiBJ file of one day (48 half-hour slots) of 2013-`month`-01; its flows."""
    import h5py

    day = datetime(2013, month, 1)
    slots = [day + timedelta(minutes=30 * i) for i in range(48)]
    flows = np.random.default_rng(seed).random((48, 2, 4, 4)) * 1292
    with h5py.File(path, "w") as f:
        f["data"] = flows
        f["date"] = np.array([f"{t:%Y%m%d}{i + 1:02d}".encode() for i, t in enumerate(slots)])
    return flows.astype(np.float32)


def test_taxibj_windows_count_each_slot_of_each_file_once(tmp_path):
    """8-slot windows every slot: a middle slot was counted 8 times, the first once. Two
    files in the train split: each file's slots once. Windows that do not overlap: bitwise
    the statistics as before."""
    pytest.importorskip("h5py")
    from stpdist.data.convert import convert
    from stpdist.data.sources.taxibj import TaxiBJ

    files = [tmp_path / f"BJ13_{month}.h5" for month in (1, 2, 3)]
    flows = [taxibj_month(path, month, month) for month, path in zip((1, 2, 3), files)]
    paths = [str(p) for p in files]
    # the last day (March) is test; January and February train, all 48 slots of each
    index = convert(TaxiBJ(paths, num_frames=8, test_days=1), tmp_path / "o", progress=False)
    train = index["train"]
    assert train.num_samples == 2 * 41
    values = np.concatenate(flows[:2]).astype(np.float64) / 1292
    for c in range(2):  # per channel
        np.testing.assert_allclose(train.mean[c], values[:, c].mean(), rtol=1e-12)
        np.testing.assert_allclose(train.std[c], values[:, c].std(), rtol=1e-9)
        assert (train.min[c], train.max[c]) == (values[:, c].min(), values[:, c].max())
    source = TaxiBJ(paths, num_frames=8, stride=8, test_days=1)
    train = convert(source, tmp_path / "apart", progress=False)["train"]
    windows = [month[s : s + 8] for month in flows[:2] for s in range(0, 41, 8)]
    assert (train.mean, train.std, train.min, train.max) == by_hand(
        tmp_path / "hand", windows, 1292.0
    )
    from test_weather import stored  # each window's metadata names its series and position

    metas = [meta for _, meta in stored(tmp_path / "apart" / "train").values()]
    assert {(m["series_id"], m["series_index"]) for m in metas} == {
        (path.name, s) for path in files[:2] for s in range(0, 41, 8)
    }
