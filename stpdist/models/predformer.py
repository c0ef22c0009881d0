"""PredFormer (Tang et al., 2024): a pure transformer with factorised spatio-temporal
attention that maps the input frames to the output frames directly (no recurrence).

Legend: B batch, T time, C channels, H×W frame size (as given to the backbone), p the
token patch size, N = (H/p)(W/p) tokens per frame, D the embedding width.

Each frame is cut into p×p patches, linearly embedded to D and given learned temporal
and spatial position embeddings. A stack of Gated Transformer Blocks (pre-norm multi-
head self-attention, then a SwiGLU feed-forward, each with a residual) follows; each
block attends either along time (the T tokens at one patch position: "T") or across
space (the N tokens of one frame: "S"), in the order `pattern` repeats (the paper's best
Moving MNIST variant interleaves them as quadruplets T-S-S-T). A linear head maps every
token back to its p×p×C pixels. With T_out ≠ T_in a learned linear map over the time axis
(T_in → T_out) sits before the head; with T_out = T_in there is none, as in the paper.

At the Moving MNIST settings used here for the paper's (patch 1 outside: spec 1×64×64;
p = 8, D = 256, 8 heads, 6 T-S-S-T quadruplets = 24 blocks, SwiGLU hidden 4D; 10→10),
measured with `torch.utils.flop_counter.FlopCounterMode` (MACs = flops/2, batch 1):
25,322,816 parameters and 16.13 GMACs forward per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import FrameSpec


class GatedTransformerBlock(nn.Module):
    """x + MHSA(LN(x)), then x + SwiGLU(LN(x)); attention over the second-to-last axis."""

    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_attention = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.projection = nn.Linear(dim, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.gate_value = nn.Linear(dim, 2 * hidden)
        self.ffn_out = nn.Linear(hidden, dim)

    def forward(self, tokens_SLD: torch.Tensor) -> torch.Tensor:
        """tokens S sequences × L tokens × D; attention runs within each sequence."""
        s, length, d = tokens_SLD.shape
        q, k, v = (
            self.qkv(self.norm_attention(tokens_SLD))
            .view(s, length, 3, self.num_heads, d // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        attended = nn.functional.scaled_dot_product_attention(q, k, v)
        tokens_SLD = tokens_SLD + self.projection(attended.transpose(1, 2).reshape(s, length, d))
        gate, value = self.gate_value(self.norm_ffn(tokens_SLD)).chunk(2, dim=-1)
        return tokens_SLD + self.ffn_out(nn.functional.silu(gate) * value)


@dataclass
class PredFormerArgs:
    patch_size: int = 8
    """Side of the square pixel patch each token covers (on the frames as given)."""
    embed_dim: int = 256
    """Token width D."""
    num_heads: int = 8
    """Attention heads per block (must divide embed_dim)."""
    num_groups: int = 6
    """How many times `pattern` is repeated."""
    pattern: str = "TSST"
    """Attention axis of each block in a group: T (time) or S (space)."""
    mlp_ratio: float = 4.0
    """SwiGLU hidden width as a multiple of embed_dim."""


class PredFormer(nn.Module):
    """Factorised spatio-temporal transformer, T_in frames → T_out frames in one pass."""

    Args = PredFormerArgs

    def __init__(self, spec: FrameSpec, args: PredFormerArgs | None = None) -> None:
        super().__init__()
        args = args or PredFormerArgs()
        p, d = args.patch_size, args.embed_dim
        if spec.height % p or spec.width % p:
            raise ValueError(
                f"frame size {spec.height}×{spec.width} is not divisible by patch_size {p}"
            )
        if d % args.num_heads:
            raise ValueError(f"embed_dim {d} is not divisible by num_heads {args.num_heads}")
        if not args.pattern or set(args.pattern) - {"T", "S"}:
            raise ValueError(f"pattern must be a non-empty string of T and S, got '{args.pattern}'")
        self.spec, self.patch_size = spec, p
        self.grid = (spec.height // p, spec.width // p)
        num_tokens = self.grid[0] * self.grid[1]
        self.embed = nn.Linear(p * p * spec.channels, d)
        self.time_position = nn.Parameter(torch.randn(1, spec.num_input_frames, 1, d) * 0.02)
        self.space_position = nn.Parameter(torch.randn(1, 1, num_tokens, d) * 0.02)
        self.axes = list(args.pattern) * args.num_groups
        hidden = int(args.mlp_ratio * d)
        self.blocks = nn.ModuleList(
            GatedTransformerBlock(d, args.num_heads, hidden) for _ in self.axes
        )
        self.time_map = (
            nn.Linear(spec.num_input_frames, spec.num_output_frames)
            if spec.num_output_frames != spec.num_input_frames
            else None
        )
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, p * p * spec.channels)

    def forward(
        self,
        frames_BTCHW: torch.Tensor,
        num_output_frames: int,
        *,
        targets_BTCHW: torch.Tensor | None = None,
        teacher_mask_BT: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # targets and teacher mask are unused: the mapping is direct, with nothing to feed back
        b, t, c, h, w = frames_BTCHW.shape
        if (t, num_output_frames) != (self.spec.num_input_frames, self.spec.num_output_frames):
            raise ValueError(
                f"PredFormer was built for {self.spec.num_input_frames}→"
                f"{self.spec.num_output_frames} frames, got {t}→{num_output_frames}"
            )
        p, (gh, gw) = self.patch_size, self.grid
        patches = frames_BTCHW.reshape(b, t, c, gh, p, gw, p).permute(0, 1, 3, 5, 2, 4, 6)
        tokens_BTND = self.embed(patches.reshape(b, t, gh * gw, c * p * p))
        tokens_BTND = tokens_BTND + self.time_position + self.space_position
        n, d = gh * gw, tokens_BTND.shape[-1]
        for axis, block in zip(self.axes, self.blocks):
            if axis == "S":
                tokens_BTND = block(tokens_BTND.reshape(b * t, n, d)).view(b, t, n, d)
            else:
                tokens_BNTD = tokens_BTND.transpose(1, 2).reshape(b * n, t, d)
                tokens_BTND = block(tokens_BNTD).view(b, n, t, d).transpose(1, 2)
        if self.time_map is not None:
            tokens_BTND = self.time_map(tokens_BTND.transpose(1, 3)).transpose(1, 3)
        t_out = num_output_frames
        pixels = self.head(self.norm(tokens_BTND)).view(b, t_out, gh, gw, c, p, p)
        return pixels.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, t_out, c, h, w)
