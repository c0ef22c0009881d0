"""Review of forecasting and export as a user meets them: a folder that mixes PNG frames with
arrays or other images, a PNG frame of another size, a dataset root given instead of its
split, a model path that is a weights file, a run's checkpoints folder or a run without
checkpoints, numpy views with negative strides, and the exported graphs reloaded in a
process where stpdist cannot be imported.

The model is the debug config's (4 → 4 frames of 1×32×32, values 0–255) with its initial
weights, written as a model folder: no training needed for what is checked here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from helpers import debug_model_folder
from PIL import Image
from safetensors.torch import save_file

import stpdist
from stpdist.build import build_module
from stpdist.config import load_config, to_yaml
from stpdist.data.format import SplitWriter, read_index
from stpdist.errors import InputError
from stpdist.inference import InputFrames, model_folder

DEBUG = Path(__file__).parent.parent / "configs" / "debug.yaml"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return debug_model_folder(tmp_path_factory.mktemp("inference-review"))


def _frames(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _pngs(folder: Path, count: int, size: tuple[int, int] = (32, 32)) -> None:
    folder.mkdir()
    for t in range(count):
        Image.fromarray(_frames(t, *size)).save(folder / f"{t}.png")


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The CLI's one error line: exit 2, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------ folders of inputs
def test_png_frames_beside_arrays_are_refused_naming_both(model, tmp_path):
    """The PNGs were forecast as the folder's one sequence and `seq.npy` passed over
    without a word (the forecast held one key, the folder's name)."""
    _pngs(tmp_path / "mix", 4)
    np.save(tmp_path / "mix" / "seq.npy", _frames(9, 4, 1, 32, 32))
    module = stpdist.load(model)
    with pytest.raises(InputError, match=r"mix: holds both PNG frames \(0.png, 1.png, 2.png, … "):
        InputFrames(tmp_path / "mix", module)
    line = _error_line(run_cli("forecast", str(model), "mix", "--out", "f", cwd=tmp_path))
    assert "and arrays (seq.npy)" in line, line
    assert not (tmp_path / "f").exists()


def test_a_frame_of_another_image_format_beside_png_frames_is_refused(model, tmp_path):
    """`4.jpg`, the newest frame, was passed over: the forecast continued from 0–3.png."""
    _pngs(tmp_path / "frames", 4)
    Image.fromarray(_frames(4, 32, 32)).save(tmp_path / "frames" / "4.jpg")
    with pytest.raises(
        InputError, match=r"frames: holds both PNG frames .* other images \(4.jpg\)"
    ):
        InputFrames(tmp_path / "frames", stpdist.load(model))


def test_a_folder_of_arrays_with_a_readme_and_a_png_folder_with_notes_still_forecast(
    model, tmp_path
):
    """Files of no image or array format are not a mix: they stay passed over."""
    module = stpdist.load(model)
    _pngs(tmp_path / "frames", 5)
    (tmp_path / "frames" / "notes.txt").write_text("radar, 5 min\n")
    (tmp_path / "arrays").mkdir()
    np.save(tmp_path / "arrays" / "a.npy", _frames(1, 4, 1, 32, 32))
    (tmp_path / "arrays" / "README.md").write_text("inputs\n")
    frames = InputFrames(tmp_path / "frames", module)
    arrays = InputFrames(tmp_path / "arrays", module)
    assert [frames.key(0)] == ["frames"] and [arrays.key(0)] == ["a"]
    expected = np.stack([_frames(t, 32, 32) for t in range(1, 5)])[:, None] / 255.0
    np.testing.assert_allclose(frames[0]["inputs"].numpy(), expected, rtol=1e-6)


def test_a_dataset_root_as_the_inputs_names_its_splits(model):
    """`stpdist shard … --out data/new` prints data/new; given that folder, forecast said
    only 'no .npy/.npz files or PNG frames' (the split folder data/new/train holds them)."""
    data = model.parent / "data"  # the fixture's dataset: data/train
    line = _error_line(run_cli("forecast", str(model), str(data), "--out", "f", cwd=data.parent))
    assert line.endswith(
        f"{data}: no .npy/.npz files or PNG frames; it holds the shard splits train: pass "
        f"one split's folder, such as {data / 'train'}"
    ), line
    assert not (data.parent / "f").exists()


def test_a_png_frame_of_another_size_is_named_with_both_shapes(model, tmp_path):
    """The error named the folder and a set of shapes, not the frame that differs."""
    _pngs(tmp_path / "frames", 4)
    Image.fromarray(_frames(7, 32, 48)).save(tmp_path / "frames" / "2.png")
    line = _error_line(run_cli("forecast", str(model), "frames", "--out", "f", cwd=tmp_path))
    assert line.endswith(
        "frames/2.png: a frame of H×W 32×48; the model takes C×H×W 1×32×32 "
        "(channels × height × width)"
    ), line


def test_colour_png_frames_for_a_one_channel_model_are_refused_grey_ones_as_rgb_taken(
    model, tmp_path
):
    """A colour PNG was made grey for the 1-channel model without a word. Now refused,
    naming the frame; grey frames stored as RGB (all three channels equal) are still taken,
    as the same frames in mode L."""
    _pngs(tmp_path / "grey", 4)
    rgb = tmp_path / "rgb-grey"
    rgb.mkdir()
    for t in range(4):
        Image.fromarray(_frames(t, 32, 32)).convert("RGB").save(rgb / f"{t}.png")
    for folder in ("grey", "rgb-grey"):
        run_cli("forecast", str(model), folder, "--out", f"f-{folder}", "--samples", "0",
                cwd=tmp_path, check=True)  # fmt: skip
    same = [np.load(next((tmp_path / f"f-{f}").glob("*.npz")))["predictions"]
            for f in ("grey", "rgb-grey")]  # fmt: skip
    np.testing.assert_array_equal(same[0], same[1])
    colour = tmp_path / "colour"
    colour.mkdir()
    for t in range(4):
        Image.fromarray(_frames(t, 32, 32, 3)).save(colour / f"{t}.png")
    line = _error_line(run_cli("forecast", str(model), "colour", "--out", "f", cwd=tmp_path))
    assert line.endswith(
        "colour/0.png: a colour PNG (mode RGB, its channels differ); the model takes 1 "
        "channel: convert the frames to grey yourself if that is meant"
    ), line


def test_grey_png_frames_for_a_three_channel_model_are_refused_rgb_ones_taken(tmp_path):
    """A grey PNG was turned into RGB for a 3-channel model without a word; a frame stored
    as RGB is taken whatever it shows (an all-grey one too)."""
    rng = np.random.default_rng(0)
    with SplitWriter(tmp_path / "data" / "train", "train", value_scale=255.0) as writer:
        writer.write("s0", rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8))
    cfg = load_config(DEBUG)
    torch.manual_seed(0)
    module = build_module(cfg, index=read_index(tmp_path / "data" / "train"))
    folder = tmp_path / "rgb-model"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in module.state_dict().items()},
              str(folder / "model.safetensors"))  # fmt: skip
    (folder / "config.yaml").write_text(to_yaml(cfg))
    (folder / "index.json").write_text((tmp_path / "data" / "train" / "index.json").read_text())
    _pngs(tmp_path / "grey", 4)
    line = _error_line(run_cli("forecast", str(folder), "grey", "--out", "f", cwd=tmp_path))
    assert line.endswith("grey/0.png: a grey PNG (mode L); the model takes 3 channels (RGB)")
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    for t in range(4):
        Image.fromarray(_frames(t, 32, 32)).convert("RGB").save(rgb / f"{t}.png")  # grey, as RGB
    run_cli("forecast", str(folder), "rgb", "--out", "f2", "--samples", "0", cwd=tmp_path,
            check=True)  # fmt: skip


