"""MIM, Memory In Memory (Wang et al., CVPR 2019).

Legend: B batch, T time, C channels, H×W frame size (after patching); h hidden channels.

A PredRNN-like stack: the first layer is an ST-LSTM (`predrnn.STLSTMCell`); every higher
layer is a MIM block, in which the ST-LSTM's forget gate on the temporal cell state is
replaced by two cascaded recurrent modules that model non-stationarity:

* MIM-N (one per layer above the first, with its own hidden and cell states) reads the
  difference H^{l−1}_t − H^{l−1}_{t−1} of the layer below between consecutive steps (the
  diagonal recurrent link) and outputs D^l_t;
* MIM-S (inside the block) is an LSTM whose input is D^l_t and whose hidden state is the
  block's previous cell state C^l_{t−1}; its output T^l_t stands in for f ⊙ C^l_{t−1}, so
  C^l_t = T^l_t + i ⊙ g.

Both MIM modules use peephole weights (1×h×H×W) on their cell states, as in the paper's
code. The spatiotemporal memory M zigzags through the layers as in PredRNN; a 1×1
convolution of the top hidden state gives the next frame. At the first step there is no
previous hidden state, so the difference is zero.

At OpenSTL's Moving MNIST settings (patch 4 → 16×16×16, hidden 128×4, filter 5, 10→10),
measured with `torch.utils.flop_counter.FlopCounterMode` (MACs = flops/2, batch 1):

| model | parameters | OpenSTL | GMACs  | OpenSTL FLOPs |
|-------|-----------:|--------:|-------:|--------------:|
| MIM   | 37,945,344 |  38.0M  | 181.70 |       179.2G  |

Parameters agree (−0.1%). The GMACs are 1.4% above OpenSTL's: we run MIM-N on the zero
difference at the first step (3 layers × 2 convolutions of 128→512 at 5×5 over 16×16
positions = 2.52 GMACs), which OpenSTL's count appears to leave out (181.70 − 2.52 =
179.18).

`layer_norm` (OpenSTL's option, off by default) follows every gate convolution (the
ST-LSTM's, the MIM block's, MIM-N's and MIM-S's) with a LayerNorm over [its output
channels, H, W]; the 1×1 `conv_last` and the peepholes stay unnormalised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .base import FrameSpec, gate_norm
from .predrnn import STLSTMCell
from .recurrent import FrameRecurrent


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)


class PeepholeLSTM(nn.Module):
    """The LSTM shared by MIM-N and MIM-S: gates from conv(x) + conv(h) + peepholes on c
    (input and forget on c_{t−1}, output on c_t). `layer_norm`: a LayerNorm over
    [4h, H, W] after each convolution."""

    def __init__(
        self,
        hidden: int,
        kernel_size: int,
        height: int,
        width: int,
        forget_bias: float,
        layer_norm: bool = False,
    ):
        super().__init__()
        self.forget_bias = forget_bias
        self.conv_x = _conv(hidden, 4 * hidden, kernel_size)
        self.conv_h = _conv(hidden, 4 * hidden, kernel_size)
        self.peephole_if = nn.Parameter(torch.zeros(1, 2 * hidden, height, width))
        self.peephole_o = nn.Parameter(torch.zeros(1, hidden, height, width))
        norm_size = (height, width) if layer_norm else None
        self.norm_x = gate_norm(4 * hidden, norm_size)
        self.norm_h = gate_norm(4 * hidden, norm_size)

    def forward(self, x, h, c):
        i_x, g_x, f_x, o_x = self.norm_x(self.conv_x(x)).chunk(4, dim=1)
        i_h, g_h, f_h, o_h = self.norm_h(self.conv_h(h)).chunk(4, dim=1)
        i_c, f_c = (self.peephole_if * torch.cat([c, c], dim=1)).chunk(2, dim=1)
        i = torch.sigmoid(i_x + i_h + i_c)
        f = torch.sigmoid(f_x + f_h + f_c + self.forget_bias)
        c = f * c + i * torch.tanh(g_x + g_h)
        o = torch.sigmoid(o_x + o_h + self.peephole_o * c)
        return o * torch.tanh(c), c


class MIMBlock(nn.Module):
    """ST-LSTM whose temporal forget path is MIM-S; returns (h, c, m, MIM-S cell).
    `layer_norm`: a LayerNorm over [channels, H, W] after each gate convolution."""

    def __init__(
        self,
        hidden: int,
        kernel_size: int,
        height: int,
        width: int,
        forget_bias: float,
        layer_norm: bool = False,
    ):
        super().__init__()
        self.forget_bias = forget_bias
        self.conv_x = _conv(hidden, 4 * hidden, kernel_size)
        self.conv_h = _conv(hidden, 3 * hidden, kernel_size)
        self.conv_m = _conv(hidden, 4 * hidden, kernel_size)
        self.conv_last = nn.Conv2d(2 * hidden, hidden, 1, bias=False)
        self.stationary = PeepholeLSTM(hidden, kernel_size, height, width, forget_bias, layer_norm)
        norm_size = (height, width) if layer_norm else None
        self.norm_x = gate_norm(4 * hidden, norm_size)
        self.norm_h = gate_norm(3 * hidden, norm_size)
        self.norm_m = gate_norm(4 * hidden, norm_size)

    def forward(self, x, difference, h, c, m, stationary_c):
        i_x, g_x, f_x, o_x = self.norm_x(self.conv_x(x)).chunk(4, dim=1)
        i_h, g_h, o_h = self.norm_h(self.conv_h(h)).chunk(3, dim=1)
        i_m, g_m, f_m, o_m = self.norm_m(self.conv_m(m)).chunk(4, dim=1)
        # MIM-S: input D (from MIM-N), hidden C_{t−1}; its output replaces f ⊙ C_{t−1}
        trend, stationary_c = self.stationary(difference, c, stationary_c)
        c = trend + torch.sigmoid(i_x + i_h) * torch.tanh(g_x + g_h)
        m = torch.sigmoid(f_x + f_m + self.forget_bias) * m + torch.sigmoid(i_x + i_m) * torch.tanh(
            g_x + g_m
        )
        o = torch.sigmoid(o_x + o_h + o_m)
        return o * torch.tanh(self.conv_last(torch.cat([c, m], dim=1))), c, m, stationary_c


@dataclass
class MIMArgs:
    hidden_channels: list[int] = field(default_factory=lambda: [128, 128, 128, 128])
    """Hidden channels of each stacked layer (all equal: M flows across them); ≥ 2 layers."""
    kernel_size: int = 5
    """Convolution kernel of every gate."""
    forget_bias: float = 1.0
    """Added to every forget gate's pre-activation."""
    layer_norm: bool = False
    """Follow each gate convolution with a LayerNorm over [channels, H, W] (OpenSTL's
    `layer_norm`); off leaves the model exactly as without the option."""


