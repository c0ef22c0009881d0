"""E3D-LSTM, Eidetic 3D LSTM (Wang et al., ICLR 2019).

Legend: B batch, T time, C channels, H×W frame size (after patching); h hidden channels,
w the window depth (`window_length`).

At every step the cell sees a short clip, the last w frames (zeros before the first),
and all its states (H, C, M) are h×w×H×W: the gates are 3D convolutions (kernel
`temporal_kernel_size`×k×k, padded causally in time so the depth stays w). The cell
state is updated through the recall gate, a self-attention of R_t (queries, one per
w·H·W position) over the last τ cell states (keys = values, τ·w·H·W positions):

    C_t = I_t ⊙ G_t + LayerNorm(C_{t−1} + softmax(R_t·C_{t−τ:t−1}ᵀ) · C_{t−τ:t−1})

The spatiotemporal memory M zigzags through the layers as in PredRNN (M = I' ⊙ G' +
F' ⊙ M), the output gate reads X, H_{t−1}, C_t and M_t, and H_t = O ⊙ tanh(1×1×1 conv of
[C_t, M_t]). A (w×1×1, stride w) 3D convolution of the top hidden state gives the next
frame. The attention is scaled by 1/√h (the paper writes it unscaled).

At OpenSTL's Moving MNIST settings (patch 4 → 16×16×16, hidden 128×4, kernel 2×5×5,
w = 2, recall over all past states, 10→10), measured with
`torch.utils.flop_counter.FlopCounterMode` (MACs = flops/2, batch 1):

| model    | parameters | OpenSTL | GMACs  | OpenSTL FLOPs |
|----------|-----------:|--------:|-------:|--------------:|
| E3D-LSTM | 48,070,656 |  51.0M  | 513.51 |       298.9G  |

Parameters: OpenSTL's memory convolution has 4h outputs (an extra tanh(conv(M)) term
replaces M in the forget path) where the paper's equations need 3h (I', G', F'):
4 layers × 128·128·2·5·5 = 3,276,800 more would give 51,347,456 (51.3M; 0.7% above its
table). MACs: 462.49 of ours are 3D convolutions producing w = 2 temporal outputs at
each of 16×16 positions (the paper keeps the depth), 51.00 the recall attention over all
past states, 0.02 the output conv. OpenSTL's figure matches convolutions that produce ONE temporal output
(a depth-2 kernel over a depth-2 clip, unpadded): with its 4h memory convolution,
(47,542,272 + 3,276,800) weights × 256 positions × 19 steps = 247.18, plus the same
attention 51.00 = 298.2 GMACs, within 0.3% of 298.9G.

`layer_norm` (OpenSTL's option, off by default) follows every gate convolution (input,
hidden, memory, and the output gate's convolutions of C_t and M_t) with a LayerNorm over
[its output channels, w, H, W]; the 1×1×1 `conv_last` stays unnormalised. The LayerNorm
of the recall (`norm_c`) is part of the cell and there either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .base import FrameSpec, gate_norm
from .recurrent import FrameRecurrent


class CausalConv3d(nn.Conv3d):
    """3D conv, no bias, 'same' in space, padded at the front in time (depth kept)."""

    def __init__(self, cin: int, cout: int, temporal_kernel_size: int, kernel_size: int) -> None:
        super().__init__(
            cin,
            cout,
            (temporal_kernel_size, kernel_size, kernel_size),
            padding=(0, kernel_size // 2, kernel_size // 2),
            bias=False,
        )
        self.front = temporal_kernel_size - 1

    def forward(self, x_BCDHW: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.pad(x_BCDHW, (0, 0, 0, 0, self.front, 0)))


class Eidetic3DLSTMCell(nn.Module):
    """One E3D-LSTM cell; returns (h, c, m). `layer_norm`: a LayerNorm over
    [channels, w, H, W] after each gate convolution."""

    def __init__(
        self,
        cin: int,
        hidden: int,
        window: int,
        height: int,
        width: int,
        temporal_kernel_size: int,
        kernel_size: int,
        forget_bias: float,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.hidden, self.forget_bias = hidden, forget_bias
        conv = lambda i, o: CausalConv3d(i, o, temporal_kernel_size, kernel_size)  # noqa: E731
        self.conv_x = conv(cin, 7 * hidden)
        self.conv_h = conv(hidden, 4 * hidden)
        self.conv_m = conv(hidden, 3 * hidden)
        self.conv_c_out = conv(hidden, hidden)
        self.conv_m_out = conv(hidden, hidden)
        self.conv_last = nn.Conv3d(2 * hidden, hidden, 1, bias=False)
        self.norm_c = nn.LayerNorm([hidden, window, height, width])
        norm_size = (window, height, width) if layer_norm else None
        self.norm_x = gate_norm(7 * hidden, norm_size)
        self.norm_h = gate_norm(4 * hidden, norm_size)
        self.norm_m = gate_norm(3 * hidden, norm_size)
        self.norm_c_out = gate_norm(hidden, norm_size)
        self.norm_m_out = gate_norm(hidden, norm_size)

    def recall(self, query_BhDHW: torch.Tensor, past_c: list[torch.Tensor]) -> torch.Tensor:
        """Attention of every query position over every position of the past cells."""
        b, h = query_BhDHW.shape[:2]
        query = query_BhDHW.flatten(2).transpose(1, 2)  # B × wHW × h
        memory = torch.cat([c.flatten(2) for c in past_c], dim=2).transpose(1, 2)
        recalled = nn.functional.scaled_dot_product_attention(query, memory, memory)
        return recalled.transpose(1, 2).reshape(query_BhDHW.shape)

    def forward(self, x, h, c, m, past_c):
        i_x, g_x, r_x, o_x, i_xm, g_xm, f_xm = self.norm_x(self.conv_x(x)).chunk(7, dim=1)
        i_h, g_h, r_h, o_h = self.norm_h(self.conv_h(h)).chunk(4, dim=1)
        i_m, g_m, f_m = self.norm_m(self.conv_m(m)).chunk(3, dim=1)
        recall_gate = torch.sigmoid(r_x + r_h)
        c = torch.sigmoid(i_x + i_h) * torch.tanh(g_x + g_h) + self.norm_c(
            c + self.recall(recall_gate, past_c)
        )
        m = (
            torch.sigmoid(i_xm + i_m) * torch.tanh(g_xm + g_m)
            + torch.sigmoid(f_xm + f_m + self.forget_bias) * m
        )
        o = torch.sigmoid(
            o_x + o_h + self.norm_c_out(self.conv_c_out(c)) + self.norm_m_out(self.conv_m_out(m))
        )
        return o * torch.tanh(self.conv_last(torch.cat([c, m], dim=1))), c, m


@dataclass
class E3DLSTMArgs:
    hidden_channels: list[int] = field(default_factory=lambda: [128, 128, 128, 128])
    """Hidden channels of each stacked layer (all equal: M flows across them)."""
    kernel_size: int = 5
    """Spatial kernel of the 3D convolutions."""
    temporal_kernel_size: int = 2
    """Temporal kernel of the 3D convolutions (≤ window_length)."""
    window_length: int = 2
    """w: frames per input clip, and the temporal depth of every state."""
    recall_window: int | None = None
    """τ: past cell states the recall gate attends to; None: all of them (as OpenSTL)."""
    forget_bias: float = 1.0
    """Added to the memory's forget gate pre-activation."""
    layer_norm: bool = False
    """Follow each gate convolution with a LayerNorm over [channels, w, H, W] (OpenSTL's
    `layer_norm`); off leaves the model exactly as without the option."""


