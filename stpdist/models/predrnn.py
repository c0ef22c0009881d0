"""PredRNN (Wang et al., NeurIPS 2017), PredRNN.V2 (Wang et al., TPAMI 2022) and
PredRNN++ (Wang et al., ICML 2018).

Legend: B batch, T time, C channels, H×W frame size (after patching); h hidden channels.

PredRNN stacks spatiotemporal LSTM (ST-LSTM) cells: besides each layer's cell state c, a
spatiotemporal memory m zigzags up the layers within a step and from the top layer to the
bottom one across steps. PredRNN.V2 adds a decoupling loss that pushes the increments of
c and m apart (cosine similarity after a shared 1×1 adapter) and is trained with reverse
scheduled sampling (driven by the Forecaster). PredRNN++ replaces the cell with the
Causal LSTM (c feeds m within the cell) and puts a Gradient Highway Unit between the first
and second layers.

At OpenSTL's Moving MNIST settings (patch 4 → 16×16×16, hidden 128×4, filter 5, 10→10),
parameters pinned in test_models, forward GMACs per sample from `stpdist bench model`:

| model      | parameters | OpenSTL | GMACs  | OpenSTL FLOPs |
|------------|-----------:|--------:|-------:|--------------:|
| PredRNN    | 23,838,720 |  23.8M  | 115.95 | 116.0G        |
| PredRNN.V2 | 23,855,104 |  23.9M  | 116.59 | 116.6G        |
| PredRNN++  | 35,307,520 |  38.6M  | 171.74 | 171.7G        |

OpenSTL's PredRNN++ count includes a 5×5 convolution from 2h to h that its Causal LSTM
defines but never uses (4 × 819,200 = 3.28M); with it the counts agree within 0.1%.

`layer_norm` (OpenSTL's option, off by default) follows every gate convolution of the
cells and of the GHU with a LayerNorm over [its output channels, H, W]; the 1×1
`conv_last` stays unnormalised, as in OpenSTL. OpenSTL's GHU builds its LayerNorms over
[h, H, W] for a 2h-channel convolution, so its PredRNN++ cannot run with `layer_norm`;
ours normalises over [2h, H, W].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .base import FrameSpec, check_odd_kernels, gate_norm
from .fused import conv_cat, fusion_active, pointwise
from .recurrent import FrameRecurrent, SplitCell


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)


class STLSTMCell(SplitCell):
    """Spatiotemporal LSTM cell; returns (h, c, m, delta_c, delta_m). `norm_size` (H, W):
    a LayerNorm follows each gate convolution (OpenSTL's `layer_norm`); None: none."""

    def __init__(
        self,
        in_channels: int,
        hidden: int,
        kernel_size: int,
        forget_bias: float,
        norm_size: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.hidden = hidden
        self.forget_bias = forget_bias
        self.conv_x = _conv(in_channels, 7 * hidden, kernel_size)
        self.conv_h = _conv(hidden, 4 * hidden, kernel_size)
        self.conv_m = _conv(hidden, 3 * hidden, kernel_size)
        self.conv_o = _conv(2 * hidden, hidden, kernel_size)
        self.conv_last = nn.Conv2d(2 * hidden, hidden, 1, bias=False)
        self.norm_x = gate_norm(7 * hidden, norm_size)
        self.norm_h = gate_norm(4 * hidden, norm_size)
        self.norm_m = gate_norm(3 * hidden, norm_size)
        self.norm_o = gate_norm(hidden, norm_size)

    def _input_side(self, x):  # the input's gate convolution
        return self.norm_x(self.conv_x(x))

    def _advance(self, x_gates, h, c, m):
        h_gates = self.norm_h(self.conv_h(h))
        m_gates = self.norm_m(self.conv_m(m))
        c, m, memory, delta_c, delta_m, o_xh = _st_memories(
            x_gates, h_gates, m_gates, c, m, scalars=(self.forget_bias,)
        )
        h = _st_output(o_xh, self.norm_o(self.conv_o(memory)), self.conv_last(memory))
        return h, c, m, delta_c, delta_m


@pointwise(conv_outputs=(2,))  # [c, m]: read by the output gate's two convolutions only
def _st_memories(x_gates, h_gates, m_gates, c, m, forget_bias: float):
    """An ST-LSTM cell's arithmetic from its three gate convolutions to its memories:
    (new c, new m, [c, m], Δc, Δm, the output gate's input and hidden terms)."""
    i_x, f_x, g_x, i_xm, f_xm, g_xm, o_x = x_gates.chunk(7, dim=1)
    i_h, f_h, g_h, o_h = h_gates.chunk(4, dim=1)
    i_m, f_m, g_m = m_gates.chunk(3, dim=1)
    delta_c = torch.sigmoid(i_x + i_h) * torch.tanh(g_x + g_h)
    c = torch.sigmoid(f_x + f_h + forget_bias) * c + delta_c
    delta_m = torch.sigmoid(i_xm + i_m) * torch.tanh(g_xm + g_m)
    m = torch.sigmoid(f_xm + f_m + forget_bias) * m + delta_m
    return c, m, torch.cat([c, m], dim=1), delta_c, delta_m, o_x + o_h


@pointwise
def _st_output(o_xh, o_memory, last):
    """An ST-LSTM cell's hidden state: σ(o_x + o_h + W_o∗[c, m]) ⊙ tanh(W_1×1∗[c, m])."""
    return torch.sigmoid(o_xh + o_memory) * torch.tanh(last)


@pointwise
def _abs_cosine_mean(a, b):
    """|cos(a, b)| over the last dimension, averaged: PredRNN.V2's decoupling term."""
    return torch.nn.functional.cosine_similarity(a, b, dim=2).abs().mean()


@dataclass
class PredRNNArgs:
    hidden_channels: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden channels of each stacked layer (equal: the memory m flows across layers)."""
    kernel_size: int = 5
    """Convolution kernel of the gates."""
    forget_bias: float = 1.0
    """Added to the forget gates' pre-activations."""
    layer_norm: bool = False
    """Follow each gate convolution with a LayerNorm over [channels, H, W] (OpenSTL's
    `layer_norm`); off leaves the model exactly as without the option."""


@dataclass
class PredRNNv2Args(PredRNNArgs):
    decouple_weight: float = 0.1
    """β: weight of the decoupling loss added to the training loss."""


class PredRNN(FrameRecurrent):
    """Stacked ST-LSTM; `PredRNNv2` adds the decoupling loss."""

    Args = PredRNNArgs

    def __init__(self, spec: FrameSpec, args: PredRNNArgs | None = None) -> None:
        super().__init__()
        args = args or self.Args()
        in_channels, kernel_size, forget_bias = spec.channels, args.kernel_size, args.forget_bias
        hidden_channels = list(args.hidden_channels)
        decouple = isinstance(args, PredRNNv2Args)
        if len(set(hidden_channels)) != 1:
            raise ValueError("PredRNN needs equal hidden_channels per layer (m flows across them)")
        check_odd_kernels(kernel_size=kernel_size)
        if decouple and not args.decouple_weight >= 0:  # negative: the loss would reward coupling
            raise ValueError(f"decouple_weight must be ≥ 0, got {args.decouple_weight}")
        hidden = hidden_channels[0]
        norm_size = (spec.height, spec.width) if args.layer_norm else None
        self.cells = nn.ModuleList(
            STLSTMCell(
                in_channels if i == 0 else hidden, hidden, kernel_size, forget_bias, norm_size
            )
            for i in range(len(hidden_channels))
        )
        self.output = nn.Conv2d(hidden, in_channels, 1, bias=False)
        self.adapter = nn.Conv2d(hidden, hidden, 1, bias=False) if decouple else None
        self.decouple_weight = args.decouple_weight if decouple else 0.0

    def init_state(self, frames_BTCHW):
        b, _, _, height, width = frames_BTCHW.shape
        zeros = frames_BTCHW.new_zeros(b, self.cells[0].hidden, height, width)
        # (layers' (h, c), memory m, decoupling-loss sum over steps, steps taken)
        return [(zeros, zeros) for _ in self.cells], zeros, frames_BTCHW.new_zeros(()), 0

    def encode(self, frames_NCHW):
        return self.cells[0].input_side(frames_NCHW)

    def advance(self, x_gates, state):
        layers, m, decouple_sum, steps = state
        new_layers, decouple = [], []
        for i, (cell, (h, c)) in enumerate(zip(self.cells, layers)):
            if i == 0:  # from the encoded frame
                h, c, m, delta_c, delta_m = cell.advance(x_gates, h, c, m)
            else:
                h, c, m, delta_c, delta_m = cell(new_layers[-1][0], h, c, m)
            new_layers.append((h, c))
            if self.adapter is not None:
                decouple.append(self._decoupling(delta_c, delta_m))
        if decouple:  # summed over steps of the mean over layers
            decouple_sum = decouple_sum + torch.stack(decouple).mean()
        return new_layers[-1][0], (new_layers, m, decouple_sum, steps + 1)

    def decode(self, h_top):
        return self.output(h_top)

    def aux_losses(self, state) -> dict[str, torch.Tensor]:
        if self.adapter is None:
            return {}
        _, _, decouple_sum, steps = state
        return {"decouple": self.decouple_weight * decouple_sum / steps}

    def _decoupling(self, delta_c: torch.Tensor, delta_m: torch.Tensor) -> torch.Tensor:
        """Mean |cosine similarity| per channel between adapted increments of c and m."""
        a = self.adapter(delta_c).flatten(2)
        b = self.adapter(delta_m).flatten(2)
        return _abs_cosine_mean(a, b)


class PredRNNv2(PredRNN):
    """PredRNN.V2: PredRNN with the decoupling loss (weight `decouple_weight`, β)."""

    Args = PredRNNv2Args


class CausalLSTMCell(SplitCell):
    """Causal LSTM: the new cell state c feeds the spatiotemporal memory m in cascade.
    `norm_size` (H, W): a LayerNorm follows each gate convolution; None: none."""

    def __init__(
        self,
        in_channels: int,
        hidden: int,
        kernel_size: int,
        forget_bias: float,
        norm_size: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.hidden = hidden
        self.forget_bias = forget_bias
        self.conv_x = _conv(in_channels, 7 * hidden, kernel_size)
        self.conv_h = _conv(hidden, 4 * hidden, kernel_size)
        self.conv_c = _conv(hidden, 3 * hidden, kernel_size)
        self.conv_m = _conv(hidden, 3 * hidden, kernel_size)
        self.conv_c2m = _conv(hidden, 4 * hidden, kernel_size)
        self.conv_om = _conv(hidden, hidden, kernel_size)
        self.conv_last = nn.Conv2d(2 * hidden, hidden, 1, bias=False)
        self.norm_x = gate_norm(7 * hidden, norm_size)
        self.norm_h = gate_norm(4 * hidden, norm_size)
        self.norm_c = gate_norm(3 * hidden, norm_size)
        self.norm_m = gate_norm(3 * hidden, norm_size)
        self.norm_c2m = gate_norm(4 * hidden, norm_size)
        self.norm_om = gate_norm(hidden, norm_size)

    def _input_side(self, x):  # the input's gate convolution
        return self.norm_x(self.conv_x(x))

    def _advance(self, x_gates, h, c, m):
        if not fusion_active():
            return self._op_by_op(x_gates, h, c, m)
        h_gates = self.norm_h(self.conv_h(h))
        c_gates = self.norm_c(self.conv_c(c))
        m_gates = self.norm_m(self.conv_m(m))
        # under autocast, also c in the convolutions' dtype, for the two that read it now
        c, *c_conv = _causal_c(x_gates, h_gates, c_gates, c, scalars=(self.forget_bias,))
        c_conv = c_conv[0] if c_conv else c
        c2m = self.norm_c2m(self.conv_c2m(c_conv))
        m = _causal_m(x_gates, m_gates, c2m, scalars=(self.forget_bias,))
        o_m = self.norm_om(self.conv_om(m))
        h = _causal_output(x_gates, h_gates, c2m, o_m, self.conv_last(conv_cat([c_conv, m])))
        return h, c, m

    def _op_by_op(self, x_gates, h, c, m):
        """The same cell unfused, each gate tensor split once: the three regions above take
        pieces of the same convolutions, and splitting a tensor three times costs ~2 300
        extra ops a PredRNN++ recipe step (zeros, cat, add in the backward)."""
        i_x, f_x, g_x, i_xm, f_xm, g_xm, o_x = x_gates.chunk(7, dim=1)
        i_h, f_h, g_h, o_h = self.norm_h(self.conv_h(h)).chunk(4, dim=1)
        i_c, f_c, g_c = self.norm_c(self.conv_c(c)).chunk(3, dim=1)
        i_m, f_m, m_m = self.norm_m(self.conv_m(m)).chunk(3, dim=1)
        c = torch.sigmoid(f_x + f_h + f_c + self.forget_bias) * c + torch.sigmoid(
            i_x + i_h + i_c
        ) * torch.tanh(g_x + g_h + g_c)
        i_cm, g_cm, f_cm, o_cm = self.norm_c2m(self.conv_c2m(c)).chunk(4, dim=1)
        m = torch.sigmoid(f_xm + f_m + f_cm + self.forget_bias) * torch.tanh(m_m) + torch.sigmoid(
            i_xm + i_m + i_cm
        ) * torch.tanh(g_xm + g_cm)
        o = torch.tanh(o_x + o_h + o_cm + self.norm_om(self.conv_om(m)))
        return o * torch.tanh(self.conv_last(torch.cat([c, m], dim=1))), c, m


@pointwise(conv_copies=(0,))
def _causal_c(x_gates, h_gates, c_gates, c, forget_bias: float):
    """The Causal LSTM's new c from the x, h and c gate convolutions."""
    i_x, f_x, g_x = x_gates.chunk(7, dim=1)[:3]
    i_h, f_h, g_h, _ = h_gates.chunk(4, dim=1)
    i_c, f_c, g_c = c_gates.chunk(3, dim=1)
    return torch.sigmoid(f_x + f_h + f_c + forget_bias) * c + torch.sigmoid(
        i_x + i_h + i_c
    ) * torch.tanh(g_x + g_h + g_c)


@pointwise
def _causal_m(x_gates, m_gates, c2m, forget_bias: float):
    """The Causal LSTM's new m from the x and m gate convolutions and the new c's."""
    _, _, _, i_xm, f_xm, g_xm, _ = x_gates.chunk(7, dim=1)
    i_m, f_m, m_m = m_gates.chunk(3, dim=1)
    i_cm, g_cm, f_cm, _ = c2m.chunk(4, dim=1)
    return torch.sigmoid(f_xm + f_m + f_cm + forget_bias) * torch.tanh(m_m) + torch.sigmoid(
        i_xm + i_m + i_cm
    ) * torch.tanh(g_xm + g_cm)


@pointwise
def _causal_output(x_gates, h_gates, c2m, o_m, last):
    """The Causal LSTM's hidden state: tanh(o_x + o_h + o_cm + W_om∗m) ⊙ tanh(W_1×1∗[c, m])."""
    o_x = x_gates.chunk(7, dim=1)[6]
    o_h = h_gates.chunk(4, dim=1)[3]
    o_cm = c2m.chunk(4, dim=1)[3]
    return torch.tanh(o_x + o_h + o_cm + o_m) * torch.tanh(last)


class GradientHighwayUnit(nn.Module):
    """z ← u ⊙ tanh(p) + (1 − u) ⊙ z: a short path for gradients across time.
    `norm_size` (H, W): a LayerNorm over [2h, H, W] follows each convolution; None: none."""

    def __init__(
        self, hidden: int, kernel_size: int, norm_size: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.conv_x = _conv(hidden, 2 * hidden, kernel_size)
        self.conv_z = _conv(hidden, 2 * hidden, kernel_size)
        for conv in (self.conv_x, self.conv_z):  # as PredRNN++ / OpenSTL: U(±0.001)
            nn.init.uniform_(conv.weight, -0.001, 0.001)
        self.norm_x = gate_norm(2 * hidden, norm_size)
        self.norm_z = gate_norm(2 * hidden, norm_size)

    def forward(self, x, z):
        return _highway(self.norm_x(self.conv_x(x)), self.norm_z(self.conv_z(z)), z)


@pointwise
def _highway(x_gates, z_gates, z):
    """The GHU's arithmetic after its two convolutions: the new z."""
    p_x, u_x = x_gates.chunk(2, dim=1)
    p_z, u_z = z_gates.chunk(2, dim=1)
    u = torch.sigmoid(u_x + u_z)
    return u * torch.tanh(p_x + p_z) + (1 - u) * z


class PredRNNpp(FrameRecurrent):
    """PredRNN++: stacked Causal LSTMs with a GHU between layers 1 and 2."""

    Args = PredRNNArgs

    def __init__(self, spec: FrameSpec, args: PredRNNArgs | None = None) -> None:
        super().__init__()
        args = args or self.Args()
        in_channels, kernel_size, forget_bias = spec.channels, args.kernel_size, args.forget_bias
        hidden_channels = list(args.hidden_channels)
        if len(set(hidden_channels)) != 1 or len(hidden_channels) < 2:
            raise ValueError("PredRNN++ needs at least 2 layers of equal hidden_channels")
        check_odd_kernels(kernel_size=kernel_size)
        hidden = hidden_channels[0]
        norm_size = (spec.height, spec.width) if args.layer_norm else None
        self.cells = nn.ModuleList(
            CausalLSTMCell(
                in_channels if i == 0 else hidden, hidden, kernel_size, forget_bias, norm_size
            )
            for i in range(len(hidden_channels))
        )
        self.highway = GradientHighwayUnit(hidden, kernel_size, norm_size)
        self.output = nn.Conv2d(hidden, in_channels, 1, bias=False)

    def init_state(self, frames_BTCHW):
        b, _, _, height, width = frames_BTCHW.shape
        zeros = frames_BTCHW.new_zeros(b, self.cells[0].hidden, height, width)
        return [(zeros, zeros) for _ in self.cells], zeros, zeros

    def encode(self, frames_NCHW):
        return self.cells[0].input_side(frames_NCHW)

    def advance(self, x_gates, state):
        layers, m, z = state
        new_layers = []
        for i, (cell, (h, c)) in enumerate(zip(self.cells, layers)):
            if i == 0:  # from the encoded frame
                h, c, m = cell.advance(x_gates, h, c, m)
            elif i == 1:  # from the GHU, between the first two layers
                z = self.highway(new_layers[0][0], z)
                h, c, m = cell(z, h, c, m)
            else:
                h, c, m = cell(new_layers[-1][0], h, c, m)
            new_layers.append((h, c))
        return new_layers[-1][0], (new_layers, m, z)

    def decode(self, h_top):
        return self.output(h_top)
