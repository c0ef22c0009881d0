"""Fused gate arithmetic (issue 22): ConvLSTM and the PredRNN family.

With `model.fused_kernels` off, the cells run exactly the ops they ran before the regions
were marked (bitwise equal to the commit before, `BEFORE`); on, each region runs as one
compiled custom op forward and one backward: the same outputs and gradients to float
rounding (≤1e-6 relative) with at most half the kernel-launching ops per training step."""

from __future__ import annotations

import importlib

import pytest
import torch
from helpers import model_file_at
from torch import nn

from stpdist.bench import NO_KERNEL_OPS, count_step_ops
from stpdist.models.base import FrameSpec
from stpdist.models.fused import fusion

BEFORE = "0e38f79"  # the last commit before the gate arithmetic moved into fused regions

SPEC = FrameSpec(channels=2, height=8, width=8, num_input_frames=3, num_output_frames=2)

CASES = {
    "convlstm-stpdist": ("convlstm", "ConvLSTM", {"hidden_channels": [4, 4], "kernel_size": 3}),
    "convlstm-openstl": (
        "convlstm",
        "ConvLSTM",
        {"variant": "openstl", "hidden_channels": [4, 4], "kernel_size": 3},
    ),
    "convlstm-shi": (
        "convlstm",
        "ConvLSTM",
        {"variant": "shi", "hidden_channels": [4, 4], "kernel_size": 3},
    ),
    "predrnn": ("predrnn", "PredRNN", {"hidden_channels": [4, 4], "kernel_size": 3}),
    "predrnnv2": ("predrnn", "PredRNNv2", {"hidden_channels": [4, 4], "kernel_size": 3}),
    "predrnnpp": ("predrnn", "PredRNNpp", {"hidden_channels": [4, 4], "kernel_size": 3}),
}


class _Step(nn.Module):
    """One training step of a backbone with its regions fused or not."""

    def __init__(self, backbone: nn.Module, fused: bool) -> None:
        super().__init__()
        self.backbone, self.fused = backbone, fused

    def training_step(self, frames: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.backbone_loss(frames, targets)

    def backbone_loss(self, frames: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with fusion(self.fused):
            out = self.backbone(frames, SPEC.num_output_frames, targets_BTCHW=targets)
        predictions = getattr(out, "predictions", out)
        loss = (predictions - targets).square().mean()
        for aux in getattr(out, "aux_losses", {}).values():
            loss = loss + aux
        return loss


def _build(file: str, cls: str, args: dict) -> nn.Module:
    model_class = getattr(importlib.import_module(f"stpdist.models.{file}"), cls)
    return model_class(SPEC, model_class.Args(**args))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    frames = torch.rand(2, 3, 2, 8, 8, generator=g)
    targets = torch.rand(2, 2, 2, 8, 8, generator=g)
    return frames, targets


def _gradients(step: _Step, batch: tuple) -> tuple[torch.Tensor, dict]:
    step.zero_grad(set_to_none=True)
    loss = step.backbone_loss(*batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in step.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_off_is_bitwise_the_code_before(case):
    file, cls, args = CASES[case]
    old = model_file_at(BEFORE, file)
    torch.manual_seed(0)
    reference = getattr(old, cls)(SPEC, getattr(old, cls).Args(**args))
    model = _build(file, cls, args)
    model.load_state_dict(reference.state_dict())
    batch = _batch()
    loss_old, grads_old = _gradients(_Step(reference, fused=False), batch)
    loss_new, grads_new = _gradients(_Step(model, fused=False), batch)
    assert torch.equal(loss_old, loss_new)
    assert grads_old.keys() == grads_new.keys()
    for name, grad in grads_old.items():
        assert torch.equal(grad, grads_new[name]), name


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_on_same_results_with_at_most_half_the_kernel_launches(case):
    file, cls, args = CASES[case]
    torch.manual_seed(0)
    backbone = _build(file, cls, args)
    batch = _batch()
    loss_off, grads_off = _gradients(_Step(backbone, fused=False), batch)
    loss_on, grads_on = _gradients(_Step(backbone, fused=True), batch)
    assert _relative(loss_on, loss_off) <= 1e-6
    assert grads_on.keys() == grads_off.keys()
    for name, grad in grads_off.items():
        assert _relative(grads_on[name], grad) <= 1e-6, name
    counts = {}
    for fused in (False, True):
        step = _Step(backbone, fused)
        optimizer = torch.optim.Adam(step.parameters(), lr=0.0)
        _, launching, per_op = count_step_ops(step, batch, optimizer)
        counts[fused] = launching, per_op
    assert counts[True][0] * 2 <= counts[False][0], counts
    # the fused ops are there, once forward and once backward per region call
    fused_ops = {n: k for n, k in counts[True][1].items() if n.startswith(file)}
    assert fused_ops and all(n not in NO_KERNEL_OPS for n in fused_ops)
    forward = {n: k for n, k in fused_ops.items() if not n.endswith("_backward")}
    for name, calls in forward.items():
        assert fused_ops[name + "_backward"] == calls, fused_ops
