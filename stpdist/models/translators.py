"""Translator blocks for the SimVP family (pure torch): one class per block type.

Legend: B batch, C channels (the translator's width: T×C' stacked frame features),
H×W the latent frame size, N = H·W tokens.

Every block maps B×C×H×W to B×C×H×W. `simvp.SimVP` stacks `num_translator_blocks` of
them (the MetaFormer blocks through `BLOCKS`, built as `Block(dim, settings)`), or, for
`incepu`, arranges `InceptionBlock`s as a U-Net. Each block follows its paper, at the
hyperparameters OpenSTL's SimVP uses for it:

| name       | block (paper)                                                              |
|------------|----------------------------------------------------------------------------|
| incepu     | SimVP v1 (Gao et al., CVPR'22): 1×1 conv, then a sum of grouped convs       |
|            | (kernels 3/5/7/11, 8 groups) each with GroupNorm and LeakyReLU(0.2)         |
| gsta       | SimVP v2 (Tan et al., 2022) gated spatiotemporal attention: large kernel    |
|            | (21, dilation 3) decomposed as dw 5×5 → dw 7×7 dilated 3 → 1×1 to 2C; the   |
|            | second half gates the first through a sigmoid; conv MLP with a dw 3×3       |
| tau        | TAU (Tan et al., CVPR'23): the same large-kernel statical attention (1×1 to |
|            | C) times an SE-style dynamical (channel) attention, times the input        |
| van        | VAN (Guo et al., 2022): large-kernel attention, output = input × attention |
| convmixer  | ConvMixer (Trockman & Kolter): dw 11×11 (+ residual) then 1×1, GELU + BN   |
| convnext   | ConvNeXt (Liu et al., CVPR'22): dw 7×7, LayerNorm, MLP, layer scale 1e-6    |
| hornet     | HorNet (Rao et al., NeurIPS'22): 4th-order recursive gated conv (g^n conv)  |
| mlpmixer   | MLP-Mixer (Tolstikhin et al.): token MLP (hidden C/2) and channel MLP       |
| moganet    | MogaNet (Li et al., 2022): multi-order gated aggregation + channel-         |
|            | aggregation FFN, dilations 1/2/3 on channel splits 1:3:4                    |
| poolformer | PoolFormer (Yu et al., CVPR'22): avg-pool 3×3 minus identity as mixer       |
| swin       | Swin (Liu et al., ICCV'21): windowed attention, 8 heads, relative position  |
|            | bias, windows shifted by half on odd layers                                 |
| uniformer  | UniFormer (Li et al., ICLR'22): conv block (dw 5×5 "local MHRA") for the    |
|            | first and last block, global self-attention block (8 heads) in between      |
| vit        | ViT (Dosovitskiy et al.): global self-attention (8 heads); no position      |
|            | embedding, as in OpenSTL                                                    |

Weights start as MetaFormer code bases start them: convolutions normal with std
sqrt(2 / fan_out), linear layers truncated normal with std 0.02, biases zero, norms 1/0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import REGISTERED_HINT, import_class

# ---------------------------------------------------------------------------------------
# shared pieces


@dataclass(frozen=True)
class BlockSettings:
    """What a MetaFormer block is built with, besides its width."""

    mlp_ratio: float = 8.0
    """Hidden width of the channel MLP, as a multiple of the block's width."""
    drop: float = 0.0
    """Dropout inside the MLPs (and after attention projections)."""
    drop_path: float = 0.0
    """Stochastic-depth rate of this block's residual branches."""
    resolution: tuple[int, int] = (16, 16)
    """Latent H×W (MLP-Mixer's token MLP and Swin's windows depend on it)."""
    layer_index: int = 0
    """Position of the block in the translator (Swin shifts odd layers)."""
    num_layers: int = 8
    """Blocks in the translator (UniFormer uses conv blocks at both ends)."""
    swin_shift_mask: bool = True
    """Swin: mask attention between pixels that the cyclic shift brought together (the
    paper); OpenSTL's SimVP runs its shifted windows without that mask."""
    swin_window: int | None = None
    """Swin: the side of its windows (None: `swin_window_size`, OpenSTL's choice)."""


