"""Converters on tiny files written in each exact raw layout, with exact value round-trips."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from stpdist.data.convert import convert
from stpdist.data.format import iter_shard, read_index
from stpdist.data.sources.generic import GenericArrays
from stpdist.data.sources.moving_mnist import MovingMnistNpy
from stpdist.data.sources.seed_layout import SeedLayout
from stpdist.data.synthetic import moving_digits_sample, write_moving_digits
from stpdist.errors import InputError


def stored(folder) -> dict[str, np.ndarray]:
    """Every sample of a split folder, by key."""
    out = {}
    for shard in read_index(folder).shards:
        for key, sample in iter_shard(str(folder / shard.name)):
            out[key] = np.load(__import__("io").BytesIO(sample["frames.npy"]))
    return out


def test_mnist_test_seq_time_first(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(20, 7, 64, 64), dtype=np.uint8)
    np.save(tmp_path / "mnist_test_seq.npy", array)
    indexes = convert(
        MovingMnistNpy(str(tmp_path / "mnist_test_seq.npy"), {"train": 4, "test": -1}),
        tmp_path / "out",
        progress=False,
    )
    assert indexes["train"].num_samples == 4 and indexes["test"].num_samples == 3
    samples = stored(tmp_path / "out" / "test")
    assert samples["mmnist_000005"].dtype == np.uint8
    np.testing.assert_array_equal(samples["mmnist_000005"][:, 0], array[:, 5])
    assert indexes["test"].shape == [20, 1, 64, 64] and indexes["test"].value_scale == 255


def write_seed_mmnist(root, values):
    for split in ("train", "validation"):
        (root / split).mkdir(parents=True)
        for i in range(3):
            np.savez(
                root / split / f"example{i + 1:06d}.npz",
                inputs=values[i, :10],
                labels=values[i, 10:],
            )


def test_seed_mmnist_on_grid_is_uint8(tmp_path):
    grid = np.random.default_rng(1).integers(0, 256, size=(3, 20, 1, 8, 8)) / 255.0
    write_seed_mmnist(tmp_path / "seed", grid.astype(np.float32))
    indexes = convert(
        SeedLayout(str(tmp_path / "seed"), "mmnist"), tmp_path / "out", progress=False
    )
    assert set(indexes) == {"train", "val"}
    assert indexes["val"].dtype == "uint8" and indexes["val"].value_scale == 255
    samples = stored(tmp_path / "out" / "val")
    np.testing.assert_array_equal(
        samples["example000002"] / np.float32(255), grid[1].astype(np.float32)
    )


def test_seed_mmnist_off_grid_stays_float(tmp_path):
    values = np.random.default_rng(2).random((3, 20, 1, 8, 8)).astype(np.float32)
    write_seed_mmnist(tmp_path / "seed", values)
    indexes = convert(
        SeedLayout(str(tmp_path / "seed"), "mmnist"), tmp_path / "out", progress=False
    )
    assert indexes["train"].dtype == "float32" and indexes["train"].value_scale == 1
    np.testing.assert_array_equal(stored(tmp_path / "out" / "train")["example000003"], values[2])


def test_seed_kth_png_folders_sorted_by_name(tmp_path):
    frames = np.random.default_rng(3).integers(0, 256, size=(20, 12, 16), dtype=np.uint8)
    folder = tmp_path / "seed" / "test" / "example000001"
    folder.mkdir(parents=True)
    for t in reversed(range(20)):  # written in reverse: order must come from sorted names
        Image.fromarray(frames[t]).save(folder / f"{t:04d}.png")
    convert(SeedLayout(str(tmp_path / "seed"), "kth"), tmp_path / "out", progress=False)
    got = stored(tmp_path / "out" / "test")["example000001"]
    np.testing.assert_array_equal(got[:, 0], frames)


def test_seed_taxibj_npy(tmp_path):
    flows = np.random.default_rng(4).integers(0, 1292, size=(8, 2, 32, 32)).astype(np.float64)
    (tmp_path / "seed" / "train").mkdir(parents=True)
    np.save(tmp_path / "seed" / "train" / "example000001.npy", flows)
    indexes = convert(
        SeedLayout(str(tmp_path / "seed"), "taxibj"), tmp_path / "out", progress=False
    )
    assert indexes["train"].value_scale == 1292
    np.testing.assert_array_equal(stored(tmp_path / "out" / "train")["example000001"], flows)
    assert [v["name"] for v in indexes["train"].variables] == ["inflow", "outflow"]

    # flows already divided by 1292 (a traffic user's copy): stored as they are, and said
    from helpers import said_warnings

    np.save(tmp_path / "seed" / "train" / "example000001.npy", flows / 1292)
    with said_warnings() as said:
        convert(SeedLayout(str(tmp_path / "seed"), "taxibj"), tmp_path / "scaled",
                progress=False)  # fmt: skip
    assert any("flows already scaled to [0, 1]?" in line for line in said), said
    # one channel is no TaxiBJ (its channels are named): refused naming the file, at once
    np.save(tmp_path / "seed" / "train" / "example000001.npy", flows[:, :1])
    with pytest.raises(InputError, match=r"example000001.npy: 1 channel\(s\), T×C×H×W \[8, 1"):
        convert(SeedLayout(str(tmp_path / "seed"), "taxibj"), tmp_path / "one", progress=False)


def test_generic_arrays_thw_and_npz_key(tmp_path):
    (tmp_path / "raw").mkdir()
    a = np.random.default_rng(5).integers(0, 256, size=(6, 10, 10), dtype=np.uint8)
    np.save(tmp_path / "raw" / "seq.a.npy", a)
    np.savez(tmp_path / "raw" / "seq_b.npz", frames=a[::-1], other=np.zeros(3))
    convert(GenericArrays(str(tmp_path / "raw"), key="frames"), tmp_path / "out", progress=False)
    samples = stored(tmp_path / "out" / "train")
    assert read_index(tmp_path / "out" / "train").value_scale == 255
    np.testing.assert_array_equal(samples["seq_a"][:, 0], a)
    np.testing.assert_array_equal(samples["seq_b"][:, 0], a[::-1])


def test_bad_input_names_file_and_leaves_nothing_valid(tmp_path):
    (tmp_path / "raw").mkdir()
    np.save(tmp_path / "raw" / "a.npy", np.zeros((4, 1, 8, 8), np.uint8))
    np.save(tmp_path / "raw" / "b.npy", np.zeros((4, 8), np.uint8))
    proc = run_cli(
        "shard", "arrays", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), cwd=tmp_path
    )
    assert proc.returncode == 2  # bad input (InputError)
    assert "b.npy: expected T×C×H×W or T×H×W, got shape (4, 8)" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # above it: the progress bar
    assert last.startswith("stpdist: error:") and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "train").exists()


def test_refuses_non_empty_output_without_overwrite(tmp_path):
    (tmp_path / "raw").mkdir()
    np.save(tmp_path / "raw" / "a.npy", np.zeros((4, 1, 8, 8), np.uint8))
    run_cli("shard", "arrays", "raw", "--out", "out", cwd=tmp_path, check=True)
    (tmp_path / "out" / "README.md").write_text("mine")  # the user's card: carried over
    proc = run_cli("shard", "arrays", "raw", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 2  # bad input (InputError)
    assert "out is not empty; pass --overwrite to replace it (--overwrite replaces the " in (
        proc.stderr
    )
    proc = run_cli("shard", "arrays", "raw", "--out", "out", "--overwrite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert read_index(tmp_path / "out" / "train").num_samples == 1
    assert (tmp_path / "out" / "README.md").read_text() == "mine"


def test_a_taxibj_file_with_slots_out_of_order_is_refused(tmp_path):
    """Days 4–5 stored before days 1–3: the test split (the record's last days) was taken
    from the last entry, day 3, and covered days 2–5, without a word."""
    h5py = pytest.importorskip("h5py")
    start = datetime(2015, 1, 1)
    slots = [start + timedelta(minutes=30 * i) for i in range(240)]
    order = list(range(144, 240)) + list(range(144))
    dates = [f"{t:%Y%m%d}{(t.hour * 60 + t.minute) // 30 + 1:02d}".encode() for t in slots]
    path = tmp_path / "BJ15_M32x32_T30_InOut.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros((240, 2, 32, 32))[order]
        f["date"] = np.array(dates)[order]
    proc = run_cli("shard", "taxibj-h5", str(path), "--out", "o", "--test-days", "2",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"stpdist: error: {path}: 'date' entry 96 (2015-01-01 00:00) comes before entry 95 "
        "(2015-01-05 23:30): the slots must be in time order; sort the file's 'data' and "
        "'date' by date"
    )
    assert not (tmp_path / "o").exists()


def test_taxibj_h5_windows_never_cross_gaps_and_split_by_date(tmp_path):
    h5py = pytest.importorskip("h5py")
    start = datetime(2013, 7, 1)
    slots = [start + timedelta(minutes=30 * i) for i in range(60)]
    del slots[20]  # a gap: slot 21 missing
    dates = [f"{t:%Y%m%d}{(t.hour * 60 + t.minute) // 30 + 1:02d}".encode() for t in slots]
    data = np.arange(len(slots) * 2 * 32 * 32, dtype=np.float64).reshape(len(slots), 2, 32, 32)
    path = tmp_path / "BJ13_M32x32_T30_InOut.h5"
    with h5py.File(path, "w") as f:
        f["data"] = data % 1292
        f["date"] = np.array(dates)
    from stpdist.data.sources.taxibj import TaxiBJ

    # the record spans 30 h; call the last day "test" to exercise the split
    indexes = convert(
        TaxiBJ([str(path)], num_frames=8, test_days=1), tmp_path / "out", progress=False
    )
    train, test = stored(tmp_path / "out" / "train"), stored(tmp_path / "out" / "test")
    # runs: slots 0..19 (20 long) and 21..59 (39 long) → 13 + 32 windows before the split
    test_start = slots[-1] + timedelta(minutes=30) - timedelta(days=1)
    expected = {"train": 0, "test": 0}
    for run in (slots[:20], slots[20:]):
        for s in range(len(run) - 7):
            a, b = run[s] >= test_start, run[s + 7] >= test_start
            if a == b:
                expected["test" if a else "train"] += 1
    assert (len(train), len(test)) == (expected["train"], expected["test"])
    assert indexes["test"].value_scale == 1292
    key = "BJ13_M32x32_T30_InOut_201307010000"
    np.testing.assert_array_equal(train[key], (data % 1292)[:8].astype(np.float32))
    assert not any(k.endswith("201307010630") for k in train)  # would span the gap

    # the default 28 test days cover the whole 30 h: no train window is refused, naming the
    # record's span and the cut (it exited 0, and training said the folder held no dataset)
    proc = run_cli("shard", "taxibj-h5", str(path), "--out", "all-test", cwd=tmp_path)
    assert (
        proc.returncode == 2
        and (
            f"{path}: the train split gets no window of 8 consecutive slots: the record runs "
            "from 2013-07-01 00:00 on, test from 2013-06-04 06:00 (--test-days 28); lower "
            "--test-days/--val-days (or --frames)"
        )
        in proc.stderr
    )
    assert not (tmp_path / "all-test").exists()


def _flows_file(path: Path, slots: list[datetime], minutes: int, seed: int = 0) -> np.ndarray:
    """A TaxiBJ-layout file: `data` N×2×4×4 flows, `date` YYYYMMDDSS at `minutes` a slot."""
    h5py = pytest.importorskip("h5py")
    data = np.random.default_rng(seed).integers(0, 300, (len(slots), 2, 4, 4)).astype(np.float64)
    with h5py.File(path, "w") as f:
        f["data"] = data
        f["date"] = np.array(
            [f"{t:%Y%m%d}{(t.hour * 60 + t.minute) // minutes + 1:02d}".encode() for t in slots]
        )
    return data


def test_taxibj_h5_reads_hourly_files_and_says_gaps_repeats_and_slots_that_look_hourly(tmp_path):
    """A traffic user's review: BikeNYC's hourly `NYC14_M16x8_T60_NewEnd.h5` (slots 01..24)
    was read as half hours without a word (hour 24 labelled 11:30, no window across
    midnight); gaps and repeated slots cost windows silently; files given newest first were
    written newest first; the channels had no names, so no per-channel score in flows."""
    from helpers import said_warnings
    from test_weather import stored as series_samples

    from stpdist.build import build_module
    from stpdist.config import load_config
    from stpdist.data.sources.taxibj import TaxiBJ

    start = datetime(2014, 4, 1)
    hours = [start + timedelta(hours=i) for i in range(72)]
    nyc = tmp_path / "NYC14_M16x8_T60_NewEnd.h5"
    data = _flows_file(nyc, hours, 60)
    indexes = convert(TaxiBJ([str(nyc)], num_frames=6, test_days=1), tmp_path / "nyc",
                      progress=False)  # fmt: skip
    samples = series_samples(tmp_path / "nyc" / "train")
    assert len(samples) == 48 - 5  # 2 days of hours, windows across midnight
    first = samples["NYC14_M16x8_T60_NewEnd_201404010000"]
    across = samples["NYC14_M16x8_T60_NewEnd_201404012200"]  # 22:00 … 03:00 the next day
    assert across[1]["times"][2:4] == ["2014-04-02T00:00", "2014-04-02T01:00"]
    assert across[1]["start"] == "2014-04-01T22:00"  # as every series writes times
    np.testing.assert_array_equal(first[0], data[:6].astype(np.float32))
    assert [v["name"] for v in indexes["train"].variables] == ["inflow", "outflow"]
    assert indexes["train"].variables[0]["units"] == "flow per 60 min"

    # the same file under a name without _T60_: read as half hours, and said
    plain = tmp_path / "flows.h5"
    shutil.copy(nyc, plain)
    with said_warnings() as said:
        TaxiBJ([str(plain)], num_frames=6, test_days=1).splits()
    assert any("no day has a slot past 24 of its 48 half hours" in line and
               "--slot-minutes 60" in line for line in said), said  # fmt: skip
    # said of that file, beside a half-hourly one (the check pooled every file's slots)
    halves = [datetime(2014, 3, 1) + timedelta(minutes=30 * i) for i in range(96)]
    _flows_file(tmp_path / "BJ_M4x4_T30_x.h5", halves, 30)
    with said_warnings() as said:
        TaxiBJ([str(plain), str(tmp_path / "BJ_M4x4_T30_x.h5")], num_frames=6).splits()
    (line,) = [line for line in said if "no day has a slot past 24" in line]
    assert line.startswith(f"{plain}: ")
    # a slot length only from the layout's `_M<H>x<W>_T<n>_` (a `_T8_` elsewhere is none)
    from stpdist.data.sources.taxibj import slot_minutes_of

    assert slot_minutes_of(["run_T8_part.h5", "x_T0_y.h5"], None) == 30
    with pytest.raises(InputError, match=r"slots of 0 minutes \(the _T0_ of the file names\)"):
        slot_minutes_of(["BJ_M4x4_T0_x.h5"], None)
    proc = run_cli("shard", "taxibj-h5", "flows.h5", "--slot-minutes", "60", "--frames", "6",
                   "--test-days", "1", "--out", "o", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0 and "no day has a slot past 24" not in proc.stderr, proc.stderr

    # a gap of 3 half hours and a repeated slot, in a file given before an older one
    half = [datetime(2013, 7, 2) + timedelta(minutes=30 * i) for i in range(96)]
    newer = half[:10] + half[13:40] + [half[39]] + half[40:]
    _flows_file(tmp_path / "BJ13b_M32x32_T30_InOut.h5", newer, 30)
    older = [datetime(2013, 7, 1) + timedelta(minutes=30 * i) for i in range(48)]
    _flows_file(tmp_path / "BJ13a_M32x32_T30_InOut.h5", older, 30, seed=1)
    with said_warnings() as said:
        convert(TaxiBJ([str(tmp_path / "BJ13b_M32x32_T30_InOut.h5"),
                        str(tmp_path / "BJ13a_M32x32_T30_InOut.h5")], num_frames=4, test_days=1),
                tmp_path / "bj", progress=False)  # fmt: skip
    (line,) = [line for line in said if "windows never cross them" in line]
    assert "BJ13b_M32x32_T30_InOut.h5: 3 slots missing in 1 gap (the first after " in line
    assert "2013-07-02 04:30), 1 slot repeated (the first 2013-07-02 19:30)" in line
    keys = list(series_samples(tmp_path / "bj" / "train"))
    assert keys[0].startswith("BJ13a") and keys[-1].startswith("BJ13b")  # in time order

    # per-channel scores in flows, named: `rmse/inflow` = √(mean squared error) × 1292
    cfg = load_config(Path(__file__).parent.parent / "configs" / "debug.yaml")
    module = build_module(cfg, index=indexes["train"])
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    inputs, targets = torch.rand(2, 4, 2, 4, 4), torch.rand(2, 4, 2, 4, 4)
    with torch.no_grad():
        out = module.validation_step(inputs, targets)
    results = module.metrics_from_sums(out["sums"])
    error = (out["predictions"] - targets)[:, :, 0].double()
    assert results["rmse/inflow"] == pytest.approx(float(error.pow(2).mean().sqrt()) * 1292)
    assert "mae/outflow" in results and "persistence_rmse/outflow" in results


def kth_videos(root: Path, persons=(1, 17)) -> Path:
    """KTH's layout: `personNN_walking_d1_uncomp.avi`, 160×120 gray, 45 frames of value
    5·i mod 256."""
    av = pytest.importorskip("av")
    root.mkdir(parents=True)
    for person in persons:
        path = root / f"person{person:02d}_walking_d1_uncomp.avi"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("rawvideo", rate=25)
            stream.width, stream.height, stream.pix_fmt = 160, 120, "gray"
            for i in range(45):
                frame = np.full((120, 160), (i * 5) % 256, np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return root


def test_kth_avi_person_split_and_windows(tmp_path):
    root = kth_videos(tmp_path / "kth")
    (root / "._person01_walking_d1_uncomp.avi").write_bytes(b"\x00\x05\x16\x07")  # macOS's
    (root / ".trash").mkdir()  # hidden files and folders: no videos (they stopped it)
    (root / ".trash" / "person02_walking_d1_uncomp.avi").write_bytes(b"")
    proc = run_cli(  # two workers (the default), from this process that wrote the videos
        "shard",
        "kth-avi",
        str(root),
        "--out",
        str(tmp_path / "out"),
        "--size",
        "32",
        "--frames",
        "20",
        "--stride",
        "10",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    train, test = stored(tmp_path / "out" / "train"), stored(tmp_path / "out" / "test")
    assert sorted(train) == [f"person01_walking_d1_uncomp_{s:05d}" for s in (0, 10, 20)]
    assert sorted(test) == [f"person17_walking_d1_uncomp_{s:05d}" for s in (0, 10, 20)]
    window = train["person01_walking_d1_uncomp_00010"]
    assert window.shape == (20, 1, 32, 32) and window.dtype == np.uint8
    np.testing.assert_array_equal(window[:, 0, 5, 5], [(i * 5) % 256 for i in range(10, 30)])


def test_synth_is_independent_of_workers(tmp_path):
    write_moving_digits(
        tmp_path / "one", {"train": 20}, seed=3, workers=1, progress=False, samples_per_shard=7
    )
    write_moving_digits(
        tmp_path / "two", {"train": 20}, seed=3, workers=2, progress=False, samples_per_shard=7
    )
    one, two = stored(tmp_path / "one" / "train"), stored(tmp_path / "two" / "train")
    assert one.keys() == two.keys() and len(one) == 20
    for key in one:
        np.testing.assert_array_equal(one[key], two[key])
    np.testing.assert_array_equal(one["train_0000004"], moving_digits_sample(3, "train", 4))
    assert not np.array_equal(one["train_0000004"], one["train_0000005"])


def test_synth_with_mnist_idx_digits_and_inspect(tmp_path):
    import gzip

    digits = np.zeros((3, 28, 28), np.uint8)
    digits[:, 10:18, 10:18] = 200
    header = b"".join(x.to_bytes(4, "big") for x in (2051, 3, 28, 28))
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + digits.tobytes())
    proc = run_cli(
        "synth",
        "moving-digits",
        "--out",
        "ds",
        "--train",
        "4",
        "--val",
        "2",
        "--test",
        "2",
        "--digits",
        "train-images-idx3-ubyte.gz",
        "--workers",
        "1",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    sample = stored(tmp_path / "ds" / "train")["train_0000000"]
    assert set(np.unique(sample)) <= {0, 200}  # only the given glyph's values
    assert (sample == 200).sum(axis=(1, 2, 3)).min() >= 64  # at least one 8×8 square a frame
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "ds").rglob("*"))
    proc = run_cli("inspect", "ds", "--samples", "2", "--out", "pics", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ds/train: 4 samples in 1 shard, shape [20, 1, 64, 64] uint8, scale 255" in proc.stdout
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "ds").rglob("*")) == before
    panels = sorted((tmp_path / "pics" / "val").glob("*.png"))
    assert len(panels) == 2  # the stored frames only: one row of 20, no fake prediction
    from PIL import Image

    from stpdist.visualize import DPI, sample_figure

    one_row = sample_figure(np.zeros((20, 1, 64, 64)), None, None).get_size_inches() * DPI
    assert Image.open(panels[0]).size == tuple(round(v) for v in one_row)
    proc = run_cli("inspect", "ds", "--samples", "2", cwd=tmp_path)  # no --out: a named temp dir
    first = Path(proc.stdout.strip().splitlines()[-1].rsplit(" to ", 1)[1])
    proc = run_cli("inspect", "ds", "--samples", "1", cwd=tmp_path)
    assert "  rendered 1 sample (all 20 frames) to " in proc.stdout  # not "1 samples"
    folder = Path(proc.stdout.strip().splitlines()[-1].rsplit(" to ", 1)[1])
    assert folder.is_dir() and "stpdist-inspect-" in str(folder) and tmp_path not in folder.parents
    # the same folder for the same dataset, its pictures replaced: a folder a call piled up
    assert folder == first and len(list(folder.glob("*.png"))) == 1
    shutil.rmtree(folder.parent)  # the user's to delete; the test's, here
    # no pictures, no folder: `--samples 0` left an empty one in the temp dir every call
    assert run_cli("inspect", "ds", "--samples", "0", cwd=tmp_path).returncode == 0
    assert not folder.parent.exists()
    bad = run_cli(
        "synth", "moving-digits", "--out", "ds2", "--digits", "ds/train/index.json", cwd=tmp_path
    )
    assert bad.returncode == 2 and "not an MNIST idx3 image file" in bad.stderr  # InputError


# ------------------------------------------------------------------ dataset card
def _series_source(tmp_path, val_from: str | None = "20", test_from: str | None = None):
    """30 frames 2×4×4 in one file, windows of 5 every 5: train 4, val 2 (or as split)."""
    path = tmp_path / "long.npy"
    if not path.exists():
        series = np.random.default_rng(0).integers(0, 255, (30, 2, 4, 4), dtype=np.uint8)
        np.save(path, series)
    return GenericArrays(
        str(path), num_frames=5, stride=5, val_from=val_from, test_from=test_from
    ), np.load(path)


def _front_matter(readme) -> dict:
    import yaml

    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_dataset_card_makes_hf_datasets_read_the_tar_shards(tmp_path):
    """The converter's README.md maps the splits it wrote to their tar shards: Hugging Face
    `datasets` pointed at the folder loads each split with every sample, exactly."""
    datasets = pytest.importorskip("datasets")
    source, series = _series_source(tmp_path)
    convert(source, tmp_path / "out", samples_per_shard=3, progress=False)
    card = _front_matter(tmp_path / "out" / "README.md")
    assert card["configs"] == [
        {
            "config_name": "default",
            "data_files": [
                {"split": "train", "path": "train/*.tar"},
                {"split": "val", "path": "val/*.tar"},
            ],  # the splits written, no test
        }
    ]
    text = (tmp_path / "out" / "README.md").read_text()
    assert f"stpdist train CONFIG data.root={(tmp_path / 'out').as_posix()}" in text
    from stpdist.data.convert import card_text  # a path with a space: one word, quoted

    spaced = card_text("my data/out", "x", {"train": read_index(tmp_path / "out" / "train")})
    assert "stpdist train CONFIG 'data.root=my data/out'" in spaced
    assert "stpdist inspect 'my data/out' --verify" in spaced
    assert 'datasets.load_dataset("my data/out")' in spaced
    loaded = datasets.load_dataset(str(tmp_path / "out"), cache_dir=str(tmp_path / "hf"))
    assert {name: len(split) for name, split in loaded.items()} == {"train": 4, "val": 2}
    rows = loaded["val"].with_format("numpy")
    stored_val = stored(tmp_path / "out" / "val")
    assert sorted(rows["__key__"]) == sorted(stored_val)
    for row in rows:
        assert row["frames.npy"].shape == (5, 2, 4, 4)  # T×C×H×W (uint8 arrives as int64)
        np.testing.assert_array_equal(row["frames.npy"], stored_val[row["__key__"]])
    assert {int(r["start"]) for r in rows["json"]} == {20, 25}
    np.testing.assert_array_equal(
        rows[0]["frames.npy"], series[int(rows[0]["json"]["start"]) :][:5]
    )

    # a new conversion rewrites our card: now with a test split
    source, _ = _series_source(tmp_path, val_from="15", test_from="25")
    convert(source, tmp_path / "out", overwrite=True, progress=False)
    splits = [
        f["split"]
        for f in _front_matter(tmp_path / "out" / "README.md")["configs"][0]["data_files"]
    ]
    assert splits == ["train", "val", "test"]
    # what the card says of `datasets`' cache holds: the new data with force_redownload
    assert 'download_mode="force_redownload"' in (tmp_path / "out" / "README.md").read_text()
    again = datasets.load_dataset(str(tmp_path / "out"), cache_dir=str(tmp_path / "hf"),
                                  download_mode="force_redownload")  # fmt: skip
    assert set(again) == {"train", "val", "test"}


def test_dataset_card_never_replaces_a_users_readme(tmp_path):
    source, _ = _series_source(tmp_path)
    convert(source, tmp_path / "out", progress=False)
    readme = tmp_path / "out" / "README.md"
    ours = readme.read_text()
    mine = "# My radar archive\n\nNotes of my own, no stpdist marker.\n"
    readme.write_text(mine)
    convert(source, tmp_path / "out", overwrite=True, progress=False)
    assert readme.read_text() == mine  # carried over into the new dataset untouched
    assert read_index(tmp_path / "out" / "train").num_samples == 4
    readme.unlink()
    convert(source, tmp_path / "out", overwrite=True, progress=False)
    assert readme.read_text() == ours  # without one, ours is written again


@pytest.mark.parametrize("off_grid", ["train", "validation"])
def test_seed_mmnist_with_one_split_off_the_grid_stores_every_split_float32(tmp_path, off_grid):
    """One split on the 1/255 grid (uint8), another not (float32), was refused as a dtype
    mismatch naming a file of the grid split and saying to convert the files to one dtype
    (they were one: float32). The dataset is stored float32 in every split, the values as
    given, with one line saying so."""
    on = np.random.default_rng(1).integers(0, 256, size=(3, 20, 1, 8, 8)) / 255.0
    off = np.random.default_rng(2).random((3, 20, 1, 8, 8))
    write_seed_mmnist(tmp_path / "seed", on.astype(np.float32))
    for i in range(3):
        np.savez(tmp_path / "seed" / off_grid / f"example{i + 1:06d}.npz",
                 inputs=off[i, :10].astype(np.float32), labels=off[i, 10:].astype(np.float32))  # fmt: skip
    indexes = convert(
        SeedLayout(str(tmp_path / "seed"), "mmnist"), tmp_path / "out", progress=False
    )
    assert {s: (i.dtype, i.value_scale) for s, i in indexes.items()} == {
        "train": ("float32", 1), "val": ("float32", 1)
    }  # fmt: skip
    given = {"train": on, "val": on}
    given["train" if off_grid == "train" else "val"] = off
    for split, values in given.items():
        samples = stored(tmp_path / "out" / split)
        np.testing.assert_array_equal(samples["example000002"], values[1].astype(np.float32))


def test_statistics_do_not_depend_on_how_the_frames_lie_in_memory():
    """A video's frames, decoded H×W×C, reach the statistics as a T×C×H×W view with one
    worker and as a contiguous copy from a worker process: the sums ran over other memory
    orders, and index.json's mean and std differed in their last digits between --workers 1
    and 2 (the output should not depend on the worker count; the shards did not)."""
    from stpdist.data.format import StatsAccumulator

    frames_THWC = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    view = frames_THWC.transpose(0, 3, 1, 2)
    found = []
    for frames in (view, np.ascontiguousarray(view)):
        stats = StatsAccumulator(per_pixel=True)
        for _ in range(3):
            stats.add(frames, 255.0)
        found.append((stats.result(), stats.range(), stats.climatology().tolist()))
    assert found[0] == found[1]
