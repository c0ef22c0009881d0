"""MAU, the Motion-Aware Unit (Chang et al., NeurIPS 2021).

Legend: B batch, T time, C channels, H×W frame size (as given to the backbone), h hidden
channels, H'×W' = (H/s)×(W/s) with s = `downsample` (OpenSTL's `sr_size`).

Each frame is encoded (1×1 conv, then log2(s) stride-2 3×3 convs) to H'×W'; a stack of
motion-aware units steps through time there, and a decoder (log2(s) transposed convs, a
1×1 conv) maps the top unit's output back to the next frame. A unit keeps two states:
the temporal state T (motion) and the spatial state S (appearance, passed up the layers).
Its attention module scores the last τ spatial states S_{t−τ..t−1} of the layer against
the current one, takes the same softmax-weighted sum of the last τ temporal states (the
"motion trend") and fuses it with T_{t−1} through a gate; the fusion module then mixes
the fused T with S by two complementary gates to give the new T and S.

At OpenSTL's Moving MNIST settings MAU runs on unpatched frames (patch 1: spec 1×64×64;
hidden 64×4, filter 5, s = 4, τ = 5, 10→10), measured in a scratch script with
`torch.utils.flop_counter.FlopCounterMode` (MACs = flops/2, batch 1):

| model | parameters | OpenSTL | GMACs | OpenSTL FLOPs |
|-------|-----------:|--------:|------:|--------------:|
| MAU   |  4,475,329 |   4.5M  | 17.74 |       17.8G   |

OpenSTL's module also defines a `merge` 1×1 conv (2h→h, 8,256 parameters) and a
`conv_last_sr` 1×1 conv (2C→C, 3) that its forward never calls: 4,483,588 with them,
so the counts agree exactly. The GMACs differ by rounding and by elementwise work (the
attention's dot products) that neither counter attributes to convolutions.

There is no `layer_norm` argument: every convolution of a unit is followed by a LayerNorm
over [channels, H', W'] always, as in OpenSTL's MAU cell, which takes no such option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .base import FrameSpec, check_odd_kernels
from .fused import pointwise
from .recurrent import FrameRecurrent


def _conv_norm(cin: int, cout: int, kernel_size: int, height: int, width: int) -> nn.Sequential:
    """Convolution followed by a LayerNorm over C×H'×W' (as in the paper's code)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2),
        nn.LayerNorm([cout, height, width]),
    )


