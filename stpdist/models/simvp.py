"""SimVP (Gao et al., CVPR 2022; v2: Tan et al., 2022) and TAU (Tan et al., CVPR 2023).

Legend: B batch, T time, C channels, H×W frame size (after patching); C' the spatial
channels, h×w the latent size (H×W halved once per downsampling block).

SimVP is all convolutional and predicts a whole chunk of frames at once:
- a spatial encoder of `num_spatial_blocks` conv → GroupNorm(2) → SiLU blocks applied to
  every frame alone; every second block (the 2nd, 4th, ...) has stride 2;
- a translator over the T·C' channels of the stacked latent frames: `num_translator_blocks`
  blocks picked by name from `translators.BLOCKS` or by an import path
  `package.module:ClassName` (`translators.translator_block`); `incepu` arranges them as
  a U-Net with skip connections; every other block type is a plain stack in which the first
  block maps T·C' to `temporal_channels` and the last one maps back, each by a 1×1 conv
  after the block);
- a spatial decoder mirroring the encoder (sub-pixel upsampling: conv to 4C', pixel
  shuffle), whose last block also receives the output of the encoder's first block
  (a skip connection at full resolution), then a 1×1 conv to C.

T_in → T_out: the network maps T_in frames to the next T_in. Like OpenSTL, when
T_out < T_in it keeps the first T_out of them; when T_out > T_in it rolls out in chunks
of T_in, feeding each chunk's T_in predictions back as the next input, and cuts the
result to T_out. `targets_BTCHW` and `teacher_mask_BT` are ignored.

TAU is SimVP with the `tau` translator, trained with `differential_divergence` added to
the MSE (weight 0.1 in OpenSTL; `model.divergence_form: openstl` is OpenSTL's form of it).

Where this differs from OpenSTL on purpose (none changes a parameter count):
- stochastic depth grows linearly from 0 to `drop_path`; OpenSTL's grows from 0.01
  (so its blocks drop paths at up to 1% even when `drop_path` is 0);
- shifted Swin windows are masked as in the Swin paper; OpenSTL passes no mask, so its
  shifted windows attend across the wrapped-around borders (`swin_shift_mask: false` is
  OpenSTL's form: `stpdist import openstl` sets it, and matches OpenSTL's outputs);
- an odd `num_spatial_blocks` works (OpenSTL's block list comes out one short).

At OpenSTL's Moving MNIST settings (1×64×64, 10→10, C' 64, temporal 512, 4 spatial and
8 translator blocks, mlp_ratio 8), parameters pinned in tests/test_simvp.py and forward
GMACs per sample (torch's FlopCounterMode: convolutions and matrix products, halved),
next to OpenSTL's table (whose "FLOPs" are fvcore multiply-accumulates):

| translator | parameters | OpenSTL | GMACs  | OpenSTL FLOPs |
|------------|-----------:|--------:|-------:|--------------:|
| incepu     | 57,946,113 |  58.0M  | 19.335 | 19.4G         |
| gsta       | 46,769,665 |  46.8M  | 16.468 | 16.5G         |
| tau        | 44,656,001 |  44.7M  | 15.894 | 16.0G         |
| vit        | 46,102,273 |  46.1M  | 16.864 | 16.9G         |
| swin       | 46,105,409 |  46.1M  | 16.345 | 16.4G         |
| uniformer  | 44,834,817 |  44.8M  | 16.386 | 16.5G         |
| mlpmixer   | 38,192,449 |  38.2M  | 14.587 | 14.7G         |
| convmixer  |  3,919,361 |   3.9M  |  5.524 |  5.5G         |
| poolformer | 37,115,393 |  37.1M  | 14.012 | 14.1G         |
| convnext   | 37,313,921 |  37.3M  | 14.065 | 14.1G         |
| van        | 44,520,833 |  44.5M  | 15.894 | 16.0G         |
| hornet     | 45,738,305 |  45.7M  | 16.212 | 16.3G         |
| moganet    | 46,777,065 |  46.8M  | 16.461 | 16.5G         |

Every parameter count agrees with OpenSTL's to its rounding (within 0.1%; ConvMixer's
3.92M rounds to 3.9M). The GMACs agree within 0.8%: 0.03–0.11 G below OpenSTL's figure
(ConvMixer 0.02 G above). Not traced further (fvcore is not installed here): per-element
work that fvcore may charge and FlopCounterMode does not is too small to be it (all norm
layers together see 0.013 G elements per sample).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .base import FrameSpec, check_odd_kernels
from .translators import BUILT_IN, BlockSettings, InceptionBlock, translator_block

DIVERGENCE_FORMS = ("per_channel", "openstl")
"""The forms of TAU's differential divergence (`model.divergence_form`)."""


