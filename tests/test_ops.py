"""Aten ops per eager training step (`stpdist bench model --ops`, issue 22) and TrajGRU's
sampling grid built once instead of per step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from conftest import run_cli
from helpers import model_file_at
from torch import nn

from stpdist.bench import NO_KERNEL_OPS, count_step_ops
from stpdist.models.base import FrameSpec
from stpdist.models.trajgru import TrajGRU, TrajGRUArgs


class _TinyLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.linear(x), y)


def test_count_step_ops_on_a_hand_counted_step():
    """Linear(3→2) + MSE + plain SGD (foreach off: one op per parameter), by hand:
    forward: addmm (x·Wᵀ + b; Wᵀ is a `t` view), mse_loss;
    backward: ones_like (the loss's seed gradient), mse_loss_backward, mm (the weight's
    gradient; its operands and result are `t` views), sum (the bias's gradient, then a
    `view` to its shape); the two gradients are stored as `detach`ed aliases;
    SGD: one add_ per parameter (weight, bias); zero_grad(set_to_none) dispatches nothing.
    So 8 kernel-launching ops; the rest are views and the optimizer's profiler markers."""
    torch.manual_seed(0)
    module = _TinyLinear()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, foreach=False)
    batch = (torch.rand(4, 3), torch.rand(4, 2))
    total, launching, per_op = count_step_ops(module, batch, optimizer)
    kernels = {name: n for name, n in per_op.items() if name not in NO_KERNEL_OPS}
    assert kernels == {
        "addmm": 1,
        "mse_loss": 1,
        "ones_like": 1,
        "mse_loss_backward": 1,
        "mm": 1,
        "sum": 1,
        "add_": 2,
    }
    assert launching == 8
    assert per_op["detach"] == 2 and per_op["view"] == 1 and per_op["t"] >= 1
    assert total == sum(per_op.values()) > launching


def _ops_line(tmp_path, *flags: str) -> tuple[int, int, int]:
    """(kernel-launching ops, casts among them, all ops) of the first line of `stpdist
    bench model convlstm --ops` (fused kernels off)."""
    result = run_cli(
        "bench", "model", "convlstm", "--shape", "1x4x1x16x16", "--output-frames", "2",
        "--ops", *flags, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    line = result.stdout.splitlines()[0]
    assert "kernel-launching" in line and "in all" in line, result.stdout
    words = line.split(": aten ops")[1].split()
    launching = int(words[words.index("kernel-launching") - 1])
    casts = int(words[words.index("kernel-launching") + 1].lstrip("("))
    total = int(words[words.index("in") - 1])
    return launching, casts, total


def test_bench_model_ops_prints_both_counts_and_the_casts_of_bf16(tmp_path):
    """(One run, in bf16: the float32 run prints the same line, its casts a handful.)"""
    launching, casts, total = _ops_line(tmp_path, "--precision", "bf16")
    assert 0 < casts < launching < total


BEFORE = "f9eb221"  # the commit before the grid was built once: its trajgru.py rebuilt it per step


def _head_trajgru():
    """stpdist/models/trajgru.py as it was at commit BEFORE."""
    return model_file_at(BEFORE, "trajgru")


def _forward_backward(model: nn.Module, frames: torch.Tensor) -> tuple[torch.Tensor, dict]:
    out = model(frames, 3)
    out.square().mean().backward()
    return out.detach(), {name: p.grad for name, p in model.named_parameters()}


def test_trajgru_grid_built_once_same_outputs_and_gradients():
    """The grid constants are no longer rebuilt per link and step (no `linspace` in a
    steady step), and outputs and every gradient equal the committed code's bitwise."""
    old = _head_trajgru()
    spec = FrameSpec(channels=1, height=16, width=16, num_input_frames=3, num_output_frames=3)
    args = dict(conv_channels=[4, 8], hidden_channels=[8, 8], links=[3, 2])
    torch.manual_seed(0)
    reference = old.TrajGRU(spec, old.TrajGRUArgs(**args))
    model = TrajGRU(spec, TrajGRUArgs(**args))
    model.load_state_dict(reference.state_dict())
    frames = torch.rand(2, 3, 1, 16, 16)
    out_old, grads_old = _forward_backward(reference, frames)
    out_new, grads_new = _forward_backward(model, frames)
    assert torch.equal(out_old, out_new)
    assert grads_old.keys() == grads_new.keys()
    for name, grad in grads_old.items():
        assert torch.equal(grad, grads_new[name]), name

    class Step(nn.Module):
        def __init__(self, backbone: nn.Module) -> None:
            super().__init__()
            self.backbone = backbone

        def training_step(self, x: torch.Tensor) -> torch.Tensor:
            return self.backbone(x, 3).square().mean()

    counts = {}
    for key, backbone in (("old", reference), ("new", model)):
        step = Step(backbone)
        optimizer = torch.optim.SGD(step.parameters(), lr=0.0)
        counts[key] = count_step_ops(step, (frames,), optimizer)
    assert counts["old"][2]["linspace"] > 0
    assert counts["new"][2]["linspace"] == 0
    assert counts["new"][1] < counts["old"][1]
