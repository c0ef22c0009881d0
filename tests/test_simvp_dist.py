"""TAU (the SimVP backbone with the TAU translator and its divergence regulariser, a
superset of plain SimVP's path) through `stpdist train` on 2 CPU ranks over
synthetic shards: it trains to the end, and a run killed with SIGKILL after a checkpoint
resumes (`--resume auto`) to weights and optimizer state bitwise equal to an uninterrupted
run. Plain SimVP (gSTA) ran here too until the suite's time budget asked for one of the two:
each translator's training is covered by tests/test_simvp.py."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import launcher, run_ranks, unserved
from safetensors.torch import load_file

pytestmark = pytest.mark.multiprocess

STEPS = 16  # 4 epochs × 32 samples / (2 ranks × batch 4)
FINAL = f"step-{STEPS:08d}"

# Tiny sizes: 32×32 frames, patch 2 → 4×16×16, 2 spatial blocks → 8×8 latent, 4 → 4
# frames. Checkpoints every 5 steps (4 steps an epoch): mid-epoch, so resuming has to
# restore the shard stream's position, not only weights. drop_path > 0: stochastic depth
# draws random numbers, so the RNG state has to come back too.
CONFIG = """\
trainer:
  output_dir: runs/x
  max_epochs: 4
  log_every_n_steps: 1
  progress_bar: false
  checkpoint:
    every_epoch: false
    every_n_steps: 5
    keep_last: 2
    keep_best: 0
data:
  root: {root}
  val_split: none
  batch_size: 4
  num_input_frames: 4
  num_output_frames: 4
  shuffle_buffer: 16
model:
  name: {name}
  backbone:
    translator: {translator}
    spatial_channels: 8
    temporal_channels: 16
    num_spatial_blocks: 2
    num_translator_blocks: 2
    mlp_ratio: 2.0
    drop_path: 0.1
  patch_size: 2
  divergence_weight: {divergence}
"""
MODELS = {"tau": ("tau", "tau", 0.1)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from stpdist.data.synthetic import write_moving_digits

    root = tmp_path_factory.mktemp("digits")
    write_moving_digits(root, {"train": 32}, num_frames=8, image_size=32, progress=False)
    return root


def _train(folder: Path, *extra: str) -> str:
    out = run_ranks(
        ["--no-python", sys.executable, "-m", "stpdist", "train", "cfg.yaml", *extra],
        2,
        cwd=folder,
        timeout=120,
    )
    return out.stdout + out.stderr


def _kill_after_first_checkpoint(folder: Path) -> int:
    """Run with no end in sight (`trainer.max_epochs=1000`: without an lr schedule the
    planned length changes nothing else), and once its first checkpoint folder exists
    (written under a temporary name, renamed when complete) freeze every process with
    SIGSTOP, then SIGKILL them all. Returns the newest complete checkpoint's step."""
    import psutil

    env = unserved({**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    cmd = [*launcher(2), "--no-python", sys.executable, "-m", "stpdist", "train", "cfg.yaml"]
    proc = subprocess.Popen(
        [*cmd, "trainer.max_epochs=1000"],
        cwd=folder,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    checkpoints = folder / "runs" / "x" / "checkpoints"
    deadline = time.time() + 120
    try:
        while not any(checkpoints.glob("step-*")):
            assert proc.poll() is None, f"run ended before a checkpoint: {proc.stderr.read()}"
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
    finally:
        # torchrun puts every rank in a session of its own: signal each descendant by pid
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for p in family:
            try:
                p.send_signal(signal.SIGSTOP)
            except psutil.NoSuchProcess:
                pass
        for p in family:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs(family[1:], timeout=30)
        assert not alive, f"ranks survived SIGKILL: {alive}"
    return max(int(p.name.split("-")[1]) for p in checkpoints.glob("step-*"))


def _weights_and_optimizer(run: Path) -> tuple[dict, dict]:
    final = run / "checkpoints" / FINAL
    optimizer = torch.load(final / "optimizer.pt", weights_only=True)
    return load_file(str(final / "model.safetensors")), optimizer


@pytest.mark.parametrize("model", sorted(MODELS))
def test_two_ranks_train_and_resume_bitwise_after_sigkill(tmp_path, shards, model):
    name, translator, divergence = MODELS[model]
    config = CONFIG.format(root=shards, name=name, translator=translator, divergence=divergence)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for folder in (straight, killed):
        folder.mkdir()
        (folder / "cfg.yaml").write_text(config)

    _train(straight)
    state = json.loads((straight / "runs/x/checkpoints" / FINAL / "trainer_state.json").read_text())
    assert (state["global_step"], state["epoch"], state["world_size"]) == (STEPS, 4, 2)
    lines = [json.loads(x) for x in (straight / "runs/x/metrics.jsonl").read_text().splitlines()]
    losses = [x["train/loss"] for x in lines if "train/loss" in x]
    assert len(losses) == STEPS and all(map(math.isfinite, losses))
    assert sum(losses[-4:]) < 0.7 * sum(losses[:4])  # it learns
    if divergence:  # TAU's regulariser is in the loss and logged on its own
        assert all(x["train/divergence"] > 0 for x in lines if "train/loss" in x)
    else:
        assert not any("train/divergence" in x for x in lines)

    saved = _kill_after_first_checkpoint(killed)
    assert 5 <= saved < STEPS, f"killed only after step {saved}"
    log = _train(killed, "--resume", "auto")  # back to the straight run's 4 epochs
    assert re.search(rf"resumed from \S*step-{saved:08d}", log), log[-2000:]

    weights_a, optimizer_a = _weights_and_optimizer(straight / "runs/x")
    weights_b, optimizer_b = _weights_and_optimizer(killed / "runs/x")
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:  # BatchNorm running statistics included
        assert torch.equal(weights_a[key], weights_b[key]), key
    for pid, entry in optimizer_a["state"].items():
        for field, value in entry.items():
            other = optimizer_b["state"][pid][field]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), (pid, field)
