"""E3D-LSTM, Eidetic 3D LSTM (Wang et al., ICLR 2019), in two forms chosen by `variant`.

Legend: B batch, T time, C channels, H×W frame size (after patching); h hidden channels,
w the window depth (`window_length`).

At every step the cell sees a short clip, the last w frames (zeros before the first),
and all its states (H, C, M) are h×w×H×W. Both forms share the recall: the cell state is
updated through the recall gate, an attention of R_t (queries) over every past cell state
C_{t−τ:t−1} (keys = values), τ all past states by default:

    C_t = I_t ⊙ G_t + LayerNorm(C_{t−1} + softmax(R_t·C_{t−τ:t−1}ᵀ) · C_{t−τ:t−1})

and a (w×1×1, stride w) 3D convolution of the top hidden state gives the next frame.

`paper` (the default; the paper's equations):
- gates are 3D convolutions (kernel `temporal_kernel_size`×k×k) padded causally in time,
  so each of the w depths gets its own output;
- the recall attends over proper tokens: one per w·H·W position, h channels each,
  scaled by 1/√h (the paper writes it unscaled);
- the memory M zigzags through the layers as in PredRNN: M = I' ⊙ G' + F' ⊙ M, from a
  memory convolution 3h wide (I', G', F');
- O = σ(conv X + conv H + conv C_t + conv M_t) and H_t = O ⊙ tanh(1×1×1 conv [C_t, M_t]).

`openstl` (OpenSTL's E3DLSTM_Model and Eidetic3DLSTMCell, quirks included; its forward is
identical given the same weights, checked in float64 against OpenSTL's code):
- gate convolutions are unpadded in time: a depth-2 kernel over the depth-2 clip yields
  ONE depth, which is copied to both (nearest-neighbour resize back to w×H×W; with
  `stride` 2, OpenSTL's KTH setting, each value is also copied to a 2×2 block);
- the recall reshapes each tensor's per-sample values, in memory order, into rows of h
  (not a transpose: a row mixes channels and positions) and is not scaled;
- the memory convolution is 4h wide (I', F', G', M'); the new memory is
  σ(F') ⊙ tanh(M') + σ(I') ⊙ tanh(G'), and feeds only this cell's output: the cell hands
  back the memory it was GIVEN, so the M passed between layers and steps stays zero;
- O = σ(tanh(conv X + conv H + conv C_t + conv M_t)).

At OpenSTL's settings (hidden 128×4, kernel 2×5×5, w = 2, recall over all past states),
counted with `torch.utils.flop_counter.FlopCounterMode` (MACs = flops/2, batch 1), next
to OpenSTL's table (whose "FLOPs" are fvcore multiply-accumulates):

| settings                                | variant | parameters |  GMACs | OpenSTL        |
|-----------------------------------------|---------|-----------:|-------:|----------------|
| Moving MNIST 1×64×64, patch 4, 10→10    | openstl | 51,347,456 | 298.84 | 51.0M, 298.9G  |
| Moving MNIST                            | paper   | 48,070,656 | 513.51 |                |
| KTH 1×128×128, patch 8, stride 2, 10→20 | openstl | 53,510,144 | 216.91 | 53.5M, 217.0G  |
| TaxiBJ 2×32×32, patch 2, 4→4            | openstl | 50,987,008 |  98.18 | 50.99M, 98.19G |

Moving MNIST, `openstl`: (50,688,000 gate-convolution weights × 256 positions + the
1×1×1 convolutions) × 19 steps = 247.8, plus the recall attention 51.00 (512 queries
over 512·k keys at step k, 2 products of h = 128, 4 layers). `paper`: its convolutions
produce w = 2 depths (462.49) and its memory convolution is 3h wide (3,276,800 fewer
parameters). In `openstl` the memory convolution only ever sees the zero memory it is
handed, so its weights get no gradient (with `layer_norm`, the bias of the LayerNorm after
it is all that trains); they are kept: they are OpenSTL's, and in its parameter count.

OpenSTL state-dict keys → stpdist's (`openstl` variant; i the layer; shapes equal):

    cell_list.{i}.conv_x.0.conv3d.weight         → cells.{i}.conv_x.weight
    cell_list.{i}.conv_h.0.conv3d.weight         → cells.{i}.conv_h.weight
    cell_list.{i}.conv_gm.0.conv3d.weight        → cells.{i}.conv_m.weight
    cell_list.{i}.conv_new_cell.0.conv3d.weight  → cells.{i}.conv_c_out.weight
    cell_list.{i}.conv_new_gm.0.conv3d.weight    → cells.{i}.conv_m_out.weight
    cell_list.{i}.conv_last.conv3d.weight        → cells.{i}.conv_last.weight
    cell_list.{i}._norm_c_t.{weight,bias}        → cells.{i}.norm_c.{weight,bias}
    conv_last.weight                             → output.weight
  with layer_norm, the LayerNorm after each gate convolution:
    cell_list.{i}.conv_{x,h}.1.{weight,bias}     → cells.{i}.norm_{x,h}.{weight,bias}
    cell_list.{i}.conv_gm.1.{weight,bias}        → cells.{i}.norm_m.{weight,bias}
    cell_list.{i}.conv_new_cell.1.{weight,bias}  → cells.{i}.norm_c_out.{weight,bias}
    cell_list.{i}.conv_new_gm.1.{weight,bias}    → cells.{i}.norm_m_out.{weight,bias}

`layer_norm` (OpenSTL's option, off by default) follows every gate convolution (input,
hidden, memory, and the output gate's convolutions of C_t and M_t) with a LayerNorm over
[its output channels, w, H, W]; the 1×1×1 `conv_last` stays unnormalised. The LayerNorm
of the recall (`norm_c`) is part of the cell and there either way.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .base import FrameSpec, check_odd_kernels, gate_norm
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

    memory_gates = 3
    """I', G', F': the gates the memory convolution feeds."""

    @staticmethod
    def gate_conv(cin: int, cout: int, temporal_kernel: int, kernel: int, stride: int) -> nn.Conv3d:
        """The paper's gate convolution (`stride` is 1 here: checked by the model)."""
        return CausalConv3d(cin, cout, temporal_kernel, kernel)

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
        stride: int = 1,
    ) -> None:
        super().__init__()
        self.hidden, self.forget_bias = hidden, forget_bias
        conv = lambda i, o: self.gate_conv(i, o, temporal_kernel_size, kernel_size, stride)  # noqa: E731
        self.conv_x = conv(cin, 7 * hidden)
        self.conv_h = conv(hidden, 4 * hidden)
        self.conv_m = conv(hidden, self.memory_gates * hidden)
        self.conv_c_out = conv(hidden, hidden)
        self.conv_m_out = conv(hidden, hidden)
        self.conv_last = nn.Conv3d(2 * hidden, hidden, 1, bias=False)
        self.norm_c = nn.LayerNorm([hidden, window, height, width])
        norm_size = (window, height, width) if layer_norm else None
        self.norm_x = gate_norm(7 * hidden, norm_size)
        self.norm_h = gate_norm(4 * hidden, norm_size)
        self.norm_m = gate_norm(self.memory_gates * hidden, norm_size)
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


