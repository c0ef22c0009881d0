"""`stpdist shard merge`: datasets stpdist wrote, merged into one (a review of a dataset
bigger than RAM: a new month could only be added by converting everything again, and a
killed conversion of hours restarted from nothing, with no way to join parts)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli
from test_weather import stored

from stpdist.data.format import read_index


def _arrays(folder, prefix: str, seed: int, counts: dict[str, int], shape=(6, 1, 8, 8)) -> None:
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        (folder / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            np.save(folder / split / f"{prefix}{i}.npy", rng.integers(0, 256, shape, np.uint8))


def _shard(tmp_path, *args: str):
    return run_cli("shard", *args, "--workers", "1", cwd=tmp_path)


def test_merged_parts_equal_one_conversion_of_all_their_files(tmp_path):
    """Two months converted apart, merged: the same samples and statistics as one
    conversion of both months' files, each split of its own; the parts are left as they
    were."""
    _arrays(tmp_path / "jan", "jan", 0, {"train": 5, "test": 2})
    _arrays(tmp_path / "feb", "feb", 1, {"train": 4, "test": 3})
    for month in ("jan", "feb"):
        assert _shard(tmp_path, "arrays", month, "--out", f"ds_{month}").returncode == 0
        _arrays(tmp_path / "both", month, ("jan", "feb").index(month),
                {"train": (5, 4)[month == "feb"], "test": (2, 3)[month == "feb"]})  # fmt: skip
    before = {p: p.read_bytes() for p in (tmp_path / "ds_jan").rglob("*") if p.is_file()}
    proc = _shard(tmp_path, "merge", "ds_jan", "ds_feb", "--out", "ds",
                  "--samples-per-shard", "3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "ds/train: 9 samples in 3 shards" in proc.stdout
    assert _shard(tmp_path, "arrays", "both", "--out", "whole").returncode == 0
    for split in ("train", "test"):
        merged, whole = read_index(tmp_path / "ds" / split), read_index(tmp_path / "whole" / split)
        assert merged.num_samples == whole.num_samples
        for name in ("min", "max", "shape", "dtype", "value_scale"):
            assert getattr(merged, name) == getattr(whole, name), (split, name)
        for name in ("mean", "std"):  # summed in another order (feb's files sort first)
            assert getattr(merged, name) == pytest.approx(getattr(whole, name), rel=1e-12)
        got, expected = stored(tmp_path / "ds" / split), stored(tmp_path / "whole" / split)
        assert sorted(got) == sorted(expected)
        for key, (frames, _) in expected.items():
            np.testing.assert_array_equal(got[key][0], frames)
        assert list(got)[0].startswith("jan")  # the parts in the order given
    assert read_index(tmp_path / "ds" / "train").source == "merge"
    assert {p: p.read_bytes() for p in (tmp_path / "ds_jan").rglob("*") if p.is_file()} == before


def test_merge_keeps_frame_times_and_counts_each_parts_series_frames(tmp_path):
    """Windows of two time series (two parts converted with --time-key): their frame times
    are kept (predictions carry them), and each part's frames count once in the statistics
    (their series ids collide across parts: both files are `series.npz`)."""
    hour = np.timedelta64(1, "h")
    for part, start in (("a", "2020-01-01T00"), ("b", "2020-02-01T00")):
        folder = tmp_path / part
        folder.mkdir()
        values = np.random.default_rng(len(part) + ord(part)).random((12, 1, 4, 4), np.float32)
        times = np.datetime64(start, "h") + np.arange(12) * hour
        np.savez(folder / "series.npz", data=values, time=times.astype("datetime64[ns]"))
        code = _shard(tmp_path, "arrays", str(folder / "series.npz"), "--out", f"ds_{part}",
                      "--key", "data", "--time-key", "time", "--frames", "4", "--stride", "2",
                      "--value-scale", "1")  # fmt: skip
        assert code.returncode == 0, code.stderr
    proc = _shard(tmp_path, "merge", "ds_a", "ds_b", "--out", "ds")
    assert proc.returncode == 0, proc.stderr
    samples = stored(tmp_path / "ds" / "train")
    assert len(samples) == 2 * 5
    frames = [np.load(tmp_path / p / "series.npz")["data"] for p in ("a", "b")]
    every = np.concatenate(frames).astype(np.float64)
    index = read_index(tmp_path / "ds" / "train")
    assert index.mean[0] == pytest.approx(every.mean(), rel=1e-9)  # 24 frames, each once
    # the windows' settings the parts share are kept (the streams' notes on windows read them)
    assert (index.args["num_frames"], index.args["stride"]) == (4, 2)
    assert index.std[0] == pytest.approx(every.std(), rel=1e-6)
    feb = [meta for key, (_, meta) in samples.items() if meta["times"][0].startswith("2020-02")]
    assert len(feb) == 5 and feb[0]["times"][:2] == ["2020-02-01T00:00", "2020-02-01T01:00"]


def test_merge_refuses_what_cannot_be_one_dataset_naming_the_parts(tmp_path):
    """Samples unlike each other, a key in two parts, a split folder for a dataset folder,
    one part, or an --out inside a part: each refused naming what, and nothing written."""
    _arrays(tmp_path / "one", "s", 0, {"train": 2})
    _arrays(tmp_path / "two", "s", 1, {"train": 2})  # the same file names: the same keys
    _arrays(tmp_path / "big", "b", 2, {"train": 2}, shape=(6, 1, 16, 16))
    for name in ("one", "two", "big"):
        assert _shard(tmp_path, "arrays", name, "--out", f"ds_{name}").returncode == 0

    def refused(*parts: str, out: str = "merged") -> str:
        proc = _shard(tmp_path, "merge", *parts, "--out", out)
        assert proc.returncode == 2, proc.stderr
        assert not (tmp_path / out).exists() or out.startswith("ds_")
        return proc.stderr.strip().splitlines()[-1]

    assert "sample key 's0' is also that of a sample from ds_one/train/train-000000.tar" in (
        refused("ds_one", "ds_two")
    )
    line = refused("ds_one", "ds_big")
    assert "ds_big/train: shape [6, 1, 16, 16], and ds_one/train [6, 1, 8, 8]" in line
    assert "ds_one/train is a split folder (it holds index.json): name the dataset folder" in (
        refused("ds_one/train", "ds_big")
    )
    assert "shard merge takes two or more datasets, got 1" in refused("ds_one")
    assert "ds_one: given twice (as ds_one)" in refused("ds_one", "ds_one")
    # inside a part: refused by itself (it passed, and the part then held a foreign folder)
    _arrays(tmp_path / "three", "t", 3, {"train": 2})
    assert _shard(tmp_path, "arrays", "three", "--out", "ds_three").returncode == 0
    assert "--out ds_one/inside lies inside the part ds_one" in refused(
        "ds_one", "ds_three", out="ds_one/inside"
    )
    index = json.loads((tmp_path / "ds_one" / "train" / "index.json").read_text())
    assert index["source"] == "arrays"  # the parts untouched


def test_merge_stores_the_parts_fill_again_and_refuses_another(tmp_path):
    """Parts converted with `--allow-nan -10`: their filled values are filled again and
    left out of the statistics as they were; another fill value is refused."""
    for part, seed in (("a", 0), ("b", 1)):
        (tmp_path / part / "train").mkdir(parents=True)
        values = np.random.default_rng(seed).random((5, 1, 4, 4)).astype(np.float32) * 50
        values[0, 0, 0, :2] = np.nan
        np.save(tmp_path / part / "train" / f"{part}.npy", values)
        proc = _shard(tmp_path, "arrays", part, "--out", f"ds_{part}", "--allow-nan", "-10",
                      "--value-scale", "50")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    proc = _shard(tmp_path, "merge", "ds_a", "ds_b", "--out", "ds")
    assert proc.returncode == 0, proc.stderr
    index = read_index(tmp_path / "ds" / "train")
    assert index.args["nan_fill"] == -10
    valid = np.concatenate([np.load(tmp_path / p / "train" / f"{p}.npy") for p in "ab"])
    assert index.min[0] * 50 == pytest.approx(np.nanmin(valid), rel=1e-6)  # not the fill
    assert index.mean[0] * 50 == pytest.approx(np.nanmean(valid.astype(np.float64)), rel=1e-6)
    proc = _shard(tmp_path, "merge", "ds_a", "ds_b", "--out", "ds2", "--allow-nan", "0")
    assert proc.returncode == 2 and "--allow-nan 0: the parts store NaN as -10" in proc.stderr
    # a part without NaN (converted without --allow-nan) beside them: merged
    (tmp_path / "c" / "train").mkdir(parents=True)
    np.save(tmp_path / "c" / "train" / "c.npy", np.full((5, 1, 4, 4), 20, np.float32))
    _shard(tmp_path, "arrays", "c", "--out", "ds_c", "--value-scale", "50")
    proc = _shard(tmp_path, "merge", "ds_a", "ds_c", "--out", "ds_ac")
    assert proc.returncode == 0, proc.stderr
    # a fill among real values (0 beside real zeros: radar's no rain) cannot be told from
    # them when read back: refused (a review saw the merged mean 0.80 where the data's is 0.33)
    for part in ("z1", "z2"):
        (tmp_path / part / "train").mkdir(parents=True)
        values = np.zeros((5, 1, 4, 4), np.float32)
        values[0, 0, 0, 0], values[1, 0, 1, 1] = np.nan, 30
        np.save(tmp_path / part / "train" / f"{part}.npy", values)
        _shard(tmp_path, "arrays", part, "--out", f"ds_{part}", "--allow-nan", "0",
               "--value-scale", "50")  # fmt: skip
    proc = _shard(tmp_path, "merge", "ds_z1", "ds_z2", "--out", "ds_z")
    assert proc.returncode == 2
    assert "its values run from 0 to 30, and NaN was stored as 0 among them" in proc.stderr


def test_merge_refuses_a_parts_damaged_or_cut_shard(tmp_path):
    """A dataops review: a shard damaged (one byte flipped inside a sample) or cut short was
    copied into the merged set, whose fresh hashes then verified: the bad data became
    the dataset the docs say to keep."""
    _arrays(tmp_path / "a", "a", 0, {"train": 3})
    _arrays(tmp_path / "b", "b", 1, {"train": 3})
    for part in ("a", "b"):
        assert _shard(tmp_path, "arrays", part, "--out", f"ds_{part}").returncode == 0
    tar = tmp_path / "ds_b" / "train" / read_index(tmp_path / "ds_b" / "train").shards[0].name
    data = bytearray(tar.read_bytes())
    data[1024 + 200] ^= 0xFF  # inside the first sample's frames, past its tar header
    tar.write_bytes(bytes(data))
    proc = _shard(tmp_path, "merge", "ds_a", "ds_b", "--out", "merged")
    assert proc.returncode == 2, proc.stderr
    assert "ds_b/train/train-000000.tar: its bytes are not those written" in proc.stderr
    assert not (tmp_path / "merged").exists()
    data[1024 + 200] ^= 0xFF
    tar.write_bytes(bytes(data[: len(data) // 2]))  # cut short
    proc = _shard(tmp_path, "merge", "ds_a", "ds_b", "--out", "merged")
    assert proc.returncode == 2 and "its bytes are not those written" in proc.stderr
