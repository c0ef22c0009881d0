"""ConvLSTM (Shi et al., NeurIPS 2015): convolutional LSTM cells with peephole weights.

Legend: B batch, T time, C channels, H×W frame size (after patching).
A stack of cells steps through the frames (see `recurrent.FrameRecurrent` for which
frame it sees); a 1×1 convolution over the concatenated hidden states of all layers maps
to the next frame.

At OpenSTL's Moving MNIST settings (patch 4 → 16×16×16, hidden 128×4, filter 5, 10→10):
12,077,072 parameters (test_models pins it) and 56.8 GMACs forward per sample (`stpdist
bench model`), next to OpenSTL's 15.0M and 56.8G: the same compute, fewer parameters,
since one convolution over [x, h] replaces separate input and hidden convolutions and their
biases; the peepholes add 3×128×16×16 per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .base import FrameSpec
from .recurrent import FrameRecurrent


class ConvLSTMCell(nn.Module):
    """One cell; all four gates come from a single convolution over [input, hidden]."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int,
        height: int,
        width: int,
        forget_bias: float = 1.0,
    ) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(
            in_channels + hidden_channels,
            4 * hidden_channels,
            kernel_size,
            padding=kernel_size // 2,
        )
        # peephole weights (Hadamard products with the cell state), 1×C×H×W as in the paper
        self.w_ci = nn.Parameter(torch.zeros(1, hidden_channels, height, width))
        self.w_cf = nn.Parameter(torch.zeros(1, hidden_channels, height, width))
        self.w_co = nn.Parameter(torch.zeros(1, hidden_channels, height, width))
        self.forget_bias = forget_bias

    def forward(
        self, x_BCHW: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        i, f, g, o = self.gates(torch.cat([x_BCHW, h], dim=1)).chunk(4, dim=1)
        i = torch.sigmoid(i + self.w_ci * c)
        f = torch.sigmoid(f + self.w_cf * c + self.forget_bias)
        c = f * c + i * torch.tanh(g)
        o = torch.sigmoid(o + self.w_co * c)
        return o * torch.tanh(c), c


@dataclass
class ConvLSTMArgs:
    hidden_channels: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden channels of each stacked layer."""
    kernel_size: int = 5
    """Convolution kernel of the gates."""
    forget_bias: float = 1.0
    """Added to the forget gate's pre-activation."""


class ConvLSTM(FrameRecurrent):
    """Stacked ConvLSTM with the shared backbone signature."""

    Args = ConvLSTMArgs

    def __init__(self, spec: FrameSpec, args: ConvLSTMArgs | None = None) -> None:
        super().__init__()
        args = args or ConvLSTMArgs()
        in_channels, height, width = spec.channels, spec.height, spec.width
        hidden_channels, kernel_size, forget_bias = (
            list(args.hidden_channels),
            args.kernel_size,
            args.forget_bias,
        )
        if not hidden_channels:
            raise ValueError("hidden_channels needs at least one layer")
        self.cells = nn.ModuleList()
        previous = in_channels
        for hidden in hidden_channels:
            self.cells.append(
                ConvLSTMCell(previous, hidden, kernel_size, height, width, forget_bias)
            )
            previous = hidden
        self.output = nn.Conv2d(sum(hidden_channels), in_channels, 1)

    def init_state(self, frames_BTCHW: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        b, _, _, h, w = frames_BTCHW.shape
        return [(frames_BTCHW.new_zeros(b, cell.hidden_channels, h, w),) * 2 for cell in self.cells]

    def step(self, frame_BCHW: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        x = frame_BCHW
        new_state = []
        for cell, layer_state in zip(self.cells, state):
            layer_state = cell(x, layer_state)
            new_state.append(layer_state)
            x = layer_state[0]
        return self.output(torch.cat([s[0] for s in new_state], dim=1)), new_state
