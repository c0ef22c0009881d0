"""The user surface of a trained model: forecast inputs checked against the model before
any work (frame size, channels, frame count, units, NaN/Inf, keys, FIFOs), output folders
never clobbered (forecast, export), no code run from a model folder unless trusted, ONNX
with a dynamic batch, and the small CLI consistencies (--help, --version, synth flags,
`model.backbone={}`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli

import stpdist
from stpdist.config import load_config
from stpdist.errors import InputError
from stpdist.trainer import load_predictions

DEBUG = str(ROOT / "configs" / "debug.yaml")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A folder holding the debug config trained for one epoch (`runs/debug`: T_in 4,
    T_out 4, 1×32×32 frames stored 0–255) and a few input arrays in physical units."""
    root = tmp_path_factory.mktemp("surface")
    run_cli("train", DEBUG, "trainer.max_epochs=1", cwd=root, check=True)
    rng = np.random.default_rng(0)
    np.save(root / "good.npy", (rng.random((2, 6, 1, 32, 32)) * 255).astype(np.float32))
    return root


def _tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` → its sha256 (what a refused command must leave as is)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_line_error(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("stpdist: "), proc.stderr
    return lines[0]


# ------------------------------------------------------------ forecast inputs (#24 item 2)
def test_forecast_refuses_another_frame_size_before_creating_out(run):
    np.save(run / "bad_size.npy", np.zeros((10, 1, 48, 48), np.float32))
    proc = run_cli("forecast", "runs/debug", "bad_size.npy", "--out", "o_size", cwd=run)
    line = _one_line_error(proc)
    assert "bad_size.npy" in line and "1×48×48" in line and "1×32×32" in line
    assert not (run / "o_size").exists()  # no empty --out folder left behind
    assert not [p for p in run.iterdir() if p.name.startswith(".o_size")]


def test_a_frame_size_is_checked_from_the_file_header_before_decoding(run):
    """A 6.7 MB .npz declaring 1.5 GB, or a PNG of 13000×13000, was decoded in full before
    its frame size was refused. These files declare huge frames and hold no data for them:
    only a check of the header can refuse them by size (a decode fails otherwise)."""
    import io
    import struct
    import zipfile
    import zlib

    header = io.BytesIO()
    shape = (1_000_000, 6, 1, 16, 16)
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": shape})  # fmt: skip
    with zipfile.ZipFile(run / "bomb.npz", "w") as archive:
        archive.writestr("frames.npy", header.getvalue() + b"\0" * 64)
    proc = run_cli("forecast", "runs/debug", "bomb.npz", "--out", "o_bomb", cwd=run)
    line = _one_line_error(proc)
    assert "bomb.npz: frames of C×H×W 1×16×16" in line and "takes C×H×W 1×32×32" in line

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    (run / "huge_png").mkdir()
    ihdr = struct.pack(">IIBBBBB", 13000, 13000, 8, 0, 0, 0, 0)  # 8-bit grey
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
    for t in range(4):
        (run / "huge_png" / f"{t}.png").write_bytes(png)
    proc = run_cli("forecast", "runs/debug", "huge_png", "--out", "o_bomb", cwd=run)
    line = _one_line_error(proc)
    assert "0.png: a frame of H×W 13000×13000; the model takes C×H×W 1×32×32" in line
    assert not (run / "o_bomb").exists()


def test_api_forecast_refuses_another_channel_count_in_one_line(run):
    model = stpdist.load(run / "runs" / "debug")
    with pytest.raises(InputError) as caught:
        model.forecast(np.zeros((4, 3, 32, 32), np.float32))
    message = str(caught.value)
    assert "\n" not in message and "3×32×32" in message and "1×32×32" in message


class _Collect(logging.Handler):
    """The records of the `stpdist` logger (which may not propagate to pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_unit_scaled_inputs_for_a_0_255_model_warn_on_stderr(run):
    unit = np.random.default_rng(1).random((4, 1, 32, 32)).astype(np.float32)  # [0, 1]
    np.save(run / "unit.npy", unit)
    proc = run_cli("forecast", "runs/debug", "unit.npy", "--out", "o_unit", cwd=run)
    assert proc.returncode == 0, proc.stderr
    assert "unit.npy" in proc.stderr and "[0, 1]" in proc.stderr and "255" in proc.stderr
    assert "[0, 1]" not in proc.stdout  # warnings go to stderr
    model = stpdist.load(run / "runs" / "debug")
    collect = _Collect()
    logging.getLogger("stpdist").addHandler(collect)
    try:
        model.forecast(unit)
        assert any("physical" in r.getMessage() for r in collect.records)
        collect.records.clear()
        model.forecast(unit * 255)  # the right units: no word
        assert not collect.records
    finally:
        logging.getLogger("stpdist").removeHandler(collect)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_inputs_are_refused_unless_allowed(run, bad):
    frames = np.full((4, 1, 32, 32), 100.0, np.float32)
    frames[2, 0, 5, 7] = bad
    name = f"bad_{str(bad).replace('-', 'minus_')}.npy"
    out = f"o_{name[:-4]}"
    np.save(run / name, frames)
    proc = run_cli("forecast", "runs/debug", name, "--out", out, cwd=run)
    line = _one_line_error(proc)
    assert name in line and "--allow-nonfinite" in line
    assert not (run / out).exists()
    model = stpdist.load(run / "runs" / "debug")
    with pytest.raises(InputError, match="NaN or Inf"):
        model.forecast(frames)
    with pytest.raises(InputError, match="NaN or Inf"):
        model.forecast(torch.from_numpy(frames)[None])
    assert model.forecast(frames, allow_nonfinite=True).shape == (4, 1, 32, 32)
    allowed = run_cli("forecast", "runs/debug", name, "--out", out, "--allow-nonfinite", cwd=run)
    assert allowed.returncode == 0, allowed.stderr
    assert len(load_predictions(run / out)) == 1


def test_a_shard_split_of_another_frame_size_is_refused_before_out(run):
    run_cli(
        "synth", "moving-digits", "--out", "small", "--train", "2", "--val", "0", "--test",
        "0", "--frames", "6", "--size", "16", "--digit-size", "8", "--workers", "1", cwd=run,
        check=True,
    )  # fmt: skip
    line = _one_line_error(
        run_cli("forecast", "runs/debug", "small/train", "--out", "o_s", cwd=run)
    )
    assert "small/train" in line and "6×1×16×16" in line and "1×32×32" in line
    assert not (run / "o_s").exists()


# ------------------------------------------------------------ forecast consistency (#24 item 8)
def test_api_forecast_takes_the_newest_t_in_frames_like_the_cli(run):
    model = stpdist.load(run / "runs" / "debug")
    frames = np.load(run / "good.npy")  # 2×6×1×32×32: more than T_in = 4 frames
    np.testing.assert_array_equal(model.forecast(frames), model.forecast(frames[:, -4:]))
    tensor = torch.from_numpy(frames[0])
    assert torch.equal(model.forecast(tensor), model.forecast(tensor[-4:]))
    with pytest.raises(InputError, match=r"3 frames, fewer than .*T_in = 4"):
        model.forecast(frames[0, :3])


def test_forecast_into_a_used_out_refuses_and_overwrite_leaves_no_stale_files(run):
    out = run / "o_reuse"
    done = run_cli("forecast", "runs/debug", "good.npy", "--out", "o_reuse", cwd=run)
    assert done.returncode == 0, done.stderr
    # the messages name --out, not the staging folder it was written in
    assert "staging" not in done.stdout + done.stderr and "o_reuse" in done.stdout
    before = _tree(out)
    assert {"samples/good_000000.png", "samples/good_000001.png"} <= set(before)
    np.save(run / "single.npy", np.load(run / "good.npy")[0])
    proc = run_cli("forecast", "runs/debug", "single.npy", "--out", "o_reuse", cwd=run)
    line = _one_line_error(proc)
    # what is there (it listed every file the command could write: "model.onnx" of an
    # export that wrote none, from a review)
    held = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    assert f"--out o_reuse holds an earlier forecast's output ({', '.join(held)})" in line
    assert line.endswith("; pass --overwrite to replace it")
    assert _tree(out) == before  # untouched
    (out / "notes.txt").write_text("mine\n")  # said at once: --overwrite would refuse it too
    proc = run_cli("forecast", "runs/debug", "single.npy", "--out", "o_reuse", cwd=run)
    line = _one_line_error(proc)
    assert "holds notes.txt, which no stpdist forecast wrote" in line
    assert "pass --overwrite" not in line and _tree(out) == {**before, "notes.txt": ANY}
    (out / "notes.txt").unlink()
    again = run_cli(
        "forecast", "runs/debug", "single.npy", "--out", "o_reuse", "--overwrite", cwd=run
    )
    assert again.returncode == 0, again.stderr
    assert sorted(load_predictions(out)) == ["single"]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["single.gif", "single.png"]
    assert not [p for p in run.iterdir() if p.name.startswith(".o_reuse")]  # no staging left


# ------------------------------------------------------------ forecast inputs (#25 item 12)
def test_keys_that_collide_after_sanitising_are_refused_naming_both_files(run):
    folder = run / "colliding"
    folder.mkdir()
    frames = np.load(run / "good.npy")[0]
    np.save(folder / "a.b.npy", frames)
    np.save(folder / "a_b.npy", frames + 1)
    line = _one_line_error(run_cli("forecast", "runs/debug", "colliding", "--out", "o_c", cwd=run))
    assert "a.b.npy" in line and "a_b.npy" in line and "'a_b'" in line
    assert not (run / "o_c").exists()


def test_no_input_sequence_is_a_one_line_error(run):
    (run / "empty_folder").mkdir()
    np.save(run / "none.npy", np.zeros((0, 6, 1, 32, 32), np.float32))
    for source in ("empty_folder", "none.npy"):
        line = _one_line_error(run_cli("forecast", "runs/debug", source, "--out", "o_0", cwd=run))
        assert source in line
        assert not (run / "o_0").exists()


def test_fifo_inputs_are_refused_not_waited_on(run):
    """In a process of its own with a timeout: reading a FIFO blocks for ever."""
    os.mkfifo(run / "pipe.npy")
    (run / "pipes").mkdir()
    os.mkfifo(run / "pipes" / "x.npy")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for source in ("pipe.npy", "pipes"):
        proc = subprocess.run(
            [sys.executable, "-m", "stpdist", "forecast", "runs/debug", source, "--out", "o_p"],
            cwd=run,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        line = _one_line_error(proc)
        assert "not a regular file" in line and ("pipe.npy" in line or "x.npy" in line)
        assert not (run / "o_p").exists()


# ------------------------------------------------------------ export (#24 item 6, #25 item 4)
def test_onnx_takes_any_batch_and_export_prints_no_tracer_warning(run, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from stpdist.inference import export

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export(run / "runs" / "debug", tmp_path / "model", formats=("onnx",))
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    session = onnxruntime.InferenceSession(str(tmp_path / "model" / "model.onnx"))
    model = stpdist.load(tmp_path / "model")
    x = torch.rand(3, 4, 1, 32, 32)  # exported with a batch of 2
    (got,) = session.run(None, {"inputs": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model.predict_frames(x).numpy(), atol=1e-5)
    # the file describes itself (a deployment review: no metadata, outputs' sizes unnamed)
    (output,) = session.get_outputs()
    frames = [*model.frame_shape]
    assert output.shape == ["batch", model.num_output_frames, *frames]  # were Clip…_dim_1…
    assert session.get_inputs()[0].shape == ["batch", model.num_input_frames, *frames]
    described = json.loads(session.get_modelmeta().custom_metadata_map["stpdist_export"])
    info = json.loads((tmp_path / "model" / "export.json").read_text())
    assert described["outputs"] == info["outputs"] and info["value_scale"] == 255
    assert info["graphs"]["model.onnx"]["max_abs_difference_from_eager"] < 1e-5


def test_export_refuses_a_used_out_and_checkpoint_folders(run):
    mine = run / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own notes\n")
    proc = run_cli("export", "runs/debug", "--out", "mine", cwd=run)
    line = _one_line_error(proc)  # not "pass --overwrite", which would refuse it too
    assert "holds config.yaml, which no stpdist export wrote" in line
    assert "never other files: choose another --out" in line and "pass --overwrite" not in line
    assert (mine / "config.yaml").read_text() == "my own notes\n"
    # another run's checkpoint folder (or the run itself) is refused even with --overwrite
    checkpoints = run / "runs" / "debug" / "checkpoints"
    before = _tree(checkpoints)
    step = next(checkpoints.iterdir())
    for target in (step, step / "sub", checkpoints, run / "runs" / "debug"):
        proc = run_cli("export", str(step), "--out", str(target), "--overwrite", cwd=run)
        assert "checkpoint" in _one_line_error(proc)
    assert _tree(checkpoints) == before
    # the user's own config.yaml: no export's (none wrote a model.safetensors beside it),
    # so kept even with --overwrite (until 2026-12-06 it was replaced)
    proc = run_cli("export", "runs/debug", "--out", "mine", "--overwrite", cwd=run)
    assert "holds config.yaml, which no stpdist export wrote" in _one_line_error(proc)
    assert (mine / "config.yaml").read_text() == "my own notes\n"
    (mine / "config.yaml").unlink()
    done = run_cli("export", "runs/debug", "--out", "mine", "--overwrite", cwd=run)
    assert done.returncode == 0, done.stderr
    done = run_cli("export", "runs/debug", "--out", "mine", "--overwrite", cwd=run)
    assert done.returncode == 0, done.stderr  # an earlier export: replaced
    assert sorted(p.name for p in mine.iterdir()) == [
        "config.yaml",
        "export.json",
        "index.json",
        "model.safetensors",
    ]
    assert stpdist.load(mine).frame_shape == (1, 32, 32)


def test_a_failing_export_leaves_the_old_folder_as_it_was(run, monkeypatch):
    from stpdist import inference

    run_cli("export", "runs/debug", "--out", "kept", cwd=run, check=True)
    before = _tree(run / "kept")

    def broken(*_):
        raise RuntimeError("exporter broke")

    monkeypatch.setitem(inference._EXPORTERS, "torchscript", broken)
    proc = run_cli(
        "export", "runs/debug", "--out", "kept", "--overwrite", "--format", "torchscript", cwd=run
    )
    assert proc.returncode == 1 and "exporter broke" in proc.stderr
    assert _tree(run / "kept") == before
    assert not [p for p in run.iterdir() if p.name.startswith(".kept")]


# ------------------------------------------------------------ no code from a model folder (#25 item 1)
EVIL = """
import dataclasses
from pathlib import Path

from torch import nn

Path(__file__).resolve().parent.parent.joinpath("MARKER").write_text("evil.py ran")


class Net(nn.Module):
    @dataclasses.dataclass
    class Args:
        pass

    def __init__(self, spec, args):
        super().__init__()
        self.conv = nn.Conv2d(spec.channels, spec.channels, 3, padding=1)

    def forward(self, frames, num_output_frames, *, targets_BTCHW=None, teacher_mask_BT=None):
        last = self.conv(frames[:, -1])
        return last[:, None].expand(-1, num_output_frames, -1, -1, -1)
"""


@pytest.fixture
def evil_folder(run, tmp_path, monkeypatch) -> Path:
    """`tmp_path/mymodel`: a model folder whose config names `mymodel.evil:Net`, with
    `evil.py` beside it (importing it writes `tmp_path/MARKER`); `tmp_path` is the working
    directory and on sys.path, as for `python -c` run there."""
    from safetensors.torch import save_file

    from stpdist.build import build_module
    from stpdist.config import to_yaml
    from stpdist.data.format import read_index

    folder = tmp_path / "mymodel"
    folder.mkdir()
    (folder / "evil.py").write_text(EVIL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    # the training side: a config the user wrote may name their own class (imports it)
    yaml = tmp_path / "mine.yaml"
    yaml.write_text(
        "data: {num_input_frames: 4, num_output_frames: 4}\n"
        "model: {name: 'mymodel.evil:Net', patch_size: 1}\n"
    )
    cfg = load_config(yaml)
    index_dir = run / "runs" / "debug" / "checkpoints"
    index_dir = next(index_dir.iterdir())
    module = build_module(cfg, index=read_index(index_dir))
    save_file(dict(module.state_dict()), str(folder / "model.safetensors"))
    (folder / "config.yaml").write_text(to_yaml(cfg))
    (folder / "index.json").write_text((index_dir / "index.json").read_text())
    # forget that it ran: what follows must show whether loading runs it again
    (tmp_path / "MARKER").unlink()
    for name in ("mymodel.evil", "mymodel"):
        sys.modules.pop(name, None)
    yield folder
    for name in ("mymodel.evil", "mymodel"):
        sys.modules.pop(name, None)


def test_loading_a_model_folder_never_imports_the_code_it_names(evil_folder, run):
    marker = evil_folder.parent / "MARKER"
    with pytest.raises(InputError, match="trust_code=True") as caught:
        stpdist.load("mymodel")
    assert "mymodel.evil:Net" in str(caught.value) and "\n" not in str(caught.value)
    assert not marker.exists() and "mymodel.evil" not in sys.modules
    np.save(evil_folder.parent / "x.npy", np.load(run / "good.npy")[0])
    for command in (
        ["forecast", "mymodel", "x.npy", "--out", "o"],
        ["export", "mymodel", "--out", "o"],
    ):
        line = _one_line_error(run_cli(*command, cwd=evil_folder.parent))
        assert "--trust-code" in line
        assert not marker.exists() and not (evil_folder.parent / "o").exists()
    # opted in: imported from the sys.path the user set up, and it works
    model = stpdist.load("mymodel", trust_code=True)
    assert marker.exists()
    assert model.forecast(np.load(run / "good.npy")[0]).shape == (4, 1, 32, 32)
    run_cli("forecast", "mymodel", "x.npy", "--out", "o", "--trust-code", cwd=evil_folder.parent,
            check=True)  # fmt: skip


def test_a_translator_import_path_in_a_model_folder_is_not_imported(evil_folder):
    from omegaconf import OmegaConf

    config = evil_folder / "config.yaml"
    saved = OmegaConf.load(config)
    saved.model.name, saved.model.backbone = "simvp", {"translator": "mymodel.evil:Net"}
    OmegaConf.save(saved, config)
    with pytest.raises(InputError, match="translator 'mymodel.evil:Net'"):
        stpdist.load(evil_folder)
    assert not (evil_folder.parent / "MARKER").exists() and "mymodel.evil" not in sys.modules


def test_a_stdlib_import_path_in_a_model_folder_is_not_imported(evil_folder):
    config = evil_folder / "config.yaml"
    config.write_text(config.read_text().replace("mymodel.evil:Net", "this:Nope"))
    assert "this" not in sys.modules  # `import this` prints the Zen of Python
    with pytest.raises(InputError, match="'this:Nope'"):
        stpdist.load(evil_folder)
    assert "this" not in sys.modules


# ------------------------------------------------------------ small consistencies (#24 item 8)
def test_help_describes_every_subcommand_and_version_prints(tmp_path):
    from stpdist.cli import parser

    p = parser()
    commands = next(a for a in p._actions if a.dest == "command").choices
    assert len(commands) >= 10
    for name in commands:
        assert name in p.description, name
    proc = run_cli("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"stpdist {stpdist.__version__}"


def test_synth_num_digits_and_every_synth_flag_has_help(tmp_path):
    from stpdist.cli import parser

    synth = next(a for a in parser()._actions if a.dest == "command").choices["synth"]
    no_help = [a.dest for a in synth._actions if not a.help]
    assert not no_help
    run_cli(
        "synth", "moving-digits", "--out", "d", "--train", "2", "--val", "0", "--test", "0",
        "--frames", "3", "--size", "32", "--num-digits", "1", "--workers", "1", cwd=tmp_path,
        check=True,
    )  # fmt: skip
    index = json.loads((tmp_path / "d" / "train" / "index.json").read_text())
    assert index["args"]["num_digits"] == 1
    proc = run_cli("synth", "moving-digits", "--out", "e", "--num-digits", "0", cwd=tmp_path)
    assert proc.returncode == 2 and not (tmp_path / "e").exists()


def test_an_empty_mapping_override_clears_the_backbone_arguments():
    assert load_config(DEBUG).model.backbone  # the debug config sets hidden_channels, ...
    assert load_config(DEBUG, ["model.backbone={}"]).model.backbone == {}
    cfg = load_config(DEBUG, ["model.backbone={}", "model.backbone.kernel_size=5"])
    assert cfg.model.backbone == {"kernel_size": 5}


def test_converting_and_the_cli_start_without_importing_torch(tmp_path):
    """`stpdist shard`, `--help` and config errors took 1.9 s, 1.5 s of it importing torch
    (through the package's exports and webdataset); they now take a fraction of it."""
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    for i in range(4):
        np.save(arrays / f"s{i}.npy", np.zeros((6, 1, 8, 8), np.uint8))
    probe = (
        "import sys\n"
        "from stpdist.cli import main\n"
        "main(['shard', 'arrays', sys.argv[1], '--out', sys.argv[2], '--splits', 'a=0.5,b=0.5'])\n"
        "main(['inspect', sys.argv[2], '--samples', '0'])  # 1.0 s → 0.18 s without torch\n"
        "import stpdist\n"
        "assert stpdist.__version__ and 'torch' not in sys.modules, 'torch was imported'\n"
        "assert stpdist.Trainer.__name__ == 'Trainer' and 'torch' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(arrays), str(tmp_path / "data")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "data" / "a" / "index.json").is_file()


def test_an_export_of_an_old_layout_checkpoint_writes_todays_config(run, tmp_path):
    """The model folder kept the checkpoint's config.yaml of before 2026-12-03 as it was:
    every later forecast of it said "is in the config layout before 2026-12-03" again."""
    import shutil

    import yaml

    from stpdist.checkpoint import _entry

    old = tmp_path / "old"
    shutil.copytree(run / "runs" / "debug", old)
    for step in (old / "checkpoints").glob("step-*"):
        saved = yaml.safe_load((step / "config.yaml").read_text())
        optimizer = saved["model"].pop("optimizer")
        saved["model"].update(optimizer=optimizer["name"], lr=optimizer["lr"])  # as then
        (step / "config.yaml").write_text(yaml.safe_dump(saved))
        manifest = json.loads((step / "manifest.json").read_text())
        manifest["files"]["config.yaml"] = _entry(step / "config.yaml")
        (step / "manifest.json").write_text(json.dumps(manifest))
    proc = run_cli("export", str(old), "--out", "m", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("is in the config layout before 2026-12-03") == 1
    exported = yaml.safe_load((tmp_path / "m" / "config.yaml").read_text())
    assert exported["model"]["optimizer"]["name"] == "adam" and "lr" not in exported["model"]
    again = run_cli("forecast", "m", str(run / "good.npy"), "--out", "f", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "layout before" not in again.stderr


GAIN = """
import dataclasses

import torch
from torch import nn


class GainNet(nn.Module):
    @dataclasses.dataclass
    class Args:
        init_gain: float = 1.0
        ks: tuple[int, int] = (3, 3)

    def __init__(self, spec, args):
        super().__init__()
        self.args = args
        self.gain = nn.Parameter(torch.tensor(args.init_gain))  # an int here cannot train
        self.conv = nn.Conv2d(spec.channels, spec.channels, args.ks, padding=args.ks[0] // 2)

    def forward(self, frames, num_output_frames, *, targets_BTCHW=None, teacher_mask_BT=None):
        last = self.gain * self.conv(frames[:, -1])
        return last[:, None].expand(-1, num_output_frames, -1, -1, -1)
"""


def test_a_backbone_by_import_path_gets_its_args_as_the_schema_types_them(tmp_path, monkeypatch):
    """A plugins review: `init_gain: 2` for a float field reached the backbone as an int
    (nn.Parameter then failed), a list for a tuple field as a list."""
    from helpers import forecaster

    (tmp_path / "gainmod.py").write_text(GAIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = forecaster("gainmod:GainNet", (1, 8, 8), 3, 2, backbone={"init_gain": 2, "ks": [5, 5]})
    args = module.backbone.args
    assert type(args.init_gain) is float and args.init_gain == 2.0
    assert args.ks == (5, 5) and isinstance(args.ks, tuple)
    assert module.backbone.gain.requires_grad
    sys.modules.pop("gainmod", None)


def test_the_own_model_guides_frame_recurrent_backbone_trains_with_scheduled_sampling(
    tmp_path, monkeypatch
):
    """The guide's example, as written there: scheduled sampling and every next-frame
    prediction in the loss (a plugins review found no documented way to either)."""
    import re

    from helpers import forecaster

    guide = (ROOT / "docs" / "pages" / "guides" / "own-model.md").read_text()
    code = re.search(r"```python\n(import dataclasses\n.*?class TinyConvGRU.*?)```", guide, re.S)
    (tmp_path / "guidegru.py").write_text(code.group(1))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = forecaster("guidegru:TinyConvGRU", (1, 8, 8), 3, 2, backbone={"hidden": 4},
                        sampling="linear")  # fmt: skip
    module.config.loss_frames = "all"
    module.global_step = 0
    inputs, targets = torch.rand(2, 3, 1, 8, 8), torch.rand(2, 2, 1, 8, 8)
    loss = module.training_step(inputs, targets)
    loss = loss["loss"] if isinstance(loss, dict) else loss
    loss.backward()
    assert torch.isfinite(loss) and module.backbone.gates.weight.grad is not None
    sys.modules.pop("guidegru", None)


def _loss_forecaster(loss: str):
    from stpdist.config import ModelConfig
    from stpdist.task import Forecaster

    return Forecaster(ModelConfig(name="convlstm", backbone={"hidden_channels": [4]}, loss=loss),
                      (1, 8, 8), 3, 2)  # fmt: skip


def test_a_loss_of_ones_own_by_import_path(tmp_path, monkeypatch):
    """`model.loss` took only mse, l1 and mse+l1 (an own-model review: no custom loss for a
    config-built model). The guide's function, as written there, trains; a function and a
    torch.nn class equal to the built-ins give their losses exactly; bad ones are refused
    naming the key."""
    import re

    from stpdist.config import ConfigError, load_config
    from stpdist.errors import InputError

    guide = (ROOT / "docs" / "pages" / "guides" / "own-model.md").read_text()
    code = re.search(r"```python\n(import torch\n\n\ndef weighted_mse.*?)```", guide, re.S)
    (tmp_path / "guideloss.py").write_text(
        code.group(1)
        + "\n\ndef same_as_mse(p, t):\n    return ((p - t) ** 2).mean()\n"
        + "\n\ndef per_frame(p, t):\n    return ((p - t) ** 2).mean(dim=(2, 3, 4))\n"
        + "\n\nclass Learnt(torch.nn.Module):\n    def __init__(self):\n"
        + "        super().__init__()\n        self.w = torch.nn.Parameter(torch.ones(1))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    inputs, targets = torch.rand(2, 3, 1, 8, 8), torch.rand(2, 2, 1, 8, 8)

    def loss_of(name: str) -> torch.Tensor:
        torch.manual_seed(0)
        module = _loss_forecaster(name)
        return module.training_step(inputs, targets)

    weighted = loss_of("guideloss:weighted_mse")
    weighted.backward()
    assert torch.isfinite(weighted) and weighted > loss_of("mse")  # weights ≥ 1
    assert torch.equal(loss_of("guideloss:same_as_mse"), loss_of("mse"))
    assert torch.equal(loss_of("torch.nn:L1Loss"), loss_of("l1"))
    validated = _loss_forecaster("guideloss:same_as_mse").validation_step(inputs, targets)
    assert validated["loss"].shape == ()
    with pytest.raises(InputError, match=r"model.loss 'guideloss:per_frame' returned \(2, 2\)"):
        loss_of("guideloss:per_frame")
    with pytest.raises(ConfigError, match="model.loss 'guideloss:Learnt' holds tensors of its own"):
        _loss_forecaster("guideloss:Learnt")
    with pytest.raises(ConfigError, match="model.loss 'guideloss:nope': module 'guideloss' has no"):
        _loss_forecaster("guideloss:nope")
    with pytest.raises(ConfigError, match="'model.loss' is 'msse'; expected one of mse, l1"):
        load_config(ROOT / "configs" / "debug.yaml", ["model.loss=msse"])
    # a model folder read without trust_code imports nothing of it, and refuses its loss
    from stpdist.plugins import refusing_import_paths

    with refusing_import_paths("a-folder/config.yaml"):
        untrusted = _loss_forecaster("guideloss:same_as_mse")
    with pytest.raises(InputError, match="model.loss 'guideloss:same_as_mse' in a-folder"):
        untrusted.training_step(inputs, targets)
    sys.modules.pop("guideloss", None)


_NET_HEAD = """
import dataclasses

import torch
from torch import nn


class Net(nn.Module):
    @dataclasses.dataclass
    class Args:
        pass

    def __init__(self, spec, args):
        super().__init__()
        self.conv = nn.Conv2d(spec.channels, spec.channels, 3, padding=1)

    def forward(self, frames, num_output_frames, *, targets_BTCHW=None, teacher_mask_BT=None):
"""
"""A backbone module of one's own, up to its forward's body."""

USER_BUG = _NET_HEAD + '        raise RuntimeError("shapes do not match in my forward")\n'


def test_an_error_in_ones_own_model_names_its_file_and_line(tmp_path):
    """A plugins review: an error raised in one's own code was one line naming no file, and
    a SyntaxError in one's module was no `model.name` error (exit 1, no key named)."""
    from test_cli import DEBUG

    (tmp_path / "usrbad.py").write_text(USER_BUG)
    common = ("train", DEBUG, "model.backbone={}", "trainer.max_steps=1", "logging.num_samples=0")
    proc = run_cli(*common, "model.name=usrbad:Net", cwd=tmp_path)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and line.startswith(
        "stpdist: error: RuntimeError: shapes do not match in my forward (in "
    ), line
    assert line.endswith("usrbad.py:18, forward; stpdist --debug shows the traceback)"), line
    (tmp_path / "usrsyntax.py").write_text("def broken(:\n")
    proc = run_cli(*common, "model.name=usrsyntax:Net", "trainer.output_dir=other", cwd=tmp_path)
    assert proc.returncode == 2 and "module 'usrsyntax' has a syntax error" in proc.stderr
    assert "model.name" in proc.stderr


NAN_EVAL = (
    _NET_HEAD
    + """\
        last = self.conv(frames[:, -1])
        if not self.training:  # a bug of the evaluation path alone
            last = last * float("nan")
        return last[:, None].expand(-1, num_output_frames, -1, -1, -1)
"""
)


def test_nan_validation_results_and_predictions_are_said(tmp_path, monkeypatch, capsys):
    """A plugins review: NaN in evaluation only gave `val/mse nan` and all-NaN forecasts,
    exit 0, without a word."""
    from helpers import forecaster, loader

    from stpdist import Trainer

    (tmp_path / "naneval.py").write_text(NAN_EVAL)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = forecaster("naneval:Net", (1, 4, 4), 3, 2)
    trainer = Trainer(output_dir=tmp_path / "run", max_epochs=2, progress_bar=False)
    trainer.fit(module, loader(8), loader(4, shuffle=False))
    err = capsys.readouterr().err
    assert err.count("validation at step 2: val/loss, val/mse") == 1, err  # said once
    assert "not finite: the model's predictions hold NaN or ±Inf outside training" in err
    assert "validation at step 4" not in err
    # skill scores NaN by convention (no event at a threshold) are no model's NaN: unsaid
    from stpdist.trainer import Validator

    quiet = Validator(trainer, None, module)
    quiet._say_nonfinite({"val/mse": 0.1, "val/csi@100000": float("nan")}, 6)
    assert "not finite" not in capsys.readouterr().err

    class Keyed(torch.utils.data.Dataset):  # predictions are written by sample key
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"inputs": torch.rand(3, 1, 4, 4), "targets": torch.rand(2, 1, 4, 4),
                    "key": f"s{i}"}  # fmt: skip

    trainer.predict(module, torch.utils.data.DataLoader(Keyed(), batch_size=2), out=tmp_path / "p")
    trainer.close()
    assert "128 of the 128 predicted values (100%) are NaN or ±Inf" in capsys.readouterr().err
    sys.modules.pop("naneval", None)


def test_bench_model_of_a_whole_task_is_refused_in_one_line(tmp_path):
    """A plugins review: `bench model mypkg.task:MyTask` failed with an internal TypeError
    (the frame spec handed to the task as its first argument)."""
    (tmp_path / "benchtask.py").write_text(
        "from stpdist import EnhancedModule\n\n\nclass MyTask(EnhancedModule):\n    pass\n"
    )
    proc = run_cli("bench", "model", "benchtask:MyTask", "--shape", "2x4x1x16x16", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "stpdist: error: bench model benchtask:MyTask: a whole task (an EnhancedModule), not a "
            "backbone"
        )
    )
    sys.modules.pop("benchtask", None)


def test_an_args_class_that_is_no_dataclass_is_named(tmp_path, monkeypatch):
    """A plugins review: a plain `class Args:` was refused as "missing a required argument:
    'args'", as if a config key `args` were missing."""
    from stpdist.config import ConfigError, ModelConfig, backbone_config

    (tmp_path / "plainargs.py").write_text(
        _NET_HEAD.replace("    @dataclasses.dataclass\n", "") + "        return frames\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"its Args is not a dataclass.*@dataclasses.dataclass"):
        backbone_config(ModelConfig(name="plainargs:Net"))
    sys.modules.pop("plainargs", None)
