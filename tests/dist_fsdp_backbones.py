"""Entry point: `torchrun --nproc_per_node 2 tests/dist_fsdp_backbones.py OUT_DIR`. Each
recurrent backbone of the zoo (small; PredRNN.V2 has PredRNN's cells), sharded as `trainer.strategy: fsdp` shards it (its
default units: every cell layer), runs one forward and backward on the same batch on every
rank, with fused kernels off and, for TrajGRU, on (its first level batched over time). Rank 0
writes OUT_DIR/result.json: per case, the largest relative difference of the loss and of
each full gradient from the same backbone unsharded in this process."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from stpdist import fsdp
from stpdist.models import FrameSpec, backbone_class
from stpdist.models.fused import fusion

SPEC = FrameSpec(channels=2, height=8, width=8, num_input_frames=3, num_output_frames=2)
SMALL = {"hidden_channels": [4, 4], "kernel_size": 3}
TRAJGRU = {"conv_channels": [4, 4], "hidden_channels": [4, 4], "links": [2, 2]}
CASES = {  # name → (backbone, its arguments, fused kernels)
    "convlstm-openstl": ("convlstm", {**SMALL, "variant": "openstl"}, False),
    "convlstm": ("convlstm", SMALL, False),
    "predrnn": ("predrnn", SMALL, False),
    "predrnnpp": ("predrnnpp", {**SMALL, "hidden_channels": [4, 4, 4]}, False),
    "mim": ("mim", {**SMALL, "hidden_channels": [4, 4, 4]}, False),
    "mau": ("mau", {**SMALL, "downsample": 2, "attention_window": 2}, False),
    "e3dlstm": ("e3dlstm", SMALL, False),
    "trajgru": ("trajgru", TRAJGRU, False),
    "trajgru-fused": ("trajgru", TRAJGRU, True),
}


def loss_of(model: torch.nn.Module, frames, targets, fused: bool) -> torch.Tensor:
    with fusion(fused):
        out = model(frames, targets.shape[1], targets_BTCHW=targets)
    predictions = getattr(out, "predictions", out)
    loss = (predictions - targets).square().mean()
    for aux in getattr(out, "aux_losses", {}).values():
        loss = loss + aux
    return loss


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    results = {}
    for case, (name, args, fused) in CASES.items():
        torch.manual_seed(0)
        cls = backbone_class(name)
        reference = cls(SPEC, cls.Args(**args))
        sharded = copy.deepcopy(reference)
        g = torch.Generator().manual_seed(1)
        frames = torch.rand(2, 3, 2, 8, 8, generator=g)
        targets = torch.rand(2, 2, 2, 8, 8, generator=g)
        loss_ref = loss_of(reference, frames, targets, fused)
        loss_ref.backward()
        fsdp.shard(sharded, fsdp.fsdp_units(sharded))
        loss = loss_of(sharded, frames, targets, fused)
        loss.backward()  # gradients averaged over the ranks: the same batch on each
        worst = relative(loss.detach(), loss_ref.detach())
        grads = dict(reference.named_parameters())
        for pname, p in sharded.named_parameters():
            full = p.grad.full_tensor()
            worst = max(worst, relative(full, grads[pname].grad))
        results[case] = worst
    if dist.get_rank() == 0:
        (Path(sys.argv[1]) / "result.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
