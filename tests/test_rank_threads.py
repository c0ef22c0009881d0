"""Ranks started without torchrun (srun's tasks, LAUNCHER=none) and without
OMP_NUM_THREADS: accelerate's CPU setup set its own thread count (physical cores ÷ local
ranks) after stpdist had set `trainer.num_threads`, and said so in a warning."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import free_port

RANK = """
import sys, torch
from stpdist import Trainer
trainer = Trainer(max_steps=1, output_dir=sys.argv[1], num_threads=int(sys.argv[2]), progress_bar=False)
print("threads", torch.get_num_threads(), flush=True)
trainer.close()
"""


def test_trainer_num_threads_holds_on_ranks_without_omp_num_threads(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2"
    )
    wanted = 3  # not accelerate's choice (cores ÷ 2 ranks) on any host of fewer than 12 cores
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, str(tmp_path), str(wanted)],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    assert [out.strip().splitlines()[-1] for out, _ in outs] == [f"threads {wanted}"] * 2
    assert not any("OMP_NUM_THREADS/MKL_NUM_THREADS unset" in err for _, err in outs)
