"""PhyDNet (Le Guen & Thome, CVPR 2020): physical dynamics disentangled from the residue.

Legend: B batch, T time, C channels, H×W frame size (as given to the backbone), H'×W' the
encoded size (H/s × W/s, s = `downsample`), E encoded channels (64 in the paper).

Each frame goes through a shared encoder (to E×H'×W'), then two branch encoders: one
feeds PhyCell, a recurrent cell whose prediction step is a learned PDE, H̃ = H + Φ(H)
with Φ a convolution whose kernels are pushed (by the moment loss) towards finite-
difference approximations of the partial derivatives ∂^{i+j}/∂x^i∂y^j, i, j < k; then a
Kalman-like correction H = H̃ + K ⊙ (E(x) − H̃) with a learned gain K. The other feeds a
ConvLSTM stack that models what physics leaves unexplained. The two branch decoders'
outputs are summed and a shared decoder (then a sigmoid) gives the next frame. Teacher
forcing is the shared teacher mask of `recurrent.FrameRecurrent`.

Moment loss (returned as aux loss `moment`): for each of the E input channels c, the
k×k moment matrix of Φ's first-conv kernels [:, c] (kernel j: M_x · w_j · M_yᵀ with
M[i, x] = (x − k//2)^i / i!) is compared (MSE) with the one-hot matrix of the derivative
kernel j is assigned to; summed over c and multiplied by `moment_weight`. OpenSTL (and
the paper's code) add it with weight 1 to a SUM of per-step MSEs over the T_in + T_out − 1
next-frame steps (19 on Moving MNIST); our task loss is a mean over frames, so the default
weight 1/(T_in + T_out − 1) (1/19 ≈ 0.053 there) reproduces their balance under Adam.

At OpenSTL's Moving MNIST settings PhyDNet runs on unpatched frames (patch 1: spec
1×64×64; its own encoder strides by 4; PhyCell 49 hidden, 7×7; ConvLSTM 128, 128, 64 at
3×3; 10→10), measured with `torch.utils.flop_counter.FlopCounterMode` (MACs = flops/2,
batch 1):

| model   | parameters | OpenSTL | GMACs | OpenSTL FLOPs |
|---------|-----------:|--------:|------:|--------------:|
| PhyDNet |  3,091,732 |   3.1M  | 15.31 |       15.3G   |

Both agree, for both variants. (OpenSTL's forward also decodes each branch on its own for
visualisation, two more passes of the shared decoder, 0.55 GMACs over 19 steps, apparently
not in its table; we do not compute them.) At its other recipes' settings (`openstl`):
KTH 1×128×128 10→20, downsample 4: 3,091,732 parameters, 93.40 GMACs (OpenSTL: 3.1M,
93.6G); TaxiBJ 2×32×32 4→4, downsample 2: 3,092,309, 5.595 GMACs (OpenSTL: 3.09M, 5.60G;
`paper`, upsampling last: 5.542). Parameters equal OpenSTL's model's in each case.

Two forms, chosen by `variant`:

* `paper` (default; stpdist's form before issue 23): the gain K = σ(W ∗ [E(x), H̃]) reads
  the prediction H̃, as the paper's equation writes it; the shared decoder upsamples in
  the mirror order of the encoder (with `downsample: 2`, at its last layer).
* `openstl`: OpenSTL's PhyDNet (`phydnet_model.py`, `phydnet_modules.py`; the official
  PhyDNet code has the same cell): K = σ(W ∗ [E(x), H_{t−1}]) reads the previous hidden
  state; the shared decoder's first transposed convolution always strides by 2 and its last
  by `downsample`/2 (OpenSTL's `decoder_D`; the same as `paper` at `downsample: 4`). Given
  OpenSTL's weights (key map below) the outputs are OpenSTL's (checked by running its code
  at commit c74deb5 in float64, at downsample 4 and 2, with and without teacher forcing:
  max |diff| 0). `downsample: 1` is refused (OpenSTL's encoder always strides its first
  layer by 2). OpenSTL fixes the widths (32/64 encoder, 49 kernels of 7×7, ConvLSTM
  128-128-64 at 3×3: the defaults here).

Loss: OpenSTL's `PhyDNet_Model.forward` returns Σ over the 19 next-frame steps of the
per-step MSE, plus Σ over the 64 input channels of MSE(moments, one-hot). stpdist's
training loss (`loss_frames: all`, `loss: mse`, default `moment_weight`) is the mean over
the steps plus 1/19 of the same moment sum: OpenSTL's ÷ 19 (checked: the frame part and
the moment part each to 1e-15 relative with the moments in float64; OpenSTL rounds its
moment matrices to float32, `K2M(...).float()`, so totals differ by up to ~1e-9). Not
reproduced: OpenSTL's `PhyDNet.training_step` then applies its MSE criterion to that
scalar (`criterion(loss, batch_y)`, i.e. mean((L − y)²) over the target pixels), which
scales the gradient by 2(L − mean y); and it draws teacher forcing once per batch (all
output steps or none), where stpdist's scheduled sampling draws per sample and step.

OpenSTL state-dict key → stpdist key (either variant; `X.main.0/1` is a conv block's
convolution and GroupNorm, `i.j` below is block i's layer j):

| OpenSTL                                        | stpdist                          |
|------------------------------------------------|----------------------------------|
| encoder.encoder_E.c{1,2,3}.main.{0,1}          | encoder.{0,1,2}.{0,1}            |
| encoder.encoder_Ep.c{1,2}.main.{0,1}           | encoder_physics.{0,1}.{0,1}      |
| encoder.encoder_Er.c{1,2}.main.{0,1}           | encoder_residual.{0,1}.{0,1}     |
| encoder.decoder_Dp.upc{1,2}.main.{0,1}         | decoder_physics.{0,1}.{0,1}      |
| encoder.decoder_Dr.upc{1,2}.main.{0,1}         | decoder_residual.{0,1}.{0,1}     |
| encoder.decoder_D.upc{1,2}.main.{0,1}          | decoder.{0,1}.{0,1}              |
| encoder.decoder_D.upc3                         | decoder.2                        |
| phycell.cell_list.0.F.conv1                    | phycell.physics.0                |
| phycell.cell_list.0.F.bn1                      | phycell.physics.1                |
| phycell.cell_list.0.F.conv2                    | phycell.physics.2                |
| phycell.cell_list.0.convgate                   | phycell.gain                     |
| convcell.cell_list.i.conv                      | convlstm.i.gates                 |

(each with `.weight` and `.bias`). OpenSTL's state dict holds the PhyCell and ConvLSTM
twice, also as `encoder.phycell.*` and `encoder.convcell.*` (the same modules, shared):
equal copies to drop; and the buffers `k2m._M0`, `k2m._M1`, `k2m._invM0`, `k2m._invM1`
(the moment matrices, rebuilt here). Shapes are equal one to one.

Fused kernels (`model.fused_kernels`, `stpdist.models.fused`): each conv block's GroupNorm
and leaky ReLU, PhyCell's correction and the ConvLSTM gates run as fused regions, and the
shared frame loop (`recurrent.FrameRecurrent`) batches over time what does not wait for the
recurrence: the input frames' encoding before the loop, the decoding of the predictions that
are never fed back (the last, and frames 1..T_in−1 with `loss_frames: all`) after it. Off,
the model runs its op-by-op step loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal  # noqa: UP035 - OmegaConf reads these

import torch
import torch.nn.functional as F
from torch import nn

from .base import FrameSpec, check_odd_kernels
from .fused import conv_cat, conv_read, pointwise
from .recurrent import FrameRecurrent


class _ConvBlock(nn.Sequential):
    """(Transposed) convolution, GroupNorm, leaky ReLU; the two after the convolution as
    one fused region."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm, activation = self
        return _group_norm_leaky(
            conv(x),
            norm.weight,
            norm.bias,
            scalars=(norm.num_groups, norm.eps, activation.negative_slope),
        )