def init_weights(module: nn.Module) -> None:
    """MetaFormer-style initialisation, applied to every submodule of a block."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for whole samples while training."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a B×C×H×W tensor."""

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        x = x_BCHW.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _dwconv(channels: int, kernel_size: int, dilation: int = 1) -> nn.Conv2d:
    """Depthwise convolution that keeps H×W ("same" padding for odd kernels)."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Conv2d(
        channels, channels, kernel_size, padding=padding, dilation=dilation, groups=channels
    )


def _to_tokens(x_BCHW: torch.Tensor) -> torch.Tensor:
    return x_BCHW.flatten(2).transpose(1, 2)  # B×N×C


def _to_map(x_BNC: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return x_BNC.transpose(1, 2).reshape(x_BNC.shape[0], -1, height, width)


class ConvMlp(nn.Module):
    """Channel MLP on B×C×H×W with 1×1 convs; optionally a dw 3×3 after the first
    (the "convolutional feed-forward" of VAN / gSTA / TAU)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, depthwise: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = _dwconv(hidden, 3) if depthwise else nn.Identity()
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x))))
        return self.drop(self.fc2(x))


class Mlp(nn.Module):
    """Token-wise MLP on B×N×C with linear layers."""

    def __init__(
        self, dim: int, hidden: int, drop: float = 0.0, out_dim: int | None = None
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim or dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class MultiHeadSelfAttention(nn.Module):
    """Plain multi-head self-attention over B×N×C tokens, with an optional additive bias
    (heads×N×N, or windows×1×N×N broadcast over heads)."""

    def __init__(self, dim: int, num_heads: int = 8, drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x_BNC: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x_BNC.shape
        q, k, v = self.qkv(x_BNC).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        scores = (q * self.scale) @ k.transpose(-2, -1)  # B×heads×N×N
        if bias is not None:
            scores = scores + bias
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.drop(self.proj(out))


# ---------------------------------------------------------------------------------------
# SimVP v1: Inception


class InceptionBlock(nn.Module):
    """gInception (SimVP v1): 1×1 conv to `hidden_channels`, then the sum of grouped
    convolutions of several kernel sizes, each followed by GroupNorm and LeakyReLU(0.2).
    Groups fall back to 1 when `hidden_channels` is not divisible by them."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        kernel_sizes: list[int],
        groups: int = 8,
    ) -> None:
        super().__init__()
        if hidden_channels % groups:
            groups = 1
        if out_channels % groups:
            raise ValueError(
                f"inception output channels {out_channels} not divisible by {groups} groups"
            )
        self.reduce = nn.Conv2d(in_channels, hidden_channels, 1)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(hidden_channels, out_channels, k, padding=k // 2, groups=groups),
                nn.GroupNorm(groups, out_channels),
                nn.LeakyReLU(0.2),
            )
            for k in kernel_sizes
        )

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x_BCHW)
        return sum(branch(x) for branch in self.branches)


# ---------------------------------------------------------------------------------------
# large-kernel attention family: gSTA, TAU, VAN


def _large_kernel_convs(dim: int, kernel_size: int = 21, dilation: int = 3) -> nn.Sequential:
    """A K×K depthwise receptive field decomposed (VAN) into a (2d−1)×(2d−1) depthwise
    conv and a ⌊K/d⌋ (made odd) depthwise conv dilated d: 5×5 then 7×7 dilated 3 for K=21."""
    local = 2 * dilation - 1
    far = kernel_size // dilation
    far += far % 2 - 1  # odd, so the padding keeps H×W
    return nn.Sequential(_dwconv(dim, local), _dwconv(dim, far, dilation))


class GatedLargeKernelAttention(nn.Module):
    """gSTA's unit: large-kernel depthwise convs, 1×1 to 2C, sigmoid(gate) × value."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.spatial = _large_kernel_convs(dim)
        self.gate_value = nn.Conv2d(dim, 2 * dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.gate_value(self.spatial(x)).chunk(2, dim=1)
        return torch.sigmoid(gate) * value


class TemporalAttentionUnit(nn.Module):
    """TAU's unit: statical attention (large-kernel depthwise convs, 1×1) times dynamical
    attention (squeeze-and-excitation over the channels, which stack the frames) times
    the input.

    The squeeze width follows OpenSTL: it divides C by max(C // 16, 4), which gives 16
    hidden units at C = 512 and C = 640 (the reduction ratio ends up applied twice)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.spatial = _large_kernel_convs(dim)
        self.static = nn.Conv2d(dim, dim, 1)
        squeeze = dim // max(dim // 16, 4)
        self.excite = nn.Sequential(
            nn.Linear(dim, squeeze, bias=False),
            nn.ReLU(),
            nn.Linear(squeeze, dim, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        static = self.static(self.spatial(x))
        dynamic = self.excite(x.mean(dim=(2, 3)))[:, :, None, None]
        return dynamic * static * x


class LargeKernelAttention(nn.Module):
    """VAN's unit: large-kernel depthwise convs and a 1×1, multiplied into the input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.spatial = _large_kernel_convs(dim)
        self.pointwise = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.pointwise(self.spatial(x))


class _AttentionBranch(nn.Module):
    """1×1 → GELU → attention unit → 1×1, plus a shortcut (VAN's "spatial attention")."""

    def __init__(self, dim: int, unit: nn.Module) -> None:
        super().__init__()
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.unit = unit
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj_out(self.unit(self.act(self.proj_in(x))))


class _LargeKernelBlock(nn.Module):
    """BatchNorm → attention branch and BatchNorm → conv MLP (with dw 3×3), each residual
    with a layer scale starting at 1e-2."""

    unit: type[nn.Module]

    def __init__(self, dim: int, settings: BlockSettings) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = _AttentionBranch(dim, self.unit(dim))
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(dim * settings.mlp_ratio), settings.drop, depthwise=True)
        self.scale1 = nn.Parameter(torch.full((dim, 1, 1), 1e-2))
        self.scale2 = nn.Parameter(torch.full((dim, 1, 1), 1e-2))
        self.drop_path = DropPath(settings.drop_path)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.scale1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.scale2 * self.mlp(self.norm2(x)))


class GSTABlock(_LargeKernelBlock):
    """gsta: SimVP v2's gated spatiotemporal attention block."""

    unit = GatedLargeKernelAttention


class TAUBlock(_LargeKernelBlock):
    """tau: the Temporal Attention Unit block."""

    unit = TemporalAttentionUnit


class VANBlock(_LargeKernelBlock):
    """van: the Visual Attention Network block."""

    unit = LargeKernelAttention


# ---------------------------------------------------------------------------------------
# convolutional MetaFormers


class ConvMixerBlock(nn.Module):
    """convmixer: x + BN(GELU(dw 11×11 x)), then BN(GELU(1×1 x)) (no residual, as in the
    paper). `mlp_ratio`, `drop` and `drop_path` do not apply."""

    def __init__(self, dim: int, settings: BlockSettings) -> None:
        super().__init__()
        self.depthwise = nn.Sequential(_dwconv(dim, 11), nn.GELU(), nn.BatchNorm2d(dim))
        self.pointwise = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(x + self.depthwise(x))


class ConvNeXtBlock(nn.Module):
    """convnext: dw 7×7 → LayerNorm → 1×1 MLP, residual with layer scale 1e-6."""

    def __init__(self, dim: int, settings: BlockSettings) -> None:
        super().__init__()
        self.depthwise = _dwconv(dim, 7)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.mlp = ConvMlp(dim, int(dim * settings.mlp_ratio), settings.drop)
        self.scale = nn.Parameter(torch.full((dim, 1, 1), 1e-6))
        self.drop_path = DropPath(settings.drop_path)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.scale * self.mlp(self.norm(self.depthwise(x))))