def differential_divergence(
    pred_BTCHW: torch.Tensor,
    target_BTCHW: torch.Tensor,
    *,
    temperature: float = 0.1,
    form: str = "per_channel",
) -> torch.Tensor:
    """TAU's differential divergence regulariser (unweighted), in the form `form`.

    The frame differences Δ_t = x_{t+1} − x_t of prediction and truth are each turned into
    a distribution by softmax(Δ / τ), separately per sample and frame difference, and
    compared by KL(pred ‖ truth) = Σ p (log p − log q); the result is the mean of the
    pointwise terms p (log p − log q), OpenSTL's scale (so its weight α = 0.1 keeps its
    meaning). τ = 0.1 as in the TAU authors' implementation (OpenSTL); the paper introduces
    the softmax with a temperature τ. The forms differ in where the softmax runs:

    - `per_channel`: over the H×W pixels of each channel (C distributions per difference);
      fewer than 2 frames give 0, exactly 2 the one difference.
    - `openstl`: OpenSTL's `diff_div_reg`, one softmax over all C·H·W values per
      difference, terms p·log(p / (q + ε) + ε) with ε = 1e-12, and 0 for T ≤ 2.

    For C = 1 and T > 2 the two agree up to ε; for C > 1 `per_channel` is about C times
    `openstl` (each channel's distribution sums to 1, not all C together).
    """
    if form not in DIVERGENCE_FORMS:
        raise ValueError(f"divergence form must be one of {DIVERGENCE_FORMS}, got '{form}'")
    if pred_BTCHW.shape != target_BTCHW.shape:
        raise ValueError(
            f"prediction {tuple(pred_BTCHW.shape)} vs target {tuple(target_BTCHW.shape)}"
        )
    num_frames = pred_BTCHW.shape[1]
    if num_frames < 2 or (form == "openstl" and num_frames == 2):
        return pred_BTCHW.new_zeros(())
    # per_channel: a distribution over H·W per channel; openstl: over C·H·W
    flat_from = 3 if form == "per_channel" else 2
    delta_pred = (pred_BTCHW[:, 1:] - pred_BTCHW[:, :-1]).flatten(flat_from) / temperature
    delta_true = (target_BTCHW[:, 1:] - target_BTCHW[:, :-1]).flatten(flat_from) / temperature
    if form == "openstl":
        eps = 1e-12  # inside the log, as OpenSTL writes it
        p, q = F.softmax(delta_pred, dim=-1), F.softmax(delta_true, dim=-1)
        return (p * torch.log(p / (q + eps) + eps)).mean()
    log_p = F.log_softmax(delta_pred, dim=-1)
    log_q = F.log_softmax(delta_true, dim=-1)
    return (log_p.exp() * (log_p - log_q)).mean()


