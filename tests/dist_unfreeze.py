"""A 2-rank script whose module changes which parameters train during fit: `unfreeze`
makes its frozen last layer trainable at step 2 (the fine-tuning pattern), `freeze` freezes
its first layer then. Either must stop with one line naming the parameters, not train the
ranks apart (unfreeze) or stall (freeze). `sometimes` leaves its last layer out of the
loss from step 2 on: DDP's own error, in one line naming the layer's parameters."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from helpers import TinyModule, TinySequences  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from stpdist import Trainer  # noqa: E402


class Changing(TinyModule):
    def __init__(self, how: str) -> None:
        super().__init__(scheduler=False)
        self.how = how
        if how == "unfreeze":
            self.net[4].requires_grad_(False)

    def training_step(self, inputs, targets):
        if self.how == "sometimes" and self.global_step >= 1:  # the head, skipped
            hidden = self.net[2](self.net[1](self.net[0](inputs)))
            return (hidden[:, :32].view(-1, 2, 1, 4, 4) - targets).square().mean()
        if self.global_step >= 1:  # the second step (global_step counts steps done)
            layer = self.net[4] if self.how == "unfreeze" else self.net[1]
            layer.requires_grad_(self.how == "unfreeze")
        return super().training_step(inputs, targets)


how, out = sys.argv[1], Path(sys.argv[2])
Trainer(max_steps=4, output_dir=out, progress_bar=False).fit(
    Changing(how), DataLoader(TinySequences(16), batch_size=2)
)
print("trained", flush=True)
