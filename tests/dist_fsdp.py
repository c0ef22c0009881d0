"""Entry point for the FSDP tests: `torchrun --nproc_per_node N tests/dist_fsdp.py JOBS.json`,
each job {out, strategy, accum, steps}: trains TinyModule on TinySequences and writes, per
rank, the bytes it stores for parameters + gradients + optimizer state (local shards, at
the last optimizer step); the final weights are in the run's last checkpoint.

Optional keys: resume, keep (keep_global_batch), wrap (fsdp_wrap), every (checkpoint every
N steps, keeping the last 2), kill_at (rank 0 SIGKILLs itself in the training step of
that optimizer step), kill_in_save (rank 0 SIGKILLs itself while that step's checkpoint
is being written: every rank's shard is there, the manifest not yet), val_every
(validate every N steps on 6 sequences), stop_in_validation (every rank SIGTERMs itself in
its first validation_step: the run stops there with a checkpoint)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import TinyModule, TinySequences  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from stpdist import Trainer, checkpoint  # noqa: E402
from stpdist.config import CheckpointConfig  # noqa: E402
from stpdist.fsdp import local_bytes  # noqa: E402
from stpdist.trainer import Preempted  # noqa: E402


class Measured(TinyModule):
    def configure_optimizer(self):
        optimizer = super().configure_optimizer()
        self.stored = 0

        def measure(opt, args, kwargs):  # gradients are there, the step not yet taken
            self.stored = local_bytes(self, opt)

        optimizer.register_step_pre_hook(measure)
        self.optimizer = optimizer
        return optimizer

    def training_step(self, inputs, targets):
        if self.global_step == KILL["at"] and int(os.environ.get("RANK", 0)) == 0:
            os.kill(os.getpid(), signal.SIGKILL)  # a crash in the middle of a step
        return super().training_step(inputs, targets)

    def validation_step(self, inputs, targets):
        if KILL["in_validation"]:  # every rank: a launcher's SIGTERM during a validation
            KILL["in_validation"] = False
            os.kill(os.getpid(), signal.SIGTERM)
        return super().validation_step(inputs, targets)


KILL = {"at": None, "in_save": None, "in_validation": False}
_write_manifest = checkpoint._write_manifest


def _killing_write_manifest(folder: Path) -> None:
    if folder.name == f".tmp-step-{KILL['in_save'] or 0:08d}":  # shards written, no manifest
        os.kill(os.getpid(), signal.SIGKILL)
    _write_manifest(folder)


checkpoint._write_manifest = _killing_write_manifest


def run(job: dict) -> None:
    torch.manual_seed(0)
    KILL.update(at=job.get("kill_at"), in_save=job.get("kill_in_save"),
                in_validation=job.get("stop_in_validation", False))  # fmt: skip
    module = Measured(lr=0.01)
    every = job.get("every")
    policy = CheckpointConfig(every_n_steps=every, keep_last=2, keep_best=0) if every else None
    trainer = Trainer(
        max_epochs=None,
        max_steps=job["steps"],
        gradient_accumulation_steps=job["accum"],
        strategy=job["strategy"],
        keep_global_batch=job.get("keep", False),
        fsdp_wrap=job.get("wrap"),
        output_dir=job["out"],
        **({"checkpoint": policy} if policy else {}),
        progress_bar=False,
        log_every_n_steps=1,
        val_every_n_steps=job.get("val_every"),
    )
    train = DataLoader(TinySequences(48), batch_size=2, shuffle=True)
    val = DataLoader(TinySequences(6), batch_size=1) if job.get("val_every") else None
    try:
        trainer.fit(module, train, val, resume=job.get("resume"))
    except Preempted:
        return  # stopped (`stop_in_validation`): the job after it resumes
    rank = trainer.accelerator.process_index
    (Path(job["out"]) / f"bytes-r{rank}.json").write_text(json.dumps(module.stored))
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    for job in json.loads(Path(sys.argv[1]).read_text()):
        run(job)
