"""`stpdist forecast` from array files larger than memory: an .npy is memory-mapped, an
.npz member is read from its zip stream a piece at a time, so memory is bounded by a
piece (`inference.SURVEY_BYTES`) and a batch, not by the file. The old reader loaded each
file whole: a 6.7 MB `.npz` declaring 1.5 GB of frames of the model's size took 2.2 GB.

The model is the debug config's (4 → 4 frames of 1×32×32, values 0–255) with its initial
weights, as a model folder: no training needed."""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from helpers import debug_model_folder

import stpdist
from stpdist import inference
from stpdist.errors import InputError
from stpdist.inference import InputFrames
from stpdist.trainer import load_predictions

DEBUG = Path(__file__).parent.parent / "configs" / "debug.yaml"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return debug_model_folder(tmp_path_factory.mktemp("large-inputs"))


def _sequences(n: int, t: int = 6, seed: int = 0) -> np.ndarray:
    """n sequences of t frames of 1×32×32, float32 in 0–255."""
    return np.random.default_rng(seed).uniform(0, 255, (n, t, 1, 32, 32)).astype(np.float32)


def _inputs(frames: InputFrames) -> np.ndarray:
    return np.stack([frames[i]["inputs"].numpy() for i in range(len(frames))])


@pytest.mark.parametrize("writer", ["npy", "npz", "npz_compressed"])
def test_many_sequences_are_read_in_pieces_with_memory_bounded_by_a_piece(
    model, tmp_path, monkeypatch, writer
):
    """600 sequences (14.7 MB of float32) checked in pieces of 256 KiB and read one at a
    time: the peak of traced allocations stays under 6 MiB (the old reader held the whole
    array, and a copy of it for the NaN check: 17.7 MiB), and every sequence's inputs
    are its newest 4 frames, scaled, as from the array in memory."""
    module = stpdist.load(model)
    data = _sequences(600)
    file = tmp_path / f"many.{writer[:3]}"
    if writer == "npy":
        np.save(file, data)
    else:
        (np.savez if writer == "npz" else np.savez_compressed)(file, frames=data)
    monkeypatch.setattr(inference, "SURVEY_BYTES", 256 << 10)
    tracemalloc.start()
    try:
        frames = InputFrames(file, module)
        peak = 0
        for i in range(len(frames)):
            got = frames[i]["inputs"].numpy()
            np.testing.assert_array_equal(got, data[i, -4:] / np.float32(255.0))
            peak = max(peak, tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()
    assert len(frames) == 600 and frames.key(599) == "many_000599"
    # bounded well below the file (the old reader: 17.7 MiB), with room for what another
    # thread of the test process allocates meanwhile (tracemalloc sees every thread)
    assert peak < 6 << 20, f"peak {peak / 2**20:.1f} MiB for a file of {data.nbytes / 2**20:.1f}"


def test_one_long_sequence_file_gives_its_newest_frames(model, tmp_path, monkeypatch):
    """A T×C×H×W file (and T×H×W for a one-channel model) of 50 frames: one sequence, its
    last 4 frames; from a compressed .npz too, checked 3 frames at a time."""
    module = stpdist.load(model)
    data = _sequences(1, 50)[0]
    np.savez_compressed(tmp_path / "long.npz", data)
    np.save(tmp_path / "grey.npy", data[:, 0])
    monkeypatch.setattr(inference, "SURVEY_BYTES", 3 * 32 * 32 * 4)
    for name in ("long.npz", "grey.npy"):
        frames = InputFrames(tmp_path / name, module)
        assert len(frames) == 1
        np.testing.assert_array_equal(_inputs(frames)[0], data[-4:] / np.float32(255.0))


def test_big_endian_and_fortran_order_files_read_as_their_values(model, tmp_path):
    """A `>f4` member (read from the stream, converted) and a Fortran-ordered one (its
    sequences not one after another in the file: read whole) give the same inputs."""
    module = stpdist.load(model)
    data = _sequences(3)
    np.savez_compressed(tmp_path / "big.npz", data.astype(">f4"))
    np.savez(tmp_path / "fortran.npz", np.asfortranarray(data))
    np.save(tmp_path / "fortran.npy", np.asfortranarray(data))
    for name in ("big.npz", "fortran.npz", "fortran.npy"):
        np.testing.assert_array_equal(
            _inputs(InputFrames(tmp_path / name, module)), data[:, -4:] / np.float32(255.0)
        )


def test_a_nan_in_a_later_piece_is_named_at_its_place_in_the_file(model, tmp_path, monkeypatch):
    """Checked a piece at a time, the first NaN's position is the file's, not the piece's;
    the count is over the whole file."""
    module = stpdist.load(model)
    data = _sequences(40)
    data[33, 2, 0, 5, 7] = np.nan
    data[38, 0, 0, 0, 0] = np.inf
    np.savez_compressed(tmp_path / "holes.npz", data)
    monkeypatch.setattr(inference, "SURVEY_BYTES", 4 * 6 * 32 * 32 * 4)  # 4 sequences
    with pytest.raises(InputError) as caught:
        InputFrames(tmp_path / "holes.npz", module)
    assert str(caught.value) == (
        f"{tmp_path / 'holes.npz'}: the frames hold NaN or Inf (2 values, the first nan at "
        "(33, 2, 0, 5, 7)); pass --allow-nonfinite (allow_nonfinite=True) to forecast from "
        "them anyway"
    )


def test_units_warning_sees_every_piece(model, tmp_path, monkeypatch, caplog):
    """Values far outside the training range in the last piece only are still warned of,
    with the whole file's range."""
    import logging

    module = stpdist.load(model)
    data = _sequences(20)
    data[19] += 5000.0
    np.save(tmp_path / "hot.npy", data)
    monkeypatch.setattr(inference, "SURVEY_BYTES", 6 * 32 * 32 * 4)  # one sequence a piece
    with caplog.at_level(logging.WARNING, logger="stpdist"):
        InputFrames(tmp_path / "hot.npy", module)
    (said,) = [r.getMessage() for r in caplog.records]
    assert "values far outside the training data's range: c0 " in said
    assert f"…{data.max():.4g} (trained on" in said


def _member_cut_short(path: Path, declared: tuple[int, ...], data: np.ndarray) -> None:
    """An .npz whose member's header declares `declared` but holds `data`'s bytes only."""
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        member, {"descr": "<f4", "fortran_order": False, "shape": declared}
    )
    member.write(data.astype("<f4").tobytes())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("frames.npy", member.getvalue())


