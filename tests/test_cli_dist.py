"""End-to-end CLI runs on several ranks (split from test_cli.py so that parallel test
workers share the load): 2-rank train on synthetic shards, accelerate's launcher on a
CPU-only host, offline wandb from the main rank only.

The 2-rank torchrun train and the offline-wandb checks read one run (`two_ranks`, with
wandb on and sample pictures): a 2-rank launch costs ~20 s of CPU on 2 cores. The debug
config as shipped (no tracker) trains on 2 ranks in the accelerate-launch test below."""

from __future__ import annotations

import json
import sys

import pytest
from test_cli import DEBUG, stpdist


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """`stpdist train configs/debug.yaml` on 2 torchrun ranks, tracked by offline wandb (when
    installed) with 2 sample pictures a validation: its folder."""
    import importlib.util

    tracked = ["logging.trackers=[wandb]"] if importlib.util.find_spec("wandb") else []
    folder = tmp_path_factory.mktemp("two-ranks")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(folder / "wandb-dir"))
        # an earlier in-process wandb run (test_config) leaves WANDB_SERVICE in this
        # worker's environment: the ranks would log through that worker's service
        mp.delenv("WANDB_SERVICE", raising=False)
        stpdist(
            "train", DEBUG, *tracked, "logging.num_samples=2", cwd=folder, nproc=2, torchrun=True
        )
    return folder


def check_two_rank_run(run) -> None:
    """The debug config on 2 ranks: 8 steps, one metrics line per validation."""
    state = json.loads((run / "checkpoints" / "step-00000008" / "trainer_state.json").read_text())
    # 32 samples / (2 ranks × batch 4) = 4 steps per epoch, 2 epochs
    assert state["global_step"] == 8 and state["world_size"] == 2
    lines = (run / "metrics.jsonl").read_text().splitlines()
    val = [json.loads(x) for x in lines if "val/mse" in x]
    assert [x["val/num_samples"] for x in val] == [8, 8]  # one line per validation, not per rank


@pytest.mark.multiprocess
def test_train_two_ranks_on_synth_shards(two_ranks):
    check_two_rank_run(two_ranks / "runs" / "debug")
    assert (two_ranks / "data" / "debug-digits" / "train" / "index.json").is_file()


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
        "logging.num_samples=0",  # pictures of two ranks: two_ranks above
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_two_rank_run(tmp_path / "runs" / "debug")


@pytest.mark.multiprocess
def test_offline_wandb_two_ranks_logs_media_from_main_only(two_ranks):
    pytest.importorskip("wandb")
    tmp_path = two_ranks
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