class RecursiveGatedConv(nn.Module):
    """HorNet's g^n conv: a 1×1 to 2C splits into p0 (C/2^(n−1) channels) and the
    features q_0..q_{n−1} (C/2^(n−1), ..., C/2, C) that a shared dw 7×7 mixes spatially;
    then p_{k+1} = 1×1(p_k) ⊙ q_k, order by order, and a final 1×1."""

    def __init__(self, dim: int, order: int = 4) -> None:
        super().__init__()
        self.dims = [dim // 2**i for i in reversed(range(order))]
        if sum(self.dims) + self.dims[0] != 2 * dim:
            raise ValueError(f"HorNet width {dim} must be divisible by 2^{order - 1}")
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        self.depthwise = _dwconv(sum(self.dims), 7)
        self.pointwise = nn.ModuleList(
            nn.Conv2d(self.dims[i], self.dims[i + 1], 1) for i in range(order - 1)
        )
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = self.proj_in(x).split([self.dims[0], sum(self.dims)], dim=1)
        qs = self.depthwise(q).split(self.dims, dim=1)
        p = p * qs[0]
        for conv, q_k in zip(self.pointwise, qs[1:]):
            p = conv(p) * q_k
        return self.proj_out(p)


class HorNetBlock(nn.Module):
    """hornet: LayerNorm → 4th-order g^n conv, LayerNorm → MLP, layer scales 1e-6."""

    def __init__(self, dim: int, settings: BlockSettings) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        self.gnconv = RecursiveGatedConv(dim, order=4)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * settings.mlp_ratio), settings.drop)
        self.scale1 = nn.Parameter(torch.full((dim, 1, 1), 1e-6))
        self.scale2 = nn.Parameter(torch.full((dim,), 1e-6))
        self.drop_path = DropPath(settings.drop_path)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.scale1 * self.gnconv(self.norm1(x)))
        channels_last = x.permute(0, 2, 3, 1)
        update = self.scale2 * self.mlp(self.norm2(channels_last))
        return x + self.drop_path(update.permute(0, 3, 1, 2))


