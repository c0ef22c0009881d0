"""`stpdist predict`, `validate` and `forecast` guard what they write: a predict folder
holding other files, a run or checkpoint folder as `--out`, and the default results of
another checkpoint are refused (exit 2, one line, nothing written) unless `--overwrite`;
results record their checkpoint; bad flag values are refused naming the flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

import stpdist
from stpdist.errors import InputError

DEBUG = str(Path(__file__).parent.parent / "configs" / "debug.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The debug config trained for two epochs: checkpoints step-8 and step-16."""
    root = tmp_path_factory.mktemp("guards")
    run_cli("train", DEBUG, "logging.num_samples=0", cwd=root, check=True)
    return root


def refused(*args: str, cwd: Path) -> str:
    """The one line on stderr of a `stpdist ARGS` that exits 2."""
    proc = run_cli(*args, cwd=cwd)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_predict_refuses_an_out_of_other_files_unless_overwrite(trained):
    out = trained / "pout"
    out.mkdir()
    (out / "metrics.json").write_text("mine\n")
    line = refused("predict", DEBUG, "--out", "pout", cwd=trained)
    assert "--out pout is not empty" in line and "--overwrite" in line
    assert snapshot(out) == {"metrics.json": b"mine\n"}  # nothing written, nothing deleted
    (out / "notes.txt").write_text("mine too\n")
    assert "notes.txt" in refused("predict", DEBUG, "--out", "pout", cwd=trained)

    # --overwrite replaces an earlier predict's output, never the user's other files: it
    # deleted them with the folder (their code, their notes)
    line = refused("predict", DEBUG, "--out", "pout", "--overwrite", cwd=trained)
    assert "--out pout holds notes.txt, which no stpdist predict wrote" in line
    assert (out / "notes.txt").read_text() == "mine too\n"
    (out / "notes.txt").unlink()
    (out / "src").mkdir()
    (out / "src" / "model.py").write_text("code\n")
    line = refused("predict", DEBUG, "--out", "pout", "--overwrite", cwd=trained)
    assert "--out pout holds src/, which no stpdist predict wrote" in line
    assert (out / "src" / "model.py").read_text() == "code\n"
    (out / "src" / "model.py").unlink()
    (out / "src").rmdir()
    run_cli("predict", DEBUG, "--out", "pout", "--overwrite", cwd=trained, check=True)
    assert json.loads((out / "metrics.json").read_text())["test/num_samples"] == 8
    # an earlier predict's output of the same checkpoint: replaced without --overwrite
    run_cli("predict", DEBUG, "--out", "pout", "--samples", "1", cwd=trained, check=True)
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "test_0000000.gif",
        "test_0000000.png",
    ]  # no picture of the earlier predict's 4 left behind


@pytest.mark.parametrize(
    "out", ["runs/debug/checkpoints/step-00000008", "runs/debug", "runs/debug/checkpoints"]
)
def test_predict_refuses_a_run_or_checkpoint_folder_as_out(trained, out):
    before = snapshot(trained / "runs" / "debug" / "checkpoints")
    for overwrite in ((), ("--overwrite",)):  # refused whatever the flags
        line = refused("predict", DEBUG, "--out", out, *overwrite, cwd=trained)
        assert line.startswith(f"stpdist: error: --out {out} ")
    assert snapshot(trained / "runs" / "debug" / "checkpoints") == before


