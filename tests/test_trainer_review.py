"""The Trainer, from a code-reading review of its loop (each case reproduced first against
a fresh Trainer or a hand computation):

- a `fit` that failed inside a gradient-accumulation window (a hook's error, a NaN loss,
  a second Ctrl-C) left accelerate's micro-batch count and the window's gradients: the next
  `fit` on the same Trainer stepped after one micro-batch, with the old gradients added;
- a log step whose optimizer step had no gradient (its batch skipped) logged the grad norm
  of an earlier step, with `grad_clip_norm` set;
- `validate(ckpt=…)` gave the hooks step 0, where `fit`'s validation of the same weights
  gave the checkpoint's step;
- `validate` and `fit`'s validations set every submodule training again (a frozen batch
  norm the user keeps in eval mode), and `predict` left the module in eval mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from stpdist import EnhancedModule, Trainer

T, C, H, W = 2, 1, 3, 3


def _data(n: int, seed: int = 1) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, T, C, H, W, generator=generator)
    return TensorDataset(x, torch.randn(n, T, C, H, W, generator=generator))


class Net(EnhancedModule):
    def __init__(self, fail_at: int | None = None, skip_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(T * C * H * W, T * C * H * W)
        self.norm = torch.nn.BatchNorm1d(T * C * H * W)
        self.fail_at, self.skip_at, self.calls = fail_at, skip_at, 0

    def forward(self, x):
        return self.norm(self.lin(x.flatten(1))).view(x.shape[0], T, C, H, W)

    def configure_optimizer(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def training_step(self, x, y):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("a user's bug")
        if self.calls == self.skip_at:
            return None
        return torch.nn.functional.mse_loss(self(x), y)

    def validation_step(self, x, y):
        loss = torch.nn.functional.mse_loss(self(x), y)
        return {"loss": loss, "seen_step": float(self.global_step)}

    def predict_step(self, x, y):
        return self(x)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _trainer(out: Path, **settings) -> Trainer:
    return Trainer(output_dir=out, progress_bar=False, **{"log_every_n_steps": 1, **settings})


def test_a_fit_after_one_that_failed_inside_an_accumulation_window_trains_as_a_fresh_one(
    tmp_path,
):
    """The first fit fails on the first micro-batch of its second window."""
    loader = DataLoader(_data(16), batch_size=4, shuffle=False)
    settings = {"max_epochs": 1, "gradient_accumulation_steps": 2, "val_every_n_epochs": 0}
    trainer = _trainer(tmp_path / "again", **settings)
    with pytest.raises(RuntimeError, match="a user's bug"):
        trainer.fit(Net(fail_at=3), loader)
    (tmp_path / "again" / "metrics.jsonl").unlink(missing_ok=True)
    again = Net()
    trainer.fit(again, loader)
    trainer.close()
    fresh = Net()
    reference = _trainer(tmp_path / "fresh", **settings)
    reference.fit(fresh, loader)
    reference.close()
    for mine, theirs in zip(again.parameters(), fresh.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    losses = [
        [r["train/loss"] for r in _rows(tmp_path / d) if "train/loss" in r]
        for d in ("again", "fresh")
    ]
    assert losses[0] == losses[1]


def test_a_resume_after_a_fit_that_failed_after_a_backward_adds_no_stale_gradient(tmp_path):
    """The failed fit's module resumed on the same Trainer (its window's gradient still in
    `.grad`) trains as the checkpoint resumed by a fresh Trainer into a fresh module."""
    loader = DataLoader(_data(16), batch_size=4, shuffle=False)
    settings = {
        "max_epochs": 1, "gradient_accumulation_steps": 2, "val_every_n_epochs": 0,
        "checkpoint": {"every_n_steps": 1},
    }  # fmt: skip
    trainer = _trainer(tmp_path / "run", **settings)
    module = Net(fail_at=4)  # step 1 saved; micro-batch 3's backward done; 4 fails
    with pytest.raises(RuntimeError, match="a user's bug"):
        trainer.fit(module, loader)
    module.fail_at = None
    trainer.fit(module, loader, resume=tmp_path / "run" / "checkpoints" / "step-00000001")
    trainer.close()
    fresh = Net()
    reference = _trainer(tmp_path / "run", **settings)
    reference.fit(fresh, loader, resume=tmp_path / "run" / "checkpoints" / "step-00000001")
    reference.close()
    for mine, theirs in zip(module.parameters(), fresh.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


def test_a_log_step_without_gradients_logs_no_earlier_steps_grad_norm(tmp_path):
    trainer = _trainer(
        tmp_path, max_epochs=1, log_every_n_steps=2, grad_clip_norm=100.0, val_every_n_epochs=0
    )
    trainer.fit(Net(skip_at=2), DataLoader(_data(8), batch_size=4, shuffle=False))
    trainer.close()
    assert not [r for r in _rows(tmp_path) if "train/grad_norm" in r]  # step 2 had none


def test_validate_of_a_checkpoint_gives_the_hooks_its_step_and_keeps_the_modes(tmp_path):
    val = DataLoader(_data(8, seed=3), batch_size=4)
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(Net(), DataLoader(_data(8), batch_size=4, shuffle=False), val)
    last = sorted((tmp_path / "checkpoints").glob("step-*"))[-1]
    module = Net()
    module.norm.eval()  # a part the user keeps in eval mode (a frozen batch norm)
    results = trainer.validate(module, val, ckpt=last)
    assert (
        results["val/seen_step"]
        == 4.0
        == [r for r in _rows(tmp_path) if "val/seen_step" in r][-1]["val/seen_step"]
    )
    assert module.training and not module.norm.training
    trainer.predict(
        module, DataLoader(_keyed(_data(4)), batch_size=2), out=tmp_path / "p", metrics=False
    )
    trainer.close()
    assert module.training and not module.norm.training


def _keyed(data: TensorDataset) -> list[dict]:
    return [{"inputs": x, "targets": y, "keys": f"k{i}"} for i, (x, y) in enumerate(data)]


def test_max_steps_that_max_epochs_cuts_short_is_said(tmp_path):
    """`Trainer(max_steps=10)` kept max_epochs' default of 1 and ended after 2 steps; only
    the start line's "2 in all" told (Lightning's max_steps alone decides)."""
    import logging

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("stpdist").addHandler(handler)
    try:
        trainer = _trainer(tmp_path, max_steps=10, val_every_n_epochs=0)
        state = trainer.fit(Net(), DataLoader(_data(8), batch_size=4))
        trainer.close()
    finally:
        logging.getLogger("stpdist").removeHandler(handler)
    assert state.global_step == 2
    assert (
        "trainer.max_steps 10 is not reached: trainer.max_epochs 1 ends the run at step 2 (the "
        "limit met first); set trainer.max_epochs to null (None) to train by steps alone"
    ) in records


def test_validations_restore_modes_through_train(tmp_path):
    """A block whose `train` does more than set the flag (a re-parameterised block that
    fuses its branches in eval mode) is put back through its `train`, not its flag."""
    from stpdist.trainer import _evaluating

    class Fusing(torch.nn.Module):
        fused = False

        def train(self, mode: bool = True):
            super().train(mode)
            self.fused = not mode
            return self

    module = torch.nn.Sequential(Fusing(), torch.nn.Sequential(torch.nn.BatchNorm1d(2)))
    module[1].eval()  # a part kept in eval mode
    with _evaluating(module):
        assert module[0].fused and not module.training
    assert module.training and module[0].training and not module[0].fused
    assert not module[1].training and not module[1][0].training
