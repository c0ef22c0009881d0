"""`validate` and `predict` normalise frames with the statistics of the data the checkpoint
was trained on (the index.json it keeps), as `forecast` and `stpdist.load` do: a review
found them taking the statistics of whatever data they were pointed at (`data.root=…`, or
the dataset converted again), so one checkpoint gave other predictions by command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from stpdist.trainer import load_predictions

CONFIG = """\
trainer: {output_dir: runs/std, max_steps: 2, progress_bar: false}
data: {root: data/a, batch_size: 4, num_input_frames: 4, num_output_frames: 4,
       normalize: standardize}
model:
  name: convlstm
  backbone: {hidden_channels: [4], kernel_size: 3}
  patch_size: 4
logging: {num_samples: 0}
"""


def _arrays(folder: Path, count: int, low: int, high: int, dtype=np.uint8) -> None:
    rng = np.random.default_rng(low)
    folder.mkdir()
    for i in range(count):
        frames = rng.integers(low, high, size=(8, 16, 16))
        np.save(
            folder / f"s{i:03d}.npy",
            (frames / 255 if dtype == np.float32 else frames).astype(dtype),
        )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("statistics")
    _arrays(root / "dim", 24, 0, 60)  # the training data: dim
    _arrays(root / "bright", 6, 150, 256)  # new data, other statistics
    (root / "std.yaml").write_text(CONFIG)
    for args in [
        ("shard", "arrays", "dim", "--out", "data/a", "--splits", "train=16,val=4,test=4"),
        ("shard", "arrays", "bright", "--out", "data/b", "--split", "test"),
        ("train", "std.yaml"),
    ]:
        run_cli(*args, cwd=root, check=True)
    return root


def test_predict_on_other_data_equals_forecast(run):
    run_cli("predict", "std.yaml", "data.root=data/b", "--out", "p", "--samples", "0",
            cwd=run, check=True)  # fmt: skip
    run_cli("forecast", "runs/std", "data/b/test", "--out", "f", "--samples", "0", "--ckpt",
            "last", cwd=run, check=True)  # fmt: skip
    predicted, forecast = load_predictions(run / "p"), load_predictions(run / "f")
    assert sorted(predicted) == sorted(forecast) == [f"s{i:03d}" for i in range(6)]
    for key, frames in predicted.items():
        np.testing.assert_allclose(frames, forecast[key], rtol=1e-5, atol=1e-3)
    done = run_cli("validate", "std.yaml", "data.root=data/b", "--split", "test", cwd=run)
    assert done.returncode == 0, done.stderr
    # other data's results are not the run's: not logged into its metrics.jsonl
    assert "not logged into the run's metrics.jsonl" in done.stdout
    rows = (run / "runs" / "std" / "metrics.jsonl").read_text()
    assert "test/mse" not in rows


def test_another_normalisation_or_other_units_are_refused(run):
    refused = run_cli("predict", "std.yaml", "data.normalize=scale", "--out", "q", cwd=run)
    assert refused.returncode == 2 and "was trained with 'standardize'" in refused.stderr, (
        refused.stderr
    )
    _arrays(run / "float", 6, 150, 256, np.float32)  # stored in [0, 1]: value scale 1
    run_cli("shard", "arrays", "float", "--out", "data/c", "--split", "test", cwd=run, check=True)
    refused = run_cli("predict", "std.yaml", "data.root=data/c", "--out", "r", cwd=run)
    assert (
        refused.returncode == 2
        and "data.root data/c holds 1 channel(s) stored with value scale 1 (its test split), the data the checkpoint was trained on 1 with value scale 255"
        in refused.stderr
    ), refused.stderr
    assert not (run / "q").exists() and not (run / "r").exists()


def test_validate_on_other_data_or_frames_does_not_replace_the_runs_results(run):
    """`validate` on other data or frame counts silently replaced the run's results of the
    split (same checkpoint, so "the same results"); results record the split folder and
    frame counts they were computed on, and other data is refused without --overwrite."""
    import json

    run_cli("validate", "std.yaml", cwd=run, check=True)
    path = run / "runs" / "std" / "metrics_val.json"
    first = json.loads(path.read_text())
    import hashlib
    import shutil

    val = run / "data" / "a" / "val"
    assert first["data"] == {
        "split": str(val.resolve()), "num_input_frames": 4, "num_output_frames": 4,
        "index_sha256": hashlib.sha256((val / "index.json").read_bytes()).hexdigest(),
    }  # fmt: skip
    run_cli("validate", "std.yaml", cwd=run, check=True)  # the same again: replaced
    # the same data by another path (a copy in a job's scratch folder): the same results
    shutil.copytree(run / "data" / "a", run / "scratch")
    run_cli("validate", "std.yaml", "data.root=scratch", cwd=run, check=True)
    refused = run_cli("validate", "std.yaml", "data.num_output_frames=3", cwd=run)
    assert refused.returncode == 2, refused.stderr
    assert "scratch/val (4 → 4 frames), not on " in refused.stderr
    assert refused.stderr.rstrip().endswith("(4 → 3 frames); pass --overwrite to replace them, "
                                            "or write them elsewhere (validate: another "
                                            "trainer.output_dir; predict: --out)")  # fmt: skip
    test = ("validate", "std.yaml", "--split", "test")
    own = run_cli(*test, "--overwrite", cwd=run, check=True)  # the run's own test split
    assert "not logged" not in own.stdout
    assert "test/mse" in (run / "runs" / "std" / "metrics.jsonl").read_text()
    refused = run_cli(*test, "data.root=data/b", cwd=run)
    assert refused.returncode == 2 and "data/a/test (4 → 4 frames), not on " in refused.stderr
    run_cli(*test, "data.root=data/b", "--overwrite", cwd=run, check=True)
    written = json.loads((run / "runs" / "std" / "metrics_test.json").read_text())
    assert written["data"]["split"] == str((run / "data" / "b" / "test").resolve())


def test_data_with_another_fill_of_missing_values_is_refused(tmp_path):
    """A radar user's review: NaN (no coverage) stored as --allow-nan 30 where the model was
    trained on a fill of 0 was accepted without a word, and every no-coverage pixel read
    as rain (CSI of the same model and frames fell by a third)."""
    rng = np.random.default_rng(3)
    (tmp_path / "raw").mkdir()
    for i in range(8):
        frames = rng.random((8, 16, 16)).astype(np.float32)
        frames[:, :3] = np.nan  # beyond the radar's range
        np.save(tmp_path / "raw" / f"s{i}.npy", frames)
    (tmp_path / "nan.yaml").write_text(
        CONFIG.replace("runs/std", "runs/nan").replace("data/a", "data/fill0")
    )
    for fill, out in (("0", "data/fill0"), ("0.5", "data/fill5")):
        run_cli("shard", "arrays", "raw", "--out", out, "--splits", "train=4,val=2,test=2",
                "--allow-nan", fill, "--workers", "1", cwd=tmp_path, check=True)  # fmt: skip
    run_cli("train", "nan.yaml", cwd=tmp_path, check=True)
    refused = run_cli("predict", "nan.yaml", "data.root=data/fill5", "--out", "p", cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "data.root data/fill5 stores missing values (NaN) as 0.5 (its train split, --allow-nan "
            "0.5), the data the checkpoint was trained on as 0: the model learnt 0 as no data; "
            "convert the data with --allow-nan 0"
        )
    ), refused.stderr
    run_cli("predict", "nan.yaml", "--out", "q", "--samples", "0", cwd=tmp_path, check=True)
    # forecast from frames with NaN: as the training data stored it (0), said in a line
    frames = np.load(tmp_path / "raw" / "s0.npy")
    np.save(tmp_path / "filled.npy", np.nan_to_num(frames, nan=0.0))
    said = run_cli("forecast", "runs/nan", "raw/s0.npy", "--out", "f", "--samples", "0",
                   "--ckpt", "last", cwd=tmp_path, check=True)  # fmt: skip
    assert "384 missing value(s) (NaN) forecast from as 0, as the model's training" in (
        said.stderr + said.stdout
    ), said.stderr
    run_cli("forecast", "runs/nan", "filled.npy", "--out", "g", "--samples", "0", "--ckpt",
            "last", cwd=tmp_path, check=True)  # fmt: skip
    (nan,), (filled,) = (
        load_predictions(tmp_path / "f").values(),
        load_predictions(tmp_path / "g").values(),
    )
    assert np.isfinite(nan).all()
    np.testing.assert_array_equal(nan, filled)
    import stpdist

    model = stpdist.load(tmp_path / "runs" / "nan", "last")
    np.testing.assert_allclose(model.forecast(frames), filled[:, 0], rtol=1e-5, atol=1e-6)
    # a split stored with another fill: refused by forecast as by predict (a code review)
    refused = run_cli("forecast", "runs/nan", "data/fill5/test", "--out", "h", "--ckpt", "last",
                      cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2 and "data/fill5/test stores missing values (NaN) as 0.5" in (
        refused.stderr
    ), refused.stderr


def test_filled_values_are_left_out_of_the_inputs_range():
    """A code review: forecast inputs' NaN, read as a fill far below the data (-9999), made
    the units check say the values lay far outside the training range."""
    from stpdist.inference import ValueSurvey

    frames = np.full((4, 1, 3, 3), 20.0, np.float32)
    frames[:, :, 0] = np.nan
    frames[0, 0, 1, 1] = 35.0
    survey = ValueSurvey("x", fill=-9999.0)
    survey.add(frames)
    assert survey.filled == 12 and survey.nonfinite == 0
    assert (survey.low.tolist(), survey.high.tolist()) == ([20.0], [35.0])
    frames[1, 0, 2, 2] = np.inf  # infinities are still refused
    survey = ValueSurvey("x", fill=-9999.0)
    survey.add(frames)
    assert survey.nonfinite == 1