class E3DLSTM(FrameRecurrent):
    """Stacked eidetic 3D LSTM cells over sliding clips of w frames."""

    Args = E3DLSTMArgs

    def __init__(self, spec: FrameSpec, args: E3DLSTMArgs | None = None) -> None:
        super().__init__()
        args = args or E3DLSTMArgs()
        hidden_channels = list(args.hidden_channels)
        if not hidden_channels or len(set(hidden_channels)) != 1:
            raise ValueError(f"E3D-LSTM needs equal hidden_channels, got {hidden_channels}")
        if not 1 <= args.temporal_kernel_size <= args.window_length:
            raise ValueError(
                f"temporal_kernel_size {args.temporal_kernel_size} must be in "
                f"1..window_length ({args.window_length})"
            )
        if args.recall_window is not None and args.recall_window < 1:
            raise ValueError(f"recall_window must be ≥ 1 or None, got {args.recall_window}")
        hidden, w = hidden_channels[0], args.window_length
        self.hidden, self.window, self.recall_window = hidden, w, args.recall_window
        self.cells = nn.ModuleList(
            Eidetic3DLSTMCell(
                spec.channels if i == 0 else hidden,
                hidden,
                w,
                spec.height,
                spec.width,
                args.temporal_kernel_size,
                args.kernel_size,
                args.forget_bias,
                args.layer_norm,
            )
            for i in range(len(hidden_channels))
        )
        self.output = nn.Conv3d(hidden, spec.channels, (w, 1, 1), stride=(w, 1, 1), bias=False)

    def init_state(self, frames_BTCHW: torch.Tensor) -> dict:
        b, _, c, height, width = frames_BTCHW.shape
        zeros = frames_BTCHW.new_zeros(b, self.hidden, self.window, height, width)
        n = len(self.cells)
        return {
            "clip": frames_BTCHW.new_zeros(b, c, self.window, height, width),
            "h": [zeros] * n,
            "c": [zeros] * n,
            "past_c": [[] for _ in range(n)],
            "m": zeros,
        }

    def step(self, frame_BCHW: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        clip = torch.cat([state["clip"][:, :, 1:], frame_BCHW[:, :, None]], dim=2)
        x, m = clip, state["m"]
        h, c, past_c = [], [], []
        for cell, h_prev, c_prev, history in zip(
            self.cells, state["h"], state["c"], state["past_c"]
        ):
            history = history + [c_prev]  # C_{t−1} is the newest state recalled
            if self.recall_window is not None:
                history = history[-self.recall_window :]
            h_new, c_new, m = cell(x, h_prev, c_prev, m, history)
            h.append(h_new)
            c.append(c_new)
            past_c.append(history)
            x = h_new
        prediction = self.output(h[-1]).squeeze(2)
        return prediction, {"clip": clip, "h": h, "c": c, "past_c": past_c, "m": m}