def test_results_record_their_checkpoint_and_another_ckpt_keeps_the_default_ones(trained):
    run = trained / "runs" / "debug"
    proc = run_cli("predict", DEBUG, "--samples", "0", cwd=trained, check=True)
    default = run / "predictions" / "test"
    metrics = json.loads((default / "metrics.json").read_text())
    best = metrics["checkpoint_step"]
    assert best in (8, 16) and metrics["checkpoint"].endswith(f"step-{best:08d}")
    relative = Path(metrics["checkpoint"]).relative_to(trained)  # recorded absolute
    assert f"checkpoint {relative} (step {best});" in proc.stdout
    other = 24 - best
    before = snapshot(default)

    line = refused("predict", DEBUG, "--ckpt", f"step-{other}", cwd=trained)
    assert f"holds the results of checkpoint step-{best:08d} (step {best})" in line
    assert f"--ckpt step-{other} (step-{other:08d}, step {other})" in line
    assert "--out DIR" in line and "--overwrite" in line
    assert snapshot(default) == before  # the default results as they were
    # the same checkpoint named otherwise replaces its own results
    run_cli("predict", DEBUG, "--ckpt", str(best), "--samples", "0", cwd=trained, check=True)
    # another folder keeps both; --overwrite replaces them
    run_cli("predict", DEBUG, "--ckpt", str(other), "--out", "p-other", cwd=trained, check=True)
    assert json.loads((trained / "p-other" / "metrics.json").read_text())["checkpoint_step"] == (
        other
    )
    run_cli("predict", DEBUG, "--ckpt", str(other), "--overwrite", cwd=trained, check=True)
    assert json.loads((default / "metrics.json").read_text())["checkpoint_step"] == other

    proc = run_cli("validate", DEBUG, cwd=trained, check=True)
    assert f"(step {best}), split val" in proc.stdout
    validated = run / "metrics_val.json"
    assert json.loads(validated.read_text())["checkpoint_step"] == best
    before = validated.read_bytes()
    line = refused("validate", DEBUG, "--ckpt", str(other), cwd=trained)
    assert f"{Path('runs/debug/metrics_val.json')} holds the results of checkpoint" in line
    assert validated.read_bytes() == before
    run_cli("validate", DEBUG, "--ckpt", str(other), "--overwrite", cwd=trained, check=True)
    scored = json.loads(validated.read_text())
    assert scored["checkpoint_step"] == other and scored["val/num_samples"] == 8


def test_samples_zero_names_no_picture_folder_and_negative_is_refused(trained):
    proc = run_cli("predict", DEBUG, "--out", "p0", "--samples", "0", cwd=trained, check=True)
    assert "pictures" not in proc.stdout and not (trained / "p0" / "samples").exists()
    proc = run_cli(
        "forecast", "runs/debug", "data/debug-digits/test", "--out", "fc0", "--samples", "0",
        cwd=trained, check=True,
    )  # fmt: skip
    assert "pictures" not in proc.stdout and not (trained / "fc0" / "samples").exists()
    for command in (("predict", DEBUG), ("forecast", "runs/debug", "data/debug-digits/test")):
        proc = run_cli(*command, "--out", "neg", "--samples", "-1", cwd=trained)
        assert proc.returncode == 2 and "argument --samples: '-1'" in proc.stderr
    assert not (trained / "neg").exists()


@pytest.mark.parametrize("shape", ["axbxc", "2x3x1x16", "2x3x0x16x16"])
def test_bench_shape_is_parsed_naming_the_flag(tmp_path, shape):
    proc = run_cli("bench", "model", "convlstm", "--shape", shape, cwd=tmp_path)
    assert proc.returncode == 2
    assert f"argument --shape: '{shape}': expected BxTxCxHxW" in proc.stderr


def test_missing_inputs_of_the_cli_exit_2_naming_the_path(tmp_path):
    assert "nowhere: no such folder" in refused("inspect", "nowhere", cwd=tmp_path)
    (tmp_path / "empty").mkdir()
    assert "empty: no index.json in it or" in refused("inspect", "empty", cwd=tmp_path)
    line = refused("forecast", "nowhere", "x.npy", "--out", "o", cwd=tmp_path)
    assert "nowhere: neither a model folder" in line
    with pytest.raises(InputError, match="nowhere: neither a model folder"):
        stpdist.load(tmp_path / "nowhere")
    assert not (tmp_path / "o").exists()


