"""CPU thread settings for every rank.

PyTorch starts one intra-op thread per core in every process, and its OpenMP threads spin
while they wait. Two ranks on a 2-core host then fight over the cores: measured there, a
ConvLSTM step took 6.0–6.9 s with the default (active) wait policy against 1.16–1.19 s
with `OMP_WAIT_POLICY=PASSIVE`, and one rank with 1 thread trained 4× faster than with 2.
So stpdist divides the cores among the ranks of a node and makes waiting threads sleep.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping


def prefer_passive_waiting(env: MutableMapping[str, str] = os.environ) -> None:
    """`OMP_WAIT_POLICY=PASSIVE` unless the user chose a policy. OpenMP reads it once,
    when torch loads it: so this runs at `import stpdist`, before torch is imported
    (too late when the user imported torch first; `describe` then shows the policy)."""
    if "torch" not in sys.modules or env is not os.environ:
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cpus(env: Mapping[str, str] = os.environ) -> int:
    """CPUs this process may run on: its affinity, or SLURM's per-task allocation where
    that is fewer (a SLURM variable left in a shell on a login node, `salloc`'s, named 8
    CPUs on a machine of 2: 8 threads oversubscribed it; an admin review)."""
    if hasattr(os, "sched_getaffinity"):
        cpus = len(os.sched_getaffinity(0))
    else:
        cpus = os.cpu_count() or 1
    if env.get("SLURM_CPUS_PER_TASK", "").isdigit() and int(env["SLURM_CPUS_PER_TASK"]) > 0:
        return min(cpus, int(env["SLURM_CPUS_PER_TASK"]))
    return cpus


def default_threads(env: Mapping[str, str] = os.environ, cpus: int | None = None) -> int | None:
    """Intra-op threads for one rank when `trainer.num_threads` is unset: None (keep
    torch's setting) when `OMP_NUM_THREADS` is set — the user or the launcher chose (torchrun
    sets 1 for several processes) — else the available CPUs divided among the node's ranks
    (`LOCAL_WORLD_SIZE`, set by torchrun and accelerate launch), at least 1."""
    if env.get("OMP_NUM_THREADS"):
        return None
    cpus = available_cpus(env) if cpus is None else cpus
    local_ranks = int(env["LOCAL_WORLD_SIZE"]) if env.get("LOCAL_WORLD_SIZE", "").isdigit() else 1
    return max(1, cpus // max(local_ranks, 1))


def configure(num_threads: int | None) -> None:
    """Set this process' intra-op threads: `num_threads`, or the default above."""
    import torch

    wanted = num_threads or default_threads()
    if wanted and wanted != torch.get_num_threads():
        torch.set_num_threads(wanted)


def describe() -> str:
    """E.g. '2 intra-op thread(s), OMP_WAIT_POLICY=PASSIVE'."""
    import torch

    policy = os.environ.get("OMP_WAIT_POLICY", "unset: active")
    return f"{torch.get_num_threads()} intra-op thread(s), OMP_WAIT_POLICY={policy}"
