"""Bad data inputs to `stpdist shard`, `synth` and `forecast`: each is refused before anything
is written, with one readable line naming the file or flag and what was expected, and exit 2
(an `InputError`); data the converter would store so that training cannot use it (values a
guessed value scale leaves outside [0, 1]) is refused too. Files are real and small, in the
exact layout the commands read; the commands run through the CLI's `main` (`run_cli`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from stpdist.data.convert import source_paths
from stpdist.data.format import read_index
from stpdist.data.sources import FORMATS
from stpdist.data.sources.common import load_array
from stpdist.data.stream import ShardEvalStream
from stpdist.data.synthetic import (
    MovingDigits,
    check_synth_counts,
    synthesized_differently,
    write_moving_digits,
)
from stpdist.errors import InputError, MissingInput, OutputExists

DEBUG = Path(__file__).parent.parent / "configs" / "debug.yaml"


def error_line(proc) -> str:
    """The CLI's one error line (above it at most progress bars); exit 2: bad input."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("stpdist: error: "), proc.stderr
    return last


def save_arrays(folder: Path, count: int, values: np.ndarray | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    for i in range(count):
        frames = values if values is not None else rng.integers(0, 256, (4, 1, 8, 8), np.uint8)
        np.save(folder / f"seq{i}.npy", frames)
    return folder


def mnist_idx(path: Path, count: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = b"".join(x.to_bytes(4, "big") for x in (2051, count, 28, 28))
    path.write_bytes(header + np.full((count, 28, 28), 200, np.uint8).tobytes())
    return path


# ------------------------------------------------------------------ value scale
def test_floats_a_guessed_scale_leaves_outside_unit_range_are_refused(tmp_path):
    folder = tmp_path / "fl"
    folder.mkdir()
    for i in range(4):  # 0–100: a guessed value scale of 1 would be clamped to [0, 1]
        values = np.linspace(0, 100, 8 * 32 * 32, dtype=np.float32).reshape(8, 1, 32, 32)
        np.save(folder / f"{i}.npy", values)
    splits = "train=0.5,val=0.25,test=0.25"
    line = error_line(
        run_cli("shard", "arrays", "fl", "--out", "d_fl", "--splits", splits, cwd=tmp_path)
    )
    assert "values span 0…100 (float32)" in line and "--value-scale 100" in line
    assert not (tmp_path / "d_fl").exists()  # nothing written
    # said from the first file, before a split is converted (a review: after the whole split)
    said = r"error: fl/\d\.npy: values span 0…100 \(float32\), outside \[0, 1\]"
    assert re.search(said, line), line

    run_cli(
        "shard", "arrays", "fl", "--out", "d_fl", "--splits", splits, "--value-scale", "100",
        cwd=tmp_path, check=True,
    )  # fmt: skip
    index = read_index(tmp_path / "d_fl" / "train")
    assert index.value_scale == 100 and index.args["value_scale"] == 100
    assert index.max == [1.0] and index.min == [0.0]
    # a later file out of range is named too (the split's statistics named the folder)
    for i in range(4):
        np.save(folder / f"{i}.npy", np.full((8, 1, 32, 32), 3.0 if i == 3 else 0.5, np.float32))
    line = error_line(run_cli("shard", "arrays", "fl", "--out", "d2", "--workers", "1",
                              cwd=tmp_path))  # fmt: skip
    assert line.startswith("stpdist: error: fl/3.npy: values span 3…3 (float32), outside [0, 1]")
    # a file of another dtype is said as such, not against a scale guessed from another
    np.save(folder / "3.npy", np.full((8, 1, 32, 32), 200, np.uint8))
    line = error_line(run_cli("shard", "arrays", "fl", "--out", "d3", "--workers", "1",
                              cwd=tmp_path))  # fmt: skip
    assert line.startswith("stpdist: error: fl/3.npy: sample 3: dtype uint8 differs from float32")


def test_signed_or_integer_data_with_a_guessed_scale_is_refused_unless_given(tmp_path):
    save_arrays(tmp_path / "signed", 2, np.full((4, 1, 8, 8), -0.5, np.float32))
    line = error_line(run_cli("shard", "arrays", "signed", "--out", "a", cwd=tmp_path))
    assert "values span -0.5…-0.5" in line and "shift them to be ≥ 0" in line
    assert "--value-scale 1" in line and "data.normalize" in line
    # an explicit scale is the user's choice (physical units, trained with standardize)
    run_cli(
        "shard", "arrays", "signed", "--out", "a", "--value-scale", "1", cwd=tmp_path, check=True
    )
    assert read_index(tmp_path / "a" / "train").min == [-0.5]

    save_arrays(tmp_path / "counts", 2, np.full((4, 1, 8, 8), 700, np.int16))
    line = error_line(run_cli("shard", "arrays", "counts", "--out", "b", cwd=tmp_path))
    assert "700…700 (int16)" in line and "--value-scale 1000" in line

    save_arrays(tmp_path / "unit", 2, np.full((4, 1, 8, 8), 0.25, np.float32))  # fits: kept
    run_cli("shard", "arrays", "unit", "--out", "c", cwd=tmp_path, check=True)
    assert read_index(tmp_path / "c" / "train").value_scale == 1


# ------------------------------------------------------------------ source paths
def test_synth_overwrite_never_deletes_the_digits_file_inside_out(tmp_path):
    digits = mnist_idx(tmp_path / "mn" / "train-images-idx3-ubyte")
    args = ["--train", "2", "--val", "1", "--test", "1", "--frames", "4", "--size", "32"]
    line = error_line(
        run_cli(
            "synth",
            "moving-digits",
            "--out",
            "mn",
            *args,
            "--digits",
            "mn/train-images-idx3-ubyte",
            "--overwrite",
            cwd=tmp_path,
        )  # fmt: skip
    )
    assert "--out mn is or contains the source mn/train-images-idx3-ubyte" in line
    assert digits.is_file() and len(digits.read_bytes()) == 16 + 3 * 28 * 28
    source = MovingDigits({"train": 1}, image_size=32, digits=str(digits))
    assert source_paths(source) == [digits]
    assert source_paths(MovingDigits({"train": 1}, image_size=32)) == []


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_lists_its_inputs_for_the_overwrite_guard(name):
    """`shard --overwrite` refuses an --out that holds a source path: every registered format
    must give `source_paths` what it reads (SEVIR: the catalog and the data folder too)."""
    from stpdist.cli import parser

    required = {"xarray": ["--vars", "z500"], "sevir": ["--data-root", "h5"]}
    extra = required.get("xarray" if name in ("netcdf", "zarr") else name, [])
    args, _ = parser().parse_known_args(["shard", name, "SRC", "--out", "o", *extra])
    source = FORMATS[name].build(args.sources, args)
    expected = [Path("SRC"), Path("h5")] if name == "sevir" else [Path("SRC")]
    assert source_paths(source) == expected


# ------------------------------------------------------------------ split folders
def test_split_folders_beside_other_arrays_are_refused_naming_what_is_left_out(tmp_path):
    save_arrays(tmp_path / "sp" / "train", 3)
    save_arrays(tmp_path / "sp" / "valid", 2)  # not a split folder name
    save_arrays(tmp_path / "sp", 4)  # loose beside the split folders
    line = error_line(run_cli("shard", "arrays", "sp", "--out", "d_sp", cwd=tmp_path))
    assert "valid/ (2 files)" in line and "seq0.npy, seq1.npy, seq2.npy, … (4 files)" in line
    assert "train/, validation/, val/, test/" in line
    assert not (tmp_path / "d_sp").exists()

    save_arrays(tmp_path / "flat", 3)
    save_arrays(tmp_path / "flat" / "extra", 1)  # flat: the sub-folder would be skipped
    line = error_line(run_cli("shard", "arrays", "flat", "--out", "d_flat", cwd=tmp_path))
    assert "extra/ (1 file)" in line and "would be left out" in line

    save_arrays(tmp_path / "ok" / "train", 3)  # the layout as documented: every file taken
    save_arrays(tmp_path / "ok" / "validation", 2)
    (tmp_path / "ok" / "notes").mkdir()  # a sub-folder without arrays is no data
    run_cli("shard", "arrays", "ok", "--out", "d_ok", cwd=tmp_path, check=True)
    assert read_index(tmp_path / "d_ok" / "train").num_samples == 3
    assert read_index(tmp_path / "d_ok" / "val").num_samples == 2


# ------------------------------------------------------------------ messages
def test_npz_of_several_arrays_names_key_only_where_the_caller_has_one(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.zeros((4, 1, 8, 8)), b=np.zeros((4, 1, 8, 8)))
    with pytest.raises(InputError, match=r"two.npz: holds 2 arrays \['a', 'b'\]; expected a"):
        load_array(tmp_path / "two.npz")  # forecast's call: it has no --key
    with pytest.raises(InputError, match="choose one with --key") as err:
        load_array(tmp_path / "two.npz", key_option="--key")
    assert "expected a file" not in str(err.value)
    (tmp_path / "raw").mkdir()
    (tmp_path / "two.npz").rename(tmp_path / "raw" / "two.npz")
    line = error_line(run_cli("shard", "arrays", "raw", "--out", "o", cwd=tmp_path))
    assert "raw/two.npz: holds 2 arrays ['a', 'b']; choose one with --key" in line


def test_a_file_that_is_not_npy_is_named_as_such_not_as_pickled_data(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "g.npy").write_text("garbage\n")
    line = error_line(run_cli("shard", "arrays", "raw", "--out", "o", cwd=tmp_path))
    assert "raw/g.npy: not a valid .npy file" in line and "pickle" not in line
    (tmp_path / "raw" / "g.npy").rename(tmp_path / "g.npz")
    with pytest.raises(InputError, match="g.npz: not a valid .npz file"):
        load_array(tmp_path / "g.npz")
    line = error_line(run_cli("shard", "arrays", "g.npz", "--out", "o", cwd=tmp_path))
    assert "g.npz is a file; shard arrays takes a folder" in line and "--frames" in line


def test_forecast_input_messages_name_no_flag_it_lacks(tmp_path):
    """An .npz of two arrays names `forecast`'s --key (which it has now); a text file named
    .npy is not a valid .npy (not numpy's pickle message)."""
    run_cli("train", str(DEBUG), "trainer.max_epochs=1", cwd=tmp_path, check=True)
    np.savez(tmp_path / "two.npz", a=np.zeros((4, 1, 32, 32)), b=np.zeros((4, 1, 32, 32)))
    line = error_line(run_cli("forecast", "runs/debug", "two.npz", "--out", "f", cwd=tmp_path))
    assert "two.npz: holds 2 arrays ['a', 'b']; choose one with --key" in line
    # --key for inputs without an .npz chose nothing, silently
    np.save(tmp_path / "one.npy", np.zeros((12, 1, 32, 32), np.float32))
    for source, what in [("one.npy", "one.npy holds none"),
                         ("data/debug-digits/test", "data/debug-digits/test is a shard split")]:  # fmt: skip
        line = error_line(
            run_cli("forecast", "runs/debug", source, "--key", "a", "--out", "f", cwd=tmp_path)
        )
        assert line.endswith(f"--key a names an array inside .npz inputs; {what}: drop --key")
    assert not (tmp_path / "f").exists()
    (tmp_path / "g.npy").write_text("garbage\n")
    line = error_line(run_cli("forecast", "runs/debug", "g.npy", "--out", "f", cwd=tmp_path))
    assert "g.npy: not a valid .npy file" in line and "allow_pickle" not in line
    pngs = tmp_path / "pngs"  # a folder of PNG frames, one of them not an image
    pngs.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(pngs / f"{i}.png")
    (pngs / "3.png").write_text("not a picture\n")
    line = error_line(run_cli("forecast", "runs/debug", "pngs", "--out", "f", cwd=tmp_path))
    assert "pngs/3.png: not a readable PNG image" in line, line
    # 16-bit frames were clipped to 255 without a word
    Image.fromarray(np.full((32, 32), 3000, np.uint16)).save(pngs / "3.png")
    line = error_line(run_cli("forecast", "runs/debug", "pngs", "--out", "f", cwd=tmp_path))
    assert "pngs/3.png: a 16-bit PNG (mode I;16); forecast reads PNG frames of 8 bits" in line


def test_forecast_takes_png_frames_in_number_order_and_upper_case_suffixes(tmp_path):
    """`10.png` came before `2.png` (text order), and `.PNG`/`.NPY` inputs were left out."""
    import stpdist
    from stpdist.trainer import load_predictions

    run_cli("train", str(DEBUG), "trainer.max_epochs=1", cwd=tmp_path, check=True)
    pngs, frames = tmp_path / "pngs", np.arange(12, dtype=np.uint8)[:, None, None] * 20
    pngs.mkdir()
    for t, value in enumerate(frames):  # 0.png … 11.png, unpadded; one upper-case suffix
        Image.fromarray(np.full((32, 32), value, np.uint8)).save(
            pngs / f"{t}.{'PNG' if t == 7 else 'png'}"
        )
    (tmp_path / "arrays").mkdir()
    with open(tmp_path / "arrays" / "SEQ.NPY", "wb") as file:  # np.save would add .npy
        np.save(file, np.zeros((4, 1, 32, 32), np.uint8))
    for source in ("pngs", "arrays"):
        run_cli("forecast", "runs/debug", source, "--out", source + "-out", "--samples", "0",
                cwd=tmp_path, check=True)  # fmt: skip
    model = stpdist.load(tmp_path / "runs" / "debug")
    newest = np.repeat(np.repeat(frames[-4:, None], 32, axis=2), 32, axis=3).astype(np.float32)
    (got,) = load_predictions(tmp_path / "pngs-out").values()
    np.testing.assert_allclose(got, model.forecast(newest), rtol=1e-5, atol=1e-4)
    assert list(load_predictions(tmp_path / "arrays-out")) == ["SEQ"]


def test_a_series_shorter_than_frames_says_so(tmp_path):
    (tmp_path / "long").mkdir()
    np.save(tmp_path / "long" / "series.npy", np.zeros((100, 1, 8, 8), np.uint8))
    line = error_line(
        run_cli(
            "shard",
            "arrays",
            "long/series.npy",
            "--out",
            "x",
            "--frames",
            "200",
            "--stride",
            "4",
            cwd=tmp_path,
        )  # fmt: skip
    )
    assert "long/series.npy: the series holds 100 frames, fewer than --frames 200" in line


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--frames", "0"], "--frames 0: expected at least 1"),
        (["--size", "0"], "--size 0: expected at least 1"),
        (["--size", "16"], "--digit-size 28 does not fit --size 16"),
        (["--train", "0"], "--train 0: expected at least 1 training sequence"),
        (["--val", "-1"], "--val -1 is negative: expected a count ≥ 0"),
    ],
)
def test_synth_flags_are_checked_before_any_work(tmp_path, flags, expected):
    args = ["synth", "moving-digits", "--out", "s", "--train", "2", "--val", "1", "--test", "1"]
    line = error_line(run_cli(*args, "--frames", "4", "--size", "32", *flags, cwd=tmp_path))
    assert expected in line
    assert not (tmp_path / "s").exists()