# ------------------------------------------------------------------ what the model path is
def test_a_weights_file_or_a_checkpoints_folder_as_the_model_says_what_to_pass(model, tmp_path):
    with pytest.raises(
        InputError,
        match=r"model.safetensors: a weights file; pass the folder that holds it \(.*model\)",
    ):
        model_folder(model / "model.safetensors")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(
        InputError, match=r"checkpoints: a run's checkpoints folder; pass the run folder .*run "
    ):
        model_folder(tmp_path / "run" / "checkpoints")
    with pytest.raises(
        InputError, match=r"nowhere: neither a model folder .* no such file or folder"
    ):
        model_folder(tmp_path / "nowhere")


def test_a_run_without_checkpoints_gives_advice_that_works_for_forecast(tmp_path):
    """The advice was 'train first or pass --ckpt PATH'; forecast and export's --ckpt
    names one of the run's checkpoints, never a path."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    np.save(tmp_path / "x.npy", _frames(0, 4, 1, 32, 32))
    line = _error_line(run_cli("forecast", "run", "x.npy", "--out", "f", cwd=tmp_path))
    assert "holds no checkpoint: train first, or pass a model or checkpoint folder" in line
    assert "--ckpt PATH" not in line


# ------------------------------------------------------------------ layouts and units
def test_forecast_takes_numpy_views_with_negative_strides(model):
    """FAILS until the lead applies the proposed stpdist/task.py change: `frames[::-1]` (a
    reversed or flipped view) raised torch's 'At least one stride in the given numpy array
    is negative' ValueError instead of forecasting."""
    module = stpdist.load(model)
    frames = _frames(3, 6, 1, 32, 32)
    view = frames[::-1, :, :, ::-1]  # newest-first storage, mirrored: views, not copies
    np.testing.assert_array_equal(module.forecast(view), module.forecast(view.copy()))


