"""Forecasting for real use: input-only data → `stpdist forecast` on 1 and 2 processes,
`stpdist.load(...).forecast` in physical units for every backbone family, and export
(torchscript, exported program, ONNX) equal to the eager model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, run_ranks
from safetensors.torch import save_file

import stpdist
from stpdist.build import build_module
from stpdist.config import load_config, to_yaml
from stpdist.data.format import read_index
from stpdist.data.synthetic import moving_digits_sample
from stpdist.trainer import load_predictions

DEBUG = Path(__file__).parent.parent / "configs" / "debug.yaml"


def stpdist_cli(*args: str, cwd: Path, nproc: int = 1):
    """`stpdist ARGS` on `nproc` ranks, or for one process by the CLI's `main` in
    this process (conftest.run_cli: a process of its own costs seconds of imports)."""
    import sys

    if nproc == 1:
        return run_cli(*args, cwd=cwd, check=True)
    return run_ranks(["--no-python", sys.executable, "-m", "stpdist", *args], nproc, cwd=cwd)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The debug config trained for one epoch, and 5 input-only sequences (8 frames each
    as arrays; the first 4 of each as shards)."""
    root = tmp_path_factory.mktemp("forecast")
    stpdist_cli("train", str(DEBUG), "trainer.max_epochs=1", cwd=root)
    arrays = root / "arrays"
    arrays.mkdir()
    for i in range(5):
        frames = moving_digits_sample(7, "test", i, num_frames=8, image_size=32)
        np.save(arrays / f"seq{i}.npy", frames)
    stpdist_cli("shard", "arrays", "arrays", "--out", "inputs", "--inputs-only", "4", cwd=root)
    return root


@pytest.mark.parametrize("nproc", [1, 2])
def test_forecast_from_input_only_shards_every_key_once_in_physical_units(trained, nproc):
    out = trained / f"forecast-{nproc}"
    stpdist_cli(
        "forecast", "runs/debug", "inputs/train", "--out", str(out), cwd=trained, nproc=nproc
    )
    got = load_predictions(out)
    assert sorted(got) == [f"seq{i}" for i in range(5)]  # every key once, across ranks
    module = stpdist.load(trained / "runs" / "debug")
    for key, prediction in got.items():
        frames = np.load(trained / "arrays" / f"{key}.npy")[:4].astype(np.float32)
        expected = module.forecast(frames)  # physical units in, physical units out
        assert prediction.shape == (4, 1, 32, 32)
        np.testing.assert_allclose(prediction, expected, rtol=1e-6, atol=1e-4)
    assert max(p.max() for p in got.values()) > 1.0  # stored units (0–255), not [0, 1]
    for file in out.glob("predictions-r*.npz"):
        with np.load(file) as entries:
            assert str(entries["units"]) == "physical" and "value_scale" not in entries
    # pictures of the main process' first samples (its share: 3 of 5 on 2 ranks)
    assert len(list((out / "samples").glob("*.png"))) == (4 if nproc == 1 else 3)


def test_forecast_from_an_arrays_folder_takes_the_newest_frames(trained):
    out = trained / "forecast-arrays"
    stpdist_cli(
        "forecast", "runs/debug", "arrays", "--out", str(out), "--samples", "0", cwd=trained
    )
    got = load_predictions(out)
    module = stpdist.load(trained / "runs" / "debug", "last")
    frames = np.load(trained / "arrays" / "seq3.npy").astype(np.float32)
    np.testing.assert_allclose(got["seq3"], module.forecast(frames[-4:]), rtol=1e-6, atol=1e-4)
    # T×H×W, as `shard arrays` reads a one-channel model's arrays (it was refused)
    (trained / "thw").mkdir()
    np.save(trained / "thw" / "seq3.npy", np.load(trained / "arrays" / "seq3.npy")[:, 0])
    stpdist_cli("forecast", "runs/debug", "thw", "--out", str(out) + "-thw", "--samples", "0",
                cwd=trained)  # fmt: skip
    thw = load_predictions(str(out) + "-thw")["seq3"]
    np.testing.assert_allclose(thw, got["seq3"], rtol=1e-6, atol=1e-4)  # one batch, not five
    from_python = module.forecast(frames[-4:, 0])  # and from Python, T_out×H×W back
    assert from_python.shape == (4, 32, 32)
    np.testing.assert_allclose(from_python, got["seq3"][:, 0], rtol=1e-6, atol=1e-4)


