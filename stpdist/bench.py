"""Benchmarks printed by `stpdist bench …`: figures measured side by side in one run."""

from __future__ import annotations

import statistics
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .module import EnhancedModule


class _BenchNet(EnhancedModule):
    """A small conv net over B×T×C×H×W sequences (T_in=4 → T_out=4, 1×32×32)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(4, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 4, 3, padding=1),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = inputs.shape
        return self.net(inputs.reshape(b, t * c, h, w)).reshape(b, t, c, h, w)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)

    def training_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(self(inputs), targets)


def _dataset(num: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(num, 8, 1, 32, 32, generator=g)
    return TensorDataset(frames[:, :4], frames[:, 4:])


def _raw_loop(steps: int, batch: int) -> float:
    """The minimal hand-written accelerate loop: steps/s."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(0)
    module = _BenchNet()
    model, optimizer = accelerator.prepare(module, module.configure_optimizer())
    loader = DataLoader(_dataset(steps * batch), batch_size=batch, shuffle=True)
    start = time.perf_counter()
    for inputs, targets in loader:
        inputs, targets = inputs.to(accelerator.device), targets.to(accelerator.device)
        loss = nn.functional.mse_loss(model(inputs), targets)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the raw loop also reads its loss, as any loop that logs does
    return steps / (time.perf_counter() - start)


def _trainer_loop(steps: int, batch: int) -> float:
    """The Trainer on the same model, data and batch: steps/s (checkpoint excluded)."""
    from .config import CheckpointConfig
    from .trainer import Trainer

    torch.manual_seed(0)
    module = _BenchNet()
    loader = DataLoader(_dataset(steps * batch), batch_size=batch, shuffle=True)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            max_epochs=1,
            output_dir=out,
            progress_bar=True,
            log_every_n_steps=50,
            checkpoint=CheckpointConfig(every_epoch=False),
        )
        trainer.checkpoints.save = lambda *a, **k: None  # time the loop, not the disk
        trainer._print = lambda message: None
        start = time.perf_counter()
        trainer.fit(module, loader)
        return steps / (time.perf_counter() - start)


def bench_trainer(repeats: int = 5, steps: int = 200, batch: int = 16) -> float:
    """Interleaved repeats of raw loop and Trainer; prints medians and their ratio."""
    raw, ours = [], []
    _raw_loop(20, batch)  # warm-up
    for _ in range(repeats):
        raw.append(_raw_loop(steps, batch))
        ours.append(_trainer_loop(steps, batch))
    ratio = statistics.median(ours) / statistics.median(raw)
    print(
        f"raw accelerate loop : {statistics.median(raw):8.1f} steps/s  (runs: "
        f"{', '.join(f'{x:.1f}' for x in raw)})"
    )
    print(
        f"stpdist Trainer     : {statistics.median(ours):8.1f} steps/s  (runs: "
        f"{', '.join(f'{x:.1f}' for x in ours)})"
    )
    print(
        f"Trainer / raw       : {ratio:.3f}× (batch {batch}, {steps} steps, "
        f"{torch.get_num_threads()} threads)"
    )
    return ratio