@pointwise
def _group_norm_leaky(
    conv: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    num_groups: float,
    eps: float,
    negative_slope: float,
) -> torch.Tensor:
    """A conv block's GroupNorm and leaky ReLU."""
    return F.leaky_relu(F.group_norm(conv, int(num_groups), weight, bias, eps), negative_slope)


def _conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return _ConvBlock(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
        nn.GroupNorm(16, cout),
        nn.LeakyReLU(0.2),
    )


def _upconv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return _ConvBlock(
        nn.ConvTranspose2d(cin, cout, 3, stride=stride, padding=1, output_padding=stride - 1),
        nn.GroupNorm(16, cout),
        nn.LeakyReLU(0.2),
    )


def moment_matrices(kernel_size: int) -> torch.Tensor:
    """M[i, x] = (x − k//2)^i / i!: row i turns a kernel axis into its i-th moment."""
    positions = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
    powers = torch.arange(kernel_size, dtype=torch.float64)
    factorials = torch.tensor([math.factorial(i) for i in range(kernel_size)], dtype=torch.float64)
    return positions[None, :] ** powers[:, None] / factorials[:, None]


class PhyCell(nn.Module):
    """PhyCell: PDE-like prediction H̃ = H + Φ(H), then correction by the input with the
    gain K = σ(conv([x, H̃])) or, `gain_from_previous` (OpenSTL's code), σ(conv([x, H]))."""

    def __init__(
        self, channels: int, hidden: int, kernel_size: int, gain_from_previous: bool = False
    ) -> None:
        super().__init__()
        self.gain_from_previous = gain_from_previous
        if hidden != kernel_size * kernel_size:
            raise ValueError(
                f"PhyCell needs phycell_hidden_channels = kernel² ({kernel_size**2}) "
                f"so each kernel stands for one derivative, got {hidden}"
            )
        self.kernel_size = kernel_size
        self.physics = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(7, hidden) if hidden % 7 == 0 else nn.GroupNorm(1, hidden),
            nn.Conv2d(hidden, channels, 1),
        )
        self.gain = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.register_buffer("moments", moment_matrices(kernel_size), persistent=False)

    def forward(self, x_BEHW: torch.Tensor, hidden_BEHW: torch.Tensor) -> torch.Tensor:
        read = conv_read(hidden_BEHW)  # under autocast: cast once for both convolutions
        change = self.physics(read)
        if self.gain_from_previous:  # H̃ = H + Φ(H) is formed inside the correction
            gain_conv = self.gain(conv_cat([x_BEHW, read]))
            return _predict_correct(x_BEHW, hidden_BEHW, change, gain_conv)
        predicted = hidden_BEHW + change
        return _correction(x_BEHW, predicted, self.gain(conv_cat([x_BEHW, predicted])))

    def moment_loss(self) -> torch.Tensor:
        """Σ over input channels of MSE(moments of kernel j, one-hot at derivative j)."""
        k = self.kernel_size
        weight = self.physics[0].weight.double()  # hidden × E × k × k
        # the buffer is float64 unless the module was cast (`.float()`, `.to(dtype)`)
        m = self.moments if self.moments.dtype == torch.float64 else moment_matrices(k).to(weight)
        moments = torch.einsum("ix,jy,ocxy->oicj", m, m, weight)
        target = torch.eye(k * k, dtype=weight.dtype, device=weight.device).view(k * k, k, 1, k)
        per_channel = (moments - target).pow(2).mean(dim=(0, 1, 3))  # E
        return per_channel.sum().to(self.physics[0].weight.dtype)


