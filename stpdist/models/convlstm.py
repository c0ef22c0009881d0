"""ConvLSTM (Shi et al., NeurIPS 2015) in three forms, chosen by `variant`.

Legend: B batch, T time, C channels, H×W frame size (after patching).

* `stpdist` (default): one stack of Shi's cells (peephole weights 1×C×H×W on the cell
  state, a forget bias; all four gates from one convolution over [x, h]) steps through
  the frames (see `recurrent.FrameRecurrent` for which frame it sees); a 1×1 convolution
  over the concatenated hidden states of all layers maps to the next frame.
* `openstl`: OpenSTL's ConvLSTM, to reproduce its table: no peepholes, no forget bias,
  separate bias-free input and hidden convolutions (W_x∗x + W_h∗h), and a bias-free 1×1
  readout from the top layer only; the same frame loop.
* `shi`: the encoder–forecaster of Shi et al. that the seed project used. An encoder
  stack reads the T_in input frames; a forecaster stack of the same widths, each layer
  starting from the encoder layer's final (H, C), runs T_out steps with no frame input
  (layer l reads layer l−1's hidden state; the first reads nothing); a 1×1 convolution
  over the concatenated hidden states of all forecaster layers gives each output frame.
  Nothing is fed back, so there is no scheduled sampling and no `loss_frames: all` (both
  refused when the model is built: `feeds_back` is False). Cells as in `stpdist`.

At OpenSTL's Moving MNIST settings (patch 4 → 16×16×16, hidden 128×4, filter 5, 10→10),
measured with `torch.utils.flop_counter.FlopCounterMode` (MACs = flops/2, batch 1):

| variant | parameters | GMACs | OpenSTL (ConvLSTM) |
|---------|-----------:|------:|--------------------|
| stpdist | 12,077,072 | 56.82 |                    |
| openstl | 11,675,648 | 56.79 | 15.0M, 56.8G       |
| shi     | 23,941,136 | 59.29 |                    |

`openstl` computes exactly what OpenSTL's forward computes (56.8G agrees). Its 15.0M
counts 3,407,872 parameters that forward never uses: each OpenSTL cell also builds a 5×5
`conv_o` (2h → h, 819,200) and a 1×1 `conv_last` (2h → h, 32,768) that it never calls;
with them the count is 15,083,520 (0.6 % from 15.0M; test_zoo pins both). We do not build
them: they would get no gradient, which DDP rejects. `stpdist` has the same compute with
one convolution over [x, h] (one bias) instead of two, plus the peepholes (3×128×16×16
per layer) and a readout over all layers. `shi` has a second stack (the forecaster) and
runs T_in + T_out = 20 steps instead of 19. Every one of its steps is a call of `step`
(which `trainer.compile` compiles, and activation checkpointing recomputes), so its
encoder steps also compute a readout they do not use: 0.02 G of the 59.29 (59.27 without).

`layer_norm` (OpenSTL's option, off by default): a LayerNorm over [4h, H, W] follows
each gate convolution. The `openstl` cell normalises W_x∗x and W_h∗h separately, as
OpenSTL does; the `stpdist` and `shi` cells have one convolution over [x, h] (bias
included), so one LayerNorm normalises its output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal  # noqa: UP035 - OmegaConf reads these

import torch
from torch import nn

from .base import FrameSpec, check_odd_kernels, gate_norm
from .fused import conv_read, pointwise
from .recurrent import FrameRecurrent, SplitCell


class ConvLSTMCell(nn.Module):
    """Shi et al.'s cell; all four gates come from a single convolution over [input,
    hidden]. `in_channels` may be 0 (a forecaster layer without input: pass x = None).
    `layer_norm`: a LayerNorm over [4h, H, W] after that convolution."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int,
        height: int,
        width: int,
        forget_bias: float = 1.0,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(
            in_channels + hidden_channels,
            4 * hidden_channels,
            kernel_size,
            padding=kernel_size // 2,
        )
        self.norm = gate_norm(4 * hidden_channels, (height, width) if layer_norm else None)
        # peephole weights (Hadamard products with the cell state), 1×C×H×W as in the paper
        self.w_ci = nn.Parameter(torch.zeros(1, hidden_channels, height, width))
        self.w_cf = nn.Parameter(torch.zeros(1, hidden_channels, height, width))
        self.w_co = nn.Parameter(torch.zeros(1, hidden_channels, height, width))
        self.forget_bias = forget_bias

    def forward(
        self, x_BCHW: torch.Tensor | None, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        inputs = h if x_BCHW is None else torch.cat([x_BCHW, h], dim=1)
        gates = self.norm(self.gates(inputs))
        return _peephole_gates(
            gates, c, self.w_ci, self.w_cf, self.w_co, scalars=(self.forget_bias,)
        )


@pointwise(conv_outputs=(0,))  # H: read by the gate and readout convolutions only
def _peephole_gates(
    gates: torch.Tensor,
    c: torch.Tensor,
    w_ci: torch.Tensor,
    w_cf: torch.Tensor,
    w_co: torch.Tensor,
    forget_bias: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shi et al.'s gate arithmetic after the gate convolution: (new H, new C)."""
    i, f, g, o = gates.chunk(4, dim=1)
    i = torch.sigmoid(i + w_ci * c)
    f = torch.sigmoid(f + w_cf * c + forget_bias)
    c = f * c + i * torch.tanh(g)
    o = torch.sigmoid(o + w_co * c)
    return o * torch.tanh(c), c


@pointwise(conv_outputs=(0,))  # H: read by the gate and readout convolutions only
def _lstm_gates(
    x_gates: torch.Tensor, h_gates: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenSTL's gate arithmetic from W_x∗x and W_h∗h: (new H, new C)."""
    i, f, g, o = (x_gates + h_gates).chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class OpenSTLConvLSTMCell(SplitCell):
    """OpenSTL's cell: bias-free W_x∗x + W_h∗h for the gates i, f, g, o; no peepholes,
    no forget bias. `norm_size` (H, W): each convolution is followed by a LayerNorm over
    [4h, H, W] (OpenSTL's `layer_norm`); None: none."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int,
        norm_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        padding = kernel_size // 2
        self.conv_x = nn.Conv2d(
            in_channels, 4 * hidden_channels, kernel_size, padding=padding, bias=False
        )
        self.conv_h = nn.Conv2d(
            hidden_channels, 4 * hidden_channels, kernel_size, padding=padding, bias=False
        )
        self.norm_x = gate_norm(4 * hidden_channels, norm_size)
        self.norm_h = gate_norm(4 * hidden_channels, norm_size)

    def _input_side(self, x_BCHW: torch.Tensor) -> torch.Tensor:  # the input's gate conv
        return self.norm_x(self.conv_x(x_BCHW))

    def _advance(
        self, x_gates: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        return _lstm_gates(x_gates, self.norm_h(self.conv_h(h)), c)


@dataclass
class ConvLSTMArgs:
    variant: Literal["stpdist", "openstl", "shi"] = "stpdist"
    """`stpdist` (one stack, readout over all layers), `openstl` (OpenSTL's exact model) or
    `shi` (Shi et al.'s encoder–forecaster); see the module docstring."""
    hidden_channels: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden channels of each stacked layer (of each stack, for `shi`)."""
    kernel_size: int = 5
    """Convolution kernel of the gates."""
    forget_bias: float | None = None
    """Added to the forget gate's pre-activation (None: 1.0 for `stpdist` and `shi`; the
    `openstl` cell has none, and a value there is an error)."""
    layer_norm: bool = False
    """Follow each gate convolution with a LayerNorm over [channels, H, W] (OpenSTL's
    `layer_norm`); off leaves the model exactly as without the option."""


class ConvLSTM(FrameRecurrent):
    """ConvLSTM in the form `args.variant`, with the shared backbone signature."""

    Args = ConvLSTMArgs

    def __init__(self, spec: FrameSpec, args: ConvLSTMArgs | None = None) -> None:
        super().__init__()
        args = args or ConvLSTMArgs()
        in_channels, height, width = spec.channels, spec.height, spec.width
        hidden_channels, kernel_size = list(args.hidden_channels), args.kernel_size
        if not hidden_channels:
            raise ValueError("hidden_channels needs at least one layer")
        if args.variant not in ("stpdist", "openstl", "shi"):
            raise ValueError(f"variant must be stpdist, openstl or shi, got '{args.variant}'")
        check_odd_kernels(kernel_size=kernel_size)
        self.variant = args.variant
        self.feeds_back = args.variant != "shi"
        norm_size = (height, width) if args.layer_norm else None
        if args.variant == "openstl":
            if args.forget_bias is not None:
                raise ValueError("the openstl ConvLSTM has no forget bias; leave forget_bias unset")
            self.cells, previous = nn.ModuleList(), in_channels
            for hidden in hidden_channels:
                self.cells.append(OpenSTLConvLSTMCell(previous, hidden, kernel_size, norm_size))
                previous = hidden
            self.output = nn.Conv2d(hidden_channels[-1], in_channels, 1, bias=False)
            return
        forget_bias = 1.0 if args.forget_bias is None else args.forget_bias

        def stack(first_input: int) -> nn.ModuleList:
            cells, previous = nn.ModuleList(), first_input
            for hidden in hidden_channels:
                cells.append(
                    ConvLSTMCell(
                        previous, hidden, kernel_size, height, width, forget_bias, args.layer_norm
                    )
                )
                previous = hidden
            return cells

        self.cells = stack(in_channels)  # the encoder, for `shi`
        if args.variant == "shi":
            self.forecaster = stack(0)
        self.output = nn.Conv2d(sum(hidden_channels), in_channels, 1)

    def init_state(self, frames_BTCHW: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        b, _, _, h, w = frames_BTCHW.shape
        states = []
        for cell in self.cells:  # H in the dtype its convolutions read (as the cells make it)
            zeros = frames_BTCHW.new_zeros(b, cell.hidden_channels, h, w)
            states.append((conv_read(zeros), zeros))
        return states

    def encode(self, frames_NCHW: torch.Tensor) -> torch.Tensor:
        """`openstl`: the first layer's input gates; else the frames (the cell convolves
        [input, hidden] in one convolution, so no part of it reads the input alone)."""
        if self.variant == "openstl":
            return self.cells[0].input_side(frames_NCHW)
        return frames_NCHW

    def advance(self, x_BCHW: torch.Tensor, state: list) -> tuple[Any, list]:
        """Features: the top layer's H (`openstl`), else every layer's H (the readout's)."""
        if self.variant == "openstl":
            first, *above = self.cells  # (a list: slicing a ModuleList builds a new one)
            layer = first.advance(x_BCHW, state[0])
            state = [layer, *_advance(above, layer[0], state[1:])]
            return state[-1][0], state
        # no input: `shi`'s forecaster, which runs after its encoder (`self.cells`) read them
        cells = self.cells if x_BCHW is not None else self.forecaster
        state = _advance(cells, x_BCHW, state)
        return tuple(h for h, _ in state), state

    def decode(self, features: Any) -> torch.Tensor:
        if self.variant == "openstl":
            return self.output(features)
        return self.output(torch.cat(features, dim=1))

    def forward(
        self,
        frames_BTCHW: torch.Tensor,
        num_output_frames: int,
        *,
        targets_BTCHW: torch.Tensor | None = None,
        teacher_mask_BT: torch.Tensor | None = None,
        all_frames: bool = False,
    ) -> torch.Tensor:
        if self.variant != "shi":
            return super().forward(
                frames_BTCHW,
                num_output_frames,
                targets_BTCHW=targets_BTCHW,
                teacher_mask_BT=teacher_mask_BT,
                all_frames=all_frames,
            )
        if all_frames:
            raise ValueError(
                "the shi ConvLSTM (encoder–forecaster) predicts no frame from the inputs: "
                "model.loss_frames: all does not apply (use outputs)"
            )
        if teacher_mask_BT is not None:
            raise ValueError(
                "the shi ConvLSTM (encoder–forecaster) feeds no frames back: scheduled "
                "sampling does not apply (set model.sampling.mode: none)"
            )
        # every step through `run_step`, so that `trainer.compile` (which compiles `step`)
        # and activation checkpointing apply to this loop too; the encoder steps' readouts
        # (a 1×1 convolution each) are not used
        state = self.init_state(frames_BTCHW)
        for t in range(frames_BTCHW.shape[1]):  # encoder
            _, state = self.run_step(frames_BTCHW[:, t], state)
        predictions = []
        for _ in range(num_output_frames):  # forecaster, from the encoder's states
            prediction, state = self.run_step(None, state)
            predictions.append(prediction)
        return torch.stack(predictions, dim=1)


def _advance(
    cells: list[nn.Module] | nn.ModuleList, x_BCHW: torch.Tensor | None, state: list
) -> list:
    """One time step of a stack: layer l reads layer l−1's new hidden state (the first
    reads `x_BCHW`); returns every layer's new (H, C)."""
    new_state = []
    for cell, layer_state in zip(cells, state):
        layer_state = cell(x_BCHW, layer_state)
        new_state.append(layer_state)
        x_BCHW = layer_state[0]
    return new_state
