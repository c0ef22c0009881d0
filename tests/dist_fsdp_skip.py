"""FSDP with accumulation 2 on two ranks, a module that skips the last micro-batch of its
second window on every rank: the window's gradients (accumulated with sync off, reduced
only in that micro-batch's backward) are reduce-scattered by hand, and the run ends on
the weights DDP reaches (which averages the earlier micro-batches by hand). Prints each
rank's outcome and the largest difference. Run by test_fsdp.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
from helpers import TinyModule, TinySequences  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from stpdist import Trainer  # noqa: E402


class SkipsOne(TinyModule):
    skips_batches = True
    calls = 0

    def training_step(self, inputs, targets):
        SkipsOne.calls += 1
        if SkipsOne.calls == 4:  # the second window's last micro-batch, on every rank
            return None
        return super().training_step(inputs, targets)


def trained(strategy: str, wrap: list[str] | None) -> tuple[Trainer, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    SkipsOne.calls = 0
    module = SkipsOne(lr=0.01)
    trainer = Trainer(
        max_epochs=1, output_dir=Path(sys.argv[1]) / f"{strategy}-{wrap}", strategy=strategy,
        gradient_accumulation_steps=2, fsdp_wrap=wrap, progress_bar=False,
    )  # fmt: skip
    trainer.fit(module, DataLoader(TinySequences(16), batch_size=2))
    full = {n: getattr(p, "full_tensor", p.detach)().detach() for n, p in module.named_parameters()}
    return trainer, full


trainer, ddp = trained("ddp", None)
for wrap in (None, ["Linear"]):
    trainer, fsdp = trained("fsdp", wrap)
    gap = max((fsdp[n] - ddp[n]).abs().max().item() for n in ddp)
    print(f"rank {trainer.accelerator.process_index}: trained, wrap {wrap}, max|fsdp - ddp| "
          f"{gap:.3g}", flush=True)  # fmt: skip
trainer.close()
