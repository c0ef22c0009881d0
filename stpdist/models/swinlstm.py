"""SwinLSTM (Tang et al., ICCV 2023), the deep variant SwinLSTM-D.

Legend: B batch, T time, C channels, H×W frame size (as given to the backbone), p the
token patch size, L = tokens of a stage (h×w grid), D a stage's token width.

A SwinLSTM cell replaces the convolutions of a ConvLSTM by Swin Transformer blocks (STB).
Block 0 takes the input tokens X_t as its residual stream and, after layer-normalising
X_t and H_{t−1} (one shared LayerNorm), attends over a linear projection of their
concatenation; every later even block re-injects X_t the same way, odd blocks attend over
their own stream on windows shifted by half a window. The last block's output F_t gives

    gate = σ(F_t),  C_t = gate ⊙ (C_{t−1} + tanh F_t),  H_t = gate ⊙ tanh(C_t).

SwinLSTM-D embeds each frame into p×p patch tokens (linear + LayerNorm), then runs
`len(depths_down)` down stages, each a cell followed by patch merging (2×2 tokens → one:
half the grid, twice the width), and as many up stages from the bottom back, each a cell
followed by patch expanding (one token → 2×2). Up cell i runs on the grid and width of the
merging after down stage i: so the cells work at 1, ½ (down) and ¼, ½ (up) of the token
grid with two stages. A transposed convolution (3×3, stride 2 at p = 2) turns the final
tokens into the frame, then a sigmoid. Each cell keeps its own (H, C) across steps; the
frame loop is `recurrent.FrameRecurrent`'s.

Why the earlier version of this file could not overfit a tiny batch (−70 % and a plateau
at the all-zeros loss): its up path started at the last down stage's resolution and fed
the last cell's H_t straight into a linear pixel head. H_t = σ(F)·tanh(σ(F)(C + tanh F))
has a gain of ¼ near F = 0 and no residual path around it, so four cells in series left
the head a signal squeezed into (−0.3, 1) with nothing re-normalising it (removing the
cells' gating made the same network fit, −95 %). In the paper's layout every cell's H_t
passes through the patch merging or expanding LayerNorm before the next cell or the
head, and each block's residual stream is X_t itself, not a projection of [X_t, H_{t−1}].
With the layout restored (and no other change) the tiny batch overfits.

Verified against the official code (github.com/SongTang-x/SwinLSTM, `SwinLSTM_D.py`,
`configs.py`, `functions.py`) and OpenSTL's port (`openstl/modules/swinlstm_modules.py`,
`configs/mmnist/SwinLSTM-D.py`): the cell equations above, the block order and the
re-injection of X_t, down/up stage layout, per-stage heads, the transposed-conv head with
sigmoid, and the Moving MNIST settings p = 2, D = 128, depths_down [2, 6], depths_up
[6, 2], heads [4, 8], window 4, Adam lr 1e-4, batch 16 (OpenSTL: OneCycle; official code:
constant lr, 2000 epochs, loss on all T_in + T_out − 1 next-frame predictions). The
paper's own text could not be read here beyond its abstract, so its tables are not.

At those settings (patch 1 outside: spec 1×64×64; 10→10), measured with
`torch.utils.flop_counter.FlopCounterMode` (MACs = flops/2, batch 1): 9,487,361
parameters and 8.72 GMACs forward per sample. The official model has 9,949,185 more
nothing: it also builds a `Linear(2D, D)` in every odd block (never called, no gradient:
461,312 parameters at these settings) and an unused patch embedding in its up path (896),
so it counts 9,949,569; we build neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .base import FrameSpec
from .recurrent import FrameRecurrent


def _windows(x_BhwD: torch.Tensor, size: int) -> torch.Tensor:
    """B×h×w×D → (B·nW)×size²×D."""
    b, h, w, d = x_BhwD.shape
    x = x_BhwD.view(b, h // size, size, w // size, size, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size * size, d)


def _unwindows(x: torch.Tensor, size: int, b: int, h: int, w: int) -> torch.Tensor:
    d = x.shape[-1]
    x = x.view(b, h // size, w // size, size, size, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, d)


class SwinBlock(nn.Module):
    """LN → (shifted) window attention → residual; LN → MLP → residual. With `merges` the
    block also takes a second token set: both are layer-normalised (the same LayerNorm),
    concatenated and projected back to D before the attention; the residual stream stays
    the first."""

    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        num_heads: int,
        window: int,
        shift: bool,
        merges: bool,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"stage width {dim} is not divisible by {num_heads} heads")
        self.grid, self.num_heads = grid, num_heads
        self.window = min(window, *grid)
        if grid[0] % self.window or grid[1] % self.window:
            raise ValueError(f"token grid {grid} is not divisible by window {self.window}")
        # no shift when one window covers the whole grid (as in Swin)
        self.shift = self.window // 2 if shift and self.window < min(grid) else 0
        self.norm_attention = nn.LayerNorm(dim)
        self.reduce = nn.Linear(2 * dim, dim) if merges else None
        self.qkv = nn.Linear(dim, 3 * dim)
        self.projection = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        w = self.window
        self.position_bias = nn.Parameter(torch.randn((2 * w - 1) ** 2, num_heads) * 0.02)
        coords = torch.stack(
            torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
        ).flatten(1)
        relative = coords[:, :, None] - coords[:, None, :] + w - 1  # 2 × w² × w²
        self.register_buffer(
            "bias_index", relative[0] * (2 * w - 1) + relative[1], persistent=False
        )
        self.register_buffer("mask", self._shift_mask(), persistent=False)

    def _shift_mask(self) -> torch.Tensor | None:
        """−inf between tokens that the cyclic shift brought together from far apart."""
        if not self.shift:
            return None
        h, w = self.grid
        region = torch.zeros(1, h, w, 1)
        cuts = (slice(0, -self.window), slice(-self.window, -self.shift), slice(-self.shift, None))
        for n, (rows, cols) in enumerate((r, c) for r in cuts for c in cuts):
            region[:, rows, cols] = n
        labels = _windows(region, self.window).squeeze(-1)  # nW × w²
        different = labels[:, :, None] != labels[:, None, :]
        return torch.zeros(different.shape).masked_fill(different, float("-inf"))

    def forward(
        self, tokens_BLD: torch.Tensor, other_BLD: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, _, d = tokens_BLD.shape
        (h, w), s, n = self.grid, self.window, self.num_heads
        x = self.norm_attention(tokens_BLD)
        if self.reduce is not None:
            x = self.reduce(torch.cat([x, self.norm_attention(other_BLD)], dim=-1))
        x = x.view(b, h, w, d)
        if self.shift:
            x = torch.roll(x, (-self.shift, -self.shift), dims=(1, 2))
        x = _windows(x, s)
        q, k, v = self.qkv(x).view(x.shape[0], s * s, 3, n, d // n).permute(2, 0, 3, 1, 4)
        bias = self.position_bias[self.bias_index].permute(2, 0, 1)  # heads × w² × w²
        if self.mask is not None:
            bias = (bias[None] + self.mask[:, None]).repeat(b, 1, 1, 1)  # (B·nW) × heads × w² × w²
        x = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = self.projection(x.transpose(1, 2).reshape(-1, s * s, d))
        x = _unwindows(x, s, b, h, w)
        if self.shift:
            x = torch.roll(x, (self.shift, self.shift), dims=(1, 2))
        tokens_BLD = tokens_BLD + x.reshape(b, h * w, d)
        return tokens_BLD + self.mlp(self.norm_mlp(tokens_BLD))


class SwinLSTMCell(nn.Module):
    """F = STBs(X, H); gate = σ(F); C = gate(C + tanh F); H = gate tanh C."""

    def __init__(self, dim: int, grid: tuple[int, int], depth: int, num_heads: int, window: int):
        super().__init__()
        self.dim, self.grid = dim, grid
        # block 0 merges H_{t-1} into X_t, later even blocks re-inject X_t, odd ones shift
        self.blocks = nn.ModuleList(
            SwinBlock(dim, grid, num_heads, window, shift=i % 2 == 1, merges=i % 2 == 0)
            for i in range(depth)
        )

    def forward(
        self, x_BLD: torch.Tensor, h_BLD: torch.Tensor, c_BLD: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.blocks[0](x_BLD, h_BLD)
        for i, block in enumerate(self.blocks[1:], start=1):
            features = block(features, x_BLD if i % 2 == 0 else None)
        gate = torch.sigmoid(features)
        c_BLD = gate * (c_BLD + torch.tanh(features))
        return gate * torch.tanh(c_BLD), c_BLD


class PatchMerging(nn.Module):
    """2×2 neighbouring tokens → one: grid halves, width D → 2D."""

    def __init__(self, dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(4 * dim)
        self.reduce = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, tokens_BLD: torch.Tensor) -> torch.Tensor:
        b, _, d = tokens_BLD.shape
        h, w = self.grid
        x = tokens_BLD.view(b, h // 2, 2, w // 2, 2, d).permute(0, 1, 3, 2, 4, 5)
        return self.reduce(self.norm(x.reshape(b, h * w // 4, 4 * d)))


class PatchExpanding(nn.Module):
    """One token → 2×2: grid doubles, width D → D/2."""

    def __init__(self, dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid  # the smaller grid (input)
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, tokens_BLD: torch.Tensor) -> torch.Tensor:
        b, _, d = tokens_BLD.shape
        h, w = self.grid
        x = self.expand(tokens_BLD).view(b, h, w, 2, 2, d // 2).permute(0, 1, 3, 2, 4, 5)
        return self.norm(x.reshape(b, 4 * h * w, d // 2))


@dataclass
class SwinLSTMArgs:
    patch_size: int = 2
    """Side of the square pixel patch each token covers (on the frames as given)."""
    embed_dim: int = 128
    """Token width D of the patch embedding (stage i works at D·2^i)."""
    depths_down: list[int] = field(default_factory=lambda: [2, 6])
    """Swin blocks in the cell of each down stage, finest first."""
    depths_up: list[int] = field(default_factory=lambda: [6, 2])
    """Swin blocks in up cell i, which runs on the grid and width after down stage i's
    merging (the paper's and OpenSTL's `depths_up` order)."""
    num_heads: list[int] = field(default_factory=lambda: [4, 8])
    """Attention heads of down stage i and of up cell i."""
    window_size: int = 4
    """Side of the attention window, in tokens (clipped to the stage's grid)."""


class SwinLSTM(FrameRecurrent):
    """SwinLSTM-D: patch embedding, down and up paths of SwinLSTM cells, transposed-conv
    head with a sigmoid."""

    Args = SwinLSTMArgs

    def __init__(self, spec: FrameSpec, args: SwinLSTMArgs | None = None) -> None:
        super().__init__()
        args = args or SwinLSTMArgs()
        down, up, heads = list(args.depths_down), list(args.depths_up), list(args.num_heads)
        p, stages = args.patch_size, len(args.depths_down)
        if not down or len(up) != stages or len(heads) != stages:
            raise ValueError(
                f"depths_down {down}, depths_up {up} and num_heads {heads} need the same, "
                "non-zero length"
            )
        scale = p * 2**stages
        if spec.height % scale or spec.width % scale:
            raise ValueError(
                f"frame size {spec.height}×{spec.width} is not divisible by patch_size × "
                f"2^stages = {scale}"
            )
        self.patch_size = p
        grids = [(spec.height // p // 2**i, spec.width // p // 2**i) for i in range(stages + 1)]
        dims = [args.embed_dim * 2**i for i in range(stages + 1)]
        window = args.window_size
        self.embed = nn.Sequential(nn.Linear(p * p * spec.channels, dims[0]), nn.LayerNorm(dims[0]))
        self.down = nn.ModuleList(
            SwinLSTMCell(dims[i], grids[i], down[i], heads[i], window) for i in range(stages)
        )
        self.merges = nn.ModuleList(PatchMerging(dims[i], grids[i]) for i in range(stages))
        # up cells in the order they run: from the bottom (after the last merging) upwards
        order = list(reversed(range(stages)))
        self.up = nn.ModuleList(
            SwinLSTMCell(dims[i + 1], grids[i + 1], up[i], heads[i], window) for i in order
        )
        self.expands = nn.ModuleList(PatchExpanding(dims[i + 1], grids[i + 1]) for i in order)
        # the paper's 3×3 stride-2 transposed convolution at p = 2, for any p
        kernel, padding, extra = (p + 1, 1, 1) if p > 1 else (3, 1, 0)
        self.head = nn.ConvTranspose2d(
            dims[0], spec.channels, kernel, stride=p, padding=padding, output_padding=extra
        )
        self.grid = grids[0]

    def init_state(self, frames_BTCHW: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        b = frames_BTCHW.shape[0]
        cells = list(self.down) + list(self.up)
        return [(frames_BTCHW.new_zeros(b, c.grid[0] * c.grid[1], c.dim),) * 2 for c in cells]

    def step(self, frame_BCHW: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        b, c, height, width = frame_BCHW.shape
        p, (gh, gw) = self.patch_size, self.grid
        patches = frame_BCHW.view(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
        x = self.embed(patches.reshape(b, gh * gw, c * p * p))
        cells = list(zip(self.down, self.merges)) + list(zip(self.up, self.expands))
        new_state = []
        for (cell, resize), (h, cell_state) in zip(cells, state):
            h, cell_state = cell(x, h, cell_state)
            new_state.append((h, cell_state))
            x = resize(h)
        x = x.transpose(1, 2).reshape(b, -1, gh, gw)
        return torch.sigmoid(self.head(x)), new_state
