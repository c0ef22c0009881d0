"""Model registry: backbone name → class. Backbones share one forward signature:
`forward(frames_BTCHW, num_output_frames, *, targets_BTCHW=None, teacher_mask_BT=None)`."""

from __future__ import annotations

from torch import nn

from .convlstm import ConvLSTM
from .predrnn import PredRNN, PredRNNpp, PredRNNv2
from .trajgru import TrajGRU

BACKBONES: dict[str, type[nn.Module]] = {
    "convlstm": ConvLSTM,
    "predrnn": PredRNN,
    "predrnnpp": PredRNNpp,
    "predrnnv2": PredRNNv2,
    "trajgru": TrajGRU,
}


def available() -> list[str]:
    return sorted(BACKBONES)


def build_backbone(name: str, in_channels: int, height: int, width: int, **kwargs) -> nn.Module:
    """Instantiate backbone `name` for frames of in_channels×height×width (after patching)."""
    if name not in BACKBONES:
        raise KeyError(f"unknown model '{name}'; available: {', '.join(available())}")
    return BACKBONES[name](in_channels=in_channels, height=height, width=width, **kwargs)
