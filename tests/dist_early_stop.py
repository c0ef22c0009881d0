"""Entry point for the 2-rank early-stopping and EMA test: `torchrun --nproc_per_node 2
tests/dist_early_stop.py OUT`. Every rank trains `Frozen` with an EMA and early stopping and
writes what it saw to OUT/rank-<r>.json (its stop step, counter, EMA and weight digests).
Also holds the module and data tests/test_early_stopping.py trains on one process."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import TinyModule, TinySequences  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from stpdist import Trainer  # noqa: E402
from stpdist.config import EarlyStoppingConfig, EmaConfig  # noqa: E402


class Frozen(TinyModule):
    """TinyModule whose learning rate drops to 0 after `frozen_after` optimizer steps: its
    weights, and so its validation loss, stop changing from then on, exactly."""

    def __init__(self, frozen_after: int, **kwargs) -> None:
        super().__init__(lr=0.005, **kwargs)
        self.frozen_after = frozen_after

    def configure_lr_scheduler(self, optimizer):
        # optimizer step k runs with factor(k − 1): steps 1..frozen_after learn
        factor = lambda s: 1.0 if s < self.frozen_after else 0.0  # noqa: E731
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor)}


def val_loader() -> DataLoader:
    return DataLoader(TinySequences(8, seed=5), batch_size=4)


def digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(out: Path) -> None:
    torch.manual_seed(0)
    module = Frozen(frozen_after=3)
    trainer = Trainer(
        output_dir=out,
        max_epochs=None,
        max_steps=20,
        val_every_n_steps=1,
        progress_bar=False,
        ema=EmaConfig(decay=0.6),
        early_stopping=EarlyStoppingConfig(patience=2, min_delta=1e-3),
    )
    train = DataLoader(TinySequences(40), batch_size=2, shuffle=True)
    state = trainer.fit(module, train, val_loader())
    rank = trainer.accelerator.process_index
    (out / f"rank-{rank}.json").write_text(
        json.dumps(
            {
                "step": state.global_step,
                "bad": trainer.early_stopping.bad_validations,
                "best_step": trainer.early_stopping.best_step,
                "val_loss": state.metrics["val/loss"],
                "ema": digest(trainer.ema.shadow),
                "ema_names": trainer.ema.names,
                "weights": digest(list(module.parameters())),
            }
        )
    )
    trainer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
