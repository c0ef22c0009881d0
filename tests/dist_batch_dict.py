"""Batch dicts with keys and an extra mask, through fit / validate / predict on N ranks:
every hook that declares `mask` (and `keys`) receives them. Writes what each hook saw to
<out>/seen-<rank>.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).parent))
from helpers import TinySequences  # noqa: E402

from stpdist import EnhancedModule, Trainer  # noqa: E402


class Masked(Dataset):
    """TinySequences as dicts, with a per-sample mask that zeroes the loss outside it."""

    def __init__(self, num: int) -> None:
        self.base = TinySequences(num)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        inputs, targets = self.base[i]
        mask = torch.zeros_like(targets)
        mask[..., : 2 + i % 2] = 1
        return {"inputs": inputs, "targets": targets, "mask": mask}


class MaskedModule(EnhancedModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(48, 32))
        self.seen: dict[str, list] = {"train": [], "val": [], "predict": []}

    def forward(self, inputs):
        return self.net(inputs).view(-1, 2, 1, 4, 4)

    def configure_optimizer(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def training_step(self, inputs, targets, mask):
        assert mask.device == inputs.device and mask.shape == targets.shape
        self.seen["train"].append(int(mask.sum()))
        return ((self(inputs) - targets) ** 2 * mask).sum() / mask.sum()

    def validation_step(self, inputs, targets, mask, keys):
        self.seen["val"] += list(keys)
        pred = self(inputs)  # no "predictions" returned: predict also calls predict_step
        return {"loss": ((pred - targets) ** 2 * mask).sum() / mask.sum()}

    def predict_step(self, inputs, targets, **extras):
        self.seen["predict"] += list(extras["keys"])
        assert "mask" in extras
        return self(inputs)


def run(out: Path, close: bool = True) -> None:
    torch.manual_seed(0)
    module = MaskedModule()
    trainer = Trainer(output_dir=out, max_epochs=2, progress_bar=False, log_every_n_steps=1)
    data = Masked(16)
    trainer.fit(
        module, DataLoader(data, batch_size=2, shuffle=True), DataLoader(data, batch_size=3)
    )
    trainer.predict(module, DataLoader(data, batch_size=3), out=out / "pred")
    rank = trainer.accelerator.process_index
    (out / f"seen-{rank}.json").write_text(json.dumps(module.seen))
    if close:
        trainer.close()


if __name__ == "__main__":
    run(Path(sys.argv[1]))