class MogaNetBlock(nn.Module):
    """moganet: BatchNorm → multi-order gated aggregation and BatchNorm → channel-
    aggregation FFN, layer scales 1e-5."""

    def __init__(self, dim: int, settings: BlockSettings) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = MultiOrderGatedAggregation(dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ChannelAggregationFFN(dim, int(dim * settings.mlp_ratio), settings.drop)
        self.scale1 = nn.Parameter(torch.full((dim, 1, 1), 1e-5))
        self.scale2 = nn.Parameter(torch.full((dim, 1, 1), 1e-5))
        self.drop_path = DropPath(settings.drop_path)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.scale1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.scale2 * self.mlp(self.norm2(x)))


class MultiOrderGatedAggregation(nn.Module):
    """MogaNet's spatial aggregation: 1×1, feature decomposition (x + σ ⊙ (x − mean x)),
    SiLU; a gate branch (1×1) and a context branch (dw 5×5 on all channels, then dw 5×5
    dilated 2 on 3/8 of them and dw 7×7 dilated 3 on 4/8, 1×1), SiLU(gate) ⊙ SiLU(context),
    1×1, plus a shortcut."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 8:
            raise ValueError(f"MogaNet width {dim} must be divisible by 8 (channel split 1:3:4)")
        self.split = [dim // 8, 3 * dim // 8, dim // 2]
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.sigma = nn.Parameter(torch.full((dim, 1, 1), 1e-5))
        self.gate = nn.Conv2d(dim, dim, 1)
        self.dw_base = _dwconv(dim, 5)
        self.dw_mid = _dwconv(self.split[1], 5, dilation=2)
        self.dw_far = _dwconv(self.split[2], 7, dilation=3)
        self.context_out = nn.Conv2d(dim, dim, 1)
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj_in(x)
        y = F.silu(y + self.sigma * (y - y.mean(dim=(2, 3), keepdim=True)))
        base = self.dw_base(y)
        near, mid, far = base.split(self.split, dim=1)
        context = self.context_out(torch.cat([near, self.dw_mid(mid), self.dw_far(far)], dim=1))
        return x + self.proj_out(F.silu(self.gate(y)) * F.silu(context))


class ChannelAggregationFFN(nn.Module):
    """MogaNet's FFN: 1×1 → dw 3×3 → GELU, then channel aggregation
    (x + σ ⊙ (x − GELU(1×1 to one channel))), 1×1."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = _dwconv(hidden, 3)
        self.decompose = nn.Conv2d(hidden, 1, 1)
        self.sigma = nn.Parameter(torch.full((hidden, 1, 1), 1e-5))
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(F.gelu(self.dwconv(self.fc1(x))))
        x = x + self.sigma * (x - F.gelu(self.decompose(x)))
        return self.drop(self.fc2(x))


