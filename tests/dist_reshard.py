"""Entry point for the resharding tests: `torchrun --nproc_per_node N tests/dist_reshard.py
JOBS.json`, each job a dict {out, shards, accum, steps (or null: one epoch), resume,
keep, strategy, digits, workers, layout}: trains TinyModule on real tar shards (ShardTrainStream), or with
`digits` (sequences per epoch) on moving digits generated on the fly
(MovingDigitsTrainSource, 8×8, batch 2: a sequence is named by a digest of its frames),
records the sample keys of every micro-batch per rank and, on the main rank, the final
parameters."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from helpers import TinyModule  # noqa: E402

from stpdist import Trainer  # noqa: E402
from stpdist.config import CheckpointConfig  # noqa: E402
from stpdist.data.onthefly import MovingDigitsTrainSource  # noqa: E402
from stpdist.data.stream import ShardTrainStream  # noqa: E402
from stpdist.lockstep import Lockstep  # noqa: E402

RECORDING = [True]
_rebucket = Lockstep.rebucket_like_a_fresh_run


def _unrecorded_rebucket(self, *args, **kwargs):
    """A resume on > 2 ranks runs one throwaway step (then restores): not a sample seen."""
    RECORDING[0] = False
    try:
        return _rebucket(self, *args, **kwargs)
    finally:
        RECORDING[0] = True


Lockstep.rebucket_like_a_fresh_run = _unrecorded_rebucket


class KeyRecorder(TinyModule):
    def __init__(self) -> None:
        super().__init__(scheduler=False)
        self.seen: list[list] = []

    def training_step(self, inputs, targets, keys):
        if RECORDING[0]:
            self.seen.append([self.global_step, list(keys)])
        return super().training_step(inputs, targets)


def digest(frames: torch.Tensor) -> str:
    """The name of a generated sequence (T×C×H×W floats): it has no key."""
    return hashlib.sha1(frames.contiguous().numpy().tobytes()).hexdigest()[:16]


def digits_source(samples: int) -> MovingDigitsTrainSource:
    return MovingDigitsTrainSource(
        samples,
        batch_size=2,
        num_input_frames=3,
        num_output_frames=2,
        image_size=8,
        digit_size=6,
        seed=1,
    )


class DigitRecorder(KeyRecorder):
    """KeyRecorder on 8×8 frames named by their digests."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 2 * 64))

    def forward(self, inputs):
        return self.net(inputs).view(-1, 2, 1, 8, 8)

    def training_step(self, inputs, targets):
        keys = [digest(torch.cat([x, y])) for x, y in zip(inputs, targets, strict=True)]
        return super().training_step(inputs, targets, keys)


def run(job: dict) -> None:
    import stpdist.trainer

    # `layout: 1`: as an stpdist of before 2026-12-06 began its runs (a resume keeps the
    # layout its checkpoint records)
    stpdist.trainer.LAYOUT = job.get("layout", 2)
    torch.manual_seed(0)
    module = DigitRecorder() if job.get("digits") else KeyRecorder()
    trainer = Trainer(
        max_epochs=1,
        max_steps=job.get("steps"),
        gradient_accumulation_steps=job.get("accum", 1),
        keep_global_batch=job.get("keep", False),
        strategy=job.get("strategy", "ddp"),
        output_dir=job["out"],
        progress_bar=False,
        log_every_n_steps=1,
        val_every_n_epochs=0,
        num_workers=job.get("workers"),
        checkpoint=CheckpointConfig(every_n_steps=None, keep_last=5, keep_best=0),
    )
    if job.get("digits"):
        stream = digits_source(job["digits"])
    else:
        stream = ShardTrainStream(
            job["shards"], batch_size=1, num_input_frames=3, num_output_frames=2, shuffle_buffer=4
        )
    state = trainer.fit(module, stream, resume=job.get("resume"))
    rank = trainer.accelerator.process_index
    out = Path(job["out"])
    tag = job.get("tag", "run")
    (out / f"keys-{tag}-r{rank}.json").write_text(json.dumps(module.seen))
    # whole on every rank (FSDP: gathered from the shards, a collective), saved by the main
    params = {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in module.state_dict().items()
    }
    if trainer.is_main:
        torch.save(params, out / f"params-{tag}.pt")
        (out / f"state-{tag}.json").write_text(
            json.dumps({"global_step": state.global_step, "epoch": state.epoch})
        )
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    for job in json.loads(Path(sys.argv[1]).read_text()):
        run(job)