def test_synth_train_count_must_be_at_least_one_as_in_the_config():
    with pytest.raises(InputError, match="--train 0: expected at least 1 training sequence"):
        check_synth_counts(0, 1, 1)
    with pytest.raises(InputError, match="--test -2"):
        check_synth_counts(1, 1, -2)
    assert check_synth_counts(3, 0, 1) == {"train": 3, "val": 0, "test": 1}


def test_digits_file_not_gzip_or_not_idx_is_named(tmp_path):
    (tmp_path / "fake.gz").write_text("hello")
    (tmp_path / "fake-idx").write_bytes(b"\x00" * 40)
    args = ["synth", "moving-digits", "--out", "s", "--train", "2", "--frames", "4"]
    line = error_line(run_cli(*args, "--size", "32", "--digits", "fake.gz", cwd=tmp_path))
    assert "error: fake.gz: unreadable (Not a gzipped file" in line
    assert "MNIST images in idx3 format" in line and "optionally .gz" in line
    line = error_line(run_cli(*args, "--size", "32", "--digits", "fake-idx", cwd=tmp_path))
    assert "error: fake-idx: not an MNIST idx3 image file" in line
    line = error_line(run_cli(*args, "--size", "32", "--digits", "nosuch.gz", cwd=tmp_path))
    assert "nosuch.gz: no such file" in line


