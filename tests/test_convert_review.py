"""A researcher's conversions, reviewed: each format's output read back against the source
files by hand (frames, splits, statistics, the training stream), and what used to pass in
silence or mislead."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_convert import kth_videos
from test_convert_inputs import error_line
from test_weather import t2m_file

from stpdist.data.format import iter_shard, read_index
from stpdist.data.loading import LoaderContext
from stpdist.data.stream import ShardEvalStream


def stored(folder: Path) -> dict[str, np.ndarray]:
    """Every sample of a split folder, by key, in its stored dtype."""
    out = {}
    for shard in read_index(folder).shards:
        for key, sample in iter_shard(str(folder / shard.name)):
            out[key] = np.load(io.BytesIO(sample["frames.npy"]))
    return out


def test_arrays_splits_stream_and_statistics_equal_the_source_files(tmp_path):
    """`shard arrays --splits --seed`: every file in exactly one split, the same splits
    from the same seed, the stream's floats = stored / value scale bit for bit, and
    index.json's per-channel mean/std/min/max those of numpy over the split's files."""
    rng = np.random.default_rng(0)
    (tmp_path / "raw").mkdir()
    source = {}
    for i in range(10):
        source[f"seq{i}"] = rng.integers(0, 256, (6, 2, 4, 4), dtype=np.uint8)
        np.save(tmp_path / "raw" / f"seq{i}.npy", source[f"seq{i}"])
    splits = ["--splits", "train=0.6,val=0.2,test=-1"]
    for out, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        run_cli("shard", "arrays", "raw", "--out", out, *splits, "--seed", seed,
                "--workers", "1", cwd=tmp_path, check=True)  # fmt: skip
    keys = {out: {s: sorted(stored(tmp_path / out / s)) for s in ("train", "val", "test")}
            for out in "abc"}  # fmt: skip
    assert [len(keys["a"][s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(sum(keys["a"].values(), [])) == sorted(source)
    assert keys["a"] == keys["b"] and keys["a"] != keys["c"]
    for split, names in keys["a"].items():
        folder = tmp_path / "a" / split
        index, samples = read_index(folder), stored(folder)
        for key in names:
            np.testing.assert_array_equal(samples[key], source[key])  # uint8 kept
        values = np.stack([source[k] for k in names]).astype(np.float64) / 255
        axes = (0, 1, 3, 4)
        np.testing.assert_allclose(index.mean, values.mean(axis=axes), rtol=1e-12)
        np.testing.assert_allclose(index.std, values.std(axis=axes), rtol=1e-9)
        assert index.min == values.min(axis=axes).tolist()
        assert index.max == values.max(axis=axes).tolist()
        stream = ShardEvalStream(folder, batch_size=3, num_input_frames=2, num_output_frames=4)
        seen = []
        for inputs, targets, batch_keys in stream.iterate(LoaderContext(rank=0, world_size=1)):
            for i, key in enumerate(batch_keys):
                frames = np.concatenate([inputs[i].numpy(), targets[i].numpy()])
                want = source[key].astype(np.float32) / np.float32(255)
                assert frames.dtype == np.float32 and np.array_equal(frames, want), key
                seen.append(key)
        assert sorted(seen) == names


@pytest.mark.parametrize(
    "dtype, high, advice",
    [
        (np.uint16, 65535, "pass --value-scale 65535 (≥ the largest value)"),
        (np.int64, 255, "pass --value-scale 255 (≥ the largest value)"),
        (np.int16, 700, "pass --value-scale 1000 (≥ the largest value)"),
        (np.int32, 70000, "pass --value-scale 100000 (≥ the largest value)"),
        (np.float32, 99.5, "pass --value-scale 100 (≥ the largest value)"),
    ],
)
def test_the_value_scale_advised_for_integer_data_is_its_bit_depths_range(
    tmp_path, dtype, high, advice
):
    """uint16 images were told `--value-scale 100000` and 8-bit values saved as int64 (what
    np.save of np.random.integers or a list of ints gives) `--value-scale 1000`: valid, but
    not the 65535 or 255 that the docs give for them, and training then sees values in
    [0, 0.66] or [0, 0.26]. Floats keep a power of ten."""
    (tmp_path / "raw").mkdir()
    frames = np.zeros((4, 1, 4, 4), dtype)
    frames[0, 0, 0, 0] = high
    np.save(tmp_path / "raw" / "s0.npy", frames)
    proc = run_cli("shard", "arrays", "raw", "--out", "ds", "--workers", "1", cwd=tmp_path)
    assert advice in error_line(proc)
    assert not (tmp_path / "ds").exists()


def test_a_kth_video_shorter_than_one_window_is_named(tmp_path):
    """A video of fewer frames than --frames (a truncated download decodes to a few) gave
    no window and was left out without a word: the conversion exited 0 without it."""
    av = pytest.importorskip("av")
    root = kth_videos(tmp_path / "kth", persons=(1, 17))
    short = root / "person03_running_d2_uncomp.avi"
    with av.open(str(short), "w") as container:
        stream = container.add_stream("rawvideo", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "gray"
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(np.full((120, 160), i, np.uint8), format="gray")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    proc = run_cli("shard", "kth-avi", "kth", "--out", "ds", "--size", "16", "--workers", "1",
                   cwd=tmp_path)  # fmt: skip
    assert error_line(proc) == (
        f"{Path('kth') / short.name}: 12 frames, fewer than --frames 20 (one window); lower "
        "--frames, or move the video out (a damaged file?)"
    )
    assert not (tmp_path / "ds").exists()


def test_netcdf_errors_show_the_windows_times_in_minutes(tmp_path):
    """An item's times read `2020-01-01T00:00:00.000000000…` (nanoseconds) in every error
    about its samples; now as the keys show them."""
    t2m = (280 + np.random.default_rng(0).random((6, 4, 8))).astype(np.float32)
    t2m[0, 0, 0] = np.nan
    t2m_file(tmp_path / "t2m.nc", t2m)
    proc = run_cli("shard", "netcdf", "t2m.nc", "--out", "ds", "--vars", "t2m", "--frames", "3",
                   "--workers", "1", cwd=tmp_path)  # fmt: skip
    assert error_line(proc).startswith("t2m.nc (times 2020-01-01T00:00…2020-01-02T06:00): ")


def test_netcdf_nan_fill_is_stored_and_left_out_of_statistics_and_climatology(tmp_path):
    """`--allow-nan FILL`: FILL stored at the NaN; mean/std/min/max and the climatology
    those of the valid values (numpy's nan-functions); a pixel never valid gets FILL."""
    t2m = (280 + 10 * np.random.default_rng(1).random((8, 4, 8))).astype(np.float32)
    t2m[:, 0, 0] = np.nan  # land: never valid
    t2m[3, 1, 1] = np.nan
    t2m_file(tmp_path / "t2m.nc", t2m)
    run_cli("shard", "netcdf", "t2m.nc", "--out", "ds", "--vars", "t2m", "--frames", "3",
            "--allow-nan", "285", "--workers", "1", cwd=tmp_path, check=True)  # fmt: skip
    folder = tmp_path / "ds" / "train"
    index, samples = read_index(folder), stored(folder)
    assert len(samples) == 6  # windows at 0…5, stride 1
    series = t2m.astype(np.float64)
    assert (
        samples["w202001010600"][2, 0, 1, 1] == 285 and samples["w202001010000"][1, 0, 0, 0] == 285
    )
    np.testing.assert_allclose(index.mean, [np.nanmean(series)], rtol=1e-12)
    np.testing.assert_allclose(index.std, [np.nanstd(series)], rtol=1e-9)
    assert (index.min, index.max) == ([np.nanmin(series)], [np.nanmax(series)])
    climatology = np.load(folder / json.loads((folder / "index.json").read_text())["climatology"])
    assert climatology[0, 0, 0] == 285
    expected = np.nanmean(series[:, 1:, 1:], axis=0)  # every pixel but the land one
    np.testing.assert_allclose(climatology[0, 1:, 1:], expected, rtol=1e-6)