@pointwise
def _correction(
    x_BEHW: torch.Tensor, predicted_BEHW: torch.Tensor, gain_conv_BEHW: torch.Tensor
) -> torch.Tensor:
    """PhyCell's correction after the gain's convolution: H̃ + σ(W ∗ ·) ⊙ (E(x) − H̃)."""
    return _corrected(x_BEHW, predicted_BEHW, gain_conv_BEHW)


def _corrected(x: torch.Tensor, predicted: torch.Tensor, gain_conv: torch.Tensor) -> torch.Tensor:
    gain = torch.sigmoid(gain_conv)
    return predicted + gain * (x - predicted)


@pointwise
def _predict_correct(
    x_BEHW: torch.Tensor,
    hidden_BEHW: torch.Tensor,
    change_BEHW: torch.Tensor,
    gain_conv_BEHW: torch.Tensor,
) -> torch.Tensor:
    """`_correction` of the prediction H̃ = H + Φ(H), for a gain that does not read H̃."""
    return _corrected(x_BEHW, hidden_BEHW + change_BEHW, gain_conv_BEHW)


class PhyDConvLSTMCell(nn.Module):
    """Plain ConvLSTM cell (the residual branch); gates from one conv over [x, h]."""

    def __init__(self, cin: int, hidden: int, kernel_size: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(cin + hidden, 4 * hidden, kernel_size, padding=kernel_size // 2)

    def forward(self, x, h, c):
        return _lstm_gates(self.gates(conv_cat([x, h])), c)


# h: read by the gate convolutions (its own, the next layer's) and the residual decoder only
@pointwise(conv_outputs=(0,))
def _lstm_gates(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ConvLSTM branch's arithmetic after its gate convolution: (new h, new c)."""
    i, f, o, g = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


@dataclass
class PhyDNetArgs:
    downsample: int = 4
    """Stride of the shared encoder: 1, 2 or 4 (4 for 64×64 frames, as in the paper)."""
    encoder_channels: int = 32
    """Channels of the shared encoder's first blocks (the branches get twice as many)."""
    phycell_hidden_channels: int = 49
    """Kernels of PhyCell's physics convolution: must be phycell_kernel_size²."""
    phycell_kernel_size: int = 7
    """Size of those kernels (derivatives up to order kernel−1 along each axis)."""
    convlstm_hidden_channels: list[int] = field(default_factory=lambda: [128, 128, 64])
    """Hidden channels of the ConvLSTM branch's layers; the last must equal 2×encoder."""
    convlstm_kernel_size: int = 3
    """Kernel of the ConvLSTM branch."""
    moment_weight: float | None = None
    """Weight of the moment loss `moment`. None: 1/(T_in + T_out − 1), because OpenSTL and
    the paper add it at weight 1 to a sum of that many per-step MSEs, where ours is a mean."""
    variant: Literal["paper", "openstl"] = "paper"
    """`paper`: PhyCell's gain reads the prediction H̃ (the paper's equation). `openstl`:
    it reads the previous H, and the decoder strides as OpenSTL's (see the module
    docstring)."""


class PhyDNet(FrameRecurrent):
    """PhyCell + ConvLSTM branches between shared and branch encoders/decoders."""

    Args = PhyDNetArgs

    def __init__(self, spec: FrameSpec, args: PhyDNetArgs | None = None) -> None:
        super().__init__()
        args = args or PhyDNetArgs()
        if args.downsample not in (1, 2, 4):
            raise ValueError(f"PhyDNet downsample must be 1, 2 or 4, got {args.downsample}")
        if args.variant not in ("paper", "openstl"):
            raise ValueError(f"PhyDNet variant must be 'paper' or 'openstl', got {args.variant!r}")
        openstl = args.variant == "openstl"
        if openstl and args.downsample == 1:
            raise ValueError(
                "PhyDNet variant 'openstl' needs downsample 2 or 4 (OpenSTL's encoder always "
                "strides its first layer by 2), got 1"
            )
        if spec.height % args.downsample or spec.width % args.downsample:
            raise ValueError(
                f"frame size {spec.height}×{spec.width} is not divisible by "
                f"downsample {args.downsample}"
            )
        check_odd_kernels(
            phycell_kernel_size=args.phycell_kernel_size,
            convlstm_kernel_size=args.convlstm_kernel_size,
        )
        nf, encoded = args.encoder_channels, 2 * args.encoder_channels
        if nf % 16:
            raise ValueError(f"encoder_channels must be a multiple of 16 (GroupNorm), got {nf}")
        hidden_channels = list(args.convlstm_hidden_channels)
        if not hidden_channels or hidden_channels[-1] != encoded:
            raise ValueError(
                f"convlstm_hidden_channels must end with 2×encoder_channels = {encoded}, "
                f"got {hidden_channels}"
            )
        first_stride = 2 if args.downsample >= 2 else 1
        last_stride = 2 if args.downsample == 4 else 1
        self.encoded_size = (spec.height // args.downsample, spec.width // args.downsample)
        self.encoder = nn.Sequential(
            _conv_block(spec.channels, nf, first_stride),
            _conv_block(nf, nf, 1),
            _conv_block(nf, encoded, last_stride),
        )
        self.encoder_physics = nn.Sequential(
            _conv_block(encoded, encoded, 1), _conv_block(encoded, encoded, 1)
        )
        self.encoder_residual = nn.Sequential(
            _conv_block(encoded, encoded, 1), _conv_block(encoded, encoded, 1)
        )
        self.decoder_physics = nn.Sequential(
            _upconv_block(encoded, encoded, 1), _upconv_block(encoded, encoded, 1)
        )
        self.decoder_residual = nn.Sequential(
            _upconv_block(encoded, encoded, 1), _upconv_block(encoded, encoded, 1)
        )
        # paper: the encoder's strides mirrored; openstl: OpenSTL's decoder_D, 2 first
        up_first, up_last = (first_stride, last_stride) if openstl else (last_stride, first_stride)
        self.decoder = nn.Sequential(
            _upconv_block(encoded, nf, up_first),
            _upconv_block(nf, nf, 1),
            nn.ConvTranspose2d(
                nf, spec.channels, 3, stride=up_last, padding=1, output_padding=up_last - 1
            ),
        )
        self.phycell = PhyCell(
            encoded, args.phycell_hidden_channels, args.phycell_kernel_size, openstl
        )
        self.convlstm = nn.ModuleList()
        previous = encoded
        for hidden in hidden_channels:
            self.convlstm.append(PhyDConvLSTMCell(previous, hidden, args.convlstm_kernel_size))
            previous = hidden
        if args.moment_weight is not None and args.moment_weight < 0:
            raise ValueError(f"moment_weight must be ≥ 0, got {args.moment_weight}")
        steps = spec.num_input_frames + spec.num_output_frames - 1
        self.moment_weight = 1 / steps if args.moment_weight is None else args.moment_weight

    def init_state(self, frames_BTCHW: torch.Tensor) -> tuple:
        b = frames_BTCHW.shape[0]
        h, w = self.encoded_size
        physics = frames_BTCHW.new_zeros(b, self.phycell.gain.out_channels, h, w)
        layers = []
        for cell in self.convlstm:  # h in the dtype its convolutions read (as the cells make it)
            zeros = frames_BTCHW.new_zeros(b, cell.hidden, h, w)
            layers.append((conv_read(zeros), zeros))
        return physics, layers

    def encode(self, frames_NCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared encoder, then each branch's: (PhyCell's input, the ConvLSTM's)."""
        encoded = self.encoder(frames_NCHW)
        return self.encoder_physics(encoded), self.encoder_residual(encoded)

    def advance(self, encoded: tuple, state: tuple) -> tuple[tuple, tuple]:
        x_physics, x_residual = encoded
        physics, layers = state
        physics = self.phycell(x_physics, physics)
        x, layers = self._residual(x_residual, layers)
        return (physics, x), (physics, layers)

    def _residual(self, x: torch.Tensor, layers: list) -> tuple[torch.Tensor, list]:
        """One step of the ConvLSTM branch: (its output, every layer's new (h, c))."""
        new_layers = []
        for cell, (h, c) in zip(self.convlstm, layers):
            h, c = cell(x, h, c)
            new_layers.append((h, c))
            x = h
        return x, new_layers

    def decode(self, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The next frame from the two branches' states (one step, or steps stacked)."""
        physics, residual = features
        merged = self.decoder_physics(physics) + self.decoder_residual(residual)
        return torch.sigmoid(self.decoder(merged))

    def aux_losses(self, state: tuple) -> dict[str, torch.Tensor]:
        return {"moment": self.moment_weight * self.phycell.moment_loss()}