class PoolFormerBlock(nn.Module):
    """poolformer: GroupNorm(1) → (avg-pool 3×3 − identity) and GroupNorm(1) → 1×1 MLP,
    layer scales 1e-5."""

    def __init__(self, dim: int, settings: BlockSettings) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = ConvMlp(dim, int(dim * settings.mlp_ratio), settings.drop)
        self.scale1 = nn.Parameter(torch.full((dim, 1, 1), 1e-5))
        self.scale2 = nn.Parameter(torch.full((dim, 1, 1), 1e-5))
        self.drop_path = DropPath(settings.drop_path)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.drop_path(self.scale1 * (self.pool(y) - y))
        return x + self.drop_path(self.scale2 * self.mlp(self.norm2(x)))


# ---------------------------------------------------------------------------------------
# attention and MLP MetaFormers


class ViTBlock(nn.Module):
    """vit: pre-norm transformer block (global 8-head self-attention, MLP) over the H·W
    tokens."""

    def __init__(self, dim: int, settings: BlockSettings) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, 8, settings.drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * settings.mlp_ratio), settings.drop)
        self.drop_path = DropPath(settings.drop_path)
        init_weights(self)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h, w = x_BCHW.shape[-2:]
        x = _to_tokens(x_BCHW)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return _to_map(x, h, w)