class DepthRepeatingConv3d(nn.Conv3d):
    """OpenSTL's gate convolution: 3D conv, no bias, padded k//2 in space, unpadded in time,
    `stride` in all three dimensions, its output resized back to the input's w×H×W by
    nearest-neighbour repetition (k_t = w: one depth, copied to every depth; stride 2: each
    output value copied to a 2×2 block as well)."""

    def __init__(
        self, cin: int, cout: int, temporal_kernel_size: int, kernel_size: int, stride: int = 1
    ) -> None:
        super().__init__(
            cin,
            cout,
            (temporal_kernel_size, kernel_size, kernel_size),
            stride=stride,
            padding=(0, kernel_size // 2, kernel_size // 2),
            bias=False,
        )

    def forward(self, x_BCDHW: torch.Tensor) -> torch.Tensor:
        y_BCDHW = super().forward(x_BCDHW)
        if y_BCDHW.shape[2] == x_BCDHW.shape[2]:
            return y_BCDHW
        return nn.functional.interpolate(y_BCDHW, size=x_BCDHW.shape[2:], mode="nearest")


class OpenSTLEidetic3DLSTMCell(Eidetic3DLSTMCell):
    """OpenSTL's E3D-LSTM cell (variant `openstl`), quirks included; returns (h, c, m) where
    m is the memory it was GIVEN (the new memory only feeds this cell's output).

    Parameters match OpenSTL's `Eidetic3DLSTMCell` one to one (same shapes, same gate
    order within each convolution), under stpdist's names; see the module docstring."""

    gate_conv = DepthRepeatingConv3d
    memory_gates = 4
    """I', F', G' and a fourth gate whose tanh replaces M in the forget path."""

    def recall(self, query_BhDHW: torch.Tensor, past_c: list[torch.Tensor]) -> torch.Tensor:
        """OpenSTL's attention: each tensor's per-sample values read in memory order as rows
        of h (a reshape, not a transpose: a row mixes positions and channels), unscaled."""
        b, h = query_BhDHW.shape[:2]
        query = query_BhDHW.reshape(b, -1, h)
        memory = torch.cat([c.reshape(b, -1) for c in past_c], dim=1).reshape(b, -1, h)
        recalled = nn.functional.scaled_dot_product_attention(query, memory, memory, scale=1.0)
        return recalled.reshape(query_BhDHW.shape)

    def forward(self, x, h, c, m, past_c):
        i_x, g_x, r_x, o_x, i_xm, g_xm, f_xm = self.norm_x(self.conv_x(x)).chunk(7, dim=1)
        i_h, g_h, r_h, o_h = self.norm_h(self.conv_h(h)).chunk(4, dim=1)
        recall_gate = torch.sigmoid(r_x + r_h)
        c = self.norm_c(c + self.recall(recall_gate, past_c)) + torch.sigmoid(
            i_x + i_h
        ) * torch.tanh(g_x + g_h)
        i_m, f_m, g_m, m_m = self.norm_m(self.conv_m(m)).chunk(4, dim=1)
        new_m = torch.sigmoid(f_xm + f_m + self.forget_bias) * torch.tanh(m_m) + torch.sigmoid(
            i_xm + i_m
        ) * torch.tanh(g_xm + g_m)
        o = torch.tanh(
            o_x
            + o_h
            + self.norm_c_out(self.conv_c_out(c))
            + self.norm_m_out(self.conv_m_out(new_m))
        )
        h = torch.tanh(self.conv_last(torch.cat([c, new_m], dim=1))) * torch.sigmoid(o)
        return h, c, m  # OpenSTL hands back the memory it was given: M stays zero


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
    variant: Literal["paper", "openstl"] = "paper"
    """`paper`: the equations of the paper (see the module docstring); `openstl`: OpenSTL's
    network, quirks included, identical to its forward given its weights."""
    stride: int = 1
    """`openstl` only: the stride of every gate convolution (OpenSTL's `stride`; its KTH
    recipe uses 2), whose output is then repeated back to full size; `paper` needs 1."""


RECALL_WARNING_BYTES = 2 * 1024**3
"""Attention weights a training step keeps per sample above which `E3DLSTM` warns."""


def recall_bytes(spec: FrameSpec, window: int, recall_window: int | None, layers: int) -> int:
    """The float32 attention weights the recall gates keep for the backward, per sample,
    over a training step: each of the T_in + T_out − 1 steps of each layer attends from
    every one of the w·H·W positions to every position of up to `recall_window` past
    states (all of them when None), so the total grows with (w·H·W)² and with the frames
    squared. (Reviewed against peak memory: 24×40 frames, w 2, 2 layers, 12 → 6 frames:
    4.5 GB estimated, 5.1 GB measured at batch 1.)"""
    positions = window * spec.height * spec.width
    steps = spec.num_input_frames + spec.num_output_frames - 1
    recalled = sum(min(t, recall_window or t) for t in range(1, steps + 1))
    return 4 * layers * positions * positions * recalled


def _warn_of_recall_memory(
    spec: FrameSpec, window: int, recall_window: int | None, layers: int
) -> None:
    """Said at build when the recall attention alone needs more than RECALL_WARNING_BYTES a
    sample: at full resolution it ran a 24 GiB machine out of memory without a word (an
    unusual-shapes review: 48×80 frames, 4 hidden channels)."""
    needed = recall_bytes(spec, window, recall_window, layers)
    # said by rank 0 alone (a model file imports torch only: stpdist's console is not used)
    if needed > RECALL_WARNING_BYTES and os.environ.get("RANK", "0") in ("", "0"):
        logging.getLogger("stpdist").warning(
            "E3D-LSTM: its recall attention keeps about %.1f GiB a sample for a training "
            "step (%d×%d positions a state, w %d, %d layer(s), %s past states, %d steps), "
            "times the batch size; model.patch_size p divides it by p⁴, "
            "model.backbone.recall_window bounds the past states",
            needed / 1024**3, spec.height, spec.width, window, layers,
            "all" if recall_window is None else f"at most {recall_window}",
            spec.num_input_frames + spec.num_output_frames - 1,
        )  # fmt: skip


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
        if args.variant not in ("paper", "openstl"):
            raise ValueError(f"variant must be paper or openstl, got '{args.variant}'")
        if args.stride < 1 or (args.stride != 1 and args.variant != "openstl"):
            raise ValueError(f"stride {args.stride}: must be 1 (any ≥ 1 with variant openstl)")
        check_odd_kernels(kernel_size=args.kernel_size)
        hidden, w = hidden_channels[0], args.window_length
        self.hidden, self.window, self.recall_window = hidden, w, args.recall_window
        self.variant = args.variant
        cell = OpenSTLEidetic3DLSTMCell if args.variant == "openstl" else Eidetic3DLSTMCell
        self.cells = nn.ModuleList(
            cell(
                spec.channels if i == 0 else hidden,
                hidden,
                w,
                spec.height,
                spec.width,
                args.temporal_kernel_size,
                args.kernel_size,
                args.forget_bias,
                args.layer_norm,
                args.stride,
            )
            for i in range(len(hidden_channels))
        )
        self.output = nn.Conv3d(hidden, spec.channels, (w, 1, 1), stride=(w, 1, 1), bias=False)
        _warn_of_recall_memory(spec, w, args.recall_window, len(hidden_channels))

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

    def advance(self, frame_BCHW: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """(The top layer's H, the new state): the clip of the last frames slides by one,
        so the input side reads the state and stays in the step."""
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
        return h[-1], {"clip": clip, "h": h, "c": c, "past_c": past_c, "m": m}

    def decode(self, h_top: torch.Tensor) -> torch.Tensor:
        return self.output(h_top).squeeze(2)