def test_overwrite_replaces_an_earlier_output_and_never_the_users_files(trained):
    """forecast and export with --overwrite: an earlier run's output is replaced, a folder
    that also holds the user's files is refused (it was deleted as a whole) and kept."""
    for command, out, args in [
        ("forecast", trained / "forecast-mine", ("arrays", "--samples", "0")),
        ("export", trained / "export-mine", ("--format", "torchscript")),
    ]:
        argv = [command, "runs/debug", *args, "--out", str(out), "--overwrite"]
        stpdist_cli(*argv, cwd=trained)  # into a new folder
        stpdist_cli(*argv, cwd=trained)  # an earlier output of its own: replaced
        (out / "notes.md").write_text("mine\n")
        (out / "src").mkdir()
        refused = run_cli(*argv, cwd=trained)
        assert refused.returncode == 2, refused.stderr
        assert f"holds notes.md, src/, which no stpdist {command} wrote" in refused.stderr
        assert (out / "notes.md").read_text() == "mine\n" and (out / "src").is_dir()


def test_overwrite_looks_inside_the_folders_it_writes_and_needs_its_own_files(trained):
    """Two ways --overwrite still took the user's files: a picture of theirs in forecast's
    `samples/` (the folder was taken as a whole: deleted), and a folder of their own
    `config.yaml` and `index.json`, names an export writes (taken for an earlier export's:
    replaced). Each is now refused, naming the files, and kept."""
    out = trained / "forecast-pictures"
    argv = ["forecast", "runs/debug", "arrays", "--out", str(out), "--overwrite"]
    stpdist_cli(*argv, cwd=trained)
    (out / "samples" / "holiday.jpg").write_text("mine\n")
    refused = run_cli(*argv, cwd=trained)
    assert refused.returncode == 2, refused.stderr
    assert f"--out {out} holds samples/holiday.jpg, which no stpdist forecast wrote" in (
        refused.stderr
    )
    assert (out / "samples" / "holiday.jpg").read_text() == "mine\n"
    (out / "samples" / "holiday.jpg").unlink()
    stpdist_cli(*argv, "--samples", "1", cwd=trained)  # its own pictures: replaced
    assert len(list((out / "samples").glob("*.png"))) == 1

    mine = trained / "my-configs"
    mine.mkdir()
    (mine / "config.yaml").write_text("mine: 1\n")
    (mine / "index.json").write_text("{}\n")
    argv = ["export", "runs/debug", "--out", str(mine), "--overwrite"]
    refused = run_cli(*argv, cwd=trained)
    assert refused.returncode == 2, refused.stderr
    assert f"--out {mine} holds config.yaml, index.json, which no stpdist export wrote" in (
        refused.stderr
    )
    assert (mine / "config.yaml").read_text() == "mine: 1\n"


def test_every_checkpoint_is_a_model_folder(trained):
    ckpt = trained / "runs" / "debug" / "checkpoints" / "step-00000008"
    assert {"model.safetensors", "config.yaml", "index.json"} <= {p.name for p in ckpt.iterdir()}
    module = stpdist.load(ckpt, device="cpu", dtype=torch.float64)
    assert not module.training and next(module.parameters()).dtype == torch.float64
    assert module.forecast(torch.zeros(2, 4, 1, 32, 32)).shape == (2, 4, 1, 32, 32)
    with pytest.raises(ValueError, match=r"T_in = 4; got shape \(3, 1, 32, 32\)"):
        module.forecast(np.zeros((3, 1, 32, 32)))


# ----------------------------------------------------------------------------- families
def _small_backbones() -> dict[str, dict]:
    from test_models import SMALL
    from test_zoo import SMALL as ZOO

    return {**SMALL, **ZOO}


def _model_folder(
    tmp_path: Path, name: str, backbone: dict, index_dir: Path
) -> tuple[Path, object]:
    cfg = load_config(DEBUG, ["model.patch_size=2"])
    cfg.model.name, cfg.model.backbone = name, dict(backbone)
    torch.manual_seed(0)
    module = build_module(cfg, index=read_index(index_dir))
    folder = tmp_path / name
    folder.mkdir()
    weights = {k: v.contiguous() for k, v in module.state_dict().items()}
    save_file(weights, str(folder / "model.safetensors"))
    (folder / "config.yaml").write_text(to_yaml(cfg))
    shutil.copy(index_dir / "index.json", folder / "index.json")
    return folder, module.eval()


