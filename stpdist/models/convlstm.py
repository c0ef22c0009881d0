"""ConvLSTM (Shi et al., NeurIPS 2015): convolutional LSTM cells with peephole weights.

Legend: B batch, T time, C channels, H×W frame size (after patching).
A stack of cells runs over the input frames, then keeps stepping on its own predictions
(or, with a teacher mask, on ground-truth frames) for the output frames. A 1×1
convolution over the concatenated hidden states of all layers maps to a frame.
"""

from __future__ import annotations

import torch
from torch import nn


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


class ConvLSTM(nn.Module):
    """Stacked ConvLSTM forecaster with the shared backbone signature."""

    def __init__(
        self,
        in_channels: int,
        height: int,
        width: int,
        hidden_channels: list[int] | tuple[int, ...] = (64, 64),
        kernel_size: int = 5,
        forget_bias: float = 1.0,
    ) -> None:
        super().__init__()
        hidden_channels = list(hidden_channels)
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

    def forward(
        self,
        frames_BTCHW: torch.Tensor,
        num_output_frames: int,
        *,
        targets_BTCHW: torch.Tensor | None = None,
        teacher_mask_BT: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, t_in, _, h, w = frames_BTCHW.shape
        states = [
            (frames_BTCHW.new_zeros(b, cell.hidden_channels, h, w),) * 2 for cell in self.cells
        ]
        predictions = []
        frame = frames_BTCHW[:, 0]
        for t in range(t_in + num_output_frames - 1):
            if t < t_in:
                frame = frames_BTCHW[:, t]
            elif teacher_mask_BT is not None and targets_BTCHW is not None:
                # scheduled sampling: per sample, the true frame or the model's own prediction
                mask = teacher_mask_BT[:, t - t_in].view(b, 1, 1, 1).to(frame.dtype)
                frame = mask * targets_BTCHW[:, t - t_in] + (1 - mask) * predictions[-1]
            else:
                frame = predictions[-1]
            x = frame
            for layer, cell in enumerate(self.cells):
                states[layer] = cell(x, states[layer])
                x = states[layer][0]
            if t >= t_in - 1:
                predictions.append(self.output(torch.cat([s[0] for s in states], dim=1)))
        return torch.stack(predictions, dim=1)