class ConvNormAct(nn.Module):
    """Conv (stride 2 to downsample, or to 4C then pixel shuffle to upsample) →
    GroupNorm(2) → SiLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        downsample: bool = False,
        upsample: bool = False,
    ) -> None:
        super().__init__()
        stride = 2 if downsample else 1
        padding = (kernel_size - stride + 1) // 2
        if upsample:
            self.conv = nn.Sequential(
                nn.Conv2d(in_channels, 4 * out_channels, kernel_size, padding=padding),
                nn.PixelShuffle(2),
            )
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
        self.norm = nn.GroupNorm(2, out_channels)
        self.act = nn.SiLU()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
                nn.init.zeros_(m.bias)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x_BCHW)))


class SpatialEncoder(nn.Module):
    """Per-frame encoder; returns the latent and the first block's output (the skip)."""

    def __init__(self, in_channels: int, channels: int, num_blocks: int, kernel_size: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ConvNormAct(
                in_channels if i == 0 else channels, channels, kernel_size, downsample=i % 2 == 1
            )
            for i in range(num_blocks)
        )

    def forward(self, x_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = x = self.blocks[0](x_BCHW)
        for block in self.blocks[1:]:
            x = block(x)
        return x, skip


class SpatialDecoder(nn.Module):
    """Mirror of the encoder; the skip joins (by addition) before the last block."""

    def __init__(self, channels: int, out_channels: int, num_blocks: int, kernel_size: int) -> None:
        super().__init__()
        # upsample where the encoder downsampled, in reverse order
        self.blocks = nn.ModuleList(
            ConvNormAct(channels, channels, kernel_size, upsample=(num_blocks - 1 - i) % 2 == 1)
            for i in range(num_blocks)
        )
        self.readout = nn.Conv2d(channels, out_channels, 1)

    def forward(self, latent_BCHW: torch.Tensor, skip_BCHW: torch.Tensor) -> torch.Tensor:
        x = latent_BCHW
        for block in self.blocks[:-1]:
            x = block(x)
        return self.readout(self.blocks[-1](x + skip_BCHW))


class InceptionUTranslator(nn.Module):
    """SimVP v1's translator: `num_blocks` Inception blocks down (T·C' → temporal), then
    `num_blocks` up, each up block after the first taking the matching down block's output
    concatenated to its input; the last maps back to T·C'."""

    def __init__(
        self, channels: int, hidden: int, num_blocks: int, kernel_sizes: list[int], groups: int
    ) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> InceptionBlock:
            return InceptionBlock(cin, hidden // 2, cout, kernel_sizes, groups)

        self.down = nn.ModuleList(
            block(channels if i == 0 else hidden, hidden) for i in range(num_blocks)
        )
        self.up = nn.ModuleList(
            block(hidden if i == 0 else 2 * hidden, channels if i == num_blocks - 1 else hidden)
            for i in range(num_blocks)
        )

    def fsdp_units(self) -> list[nn.Module]:
        return [*self.down, *self.up]

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x_BCHW = block(x_BCHW)
            skips.append(x_BCHW)
        x_BCHW = self.up[0](skips.pop())
        for block in self.up[1:]:
            x_BCHW = block(torch.cat([x_BCHW, skips.pop()], dim=1))
        return x_BCHW


class StackedTranslator(nn.Module):
    """`num_blocks` MetaFormer blocks; the first is built at the input width and followed
    by a 1×1 conv to `hidden`, the last is built at `hidden` and followed by a 1×1 conv
    back to the input width."""

    def __init__(
        self,
        block_class: type[nn.Module],
        channels: int,
        hidden: int,
        num_blocks: int,
        settings: BlockSettings,
    ) -> None:
        super().__init__()
        rates = [settings.drop_path * i / (num_blocks - 1) for i in range(num_blocks)]
        self.blocks = nn.ModuleList()
        for i in range(num_blocks):
            width = channels if i == 0 else hidden
            out = channels if i == num_blocks - 1 else hidden
            block_settings = dataclasses.replace(
                settings, drop_path=rates[i], layer_index=i, num_layers=num_blocks
            )
            layers = [block_class(width, block_settings)]
            if width != out:
                layers.append(nn.Conv2d(width, out, 1))
            self.blocks.append(nn.Sequential(*layers))

    def fsdp_units(self) -> list[nn.Module]:
        return list(self.blocks)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x_BCHW = block(x_BCHW)
        return x_BCHW


@dataclass
class SimVPArgs:
    translator: str = "gsta"
    """Translator block: incepu, gsta, tau, convmixer, convnext, hornet, mlpmixer,
    moganet, poolformer, swin, uniformer, van, vit, a name added with
    `translators.register_translator`, or an import path `package.module:ClassName` to a
    block class `Block(dim, BlockSettings)` that keeps B×dim×H×W."""
    spatial_channels: int = 64
    """Channels of the per-frame encoder and decoder (C')."""
    temporal_channels: int = 512
    """Width of the translator's inner blocks (its input and output are T_in·C')."""
    num_spatial_blocks: int = 4
    """Blocks of the encoder (and of the decoder); every second one halves H×W."""
    num_translator_blocks: int = 8
    """Translator blocks (incepu: blocks on each side of its U-Net); at least 2."""
    encoder_kernel_size: int = 3
    """Convolution kernel of the encoder blocks."""
    decoder_kernel_size: int = 3
    """Convolution kernel of the decoder blocks."""
    mlp_ratio: float = 8.0
    """Hidden width of the translator blocks' channel MLPs, as a multiple of their width."""
    drop: float = 0.0
    """Dropout inside the translator blocks."""
    drop_path: float = 0.0
    """Stochastic depth of the last translator block (linear from 0 at the first)."""
    inception_kernel_sizes: list[int] = field(default_factory=lambda: [3, 5, 7, 11])
    """incepu only: kernel sizes of the parallel grouped convolutions."""
    inception_groups: int = 8
    """incepu only: groups of those convolutions."""
    swin_shift_mask: bool = True
    """swin only: mask attention between pixels the cyclic shift brought together (Swin's
    paper); false is OpenSTL's SimVP, which runs the shifted windows without that mask."""
    swin_window: int | None = None
    """swin only: the side of its attention windows, which must divide both sides of the
    latent frames (the frames ÷ 2 for every second spatial block); None: OpenSTL's choice
    from the latent height (7 if a multiple of 7, else max(4, height // 16), at most 8)."""


TRANSLATOR_SETTINGS = {
    "inception_kernel_sizes": "incepu",
    "inception_groups": "incepu",
    "swin_shift_mask": "swin",
    "swin_window": "swin",
}
"""The settings one built-in translator alone reads, by the translator."""


def _say_other_translators_settings(args: SimVPArgs, defaults: SimVPArgs) -> None:
    """A setting of another built-in translator than the (built-in) one chosen, given away
    from its default, is said once at build: it was ignored silently (a zoo review: `gsta`
    with `inception_kernel_sizes: [4]` built as if it were not there). Not refused: models
    trained with such a key (which never touched their weights) load and resume."""
    if args.translator not in BUILT_IN:  # a translator of the user's own reads what it will
        return
    for key, owner in TRANSLATOR_SETTINGS.items():
        given, default = getattr(args, key), getattr(defaults, key)
        if isinstance(given, tuple):  # (3, 5, 7, 11) is the default list too
            given = list(given)
        if args.translator != owner and given != default:
            logging.getLogger("stpdist").warning(
                "model.backbone.%s is the %s translator's setting; translator %r reads "
                "none, and %s is ignored",
                key, owner, args.translator, given,
            )  # fmt: skip


class SimVP(nn.Module):
    """SimVP: spatial encoder → translator over stacked frames → spatial decoder."""

    Args = SimVPArgs

    def __init__(self, spec: FrameSpec, args: SimVPArgs | None = None) -> None:
        super().__init__()
        args = args or self.Args()
        block_class = translator_block(args.translator)  # fails early, naming it
        _say_other_translators_settings(args, self.Args())
        if args.num_spatial_blocks < 1 or args.num_translator_blocks < 2:
            raise ValueError(
                "SimVP needs num_spatial_blocks >= 1 and num_translator_blocks >= 2, got "
                f"{args.num_spatial_blocks} and {args.num_translator_blocks}"
            )
        kernels = {"encoder_kernel_size": args.encoder_kernel_size}
        kernels["decoder_kernel_size"] = args.decoder_kernel_size
        if args.translator == "incepu":
            kernels["inception_kernel_sizes"] = list(args.inception_kernel_sizes)
        check_odd_kernels(**kernels)
        if not args.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {args.mlp_ratio}")
        if args.translator != "incepu" and int(args.temporal_channels * args.mlp_ratio) < 1:
            # the blocks' MLPs would have no channel (a config review: "groups must be a
            # positive integer", naming nothing)
            raise ValueError(
                f"mlp_ratio {args.mlp_ratio} × temporal_channels {args.temporal_channels} "
                "leaves the translator's MLPs no hidden channel; expected at least 1"
            )
        for name in ("drop", "drop_path"):
            if not 0 <= getattr(args, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(args, name)}")
        factor = 2 ** (args.num_spatial_blocks // 2)
        if spec.height % factor or spec.width % factor:
            raise ValueError(
                f"SimVP: frame size {spec.height}×{spec.width} is not divisible by {factor} "
                f"(num_spatial_blocks={args.num_spatial_blocks} halves it "
                f"{args.num_spatial_blocks // 2} times)"
            )
        self.num_input_frames = spec.num_input_frames
        channels = spec.num_input_frames * args.spatial_channels
        self.encoder = SpatialEncoder(
            spec.channels, args.spatial_channels, args.num_spatial_blocks, args.encoder_kernel_size
        )
        if args.translator == "incepu":
            self.translator = InceptionUTranslator(
                channels,
                args.temporal_channels,
                args.num_translator_blocks,
                list(args.inception_kernel_sizes),
                args.inception_groups,
            )
        else:
            settings = BlockSettings(
                mlp_ratio=args.mlp_ratio,
                drop=args.drop,
                drop_path=args.drop_path,
                resolution=(spec.height // factor, spec.width // factor),
                swin_shift_mask=args.swin_shift_mask,
                swin_window=args.swin_window,
            )
            self.translator = StackedTranslator(
                block_class,
                channels,
                args.temporal_channels,
                args.num_translator_blocks,
                settings,
            )
        self.decoder = SpatialDecoder(
            args.spatial_channels, spec.channels, args.num_spatial_blocks, args.decoder_kernel_size
        )

    def fsdp_units(self) -> list[nn.Module]:
        """What FSDP shards as units: the spatial encoder, each translator block (where
        the parameters are), the spatial decoder."""
        return [self.encoder, *self.translator.fsdp_units(), self.decoder]

    def predict_chunk(self, frames_BTCHW: torch.Tensor) -> torch.Tensor:
        """The T_in frames that follow `frames_BTCHW` (T_in frames)."""
        b, t, c, h, w = frames_BTCHW.shape
        latent, skip = self.encoder(frames_BTCHW.reshape(b * t, c, h, w))
        _, c_latent, h_latent, w_latent = latent.shape
        stacked_BCHW = latent.reshape(b, t * c_latent, h_latent, w_latent)
        latent = self.translator(stacked_BCHW).reshape(b * t, c_latent, h_latent, w_latent)
        return self.decoder(latent, skip).reshape(b, t, c, h, w)

    def forward(
        self,
        frames_BTCHW: torch.Tensor,
        num_output_frames: int,
        *,
        targets_BTCHW: torch.Tensor | None = None,
        teacher_mask_BT: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if frames_BTCHW.shape[1] != self.num_input_frames:
            raise ValueError(
                f"SimVP was built for {self.num_input_frames} input frames, got "
                f"{frames_BTCHW.shape[1]} (frames {tuple(frames_BTCHW.shape)})"
            )
        if num_output_frames < 1:
            raise ValueError(f"num_output_frames must be at least 1, got {num_output_frames}")
        chunks = []
        current = frames_BTCHW
        for _ in range(-(-num_output_frames // self.num_input_frames)):  # ceil
            current = self.predict_chunk(current)
            chunks.append(current)
        return torch.cat(chunks, dim=1)[:, :num_output_frames]


@dataclass
class TAUArgs(SimVPArgs):
    translator: str = "tau"
    """Translator block (TAU: tau); any SimVP translator name is accepted."""


class TAU(SimVP):
    """TAU: SimVP with the Temporal Attention Unit translator. Train it with
    `differential_divergence` (weight 0.1) added to the loss."""

    Args = TAUArgs