def test_weights_that_are_not_a_whole_safetensors_file_are_refused_naming_it(trained, tmp_path):
    """A file of another format, a truncated one, a folder of neither kind, an empty
    --ckpt, a damaged checkpoint: one line naming it, exit 2, before anything else (here:
    before the check that would refuse replacing another checkpoint's results)."""
    import shutil

    import numpy as np

    run = tmp_path / "run"
    shutil.copytree(trained / "runs" / "debug", run)
    (run / "metrics_val.json").write_text('{"checkpoint": "elsewhere", "checkpoint_step": 3}')
    other_format = tmp_path / "weights.npy"
    np.save(other_format, np.zeros((2, 2), np.uint8))
    step = run / "checkpoints" / "step-00000008"
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((step / "model.safetensors").read_bytes()[:3000])
    at = f"trainer.output_dir={run}"

    line = refused("validate", DEBUG, at, "--ckpt", str(other_format), cwd=trained)
    assert line.startswith(f"stpdist: error: {other_format}: not a readable safetensors file")
    line = refused("predict", DEBUG, at, "--ckpt", str(truncated), "--out", "t", cwd=trained)
    assert f"{truncated}: not a readable safetensors file" in line and "not fully covered" in line
    assert not (trained / "t").exists()
    line = refused("validate", DEBUG, at, "--ckpt", str(run / "checkpoints"), cwd=trained)
    assert f"--ckpt {run / 'checkpoints'}: a folder that is neither a checkpoint nor" in line
    assert "--ckpt is empty" in refused("validate", DEBUG, at, "--ckpt", "", cwd=trained)

    model = tmp_path / "model"  # a model folder (weights, config, index) truncated
    shutil.copytree(step, model)
    for name in ("manifest.json", "trainer_state.json", "optimizer.pt"):  # a checkpoint's own
        (model / name).unlink()
    with open(model / "model.safetensors", "r+b") as weights:
        weights.truncate(4000)
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, np.zeros((1, 4, 1, 32, 32), np.float32))
    line = refused("forecast", str(model), str(inputs), "--out", "f", cwd=trained)
    assert f"{model / 'model.safetensors'}: not a readable safetensors file" in line
    with open(step / "model.safetensors", "r+b") as weights:  # the checkpoint itself
        weights.truncate(4000)
    line = refused("validate", DEBUG, at, "--ckpt", str(step), "--overwrite", cwd=trained)
    assert f"{step}: damaged checkpoint (model.safetensors holds 4000 bytes" in line


def test_inspect_and_synth_name_the_flag_a_bad_value_is_given_to(trained, tmp_path):
    (tmp_path / "file.npy").write_bytes(b"mine")
    line = refused("inspect", str(trained / "data" / "debug-digits"), "--out", "file.npy",
                   cwd=tmp_path)  # fmt: skip
    assert line == "stpdist: error: --out file.npy is a file; expected a folder for the pictures"
    assert (tmp_path / "file.npy").read_bytes() == b"mine"
    line = refused("synth", "moving-digits", "--out", "s", "--seed", "-1", cwd=tmp_path)
    assert line == "stpdist: error: synthetic moving digits: --seed -1: expected a seed ≥ 0"
    assert not (tmp_path / "s").exists()


def test_a_predict_that_fails_leaves_no_folder_it_made(trained, tmp_path):
    """Weights of another architecture: refused naming the key and the config to give, and
    the predictions folder (and the run folder above it) made for it are gone again."""
    step = trained / "runs" / "debug" / "checkpoints" / "step-00000008"
    run = tmp_path / "new" / "run"
    line = refused(
        "predict", DEBUG, f"trainer.output_dir={run}", "model.backbone.hidden_channels=[4]",
        "--ckpt", str(step), cwd=trained,
    )  # fmt: skip
    assert "has model.backbone.hidden_channels [8, 8], this config [4]" in line
    assert f"give them {step / 'config.yaml'} or the config that trained" in line
    assert not (tmp_path / "new").exists()


def test_what_predict_and_forecast_take_for_their_earlier_output():
    """A picture in a sub-folder of samples/ is no panel of theirs (fnmatch's `*` matched
    the `/`), and a `.predicting/` left alone by a killed `Trainer.predict` is predict's."""
    import tempfile

    from stpdist.cli import _earlier_output

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "predictions-r000-000000.npz").touch()
        (out / "samples" / "sub").mkdir(parents=True)
        (out / "samples" / "a.png").touch()
        (out / "samples" / "sub" / "x.gif").touch()
        assert _earlier_output("forecast").foreign(out) == ["samples/sub/x.gif"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / ".predicting").mkdir()
        (out / ".predicting" / "predictions-r000-000000.npz").touch()
        assert _earlier_output("predict").foreign(out) == []
        (out / ".predicting" / "mine.txt").touch()
        assert _earlier_output("predict").foreign(out) == [".predicting/mine.txt"]


