"""MIM, Memory In Memory (Wang et al., CVPR 2019), in two forms chosen by `variant`.

Legend: B batch, T time, C channels, H×W frame size (after patching); h hidden channels.

A PredRNN-like stack: the first layer is an ST-LSTM (`predrnn.STLSTMCell`); every higher
layer is a MIM block, in which the ST-LSTM's forget gate on the temporal cell state is
replaced by two cascaded recurrent modules that model non-stationarity:

* MIM-N (one per layer above the first, with its own hidden and cell states) reads a
  difference signal (below) and outputs D^l_t;
* MIM-S (inside the block) is an LSTM whose input is D^l_t and whose hidden state is the
  block's previous cell state C^l_{t−1}; its output T^l_t stands in for f ⊙ C^l_{t−1}, so
  C^l_t = T^l_t + i ⊙ g.

Both MIM modules use peephole weights on their cell states, as in the paper's code. The
spatiotemporal memory M zigzags through the layers as in PredRNN; a 1×1 convolution of the
top hidden state gives the next frame. The two forms differ in what MIM-N reads:

* `paper` (default; stpdist's form before issue 23): every MIM-N reads the change
  H^{l−1}_t − H^{l−1}_{t−1} of the hidden state of the layer below (the diagonal link of the
  paper's figure). At the first step there is no previous hidden state: MIM-N runs on a zero
  difference. Peepholes 1×2h×H×W and 1×h×H×W.
* `openstl`: OpenSTL's MIM (`mim_model.py`, `mim_modules.py`; it ports the official code):
  only the second layer's MIM-N reads that change; from the third layer up MIM-N reads the
  MIM-N output D^{l−1}_t of the layer below. MIM-N does not run at the first step (OpenSTL
  calls it and discards the result; its states start at zero at the second step) and the
  blocks read D = 0 there. The MIM-S cell state enters each step detached, as OpenSTL's
  `MIMBlock` does (forward unchanged, no gradient through it across steps). Peepholes
  2h×H×W and h×H×W, OpenSTL's shapes. Given OpenSTL's weights (key map below) the forward,
  the loss and the gradients are OpenSTL's to float64 rounding (checked by running its code
  at commit c74deb5: outputs ≤3e-15, gradients ≤6e-16, with and without `layer_norm`, 2 to
  5 layers, per-sample scheduled sampling; without the detach the gradients differ by 8e-3).

  Not copied: OpenSTL's `MIMBlock` keeps the MIM-S cell state on the module
  (`self.convlstm_c`) and never resets it, so each batch starts from the last step of the
  previous batch (detached), the first call from zero: two calls on the same batch differ
  (issue 23 measured 7.9e-2 at its Moving MNIST settings), evaluation depends on what ran
  before, and a batch of another size fails. Here every sequence starts from zero, as
  OpenSTL's first call does.

OpenSTL state-dict key → `openstl` key (layer l ≥ 1, j = l − 1; `.0` is the convolution of
each `nn.Sequential` (`.weight`), `.1` its LayerNorm when `layer_norm` (`.weight`, `.bias`),
mapped to `conv_*` and `norm_*`):

| OpenSTL                                   | stpdist                                   |
|-------------------------------------------|-------------------------------------------|
| stlstm_layer.0.conv_{x,h,m,o}.{0,1}       | first.{conv,norm}_{x,h,m,o}               |
| stlstm_layer.0.conv_last.weight           | first.conv_last.weight                    |
| stlstm_layer.l.conv_x_cc.{0,1}            | blocks.j.{conv_x,norm_x}                  |
| stlstm_layer.l.conv_t_cc.{0,1}            | blocks.j.{conv_h,norm_h}                  |
| stlstm_layer.l.conv_s_cc.{0,1}            | blocks.j.{conv_m,norm_m}                  |
| stlstm_layer.l.conv_last.weight           | blocks.j.conv_last.weight                 |
| stlstm_layer.l.conv_x_concat.{0,1}        | blocks.j.stationary.{conv_x,norm_x}       |
| stlstm_layer.l.conv_h_concat.{0,1}        | blocks.j.stationary.{conv_h,norm_h}       |
| stlstm_layer.l.ct_weight                  | blocks.j.stationary.peephole_if           |
| stlstm_layer.l.oc_weight                  | blocks.j.stationary.peephole_o            |
| stlstm_layer_diff.j.conv_x_concat.{0,1}   | nonstationary.j.{conv_x,norm_x}           |
| stlstm_layer_diff.j.conv_h_concat.{0,1}   | nonstationary.j.{conv_h,norm_h}           |
| stlstm_layer_diff.j.ct_weight             | nonstationary.j.peephole_if               |
| stlstm_layer_diff.j.oc_weight             | nonstationary.j.peephole_o                |
| stlstm_layer_diff.j.conv_last.weight      | — (never used by OpenSTL's forward: drop) |
| conv_last.weight                          | output.weight                             |

Shapes are equal one to one. OpenSTL's `MIMN` builds a 1×1 `conv_last` (2h → h) that its
forward never calls: 3 × 32,768 = 98,304 parameters at the settings below, not built here
(they would get no gradient, which DDP rejects).

At OpenSTL's Moving MNIST settings (patch 4 → 16×16×16, hidden 128×4, filter 5, 10→10;
OpenSTL: `MIM_Model(4, [128]*4, configs)` with in_shape (10, 1, 64, 64), patch_size 4,
filter_size 5, stride 1, layer_norm 0, pre_seq_length 10, aft_seq_length 10), measured with
`torch.utils.flop_counter.FlopCounterMode` (MACs = flops/2, batch 1):

| variant | parameters | OpenSTL | GMACs  | OpenSTL FLOPs |
|---------|-----------:|--------:|-------:|--------------:|
| paper   | 37,945,344 |  38.0M  | 181.70 |       179.2G  |
| openstl | 37,945,344 |  38.0M  | 179.18 |       179.2G  |

OpenSTL's model has 38,043,648 parameters (with the unused 98,304). Its forward, counted
the same way, is 181.70 GMACs: it runs MIM-N at the first step (3 layers × 2 convolutions
of 128→512 at 5×5 over 16×16 positions = 2.52 GMACs) and throws the result away; its table's
179.2G leaves that out. `openstl` does not run it (179.18); `paper` runs it on the zero
difference and uses the result.

`layer_norm` (OpenSTL's option, off by default) follows every gate convolution (the
ST-LSTM's, the MIM block's, MIM-N's and MIM-S's) with a LayerNorm over [its output
channels, H, W]; the 1×1 `conv_last` and the peepholes stay unnormalised. In `paper` the
first step's MIM-N then outputs its LayerNorm biases' response to a zero difference; in
`openstl` the blocks read zero there, as in OpenSTL.

Fused kernels (`model.fused_kernels`, `stpdist.models.fused`): the arithmetic between the
convolutions (MIM-N's and MIM-S's gates, a block's memories and its output; the first
layer's as in PredRNN) runs as fused regions; the LayerNorms stay outside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal  # noqa: UP035 - OmegaConf reads these

import torch
from torch import nn

from .base import FrameSpec, check_odd_kernels, gate_norm
from .fused import pointwise
from .predrnn import STLSTMCell
from .recurrent import FrameRecurrent


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)


class PeepholeLSTM(nn.Module):
    """The LSTM shared by MIM-N and MIM-S: gates from conv(x) + conv(h) + peepholes on c
    (input and forget on c_{t−1}, output on c_t). `layer_norm`: a LayerNorm over
    [4h, H, W] after each convolution. `batch_axis`: peepholes 1×h×H×W (else h×H×W,
    OpenSTL's shape; the product broadcasts the same). `h_feeds_convolutions` (MIM-N):
    only convolutions read its h, which under autocast then comes out in their dtype."""

    def __init__(
        self,
        hidden: int,
        kernel_size: int,
        height: int,
        width: int,
        forget_bias: float,
        layer_norm: bool = False,
        batch_axis: bool = True,
        h_feeds_convolutions: bool = False,
    ):
        super().__init__()
        self.forget_bias = forget_bias
        self.h_feeds_convolutions = h_feeds_convolutions
        self.conv_x = _conv(hidden, 4 * hidden, kernel_size)
        self.conv_h = _conv(hidden, 4 * hidden, kernel_size)
        lead = (1,) if batch_axis else ()
        self.peephole_if = nn.Parameter(torch.zeros(*lead, 2 * hidden, height, width))
        self.peephole_o = nn.Parameter(torch.zeros(*lead, hidden, height, width))
        norm_size = (height, width) if layer_norm else None
        self.norm_x = gate_norm(4 * hidden, norm_size)
        self.norm_h = gate_norm(4 * hidden, norm_size)

    def forward(self, x, h, c):
        x_gates = self.norm_x(self.conv_x(x))
        h_gates = self.norm_h(self.conv_h(h))
        region = _peephole_lstm_to_convolutions if self.h_feeds_convolutions else _peephole_lstm
        return region(
            x_gates, h_gates, c, self.peephole_if, self.peephole_o, scalars=(self.forget_bias,)
        )


@pointwise  # MIM-S: its h (the trend) enters the block's arithmetic
def _peephole_lstm(x_gates, h_gates, c, peephole_if, peephole_o, forget_bias: float):
    """MIM-N's and MIM-S's arithmetic after their two gate convolutions: (new h, new c)."""
    i_x, g_x, f_x, o_x = x_gates.chunk(4, dim=1)
    i_h, g_h, f_h, o_h = h_gates.chunk(4, dim=1)
    i_c, f_c = (peephole_if * torch.cat([c, c], dim=1)).chunk(2, dim=1)
    i = torch.sigmoid(i_x + i_h + i_c)
    f = torch.sigmoid(f_x + f_h + f_c + forget_bias)
    c = f * c + i * torch.tanh(g_x + g_h)
    o = torch.sigmoid(o_x + o_h + peephole_o * c)
    return o * torch.tanh(c), c


@pointwise(conv_outputs=(0,))  # MIM-N: its h (D) feeds only convolutions
def _peephole_lstm_to_convolutions(x_gates, h_gates, c, peephole_if, peephole_o, forget_bias):
    """MIM-N's arithmetic: `_peephole_lstm`'s, its h in the convolutions' dtype."""
    return _peephole_lstm.fn(x_gates, h_gates, c, peephole_if, peephole_o, forget_bias)


class MIMBlock(nn.Module):
    """ST-LSTM whose temporal forget path is MIM-S; returns (h, c, m, MIM-S cell).
    `layer_norm`: a LayerNorm over [channels, H, W] after each gate convolution;
    `batch_axis`: the peephole shape (see `PeepholeLSTM`)."""

    def __init__(
        self,
        hidden: int,
        kernel_size: int,
        height: int,
        width: int,
        forget_bias: float,
        layer_norm: bool = False,
        batch_axis: bool = True,
    ):
        super().__init__()
        self.forget_bias = forget_bias
        self.conv_x = _conv(hidden, 4 * hidden, kernel_size)
        self.conv_h = _conv(hidden, 3 * hidden, kernel_size)
        self.conv_m = _conv(hidden, 4 * hidden, kernel_size)
        self.conv_last = nn.Conv2d(2 * hidden, hidden, 1, bias=False)
        self.stationary = PeepholeLSTM(
            hidden, kernel_size, height, width, forget_bias, layer_norm, batch_axis
        )
        norm_size = (height, width) if layer_norm else None
        self.norm_x = gate_norm(4 * hidden, norm_size)
        self.norm_h = gate_norm(3 * hidden, norm_size)
        self.norm_m = gate_norm(4 * hidden, norm_size)

    def forward(self, x, difference, h, c, m, stationary_c):
        x_gates = self.norm_x(self.conv_x(x))
        h_gates = self.norm_h(self.conv_h(h))
        m_gates = self.norm_m(self.conv_m(m))
        # MIM-S: input D (from MIM-N), hidden C_{t−1}; its output replaces f ⊙ C_{t−1}
        trend, stationary_c = self.stationary(difference, c, stationary_c)
        c, m, o, memory = _block_memories(
            x_gates, h_gates, m_gates, trend, m, scalars=(self.forget_bias,)
        )
        return _block_output(o, self.conv_last(memory)), c, m, stationary_c


# c (MIM-S reads it as its hidden state) and [c, m]: read by convolutions only
@pointwise(conv_outputs=(0, 3))
def _block_memories(x_gates, h_gates, m_gates, trend, m, forget_bias: float):
    """A MIM block's arithmetic from its three gate convolutions and MIM-S's output (the
    trend): (new c, new m, output gate, [c, m])."""
    i_x, g_x, f_x, o_x = x_gates.chunk(4, dim=1)
    i_h, g_h, o_h = h_gates.chunk(3, dim=1)
    i_m, g_m, f_m, o_m = m_gates.chunk(4, dim=1)
    c = trend + torch.sigmoid(i_x + i_h) * torch.tanh(g_x + g_h)
    m = torch.sigmoid(f_x + f_m + forget_bias) * m + torch.sigmoid(i_x + i_m) * torch.tanh(
        g_x + g_m
    )
    o = torch.sigmoid(o_x + o_h + o_m)
    return c, m, o, torch.cat([c, m], dim=1)


@pointwise
def _block_output(o, last):
    """A MIM block's hidden state: o ⊙ tanh(W_1×1∗[c, m])."""
    return o * torch.tanh(last)


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
    variant: Literal["paper", "openstl"] = "paper"
    """`paper`: every MIM-N reads the change of the hidden state of the layer below.
    `openstl`: OpenSTL's (and the official code's) form: from the third layer up MIM-N
    reads the MIM-N output of the layer below; see the module docstring."""


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
        if args.variant not in ("paper", "openstl"):
            raise ValueError(f"MIM variant must be 'paper' or 'openstl', got {args.variant!r}")
        check_odd_kernels(kernel_size=args.kernel_size)
        hidden, k = hidden_channels[0], args.kernel_size
        hw = (spec.height, spec.width)
        self.hidden = hidden
        self.openstl = args.variant == "openstl"
        batch_axis = not self.openstl
        self.first = STLSTMCell(
            spec.channels, hidden, k, args.forget_bias, hw if args.layer_norm else None
        )
        self.blocks = nn.ModuleList(
            MIMBlock(hidden, k, *hw, args.forget_bias, args.layer_norm, batch_axis)
            for _ in hidden_channels[1:]
        )
        self.nonstationary = nn.ModuleList(
            PeepholeLSTM(  # MIM-N: its h (D) feeds MIM-S's and its own convolutions only
                hidden, k, *hw, args.forget_bias, args.layer_norm, batch_axis, True
            )
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

    def _difference(self, i: int, h: list, previous_h: list, n_h: list) -> torch.Tensor:
        """What MIM-N of layer i + 1 reads (after the first step): the change of the hidden
        state of layer i (the diagonal link); `openstl` above the second layer: the MIM-N
        output of layer i, already updated at this step."""
        if self.openstl and i > 0:
            return n_h[i - 1]
        return h[i] - previous_h[i]

    def encode(self, frames_NCHW: torch.Tensor) -> torch.Tensor:
        return self.first.input_side(frames_NCHW)

    def advance(self, x_gates: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        h, c, n_h, n_c, s_c = (list(state[k]) for k in ("h", "c", "n_h", "n_c", "s_c"))
        previous_h, first_step = state["h"], state["first_step"]
        h[0], c[0], m, _, _ = self.first.advance(x_gates, h[0], c[0], state["m"])
        for i, (block, nonstationary) in enumerate(zip(self.blocks, self.nonstationary)):
            if not first_step:
                difference = self._difference(i, h, previous_h, n_h)
                n_h[i], n_c[i] = nonstationary(difference, n_h[i], n_c[i])
            elif not self.openstl:  # no previous hidden state: a zero difference
                n_h[i], n_c[i] = nonstationary(torch.zeros_like(h[i]), n_h[i], n_c[i])
            # (openstl, first step: OpenSTL discards MIM-N's output; D and its states stay 0)
            # OpenSTL feeds MIM-S its cell state detached (no gradient across steps)
            stationary_c = s_c[i].detach() if self.openstl else s_c[i]
            h[i + 1], c[i + 1], m, s_c[i] = block(h[i], n_h[i], h[i + 1], c[i + 1], m, stationary_c)
        new_state = {
            "h": h,
            "c": c,
            "m": m,
            "n_h": n_h,
            "n_c": n_c,
            "s_c": s_c,
            "first_step": False,
        }
        return h[-1], new_state

    def decode(self, h_top: torch.Tensor) -> torch.Tensor:
        return self.output(h_top)
