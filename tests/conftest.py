from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    import torch

    # One intra-op thread in the test process too: on 2 shared cores, oversubscribed
    # threads made the overfit tests 10–30× slower (ranks get OMP_NUM_THREADS=1 below).
    torch.set_num_threads(1)
    # the Trainer keeps torch's setting when OMP_NUM_THREADS is set (stpdist/threads.py);
    # subprocesses inherit it
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_addoption(parser):
    parser.addoption(
        "--slurm",
        action="store_true",
        help="run the local-SLURM tests (installs slurm/munge if missing, edits /etc/hosts)",
    )


def pytest_collection_modifyitems(config, items):
    import torch

    skips = []
    if not torch.cuda.is_available():
        skips.append(("gpu", pytest.mark.skip(reason="needs a CUDA device; none on this host")))
    if not config.getoption("--slurm"):
        reason = "local SLURM tests change the machine: opt in with --slurm (make test-slurm)"
        skips.append(("slurm", pytest.mark.skip(reason=reason)))
    if os.geteuid() != 0:
        skips.append(("slurm", pytest.mark.skip(reason="a local SLURM cluster needs root")))
    for item in items:
        for marker, skip in skips:
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))


def free_port() -> int:
    """A TCP port nobody listens on now (asked from the OS: safe with parallel workers)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launcher(nproc: int) -> list[str]:
    """The command prefix that starts a script on `nproc` CPU ranks (plain python for 1)."""
    if nproc == 1:
        return [sys.executable]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(free_port()),
    ]


def run_ranks(
    script: list[str], nproc: int, *, timeout: float = 180, **popen
) -> subprocess.CompletedProcess:
    """Run `script` (a file and its arguments) on `nproc` CPU ranks over gloo with torchrun,
    or as a plain process when nproc == 1. Fails the test on a non-zero exit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [*launcher(nproc), *script]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **popen)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc
