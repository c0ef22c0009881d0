"""FSDP with accumulation and a module that may skip batches, on every rank: refused at the
start of `fit` (a window whose last micro-batch is skipped left its gradients unreduced, and
no weight changed from there). Prints each rank's refusal. Run by test_fsdp.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from helpers import TinyModule, TinySequences  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from stpdist import Trainer  # noqa: E402
from stpdist.config import ConfigError  # noqa: E402


class MaySkip(TinyModule):
    skips_batches = True


trainer = Trainer(
    max_epochs=1, output_dir=sys.argv[1], strategy="fsdp", gradient_accumulation_steps=2,
    progress_bar=False,
)  # fmt: skip
try:
    trainer.fit(MaySkip(), DataLoader(TinySequences(16), batch_size=2))
    print(f"rank {trainer.accelerator.process_index}: trained", flush=True)
except ConfigError as exc:
    print(f"rank {trainer.accelerator.process_index}: refused: {exc}", flush=True)
trainer.close()