def swin_window_size(height: int, width: int) -> int:
    """OpenSTL's choice: 7 if the side is a multiple of 7, else max(4, side // 16), at
    most 8, and at most the latent size."""
    size = 7 if height % 7 == 0 else max(4, height // 16)
    return min(size, 8, height, width)


class SwinBlock(nn.Module):
    """swin: LayerNorm → 8-head attention within non-overlapping windows (with a learned
    relative position bias), MLP. Odd layers shift the windows by half a window and mask
    attention between pixels that the cyclic shift brought together (unless
    `settings.swin_shift_mask` is off, as in OpenSTL's SimVP)."""

    def __init__(self, dim: int, settings: BlockSettings) -> None:
        super().__init__()
        height, width = settings.resolution
        given = settings.swin_window
        self.window = given or swin_window_size(height, width)
        if given is not None and not 1 <= given <= min(height, width):
            raise ValueError(
                f"translator swin: swin_window {given} must be 1 … {min(height, width)}, the "
                f"shorter side of the latent frames {height}×{width}"
            )
        if height % self.window or width % self.window:
            sides = [
                d for d in range(2, min(height, width) + 1) if height % d == 0 and width % d == 0
            ]
            remedy = (
                "set model.backbone.swin_window to one that divides both "
                f"({', '.join(map(str, sides))}), or use another translator"
                if sides
                else "no window above 1 divides both sides: set model.backbone.swin_window "
                "to 1 (then no attention across pixels), use frames whose "
                "latent sides share a divisor, or another translator"
            )
            chosen = "model.backbone.swin_window" if given else (
                "chosen from the latent height as OpenSTL does; model.backbone.swin_window "
                "sets it"
            )  # fmt: skip
            raise ValueError(
                f"translator swin: the latent frames {height}×{width} (after the encoder's "
                f"down-sampling) are not a multiple of its window {self.window} ({chosen}); "
                f"{remedy}"
            )
        no_shift = settings.layer_index % 2 == 0 or self.window >= min(height, width)
        self.shift = 0 if no_shift else self.window // 2
        self.masked = settings.swin_shift_mask
        self.num_heads = 8
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, self.num_heads, settings.drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * settings.mlp_ratio), settings.drop)
        self.drop_path = DropPath(settings.drop_path)
        w = self.window
        self.relative_bias = nn.Parameter(torch.zeros((2 * w - 1) ** 2, self.num_heads))
        coords = torch.stack(
            torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
        ).flatten(1)
        delta = coords[:, :, None] - coords[:, None, :] + (w - 1)  # 2×w²×w², in [0, 2w−2]
        self.register_buffer("relative_index", delta[0] * (2 * w - 1) + delta[1], persistent=False)
        self.register_buffer("shift_mask", self._shift_mask(height, width), persistent=False)
        init_weights(self)
        nn.init.trunc_normal_(self.relative_bias, std=0.02, a=-0.04, b=0.04)

    def _shift_mask(self, height: int, width: int) -> torch.Tensor:
        """windows×1×w²×w²: −100 between pixels from different regions after the shift."""
        w, s = self.window, self.shift
        if s == 0:
            return torch.zeros(0)
        region = torch.zeros(height, width)
        bands = (slice(0, -w), slice(-w, -s), slice(-s, None))
        for i, (rows, cols) in enumerate((r, c) for r in bands for c in bands):
            region[rows, cols] = i
        region = self._windows(region[None, :, :, None]).squeeze(-1)  # windows×w²
        different = region[:, :, None] != region[:, None, :]
        return (different.float() * -100.0)[:, None]

    def _windows(self, x_BHWC: torch.Tensor) -> torch.Tensor:
        b, h, w_, c = x_BHWC.shape
        w = self.window
        x = x_BHWC.reshape(b, h // w, w, w_ // w, w, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, w * w, c)  # (B·windows)×w²×C

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        b, c, h, w_ = x_BCHW.shape
        w, s = self.window, self.shift
        x = x_BCHW.permute(0, 2, 3, 1)  # B×H×W×C
        y = self.norm1(x)
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        bias = self.relative_bias[self.relative_index].permute(2, 0, 1)  # heads×w²×w²
        if s and self.masked:  # (B·windows)×heads×w²×w²; `_windows` is batch-major
            bias = (bias[None] + self.shift_mask).repeat(b, 1, 1, 1)
        y = self.attn(self._windows(y), bias)
        y = y.reshape(b, h // w, w_ // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w_, c)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.permute(0, 3, 1, 2)


class MLPMixerBlock(nn.Module):
    """mlpmixer: LayerNorm → token MLP (over the H·W positions, hidden C/2), LayerNorm →
    channel MLP; both residual."""

    def __init__(self, dim: int, settings: BlockSettings) -> None:
        super().__init__()
        tokens = settings.resolution[0] * settings.resolution[1]
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.token_mlp = Mlp(tokens, int(dim * 0.5), settings.drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.channel_mlp = Mlp(dim, int(dim * settings.mlp_ratio), settings.drop)
        self.drop_path = DropPath(settings.drop_path)
        init_weights(self)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h, w = x_BCHW.shape[-2:]
        x = _to_tokens(x_BCHW)
        x = x + self.drop_path(self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2))
        x = x + self.drop_path(self.channel_mlp(self.norm2(x)))
        return _to_map(x, h, w)


class UniformerBlock(nn.Module):
    """uniformer: a dw 3×3 position encoding (residual), then either the local block
    (BatchNorm → 1×1 → dw 5×5 → 1×1; BatchNorm → 1×1 MLP) for the first and last blocks
    or the global block (LayerNorm → 8-head self-attention; LayerNorm → MLP; layer scales
    1e-6) in between."""

    def __init__(self, dim: int, settings: BlockSettings) -> None:
        super().__init__()
        self.local = settings.layer_index in (0, settings.num_layers - 1)
        self.pos_embed = _dwconv(dim, 3)
        hidden = int(dim * settings.mlp_ratio)
        if self.local:
            self.norm1 = nn.BatchNorm2d(dim)
            self.mixer = nn.Sequential(
                nn.Conv2d(dim, dim, 1), _dwconv(dim, 5), nn.Conv2d(dim, dim, 1)
            )
            self.norm2 = nn.BatchNorm2d(dim)
            self.mlp = ConvMlp(dim, hidden, settings.drop)
        else:
            self.norm1 = nn.LayerNorm(dim)
            self.mixer = MultiHeadSelfAttention(dim, 8, settings.drop)
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = Mlp(dim, hidden, settings.drop)
            self.scale1 = nn.Parameter(torch.full((dim,), 1e-6))
            self.scale2 = nn.Parameter(torch.full((dim,), 1e-6))
        self.drop_path = DropPath(settings.drop_path)
        init_weights(self)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        x = x_BCHW + self.pos_embed(x_BCHW)
        if self.local:
            x = x + self.drop_path(self.mixer(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        h, w = x.shape[-2:]
        x = _to_tokens(x)
        x = x + self.drop_path(self.scale1 * self.mixer(self.norm1(x)))
        x = x + self.drop_path(self.scale2 * self.mlp(self.norm2(x)))
        return _to_map(x, h, w)


BLOCKS: dict[str, type[nn.Module]] = {
    "incepu": InceptionBlock,
    "gsta": GSTABlock,
    "tau": TAUBlock,
    "convmixer": ConvMixerBlock,
    "convnext": ConvNeXtBlock,
    "hornet": HorNetBlock,
    "mlpmixer": MLPMixerBlock,
    "moganet": MogaNetBlock,
    "poolformer": PoolFormerBlock,
    "swin": SwinBlock,
    "uniformer": UniformerBlock,
    "van": VANBlock,
    "vit": ViTBlock,
}
"""Translator name → block class. `incepu` is built as a U-Net of `InceptionBlock`s;
every other one as a stack of `Block(dim, BlockSettings)`."""
BUILT_IN = frozenset(BLOCKS)
"""The translators stpdist ships (`register_translator` adds to `BLOCKS`, not to these)."""


def register_translator(name: str, cls: type[nn.Module]) -> type[nn.Module]:
    """Add block `cls` under `name`, so `model.backbone.translator: <name>` builds a
    translator from it. `cls(dim, settings)` (settings: `BlockSettings`) must map
    B×dim×H×W to B×dim×H×W; SimVP stacks `num_translator_blocks` of them, with a 1×1 conv
    after the first (to `temporal_channels`) and after the last (back to T_in·C')."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"translator '{name}' must be an nn.Module class, got {cls!r}")
    if ":" in name or not name:
        raise ValueError(
            f"translator name {name!r}: expected a non-empty name without ':' (':' marks an "
            "import path)"
        )
    if name in BLOCKS and BLOCKS[name] is not cls:
        raise KeyError(f"translator name '{name}' is taken by {BLOCKS[name].__name__}")
    BLOCKS[name] = cls
    return cls


def translator_block(name: str) -> type[nn.Module]:
    """The block class `name` stands for: a name in `BLOCKS`, or an import path
    `package.module:ClassName` to a block class built like the registered ones (imported
    here, so the module must be importable on every rank: an installed package, or a
    folder on PYTHONPATH)."""
    if name in BLOCKS:
        return BLOCKS[name]
    if ":" not in name:
        raise KeyError(
            f"unknown SimVP translator '{name}'; valid: {', '.join(BLOCKS)}, or an import "
            f"path package.module:ClassName{REGISTERED_HINT}"
        )
    return import_class(name, "SimVP translator")