class MIM(FrameRecurrent):
    """ST-LSTM first layer, MIM blocks above it, MIM-N between consecutive layers."""

    Args = MIMArgs

    def __init__(self, spec: FrameSpec, args: MIMArgs | None = None) -> None:
        super().__init__()
        args = args or MIMArgs()
        hidden_channels = list(args.hidden_channels)
        if len(hidden_channels) < 2 or len(set(hidden_channels)) != 1:
            raise ValueError(
                f"MIM needs at least 2 layers of equal hidden_channels, got {hidden_channels}"
            )
        hidden, k = hidden_channels[0], args.kernel_size
        hw = (spec.height, spec.width)
        self.hidden = hidden
        self.first = STLSTMCell(
            spec.channels, hidden, k, args.forget_bias, hw if args.layer_norm else None
        )
        self.blocks = nn.ModuleList(
            MIMBlock(hidden, k, *hw, args.forget_bias, args.layer_norm) for _ in hidden_channels[1:]
        )
        self.nonstationary = nn.ModuleList(
            PeepholeLSTM(hidden, k, *hw, args.forget_bias, args.layer_norm)
            for _ in hidden_channels[1:]
        )
        self.output = nn.Conv2d(hidden, spec.channels, 1, bias=False)

    def init_state(self, frames_BTCHW: torch.Tensor) -> dict:
        b, _, _, height, width = frames_BTCHW.shape
        zeros = frames_BTCHW.new_zeros(b, self.hidden, height, width)
        n = len(self.blocks) + 1
        return {
            "h": [zeros] * n,
            "c": [zeros] * n,
            "m": zeros,
            "n_h": [zeros] * (n - 1),  # MIM-N hidden and cell, per layer above the first
            "n_c": [zeros] * (n - 1),
            "s_c": [zeros] * (n - 1),  # MIM-S cell
            "first_step": True,
        }

    def step(self, frame_BCHW: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        h, c, n_h, n_c, s_c = (list(state[k]) for k in ("h", "c", "n_h", "n_c", "s_c"))
        previous_h = state["h"]
        h[0], c[0], m, _, _ = self.first(frame_BCHW, h[0], c[0], state["m"])
        for i, (block, nonstationary) in enumerate(zip(self.blocks, self.nonstationary)):
            # diagonal link: the change of the layer below since the last step
            difference = torch.zeros_like(h[i]) if state["first_step"] else h[i] - previous_h[i]
            n_h[i], n_c[i] = nonstationary(difference, n_h[i], n_c[i])
            h[i + 1], c[i + 1], m, s_c[i] = block(h[i], n_h[i], h[i + 1], c[i + 1], m, s_c[i])
        new_state = {
            "h": h,
            "c": c,
            "m": m,
            "n_h": n_h,
            "n_c": n_c,
            "s_c": s_c,
            "first_step": False,
        }
        return self.output(h[-1]), new_state
