"""TrajGRU (Shi et al., NeurIPS 2017): GRUs whose recurrent connections follow learned flows.

Legend: B batch, T time, C channels, H×W frame size (after patching); L links per level.

Each cell predicts L flow fields from its input and previous state, warps the previous
state along each (bilinear `grid_sample`), and mixes the warped copies with a 1×1
convolution into the update, reset and candidate terms. The update follows the paper:
H_t = (1 − Z_t) ⊙ H'_t + Z_t ⊙ H_{t−1} (the seed project mixed H'_t with itself).
Encoder: per level a convolution (stride 1, then 2) and a TrajGRU; forecaster: the levels
in reverse, each TrajGRU started from the encoder's final state of its level and
followed by a transposed convolution (stride 2) up to the next. The forecaster does not
feed frames back, so teacher masks do not apply.

At the Moving MNIST recipe's settings (configs/mmnist/trajgru.yaml: 1×64×64, 10→10, no
patching, conv [16, 64, 96], hidden [64, 96, 96], links [13, 13, 9]): 3.63M parameters and
50.6 GMACs forward per sample (`stpdist bench model`). OpenSTL publishes no TrajGRU figures
to set beside them.

Fused kernels (`model.fused_kernels`, `stpdist.models.fused`): the flow subnetwork's first
activation, the sampling grids and the GRU update run as fused regions, the L links are
sampled in one `grid_sample` call instead of L, the first level's input side (its
convolution and the cell's two input convolutions) runs once for all input frames, and the
output convolution once for all predicted frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import FrameSpec, check_odd_kernels
from .fused import fusion_active, pointwise
from .recurrent import SplitCell, join_steps, split_steps

# how a link's warp samples the state (bilinear, border pixels repeated, corners aligned)
_SAMPLING = {"mode": "bilinear", "padding_mode": "border", "align_corners": True}


class TrajGRUCell(SplitCell):
    def __init__(
        self,
        in_channels: int | None,
        hidden: int,
        links: int,
        kernel_size: int = 3,
        flow_channels: int = 32,
    ) -> None:
        """`in_channels=None`: a cell without input (the forecaster's top level)."""
        super().__init__()
        self.hidden, self.links = hidden, links
        if in_channels is not None:
            self.input_gates = nn.Conv2d(
                in_channels, 3 * hidden, kernel_size, padding=kernel_size // 2
            )
            self.input_flow = nn.Conv2d(in_channels, flow_channels, 5, padding=2)
        self.state_flow = nn.Conv2d(hidden, flow_channels, 5, padding=2)
        self.flows = nn.Conv2d(flow_channels, 2 * links, 5, padding=2)
        self.links_to_gates = nn.Conv2d(hidden * links, 3 * hidden, 1)
        # (H, W, device, dtype) → sampling-grid constants: a cache, not module state, so
        # a model moved or cast builds its own on first use
        self._grid_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _grid_constants(
        self, height: int, width: int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The sampling grid's constants for H×W frames on `like`'s device and dtype: the
        identity grid H×W×2 (x, y in [−1, 1]) and the pixels-to-grid scale (2,). Built once
        per size/device/dtype and kept (not in the state dict): rebuilding them cost 5 ops
        per link per step (TrajGRU at MMNIST shapes: 1 400 `linspace` per step)."""
        key = (height, width, like.device, like.dtype)
        constants = self._grid_cache.get(key)
        if constants is None:
            ys = torch.linspace(-1, 1, height, device=like.device, dtype=like.dtype)
            xs = torch.linspace(-1, 1, width, device=like.device, dtype=like.dtype)
            base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
            scale = torch.tensor(
                [2 / max(width - 1, 1), 2 / max(height - 1, 1)],
                device=like.device,
                dtype=like.dtype,
            )
            constants = self._grid_cache[key] = (base, scale)
        return constants

    def _warp_all(self, h_BCHW: torch.Tensor, flows_B2LHW: torch.Tensor) -> torch.Tensor:
        """h warped along each of the L flows (pixels; channels (x, y) per link), the
        copies concatenated over channels: B×(L·C)×H×W. The grids of all links are built
        in one multiply-add (the same values, element for element, as one per link).
        Fused (`fusion_active`): all links are sampled in one `grid_sample` call, their
        grids stacked along the height (the same values; h's gradient is then summed over
        the links in one pass instead of link by link: the same to float rounding)."""
        height, width = h_BCHW.shape[2:]
        base, scale = self._grid_constants(height, width, h_BCHW)
        grids_BLHW2 = _sampling_grids(flows_B2LHW, base, scale)
        if not fusion_active():
            return torch.cat(
                [F.grid_sample(h_BCHW, grid, **_SAMPLING) for grid in grids_BLHW2.unbind(1)],
                dim=1,
            )
        # grids B×(L·H)×W×2 sample B×C×(L·H)×W: each link's copy is an H-row band
        warped = F.grid_sample(h_BCHW, grids_BLHW2.flatten(1, 2), **_SAMPLING)
        return warped.unflatten(2, (self.links, height)).transpose(1, 2).flatten(1, 2)

    def forward(self, x_BCHW: torch.Tensor | None, h_BCHW: torch.Tensor) -> torch.Tensor:
        if x_BCHW is None:
            flow_features = self.state_flow(h_BCHW)
            warped = self._warp_all(h_BCHW, self.flows(F.leaky_relu(flow_features, 0.2)))
            return _update_without_input(self.links_to_gates(warped), h_BCHW)
        return self._advance(self._input_side(x_BCHW), h_BCHW)

    def _input_side(self, x_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The input's two convolutions: (flow term, gate term)."""
        return self.input_flow(x_BCHW), self.input_gates(x_BCHW)

    def _advance(
        self, x_terms: tuple[torch.Tensor, torch.Tensor], h_BCHW: torch.Tensor
    ) -> torch.Tensor:
        input_flow, x_gates = x_terms
        flow_features = _flow_input(self.state_flow(h_BCHW), input_flow)
        warped = self._warp_all(h_BCHW, self.flows(flow_features))
        return _update(x_gates, self.links_to_gates(warped), h_BCHW)


@pointwise
def _sampling_grids(
    flows_B2LHW: torch.Tensor, base_HW2: torch.Tensor, scale_2: torch.Tensor
) -> torch.Tensor:
    """Every link's sampling grid, B×L×H×W×2: the identity grid moved by the link's flow
    (pixels, channels (x, y) per link) in grid units."""
    flows_BLHW2 = flows_B2LHW.unflatten(1, (-1, 2)).permute(0, 1, 3, 4, 2)
    return base_HW2 + flows_BLHW2 * scale_2


@pointwise
def _flow_input(state_flow: torch.Tensor, input_flow: torch.Tensor) -> torch.Tensor:
    """The flow subnetwork's first activation: leaky ReLU of its state and input terms."""
    return F.leaky_relu(state_flow + input_flow, 0.2)


def _gru(x_z: Any, x_r: Any, x_h: Any, h_gates: torch.Tensor, h_BCHW: torch.Tensor) -> torch.Tensor:
    """The GRU arithmetic after the input convolution (its three terms, or 0 without input)
    and the links' 1×1 convolution: H_t = (1 − Z_t) ⊙ H'_t + Z_t ⊙ H_{t−1}."""
    h_z, h_r, h_h = h_gates.chunk(3, dim=1)
    z = torch.sigmoid(x_z + h_z)
    r = torch.sigmoid(x_r + h_r)
    candidate = F.leaky_relu(x_h + r * h_h, 0.2)
    return (1 - z) * candidate + z * h_BCHW


@pointwise
def _update(x_gates: torch.Tensor, h_gates: torch.Tensor, h_BCHW: torch.Tensor) -> torch.Tensor:
    """`_gru` of a cell with input."""
    return _gru(*x_gates.chunk(3, dim=1), h_gates, h_BCHW)


@pointwise
def _update_without_input(h_gates: torch.Tensor, h_BCHW: torch.Tensor) -> torch.Tensor:
    """`_gru` for a cell without input: its input terms are 0 (added, as the op-by-op
    arithmetic always did: the same ops with fusion off)."""
    return _gru(0.0, 0.0, 0.0, h_gates, h_BCHW)


@dataclass
class TrajGRUArgs:
    conv_channels: list[int] = field(default_factory=lambda: [16, 32, 32])
    """Output channels of each level's encoder convolution."""
    hidden_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    """Hidden channels of each level's TrajGRU."""
    links: list[int] = field(default_factory=lambda: [13, 13, 9])
    """L: flow fields (warped copies of the state) per level."""
    kernel_size: int = 3
    """Kernel of each cell's input-to-gates convolution, odd (the flow subnetwork's
    convolutions are 5×5)."""


class TrajGRU(nn.Module):
    """Three-level (by default) encoder–forecaster of TrajGRU cells."""

    Args = TrajGRUArgs

    def __init__(self, spec: FrameSpec, args: TrajGRUArgs | None = None) -> None:
        super().__init__()
        args = args or TrajGRUArgs()
        in_channels, height, width = spec.channels, spec.height, spec.width
        conv_channels, hidden_channels = args.conv_channels, args.hidden_channels
        links, kernel_size = args.links, args.kernel_size
        levels = len(hidden_channels)
        if not levels or len(conv_channels) != levels or len(links) != levels:
            raise ValueError("conv_channels, hidden_channels and links need one entry per level")
        check_odd_kernels(kernel_size=kernel_size)
        factor = 2 ** (levels - 1)
        if height % factor or width % factor:
            raise ValueError(
                f"TrajGRU with {levels} levels (the length of conv_channels, hidden_channels "
                f"and links) needs frames divisible by {factor}; got {height}×{width}"
            )
        self.down = nn.ModuleList()
        self.encoder = nn.ModuleList()
        previous = in_channels
        for level in range(levels):
            self.down.append(
                nn.Conv2d(
                    previous, conv_channels[level], 3, stride=1 if level == 0 else 2, padding=1
                )
            )
            self.encoder.append(
                TrajGRUCell(conv_channels[level], hidden_channels[level], links[level], kernel_size)
            )
            previous = hidden_channels[level]
        self.forecaster = nn.ModuleList()
        self.up = nn.ModuleList()
        for level in range(levels):
            below = hidden_channels[level + 1] if level + 1 < levels else None
            self.forecaster.append(
                TrajGRUCell(below, hidden_channels[level], links[level], kernel_size)
            )
            if level > 0:
                self.up.append(
                    nn.ConvTranspose2d(
                        hidden_channels[level], hidden_channels[level], 4, stride=2, padding=1
                    )
                )
        self.output = nn.Conv2d(hidden_channels[0], in_channels, 1)
        self.hidden_channels = list(hidden_channels)

    def forward(
        self,
        frames_BTCHW: torch.Tensor,
        num_output_frames: int,
        *,
        targets_BTCHW: torch.Tensor | None = None,
        teacher_mask_BT: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, t_in, _, height, width = frames_BTCHW.shape
        states = []
        for level, hidden in enumerate(self.hidden_channels):
            scale = 2**level
            states.append(frames_BTCHW.new_zeros(b, hidden, height // scale, width // scale))
        # fused kernels on: the first level's input side (its convolution and the cell's
        # two input convolutions) for all input frames in one call each, time-major, and
        # the output convolution for all predicted frames in one call after the loop
        batched = fusion_active()
        if batched:
            x = F.leaky_relu(self.down[0](frames_BTCHW.transpose(0, 1).flatten(0, 1)), 0.2)
            first_level = split_steps(self.encoder[0].input_side(x), t_in)
        for t in range(t_in):
            x = frames_BTCHW[:, t]
            for level, (down, cell) in enumerate(zip(self.down, self.encoder)):
                if batched and level == 0:
                    states[0] = cell.advance(first_level[t], states[0])
                else:
                    states[level] = cell(F.leaky_relu(down(x), 0.2), states[level])
                x = states[level]
        outputs = []
        top = len(self.hidden_channels) - 1
        for _ in range(num_output_frames):
            x = None
            for level in range(top, -1, -1):
                states[level] = self.forecaster[level](x, states[level])
                x = states[level]
                if level > 0:
                    x = F.leaky_relu(self.up[level - 1](x), 0.2)
            outputs.append(x if batched else self.output(x))
        if batched:
            outputs = split_steps(self.output(join_steps(outputs)), num_output_frames)
        return torch.stack(outputs, dim=1)
