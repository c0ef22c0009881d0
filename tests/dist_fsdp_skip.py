"""FSDP on two ranks with a module that skips micro-batches on every rank: the last one of
a window under accumulation 2 (the window's gradients, accumulated with sync off and
reduced only in that micro-batch's backward, are reduce-scattered by hand), a whole
window (its forwards left the root's parameters gathered: a checkpoint failed), and a
step without accumulation. Each run ends on the weights DDP reaches (which averages the
earlier micro-batches by hand). Prints each rank's outcome per case. Run by test_fsdp.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
from helpers import TinyModule, TinySequences  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from stpdist import Trainer  # noqa: E402


class Skips(TinyModule):
    skips_batches = True
    calls = 0
    skipped: tuple[int, ...] = ()

    def training_step(self, inputs, targets):
        Skips.calls += 1
        if Skips.calls in Skips.skipped:  # on every rank
            return None
        return super().training_step(inputs, targets)


def trained(strategy: str, case: str, accumulation: int, wrap: list[str] | None) -> Any:
    torch.manual_seed(0)
    Skips.calls = 0
    module = Skips(lr=0.01)
    trainer = Trainer(
        max_epochs=1, output_dir=Path(sys.argv[1]) / f"{case}-{strategy}-{wrap}",
        strategy=strategy, gradient_accumulation_steps=accumulation, fsdp_wrap=wrap,
        progress_bar=False,
    )  # fmt: skip
    trainer.fit(module, DataLoader(TinySequences(16), batch_size=2))
    full = {n: getattr(p, "full_tensor", p.detach)().detach() for n, p in module.named_parameters()}
    return trainer, full


CASES = {  # case: (micro-batches skipped, accumulation, FSDP units)
    "last": ((4,), 2, (None, ["Linear"])),  # the second window's last micro-batch
    "window": ((3, 4), 2, (None,)),  # the whole second window
    "step": ((2,), 1, (None,)),  # the second step, without accumulation
}
for case, (skipped, accumulation, wraps) in CASES.items():
    Skips.skipped = skipped
    trainer, ddp = trained("ddp", case, accumulation, None)
    for wrap in wraps:
        trainer, fsdp = trained("fsdp", case, accumulation, wrap)
        gap = max((fsdp[n] - ddp[n]).abs().max().item() for n in ddp)
        print(f"rank {trainer.accelerator.process_index}: {case} trained, wrap {wrap}, "
              f"max|fsdp - ddp| {gap:.3g}", flush=True)  # fmt: skip
trainer.close()
