"""End-to-end CLI runs on the debug config in a temp dir: train → resume → validate → predict,
and a 2-rank train with torchrun."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_ranks
from PIL import Image

DEBUG = str(Path(__file__).parent.parent / "configs" / "debug.yaml")


def stpdist(*args: str, cwd: Path, nproc: int = 1):
    return run_ranks(
        ["-m", "stpdist", *args]
        if nproc == 1
        else ["--no-python", sys.executable, "-m", "stpdist", *args],
        nproc,
        cwd=cwd,
    )


def test_train_resume_validate_predict(tmp_path):
    out = stpdist("train", DEBUG, cwd=tmp_path).stdout
    assert "final validation MSE per pixel" in out
    run = tmp_path / "runs" / "debug"
    assert (run / "config.yaml").is_file()
    steps = [p.name for p in (run / "checkpoints").iterdir()]
    assert steps == ["step-00000016", "step-00000008"] or sorted(steps) == [
        "step-00000008",
        "step-00000016",
    ]

    # resume: two more epochs from the newest checkpoint
    out = stpdist("train", DEBUG, "trainer.max_epochs=4", "--resume", "auto", cwd=tmp_path).stdout
    assert "resumed from runs/debug/checkpoints/step-00000016" in out
    state = json.loads((run / "checkpoints" / "step-00000032" / "trainer_state.json").read_text())
    assert state["epoch"] == 4 and state["global_step"] == 32

    out = stpdist("validate", DEBUG, "--ckpt", "last", cwd=tmp_path).stdout
    assert "step-00000032" in out and "val/mse" in out

    out = stpdist("predict", DEBUG, "--ckpt", "last", cwd=tmp_path).stdout
    pred_dir = run / "predictions" / "test"
    keys = []
    for file in sorted(pred_dir.glob("predictions-*.npz")):
        data = np.load(file)
        assert data["predictions"].shape[1:] == (4, 1, 32, 32)
        keys += data["keys"].tolist()
    assert sorted(keys) == [f"test_{i:07d}" for i in range(8)]
    panel = Image.open(pred_dir / "samples" / "test_0000000.png")
    assert panel.size == (4 * 32 + 3 * 2, 4 * 32 + 3 * 2)
    assert json.loads((pred_dir / "metrics.json").read_text())["val/num_samples"] == 8


def test_predict_without_checkpoint_fails_clearly(tmp_path):
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "stpdist", "predict", DEBUG],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "no checkpoint in runs/debug/checkpoints" in proc.stderr


@pytest.mark.multiprocess
def test_train_two_ranks_on_synth_shards(tmp_path):
    stpdist("train", DEBUG, cwd=tmp_path, nproc=2)
    run = tmp_path / "runs" / "debug"
    state = json.loads((run / "checkpoints" / "step-00000008" / "trainer_state.json").read_text())
    # 32 samples / (2 ranks × batch 4) = 4 steps per epoch, 2 epochs
    assert state["global_step"] == 8 and state["world_size"] == 2
    lines = (run / "metrics.jsonl").read_text().splitlines()
    val = [json.loads(x) for x in lines if "val/mse" in x]
    assert [x["val/num_samples"] for x in val] == [8, 8]  # one line per validation, not per rank


@pytest.mark.multiprocess
def test_accelerate_launch_multi_gpu_flag_on_cpu_host_gives_two_ranks(tmp_path):
    """`accelerate launch --multi_gpu` on a CPU-only host: the Trainer picks gloo itself."""
    import os
    import subprocess

    from conftest import free_port

    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "stpdist",
        "train",
        DEBUG,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = tmp_path / "runs" / "debug" / "checkpoints" / "step-00000008" / "trainer_state.json"
    assert json.loads(state.read_text())["world_size"] == 2


def test_bench_trainer_prints_ratio(tmp_path):
    out = stpdist("bench", "trainer", "--repeats", "1", "--steps", "10", cwd=tmp_path).stdout
    assert "Trainer / raw" in out and "steps/s" in out


def test_bench_data_prints_table(tmp_path):
    stpdist(
        "synth",
        "moving-digits",
        "--out",
        "ds",
        "--train",
        "48",
        "--val",
        "0",
        "--test",
        "0",
        "--size",
        "32",
        "--frames",
        "8",
        cwd=tmp_path,
    )
    out = stpdist("bench", "data", "ds", cwd=tmp_path).stdout
    assert "shards / per-file npz" in out and "plain tar" in out


def test_bench_model_prints_figures(tmp_path):
    out = stpdist(
        "bench",
        "model",
        "predrnn",
        "--shape",
        "2x3x1x16x16",
        "--output-frames",
        "2",
        "--backbone",
        '{"hidden_channels": [4, 4], "kernel_size": 3}',
        "--model-steps",
        "1",
        cwd=tmp_path,
    ).stdout
    assert "predrnn" in out and "GMACs" in out and "params" in out


@pytest.mark.multiprocess
def test_offline_wandb_two_ranks_logs_media_from_main_only(tmp_path):
    stpdist(
        "train", DEBUG, "logging.wandb.mode=offline", "logging.num_samples=2", cwd=tmp_path, nproc=2
    )
    runs = list((tmp_path / "runs" / "debug" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # rank 1 never started a run
    media = runs[0] / "files" / "media"
    assert len(list(media.glob("images/**/*.png"))) >= 4  # 2 panels (+ plot) per validation
    assert len(list(media.glob("videos/**/*.gif"))) == 4  # 2 samples × 2 validations
    # offline runs keep their history in the binary run file: the logged keys are in it
    record = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in (b"val/mse", b"val/ssim/t04", b"train/loss", b"samples/panels"):
        assert key in record, key
    samples = tmp_path / "runs" / "debug" / "samples"
    for step in ("step-00000004", "step-00000008"):
        assert sorted(p.name for p in (samples / step).iterdir()) == [
            "lead_time.png",
            "val_0000000.gif",
            "val_0000000.png",
            "val_0000001.gif",
            "val_0000001.png",
        ]


def test_validate_table_plot_and_predict_values(tmp_path):
    import torch

    from stpdist.build import build_module, eval_stream
    from stpdist.checkpoint import load_weights
    from stpdist.config import load_config
    from stpdist.data.stream import LoaderContext

    stpdist("train", DEBUG, "trainer.max_epochs=1", cwd=tmp_path)
    out = stpdist("validate", DEBUG, cwd=tmp_path).stdout
    header = next(line for line in out.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "all", "t1", "t2", "t3", "t4"]
    assert any(line.startswith("val/ssim") for line in out.splitlines())
    assert (tmp_path / "runs" / "debug" / "lead_time_val.png").is_file()

    stpdist("predict", DEBUG, "--ckpt", "last", cwd=tmp_path)
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        cfg = load_config(DEBUG)
        module = build_module(cfg).eval()
        load_weights(sorted((tmp_path / "runs/debug/checkpoints").iterdir())[-1], module)
        inputs, targets, keys = next(iter(eval_stream(cfg, "test").iterate(LoaderContext())))
    finally:
        os.chdir(cwd)
    with torch.no_grad():
        expected = module.predict_step(inputs, targets).numpy()
    got = np.load(tmp_path / "runs/debug/predictions/test/predictions-r000-000000.npz")
    assert got["keys"].tolist() == keys
    np.testing.assert_allclose(got["predictions"], expected, rtol=1e-5, atol=1e-6)
    metrics = json.loads((tmp_path / "runs/debug/predictions/test/metrics.json").read_text())
    assert metrics["val/num_samples"] == 8 and "val/psnr/t01" in metrics