class MotionAwareUnit(nn.Module):
    """One MAU: attention over the last τ states, then the fusion of T and S."""

    def __init__(self, hidden: int, kernel_size: int, height: int, width: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.scale = 1.0 / math.sqrt(hidden * height * width)
        self.conv_s_query = _conv_norm(hidden, hidden, kernel_size, height, width)
        self.conv_t_gate = _conv_norm(hidden, hidden, kernel_size, height, width)
        self.conv_t = _conv_norm(hidden, 3 * hidden, kernel_size, height, width)
        self.conv_s = _conv_norm(hidden, 3 * hidden, kernel_size, height, width)

    def forward(
        self,
        temporal_BhHW: torch.Tensor,
        spatial_BhHW: torch.Tensor,
        past_temporal_NBhHW: torch.Tensor,
        past_spatial_NBhHW: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(new T, new S, the last τ temporal states, the last τ spatial states); the
        histories end with the new T and with the S this unit read."""
        # the convolutions run here; everything between them is one fused region each
        query_conv, query_norm = self.conv_s_query
        gate_conv, gate_norm = self.conv_t_gate
        fused, past_spatial = _attention(
            query_conv(spatial_BhHW),
            query_norm.weight,
            query_norm.bias,
            gate_conv(temporal_BhHW),
            gate_norm.weight,
            gate_norm.bias,
            temporal_BhHW,
            spatial_BhHW,
            past_temporal_NBhHW,
            past_spatial_NBhHW,
            scalars=(self.scale, query_norm.eps, gate_norm.eps),
        )
        t_conv, t_norm = self.conv_t
        s_conv, s_norm = self.conv_s
        temporal, spatial, past_temporal = _fusion(
            t_conv(fused),
            t_norm.weight,
            t_norm.bias,
            s_conv(spatial_BhHW),
            s_norm.weight,
            s_norm.bias,
            past_temporal_NBhHW,
            scalars=(t_norm.eps, s_norm.eps),
        )
        return temporal, spatial, past_temporal, past_spatial


@pointwise(conv_outputs=(0,))  # T fused with the trend: read by one convolution only
def _attention(
    query_conv: torch.Tensor,
    query_weight: torch.Tensor,
    query_bias: torch.Tensor,
    gate_conv: torch.Tensor,
    gate_weight: torch.Tensor,
    gate_bias: torch.Tensor,
    temporal_BhHW: torch.Tensor,
    spatial_BhHW: torch.Tensor,
    past_temporal_NBhHW: torch.Tensor,
    past_spatial_NBhHW: torch.Tensor,
    scale: float,
    query_eps: float,
    gate_eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention module after its two convolutions (LayerNorms included): (T fused
    with the motion trend, the spatial history shifted to end with S)."""
    # attention: how much each of the last τ spatial states resembles the current one
    query = F.layer_norm(query_conv, query_weight.shape, query_weight, query_bias, query_eps)
    scores_NB = (past_spatial_NBhHW * query).sum(dim=(2, 3, 4)) * scale
    weights = torch.softmax(scores_NB, dim=0)[:, :, None, None, None]
    trend = (weights * past_temporal_NBhHW).sum(dim=0)
    gate = torch.sigmoid(
        F.layer_norm(gate_conv, gate_weight.shape, gate_weight, gate_bias, gate_eps)
    )
    fused = gate * temporal_BhHW + (1 - gate) * trend
    return fused, torch.cat([past_spatial_NBhHW[1:], spatial_BhHW[None]])


@pointwise
def _fusion(
    t_conv: torch.Tensor,
    t_weight: torch.Tensor,
    t_bias: torch.Tensor,
    s_conv: torch.Tensor,
    s_weight: torch.Tensor,
    s_bias: torch.Tensor,
    past_temporal_NBhHW: torch.Tensor,
    t_eps: float,
    s_eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fusion module after its two convolutions (LayerNorms included): (new T, new S,
    the temporal history shifted to end with the new T)."""
    # fusion: complementary gates mix the temporal and spatial streams
    t_gate, t_to_t, t_to_s = F.layer_norm(t_conv, t_weight.shape, t_weight, t_bias, t_eps).chunk(
        3, dim=1
    )
    s_gate, s_to_t, s_to_s = F.layer_norm(s_conv, s_weight.shape, s_weight, s_bias, s_eps).chunk(
        3, dim=1
    )
    t_gate, s_gate = torch.sigmoid(t_gate), torch.sigmoid(s_gate)
    temporal = t_gate * t_to_t + (1 - t_gate) * s_to_t
    spatial = s_gate * s_to_s + (1 - s_gate) * t_to_s
    return temporal, spatial, torch.cat([past_temporal_NBhHW[1:], temporal[None]])


@dataclass
class MAUArgs:
    hidden_channels: list[int] = field(default_factory=lambda: [64, 64, 64, 64])
    """Hidden channels of each stacked unit (all equal: S passes from layer to layer)."""
    kernel_size: int = 5
    """Convolution kernel inside the units."""
    downsample: int = 4
    """Spatial down-sampling factor of the encoder (OpenSTL's `sr_size`), a power of 2."""
    attention_window: int = 5
    """τ: how many past states the attention module looks at."""


class MAU(FrameRecurrent):
    """Motion-aware units between a strided-conv encoder and a transposed-conv decoder."""

    Args = MAUArgs

    def __init__(self, spec: FrameSpec, args: MAUArgs | None = None) -> None:
        super().__init__()
        args = args or MAUArgs()
        hidden_channels = list(args.hidden_channels)
        if not hidden_channels or len(set(hidden_channels)) != 1:
            raise ValueError(f"MAU needs equal hidden_channels per layer, got {hidden_channels}")
        s = args.downsample
        levels = int(math.log2(s)) if s >= 1 else -1
        if levels < 0 or 2**levels != s:
            raise ValueError(f"MAU downsample must be a power of 2, got {s}")
        if spec.height % s or spec.width % s:
            raise ValueError(
                f"frame size {spec.height}×{spec.width} is not divisible by downsample {s}"
            )
        if args.attention_window < 1:
            raise ValueError(f"attention_window must be ≥ 1, got {args.attention_window}")
        check_odd_kernels(kernel_size=args.kernel_size)
        hidden = hidden_channels[0]
        self.hidden = hidden
        self.window = args.attention_window
        self.small_height, self.small_width = spec.height // s, spec.width // s
        encoder: list[nn.Module] = [nn.Conv2d(spec.channels, hidden, 1), nn.LeakyReLU(0.2)]
        for _ in range(levels):
            encoder += [nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.encoder = nn.Sequential(*encoder)
        decoder: list[nn.Module] = []
        for level in range(levels):
            decoder.append(
                nn.ConvTranspose2d(hidden, hidden, 3, stride=2, padding=1, output_padding=1)
            )
            if level < levels - 1:
                decoder.append(nn.LeakyReLU(0.2))
        decoder.append(nn.Conv2d(hidden, spec.channels, 1))
        self.decoder = nn.Sequential(*decoder)
        self.cells = nn.ModuleList(
            MotionAwareUnit(hidden, args.kernel_size, self.small_height, self.small_width)
            for _ in hidden_channels
        )

    def init_state(self, frames_BTCHW: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        b = frames_BTCHW.shape[0]
        zeros = frames_BTCHW.new_zeros(b, self.hidden, self.small_height, self.small_width)
        # the histories start as τ zero states, so attention is defined from the first step
        # (allocated, not an expanded view: a fused region then sees one memory layout)
        history = frames_BTCHW.new_zeros(self.window, *zeros.shape)
        return [
            {"temporal": zeros, "past_temporal": history, "past_spatial": history}
            for _ in self.cells
        ]

    def encode(self, frames_NCHW: torch.Tensor) -> torch.Tensor:
        return self.encoder(frames_NCHW)

    def advance(self, spatial: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        new_state = []
        for cell, layer in zip(self.cells, state):
            temporal, new_spatial, past_temporal, past_spatial = cell(
                layer["temporal"], spatial, layer["past_temporal"], layer["past_spatial"]
            )
            new_state.append(
                {"temporal": temporal, "past_temporal": past_temporal, "past_spatial": past_spatial}
            )
            spatial = new_spatial
        return spatial, new_state

    def decode(self, spatial: torch.Tensor) -> torch.Tensor:
        return self.decoder(spatial)
