"""PredFormer (Tang et al., 2024, "Video Prediction Transformers without Recurrence or
Convolution"): a pure gated transformer with factorised spatio-temporal attention that
maps the input frames to the output frames directly (no recurrence).

Legend: B batch, T time, C channels, H×W frame size (as given to the backbone), p the
token patch size, N = (H/p)(W/p) tokens per frame, D the embedding width.

Each frame is cut into p×p patches, linearly embedded to D, and a fixed sinusoidal
position code over the T·N token positions is added. A stack of Gated Transformer Blocks
follows; each attends either along time (the T tokens at one patch position: "T") or
across space (the N tokens of one frame: "S"), in the order `pattern` repeats: the
paper's best Moving MNIST variant interleaves them as quadruplets T-S-S-T, its TaxiBJ one
as triplets S-T-S. A block is x + MHSA(LN(x)) (no qkv bias), then x + SwiGLU(LN(x)), then
a LayerNorm of its own. A LayerNorm and a linear head map every token back to its p×p×C
pixels. The official model needs T_out = T_in; for T_out ≠ T_in ours adds a learned
linear map over the time axis (T_in → T_out) before the head.

Verified against the official code (github.com/yyyujintang/PredFormer:
`openstl/models/PredFormer_Quadruplet_TSST.py`, `PredFormer_Triplet_STS.py`,
`openstl/modules/PredFormer_modules.py`, `configs/{mmnist,taxibj}/PredFormer.py`,
`scripts/{mmnist,taxibj}/*_train.sh`): the block structure above (pre-norm attention
without qkv bias, SwiGLU with hidden 4D, a LayerNorm closing each block, stochastic depth
and dropout placement), the sinusoidal position code, the head, truncated-normal (0.02)
initialisation of the blocks' linear layers; Moving MNIST: p = 8, D = 256, 8 heads of 32,
6 T-S-S-T quadruplets (24 blocks), no dropout, batch 16, AdamW lr 1e-3, weight decay
1e-2, OneCycle, 2000 epochs; TaxiBJ: p = 4, D = 256, 8 heads, 2 S-T-S triplets, dropout,
attention dropout and stochastic depth 0.1, the same optimiser, 200 epochs. The paper's
result tables could not be read here (only its abstract), so no published count or MSE
is checked; PredFormer has no KTH recipe (our KTH one is our own).

At the Moving MNIST settings (patch 1 outside: spec 1×64×64; 10→10): 25,297,728
parameters, as the official model by the same count, and 16.42 GMACs forward per sample
(`torch.utils.flop_counter.FlopCounterMode`, MACs = flops/2, batch 1, attention matmuls
included; `stpdist bench model` on CPU shows 16.13: FlopCounterMode has no formula for
the CPU attention kernel, 0.29 GMACs here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import FrameSpec


def sinusoidal_code(positions: int, dim: int) -> torch.Tensor:
    """positions × dim: sin on even, cos on odd channels, wavelengths 10000^(2i/dim)."""
    position = torch.arange(positions, dtype=torch.float64)[:, None]
    pair = torch.arange(dim) // 2
    angle = position / 10000 ** (2 * pair / dim)
    code = torch.where(torch.arange(dim) % 2 == 0, torch.sin(angle), torch.cos(angle))
    return code.float()


class GatedTransformerBlock(nn.Module):
    """x + MHSA(LN(x)); x + SwiGLU(LN(x)); LN. Attention runs over the second-to-last axis."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        hidden: int,
        dropout: float,
        attention_dropout: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.num_heads, self.drop_path = num_heads, drop_path
        self.norm_attention = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.projection = nn.Linear(dim, dim)
        self.attention_dropout = nn.Dropout(attention_dropout)  # on the projection's output
        self.norm_ffn = nn.LayerNorm(dim)
        self.gate_value = nn.Linear(dim, 2 * hidden)  # SwiGLU's two input maps, side by side
        self.ffn_out = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)  # after the gating and after ffn_out
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, tokens_SLD: torch.Tensor) -> torch.Tensor:
        """tokens S sequences × L tokens × D; attention runs within each sequence."""
        s, length, d = tokens_SLD.shape
        q, k, v = (
            self.qkv(self.norm_attention(tokens_SLD))
            .view(s, length, 3, self.num_heads, d // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        attended = nn.functional.scaled_dot_product_attention(q, k, v)
        attended = self.projection(attended.transpose(1, 2).reshape(s, length, d))
        tokens_SLD = tokens_SLD + self._drop(self.attention_dropout(attended))
        gate, value = self.gate_value(self.norm_ffn(tokens_SLD)).chunk(2, dim=-1)
        ffn = self.dropout(self.ffn_out(self.dropout(nn.functional.silu(gate) * value)))
        return self.norm_out(tokens_SLD + self._drop(ffn))

    def _drop(self, branch_SLD: torch.Tensor) -> torch.Tensor:
        """Stochastic depth: in training, drop the branch for a random subset of the
        sequences (probability `drop_path`) and rescale the rest."""
        if not self.training or not self.drop_path:
            return branch_SLD
        keep = 1 - self.drop_path
        mask = branch_SLD.new_empty(branch_SLD.shape[0], 1, 1).bernoulli_(keep)
        return branch_SLD * mask / keep


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
    dropout: float = 0.0
    """Dropout inside SwiGLU (after the gating and after its output layer)."""
    attention_dropout: float = 0.0
    """Dropout on the attention branch's output."""
    drop_path_rate: float = 0.0
    """Stochastic depth of every block's two branches (the same rate for all blocks)."""


class PredFormer(nn.Module):
    """Factorised spatio-temporal gated transformer, T_in frames → T_out frames in one pass."""

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
        for name in ("dropout", "attention_dropout", "drop_path_rate"):
            if not 0 <= getattr(args, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(args, name)}")
        self.spec, self.patch_size = spec, p
        self.grid = (spec.height // p, spec.width // p)
        num_tokens = self.grid[0] * self.grid[1]
        self.embed = nn.Linear(p * p * spec.channels, d)
        code = sinusoidal_code(spec.num_input_frames * num_tokens, d)
        self.register_buffer(
            "position_code", code.view(1, spec.num_input_frames, num_tokens, d), persistent=False
        )
        self.axes = list(args.pattern) * args.num_groups
        hidden = int(args.mlp_ratio * d)
        self.blocks = nn.ModuleList(
            GatedTransformerBlock(
                d, args.num_heads, hidden, args.dropout, args.attention_dropout, args.drop_path_rate
            )
            for _ in self.axes
        )
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.time_map = (
            nn.Linear(spec.num_input_frames, spec.num_output_frames)
            if spec.num_output_frames != spec.num_input_frames
            else None
        )
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, p * p * spec.channels)

    def fsdp_units(self) -> list[nn.Module]:
        """What FSDP shards as units: each transformer block (the embedding and head stay
        with the root)."""
        return list(self.blocks)

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
        patches = frames_BTCHW.reshape(b, t, c, gh, p, gw, p).permute(0, 1, 3, 5, 4, 6, 2)
        tokens_BTND = self.embed(patches.reshape(b, t, gh * gw, p * p * c)) + self.position_code
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
        pixels = self.head(self.norm(tokens_BTND)).view(b, t_out, gh, gw, p, p, c)
        return pixels.permute(0, 1, 6, 2, 4, 3, 5).reshape(b, t_out, c, h, w)
