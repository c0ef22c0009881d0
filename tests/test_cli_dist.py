"""End-to-end CLI runs on several ranks (split from test_cli.py so that parallel test
workers share the load): 2-rank train on synthetic shards, accelerate's launcher on a
CPU-only host, offline wandb from the main rank only."""

from __future__ import annotations

import json
import sys

import pytest
from test_cli import DEBUG, stpdist


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


@pytest.mark.multiprocess
def test_offline_wandb_two_ranks_logs_media_from_main_only(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    # an earlier in-process wandb run (test_config) leaves WANDB_SERVICE in this worker's
    # environment: the ranks would log through that worker's service instead of their own
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    stpdist(
        "train", DEBUG, "logging.trackers=[wandb]", "logging.num_samples=2", cwd=tmp_path, nproc=2
    )
    runs = list((tmp_path / "runs" / "debug" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # rank 1 never started a run
    media = runs[0] / "files" / "media"
    assert len(list(media.glob("images/**/*.png"))) >= 4  # 2 panels (+ plot) per validation
    assert len(list(media.glob("videos/**/*.gif"))) == 4  # 2 samples × 2 validations
    # offline runs keep their history in the binary run file: the logged keys are in it
    import time

    deadline = time.time() + 15  # wandb's service process may still be writing its record
    while not list(runs[0].glob("run-*.wandb")) and time.time() < deadline:
        time.sleep(0.5)
    record = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in (b"val/mse", b"val/ssim/t04", b"train/loss", b"samples/val_0000000"):
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
