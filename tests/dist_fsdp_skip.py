"""FSDP with accumulation 2 on two ranks, a module that skips the last micro-batch of its
second window on every rank: the run stops there with one error (the window's gradients
were never reduce-scattered: no weight changed from there, silently). Prints each rank's
outcome. Run by test_fsdp.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from helpers import TinyModule, TinySequences  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from stpdist import Trainer  # noqa: E402
from stpdist.errors import InputError  # noqa: E402


class SkipsOne(TinyModule):
    skips_batches = True
    calls = 0

    def training_step(self, inputs, targets):
        SkipsOne.calls += 1
        if SkipsOne.calls == 4:  # the second window's last micro-batch, on every rank
            return None
        return super().training_step(inputs, targets)


trainer = Trainer(
    max_epochs=1, output_dir=sys.argv[1], strategy="fsdp", gradient_accumulation_steps=2,
    progress_bar=False,
)  # fmt: skip
try:
    trainer.fit(SkipsOne(), DataLoader(TinySequences(16), batch_size=2))
    print(f"rank {trainer.accelerator.process_index}: trained", flush=True)
except InputError as exc:
    print(f"rank {trainer.accelerator.process_index}: stopped: {exc}", flush=True)
trainer.close()