def test_an_output_written_by_another_command_meanwhile_is_kept(tmp_path):
    """Two `predict --out X` at once: both said they wrote their predictions and the one
    that finished last replaced the other's silently. The later one now refuses, and the
    folder stays as the other left it."""
    from stpdist.data.convert import staged_output
    from stpdist.errors import OutputExists

    out = tmp_path / "x"
    with pytest.raises(OutputExists, match="was written by another command while this one ran"):
        with staged_output(out, True) as staging:
            (staging / "mine.txt").write_text("mine")
            out.mkdir()  # the other command, finished first
            (out / "theirs.txt").write_text("theirs")
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x")]  # no staging left
    with staged_output(out, True) as staging:  # no one else: replaced as asked
        (staging / "mine.txt").write_text("mine")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_results_of_an_stpdist_that_did_not_record_the_checkpoint_say_so(trained):
    """Before 2026-12-05 predict's metrics.json named no checkpoint: the refusal said "a
    checkpoint they do not record", as if the files were broken."""
    out = trained / "old_predict"
    out.mkdir()
    (out / "metrics.json").write_text('{"test/mse": 0.5}\n')
    line = refused("predict", DEBUG, "--out", "old_predict", "--ckpt", "last", cwd=trained)
    assert "holds the results of a checkpoint they do not record (written by an stpdist " in line
    assert line.endswith("pass --out DIR to keep both, or --overwrite to replace them")
    assert (out / "metrics.json").read_text() == '{"test/mse": 0.5}\n'


def test_a_bench_flag_for_another_mode_is_refused_not_ignored(tmp_path):
    """`bench model … --loader-workers 3` and `bench trainer extra` ran, ignoring them."""
    for args, said in [
        (("trainer", "extra"), "bench trainer: 'extra' is for bench data and model only"),
        (("model", "convlstm", "--loader-workers", "3"), "--loader-workers is for bench data only"),
        (("data", "somewhere", "--steps", "3"), "bench data: --steps is for bench trainer only"),
        (("data", "somewhere", "--ops"), "bench data: --ops is for bench model only"),
    ]:  # fmt: skip
        assert said in refused("bench", *args, cwd=tmp_path)


def test_bench_data_on_a_dataset_without_a_train_split_takes_its_first(tmp_path):
    """`bench data DATASET` looked for DATASET/train only: "no index.json in DATASET"."""
    from stpdist.data.synthetic import write_moving_digits

    write_moving_digits(tmp_path / "ds", {"val": 8, "test": 8}, num_frames=4, image_size=16,
                        digit_size=8, progress=False)  # fmt: skip
    proc = run_cli("bench", "data", "ds", "--rounds", "1", "--loader-workers", "0",
                   "--batch-size", "2", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stpdist shards" in proc.stdout


def test_predictions_of_other_data_do_not_replace_the_runs_silently(trained):
    """An MLOps review: `predict` on another data root replaced the run's predictions
    without a word (8 test predictions became 2 of the other folder), where `validate`
    refused."""
    run_cli("predict", DEBUG, "--samples", "0", "--out", "p-data", cwd=trained, check=True)
    run_cli("synth", "moving-digits", "--out", "other", "--train", "2", "--val", "0",
            "--test", "2", "--size", "32", "--frames", "8", "--seed", "5", cwd=trained,
            check=True)  # fmt: skip
    before = snapshot(trained / "p-data")
    line = refused("predict", DEBUG, "data.root=other", "--samples", "0", "--out", "p-data",
                   cwd=trained)  # fmt: skip
    assert "holds results on" in line and "other/test" in line and "--overwrite" in line
    assert snapshot(trained / "p-data") == before