def test_forecast_units_and_layouts_agree(model):
    """Physical in, physical out: uint8 and float inputs, one sequence or a batch, a longer
    sequence (its newest T_in), all equal to the scaled model's output × 255."""
    module = stpdist.load(model)
    frames = _frames(5, 7, 1, 32, 32)
    newest = torch.from_numpy(frames[-4:].astype(np.float32))[None] / 255.0
    with torch.no_grad():
        expected = module.predict_frames(newest)[0].numpy() * 255.0
    for given in (frames, frames.astype(np.float32), frames.astype(np.float16)):
        np.testing.assert_allclose(module.forecast(given), expected, rtol=1e-5, atol=1e-3)
    batch = module.forecast(np.stack([frames, frames // 2]))
    np.testing.assert_allclose(batch[0], expected, rtol=1e-5, atol=1e-3)
    assert expected.max() > 1.0  # stored units, not [0, 1]


def test_forecast_chooses_the_array_of_an_npz_that_holds_several(model, tmp_path):
    """An .npz of several arrays was refused ("expected a file of one array") with no way to
    choose, though `shard arrays` has `--key`; `forecast` has it now."""
    frames = _frames(2, 4, 1, 32, 32)
    np.savez(tmp_path / "multi.npz", frames=frames, mask=np.ones((4, 32, 32), np.uint8))
    line = _error_line(run_cli("forecast", str(model), "multi.npz", "--out", "f", cwd=tmp_path))
    assert "multi.npz: holds 2 arrays ['frames', 'mask']; choose one with --key" in line
    done = run_cli("forecast", str(model), "multi.npz", "--key", "frames", "--out", "f",
                   "--samples", "0", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (saved,) = (tmp_path / "f").glob("predictions-*.npz")
    with np.load(saved) as got:
        expected = stpdist.load(model).forecast(frames)
        np.testing.assert_allclose(got["predictions"][0], expected, rtol=1e-5, atol=1e-3)
    line = _error_line(run_cli("forecast", str(model), "multi.npz", "--key", "x", "--out", "g",
                               cwd=tmp_path))  # fmt: skip
    assert "multi.npz: missing key 'x' (has ['frames', 'mask'])" in line


# ------------------------------------------------------------------ export, elsewhere
FRESH = """
import sys, importlib.abc
class NoStpdist(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "stpdist":
            raise ImportError("stpdist is not importable here")
sys.meta_path.insert(0, NoStpdist())
import numpy as np, torch
x = torch.from_numpy(np.load(sys.argv[2]))
with torch.no_grad():
    a = torch.jit.load(sys.argv[1] + "/model.ts")(x)
    b = torch.export.load(sys.argv[1] + "/model.pt2").module()(x)
np.save(sys.argv[3], torch.stack([a, b]).numpy())
"""


def test_exported_graphs_run_where_stpdist_cannot_be_imported(model, tmp_path):
    """The docs call the export stand-alone: TorchScript and the exported program load and
    run in a fresh process that cannot import stpdist, on a batch size not traced (1), in
    the scaled units, equal to `model.forecast` (physical) ÷ 255 within 1e-5."""
    from stpdist.inference import export

    export(model, tmp_path / "out", formats=("torchscript", "exported-program"))
    frames = _frames(8, 1, 4, 1, 32, 32)
    np.save(tmp_path / "x.npy", frames.astype(np.float32) / 255.0)
    script = tmp_path / "fresh.py"
    script.write_text(FRESH)
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out"), "x.npy", "y.npy"],
        cwd=tmp_path, check=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": ""},
    )  # fmt: skip
    torchscript, program = np.load(tmp_path / "y.npy")
    eager = stpdist.load(model).forecast(frames) / 255.0
    np.testing.assert_allclose(torchscript, eager, atol=1e-5, rtol=0)
    np.testing.assert_allclose(program, eager, atol=1e-5, rtol=0)


def test_channels_last_arrays_for_forecast_are_told_how_to_move_the_axis(model, tmp_path):
    """A T×H×W×1 array (as `shard arrays --channels-last` takes) was refused with the two
    shapes alone, no word of the layout (from a review)."""
    np.save(tmp_path / "last.npy", np.zeros((10, 32, 32, 1), np.uint8))
    line = _error_line(run_cli("forecast", str(model), "last.npy", "--out", "f", cwd=tmp_path))
    assert line.endswith(
        "last.npy: frames of C×H×W 32×32×1 (shape (10, 32, 32, 1)); the model takes C×H×W "
        "1×32×32 (channels × height × width); they look channels-last (…×H×W×C): forecast "
        "reads channels first, so move the last axis, e.g. numpy.moveaxis(frames, -1, -3) "
        "(stpdist forecast: --channels-last)"
    ), line


def test_forecast_reads_channels_last_arrays_and_masks_as_shard_arrays_does(model, tmp_path):
    """`shard arrays` takes T×H×W×C arrays with --channels-last and bool masks; forecast
    took neither (the same files the model was trained from). With --channels-last a
    T×H×W×C and an N×T×H×W×C file forecast as their channels-first copies; channels-first
    arrays with the flag, and a shard split, are refused; a bool array forecasts as 0/1."""
    from stpdist.trainer import load_predictions

    first = _frames(3, 2, 10, 1, 32, 32)
    np.save(tmp_path / "first.npy", first)
    (tmp_path / "last").mkdir()
    np.save(tmp_path / "last" / "first.npy", np.moveaxis(first, -3, -1))  # N×T×H×W×C
    np.save(tmp_path / "last" / "one.npy", np.moveaxis(first[1], -3, -1))  # T×H×W×C
    run_cli("forecast", str(model), "first.npy", "--out", "a", "--samples", "0", cwd=tmp_path,
            check=True)  # fmt: skip
    run_cli("forecast", str(model), "last", "--out", "b", "--samples", "0", "--channels-last",
            cwd=tmp_path, check=True)  # fmt: skip
    expected, got = load_predictions(tmp_path / "a"), load_predictions(tmp_path / "b")
    assert sorted(got) == ["first_000000", "first_000001", "one"], sorted(got)
    for key in ("first_000000", "first_000001"):
        np.testing.assert_array_equal(got[key], expected[key])
    np.testing.assert_array_equal(got["one"], expected["first_000001"])

    line = _error_line(run_cli("forecast", str(model), "first.npy", "--out", "c",
                               "--channels-last", cwd=tmp_path))  # fmt: skip
    assert line.endswith(
        "first.npy: frames of shape (2, 10, 1, 32, 32) are already channels-first (C×H×W "
        "1×32×32, as the model takes them): drop --channels-last"
    ), line
    split = model.parent / "data" / "train"
    line = _error_line(run_cli("forecast", str(model), str(split), "--out", "c",
                               "--channels-last", cwd=tmp_path))  # fmt: skip
    assert line.endswith("is a shard split (stored channels first): drop --channels-last"), line

    mask = first[0] > 127
    np.save(tmp_path / "mask.npy", mask)
    np.save(tmp_path / "ones.npy", mask.astype(np.uint8))
    for name in ("mask", "ones"):
        run_cli("forecast", str(model), f"{name}.npy", "--out", name, "--samples", "0",
                cwd=tmp_path, check=True)  # fmt: skip
    got, expected = load_predictions(tmp_path / "mask"), load_predictions(tmp_path / "ones")
    np.testing.assert_array_equal(got["mask"], expected["ones"])


def test_forecast_pictures_take_the_runs_colormap_by_default(model, tmp_path):
    """A radar user's review: forecast drew gray pictures for a run trained with
    `logging.colormap: viridis` (its own pictures coloured): the run's colormap is the
    default; `--colormap` still chooses."""
    import shutil

    import yaml

    from stpdist.inference import _coloured

    coloured = tmp_path / "viridis"
    shutil.copytree(model, coloured)
    cfg = yaml.safe_load((coloured / "config.yaml").read_text())
    cfg.setdefault("logging", {})["colormap"] = "viridis"
    (coloured / "config.yaml").write_text(yaml.safe_dump(cfg))
    np.save(tmp_path / "x.npy", _frames(5, 4, 1, 32, 32))

    def drawn(folder: str, *flags: str) -> bool:
        run_cli("forecast", folder, "x.npy", "--out", f"out-{len(flags)}-{Path(folder).name}",
                "--samples", "1", *flags, cwd=tmp_path, check=True)  # fmt: skip
        pngs = sorted(
            (tmp_path / f"out-{len(flags)}-{Path(folder).name}" / "samples").glob("*.png")
        )
        assert pngs
        return _coloured(Image.open(pngs[0]))

    assert drawn(str(coloured)) and not drawn(str(model))
    assert not drawn(str(coloured), "--colormap", "gray")


def test_forecast_passes_over_hidden_files_and_points_jpeg_frames_to_shard_images(model, tmp_path):
    """A video user's review: macOS's `._3.png` beside the PNG frames failed the forecast
    as an unreadable PNG; a folder of JPEG frames was told only "no .npy/.npz files or PNG
    frames"."""
    _pngs(tmp_path / "frames", 4)
    (tmp_path / "frames" / "._3.png").write_bytes(b"\x00\x05\x16\x07 not a png")
    run_cli("forecast", str(model), "frames", "--out", "f", "--samples", "0", cwd=tmp_path,
            check=True)  # fmt: skip
    (tmp_path / "jpegs").mkdir()
    for t in range(4):
        Image.fromarray(_frames(t, 32, 32)).save(tmp_path / "jpegs" / f"{t}.jpg")
    line = _error_line(run_cli("forecast", str(model), "jpegs", "--out", "g", cwd=tmp_path))
    assert "no .npy/.npz files or PNG frames; its 0.jpg … are read by `stpdist shard images`" in (
        line
    ), line


def test_forecast_of_nested_lists_is_a_numpy_array_and_of_a_tensor_a_tensor(model):
    """A deployment review: lists gave a tensor where the docstring said "the same type"."""
    module = stpdist.load(model)
    frames = _frames(9, 2, 4, 1, 32, 32)
    expected = module.forecast(frames)
    from_lists = module.forecast(frames.tolist())
    assert isinstance(from_lists, np.ndarray) and from_lists.dtype == np.float32
    np.testing.assert_array_equal(from_lists, expected)
    from_tensor = module.forecast(torch.from_numpy(frames))
    assert isinstance(from_tensor, torch.Tensor)
    np.testing.assert_array_equal(from_tensor.numpy(), expected)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's answer")
def test_forecast_in_fp16_on_a_cpu_is_refused_naming_the_flag(model, tmp_path):
    np.save(tmp_path / "x.npy", _frames(1, 4, 1, 32, 32))
    proc = run_cli("forecast", str(model), "x.npy", "--out", "f", "--precision", "fp16",
                   cwd=tmp_path)  # fmt: skip
    assert _error_line(proc) == (
        "stpdist: error: --precision fp16 needs a CUDA device (on CPU it would run in fp32); "
        "use --precision bf16 or no"
    )
    assert not (tmp_path / "f").exists()


def test_a_forecast_names_what_made_it(model, tmp_path):
    """A deployment review: the forecast files named no model, step, precision or inputs."""
    np.save(tmp_path / "x.npy", _frames(2, 4, 1, 32, 32))
    for again in ((), ("--overwrite",)):  # replaced with the forecast, as its own file
        proc = run_cli("forecast", str(model), "x.npy", "--out", "f", "--samples", "0",
                       *again, cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "f" / "forecast.json").read_text())
    module = stpdist.load(model)
    assert record["model"] == str(Path(module.model_folder).resolve())
    assert record["inputs"] == str(tmp_path / "x.npy")
    assert (record["raw_weights"], record["precision"], record["units"]) == (
        False,
        "no",
        "physical",
    )
    assert (record["num_input_frames"], record["num_output_frames"]) == (
        4,
        module.num_output_frames,
    )


def test_an_export_of_a_run_configured_from_the_environment_stands_alone(tmp_path, monkeypatch):
    """An MLOps review: a run whose output_dir and hidden channels came from environment
    variables exported a config.yaml still reading them; where they were not set, forecast
    failed on trainer.output_dir (and another value would build another model)."""
    import stpdist

    debug = str(Path(__file__).parent.parent / "configs" / "debug.yaml")
    monkeypatch.setenv("RUN_DIR", "runs/env")
    monkeypatch.setenv("HID", "[6]")
    run_cli("train", debug, "trainer.max_steps=1", "logging.num_samples=0",
            "trainer.output_dir=${oc.env:RUN_DIR}",
            "model.backbone.hidden_channels=${oc.decode:${oc.env:HID}}", cwd=tmp_path,
            check=True)  # fmt: skip
    assert "${oc.env:HID}" in (tmp_path / "runs" / "env" / "config.yaml").read_text()
    run_cli("export", "runs/env", "--out", "model", cwd=tmp_path, check=True)
    monkeypatch.delenv("RUN_DIR")
    monkeypatch.delenv("HID")
    exported = (tmp_path / "model" / "config.yaml").read_text()
    assert "oc.env" not in exported
    info = json.loads((tmp_path / "model" / "export.json").read_text())
    assert info["resolved_from_environment"] == [
        "trainer.output_dir",
        "model.backbone.hidden_channels",
    ]
    model = stpdist.load(tmp_path / "model")  # no variable set: the folder alone
    assert model.config.backbone["hidden_channels"] == [6]
    # the run's provenance records the values the run used, not only their interpolations
    start = json.loads((tmp_path / "runs" / "env" / "provenance.jsonl").read_text().splitlines()[0])
    assert start["environment_values"] == {
        "trainer.output_dir": "runs/env",
        "model.backbone.hidden_channels": [6],
    }  # logging's (a wandb tag here) left out: they may be secrets