def test_a_member_cut_short_is_named_when_read(model, tmp_path):
    """A member whose header promises 40 sequences but whose data ends after 10: the check
    reads to the end and names the file (before any forecast), not a reshape error."""
    module = stpdist.load(model)
    _member_cut_short(tmp_path / "short.npz", (40, 6, 1, 32, 32), _sequences(10))
    with pytest.raises(InputError, match=r"short\.npz: cut short: its array \(40, 6, 1, 32, 32\)"):
        InputFrames(tmp_path / "short.npz", module)


def test_forecast_from_a_compressed_file_writes_every_sequence(model, tmp_path):
    """The command end to end from a compressed .npz of 9 sequences, batches of 4: nine
    forecasts, keyed by place, equal to the module's own forecast of the arrays."""
    data = _sequences(9)
    np.savez_compressed(tmp_path / "radar.npz", frames=data)
    proc = run_cli(
        "forecast", str(model), str(tmp_path / "radar.npz"), "--out", str(tmp_path / "f"),
        "--batch-size", "4", "--samples", "0", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = load_predictions(tmp_path / "f")
    assert sorted(written) == [f"radar_{i:06d}" for i in range(9)]
    expected = stpdist.load(model).forecast(data)
    for i in range(9):
        np.testing.assert_allclose(written[f"radar_{i:06d}"], expected[i], rtol=1e-5, atol=1e-3)
    # with --shards, twice into one folder (a diff review: the shards' dataset card was
    # taken for a file of the user's, and the second --overwrite was refused)
    for _ in range(2):
        proc = run_cli("forecast", str(model), str(tmp_path / "radar.npz"), "--out",
                       str(tmp_path / "s"), "--shards", "--samples", "0", "--overwrite",
                       cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "s" / "shards" / "README.md").is_file()


def test_predictions_are_walked_a_file_at_a_time(tmp_path, monkeypatch):
    """`forecast --shards` held every prediction at once (`load_predictions`);
    `iter_predictions` gives the same entries, a file's at a time, each file read twice
    (its keys, then its predictions) whatever order the keys sort in."""
    from stpdist.trainer import iter_predictions

    rng = np.random.default_rng(0)
    for rank in range(2):
        for part in range(3):
            keys = [f"k{rng.integers(10**6):06d}" for _ in range(2)]  # no order of theirs
            np.savez(
                tmp_path / f"predictions-r{rank:03d}-{part:06d}.npz",
                keys=np.asarray(keys),
                predictions=rng.random((2, 4, 1, 8, 8), dtype=np.float32),
            )
    opened: list[str] = []
    load = np.load
    monkeypatch.setattr(
        np,
        "load",  # a path, or a file opened (its name)
        lambda file, **kw: (
            opened.append(Path(getattr(file, "name", file)).name) or load(file, **kw)
        ),
    )
    walked = list(iter_predictions(tmp_path))
    assert len(opened) == 6 + 6
    everything = load_predictions(tmp_path)
    assert sorted(key for key, _ in walked) == sorted(everything) and len(walked) == 12
    for key, frames in walked:
        np.testing.assert_array_equal(frames, everything[key])


def test_sigterm_during_a_forecast_leaves_the_earlier_one_and_no_staging(model, tmp_path):
    """SIGTERM (SLURM's, torchrun's, `kill`'s) ended `forecast`, `predict` and `export` at
    once: their staging folder, as big as the output, stayed hidden beside it until a next
    run into the same --out. It now undoes the staging as Ctrl-C does: one line, exit 143,
    the earlier forecast as it was."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import unserved

    np.save(tmp_path / "one.npy", _sequences(1)[0])
    first = run_cli("forecast", str(model), "one.npy", "--out", "f", "--samples", "0", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = sorted(p.name for p in (tmp_path / "f").iterdir())
    np.save(tmp_path / "many.npy", _sequences(6000, 4))
    env = unserved({**os.environ, "OMP_NUM_THREADS": "1"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "stpdist", "forecast", str(model), "many.npy", "--out", "f",
         "--overwrite", "--samples", "0", "--batch-size", "2"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not any((s / ".predicting").is_dir() for s in tmp_path.glob(".f.staging-*")):
            assert proc.poll() is None and time.time() < deadline, "no staging folder seen"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, stderr[-2000:]
    assert "stpdist forecast: stopped (SIGTERM); its output folder is as it was" in stderr
    assert "Traceback" not in stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == before


@pytest.mark.parametrize("suffix", ["npy", "npz"])
def test_a_folder_of_many_inputs_holds_no_file_open_for_each(model, tmp_path, suffix):
    """Each file's reader kept its file open (a memory map's descriptor, an archive and its
    member stream) until the forecast ended: 300 inputs failed past a soft limit of 256
    descriptors ("Too many open files")."""
    import os

    folder = tmp_path / "inputs"
    folder.mkdir()
    for i in range(300):
        frames = _sequences(1, 4, seed=i)[0]
        if suffix == "npy":
            np.save(folder / f"seq{i:04d}.npy", frames)
        else:
            np.savez_compressed(folder / f"seq{i:04d}.npz", frames=frames)
    before = len(os.listdir("/proc/self/fd"))
    frames = InputFrames(folder, stpdist.load(model))
    # the old readers held 300 (one a file); a few more: another thread's, meanwhile
    assert len(os.listdir("/proc/self/fd")) - before < 30
    for i in range(len(frames)):
        frames[i]
    assert len(os.listdir("/proc/self/fd")) - before < 30
    assert len(frames) == 300
