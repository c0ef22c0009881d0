"""The backbone contract every model in `stpdist/models/` follows (pure torch).

Legend: B batch, T time, C channels, H×W frame size (after patching).

A backbone is an `nn.Module` built as `Backbone(spec, args)`: `spec` a `FrameSpec` (the
frame shape after patching and the frame counts), `args` an instance of the backbone's own
`Args` dataclass (a class attribute; one docstring per field: the schema of
`model.backbone` in a config). Its forward is

    forward(frames_BTCHW, num_output_frames, *, targets_BTCHW=None, teacher_mask_BT=None)

and returns the predictions B×T_out×C×H×W, or a `BackboneOutput` when it also has extra
training losses (PredRNN.V2's decoupling loss, PhyDNet's moment constraint). Those come
back explicitly, already weighted by the backbone's own argument, never stored on the
module for someone to read later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass(frozen=True)
class FrameSpec:
    """What a backbone is built for (after patching)."""

    channels: int
    height: int
    width: int
    num_input_frames: int
    num_output_frames: int


class BackboneOutput(NamedTuple):
    predictions: torch.Tensor
    """B×T_out×C×H×W."""
    aux_losses: dict[str, torch.Tensor]
    """Named extra training losses (weighted, scalar), added to the task's loss and logged
    one by one as `train/<name>`."""


def as_output(returned: torch.Tensor | BackboneOutput) -> BackboneOutput:
    """A backbone's return value in its full form."""
    if isinstance(returned, BackboneOutput):
        return returned
    return BackboneOutput(returned, {})