@pytest.mark.parametrize("name", sorted(_small_backbones()))
def test_load_forecast_equals_predict_step_for_every_family(tmp_path, trained, name):
    folder, module = _model_folder(
        tmp_path, name, _small_backbones()[name], trained / "inputs" / "train"
    )
    loaded = stpdist.load(folder)
    frames = np.stack([np.load(trained / "arrays" / f"seq{i}.npy")[:4] for i in range(2)])
    frames = frames.astype(np.float32)
    with torch.no_grad():
        expected = module.predict_step(torch.from_numpy(frames) / 255.0, None).numpy() * 255.0
    np.testing.assert_allclose(loaded.forecast(frames), expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("name", ["simvp", "predformer"])
def test_export_equals_eager(tmp_path, trained, name):
    """Every family exports (measured once: all 13 give differences ≤ 2e-6); the suite
    checks two fast ones in every format."""
    pytest.importorskip("onnxruntime")
    from stpdist.inference import export

    folder, _ = _model_folder(
        tmp_path, name, _small_backbones()[name], trained / "inputs" / "train"
    )
    differences = export(
        folder, tmp_path / "out", formats=("torchscript", "exported-program", "onnx")
    )
    assert set(differences) == {"torchscript", "exported-program", "onnx"}
    assert all(d <= 1e-5 for d in differences.values()), differences
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {
        "model.safetensors",
        "config.yaml",
        "index.json",
        "model.ts",
        "model.pt2",
        "model.onnx",
    } <= names
    again = stpdist.load(tmp_path / "out")  # the exported folder is a model folder too
    program = torch.export.load(str(tmp_path / "out" / "model.pt2")).module()
    x = torch.rand(5, 4, 1, 32, 32)  # another batch size than the traced one
    with torch.no_grad():
        assert (program(x) - again.predict_frames(x)).abs().max() <= 1e-5


def test_inputs_out_of_a_channels_own_range_are_named_by_channel(caplog):
    """Two variables swapped keep the overall range: the warning compared overall min and
    max only ('258.9…5.729e+04 outside 259.1…5.742e+04') and named no channel."""
    import logging
    from types import SimpleNamespace

    from stpdist.inference import ValueSurvey

    trained = ([5.07e4, 259.0], [5.74e4, 297.0])  # z, t2m
    module = SimpleNamespace(value_range=trained, value_scale=1.0, channel_names=["z", "t2m"])
    swapped = np.stack([np.full((4, 8, 8), 280.0), np.full((4, 8, 8), 5.5e4)], axis=1)
    with caplog.at_level(logging.WARNING, logger="stpdist"):
        for frames, where in ((swapped, "new.npy"), (swapped[:, ::-1], "right.npy")):
            survey = ValueSurvey(where)
            survey.add(frames)
            survey.check(module, allow_nonfinite=False)
    (said,) = [r.getMessage() for r in caplog.records]
    assert said.startswith("new.npy: values far outside the training data's range: ")
    assert "z 280…280 (trained on 5.07e+04…5.74e+04), t2m 5.5e+04…5.5e+04" in said
    assert said.endswith("channels in the training data's order: z, t2m")


def test_a_model_cast_to_bfloat16_keeps_its_statistics_in_float32():
    """`stpdist.load(…, dtype=torch.bfloat16)` cast the normaliser's statistics too: a
    mean of 0.1325 became 0.1328, a fixed offset of 6% of the channel's spread in every
    forecast. They stay float32 (moved with the module), and meet the values in float32."""
    from helpers import forecaster

    from stpdist.data.normalize import Normalizer

    torch.manual_seed(0)
    module = forecaster("convlstm", (3, 8, 8), 3, 2, backbone={"hidden_channels": [4]})
    stats = {"shift": [0.1325027, 2.75e-6, 0.6], "spread": [0.02, 1e-6, 0.3]}
    module.normalizer = Normalizer("standardize", **stats, value_scale=1.0)
    module.eval()
    inputs = torch.tensor(stats["shift"]).view(1, 1, 3, 1, 1) + torch.tensor(stats["spread"]).view(
        1, 1, 3, 1, 1
    ) * torch.randn(2, 3, 3, 8, 8)
    with torch.no_grad():
        reference = module.predict_frames(inputs)
        module.to(torch.bfloat16)
        assert module.normalizer.shift.dtype == torch.float32
        assert module.normalizer.shift.flatten().tolist() == pytest.approx(stats["shift"], rel=1e-7)
        low = module.predict_frames(inputs.to(torch.bfloat16))
    assert low.dtype == torch.float32
    spread = torch.tensor(stats["spread"]).view(1, 1, 3, 1, 1)
    bias = ((low - reference) / spread).mean(dim=(0, 1, 3, 4))
    assert bias.abs().max() < 0.01, bias  # 0.06 when the statistics were bfloat16