# ------------------------------------------------------------------ exit codes
def test_missing_inputs_and_occupied_outputs_exit_2_and_keep_their_os_error_types(tmp_path):
    line = error_line(run_cli("shard", "arrays", "nonexist", "--out", "o", cwd=tmp_path))
    assert line == "stpdist: error: nonexist: no such folder"
    write_moving_digits(tmp_path / "syn", {"train": 1}, image_size=32, num_frames=4)
    line = error_line(
        run_cli("synth", "moving-digits", "--out", "syn", "--size", "32", cwd=tmp_path)
    )
    assert "syn is not empty; pass --overwrite to replace it" in line
    # callers that test for the OS error types still can
    with pytest.raises(OutputExists) as err:
        write_moving_digits(tmp_path / "syn", {"train": 1}, image_size=32, num_frames=4)
    assert isinstance(err.value, FileExistsError)
    with pytest.raises(MissingInput) as err:
        read_index(tmp_path / "nosuch")
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, InputError)


def test_sequences_shorter_than_the_frames_a_run_takes_are_an_input_error(tmp_path):
    write_moving_digits(tmp_path / "d", {"val": 1}, image_size=32, num_frames=8)
    with pytest.raises(InputError, match=r"d/val: sequences hold 8 frames, fewer than .* = 10"):
        ShardEvalStream(
            tmp_path / "d" / "val", batch_size=1, num_input_frames=5, num_output_frames=5
        )


# ------------------------------------------------------------------ regenerated settings
def test_synthesized_data_made_with_other_settings_is_named(tmp_path):
    settings = {"num_frames": 4, "image_size": 32, "digit_size": 12}
    write_moving_digits(tmp_path / "d", {"train": 3, "val": 2}, workers=1, **settings)
    assert synthesized_differently(tmp_path / "d", {"train": 3, "val": 2}, **settings) is None
    # on-the-fly training asks for no train shards: not compared
    assert synthesized_differently(tmp_path / "d", {"train": 0, "val": 2}, **settings) is None
    line = synthesized_differently(
        tmp_path / "d", {"train": 64, "val": 2}, **{**settings, "image_size": 64}
    )
    assert line is not None and "\n" not in line
    assert "image_size 32 → 64" in line and "train 3 → 64" in line
    assert f"delete {tmp_path / 'd'} to regenerate" in line
    index = json.loads((tmp_path / "d" / "train" / "index.json").read_text())
    index["source"] = "arrays"  # converted data is the user's: never compared
    (tmp_path / "d" / "train" / "index.json").write_text(json.dumps(index))
    assert synthesized_differently(tmp_path / "d", {"train": 64}, image_size=64) is None
