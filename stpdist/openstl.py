"""OpenSTL checkpoints → stpdist model folders (`stpdist import openstl CKPT --method NAME`).

OpenSTL (github.com/chengtan9907/OpenSTL, Apache-2.0) saves Lightning `.ckpt` files whose
`state_dict` keys carry the prefix `model.` (older releases: a plain state dict of the
model). Nothing is unpickled beyond tensors: the file is read with
`torch.load(weights_only=True)`; when its `hyper_parameters` hold objects that loader
refuses, only the tensors are read (every other object becomes an inert placeholder, no
code runs) and the hyper-parameters are ignored, with a warning.

The architecture comes from, in increasing priority: OpenSTL's Moving MNIST defaults for
the method (its `configs/mmnist/<Method>.py` and the dataset's 10→10 at 1×64×64), the
checkpoint's `hyper_parameters` (plain values only), `--config`: an OpenSTL config
file, which is Python but is never run: only top-level assignments of literals are read
(`ast.literal_eval`), then `--dataset` (OpenSTL's dataset defaults, `DATASETS`) and
`--in-shape`/`--pre`/`--aft`. OpenSTL's config files never hold the frame shape: when
nothing gives it, the Moving MNIST one assumed is said in one line.

A prefix every key carries from a wrapper (DDP's `module.`) is stripped; the `ema_*`
buffers of OpenSTL's EMA hook are left out, or with `--ema` imported in place of the raw
weights (`split_ema`).

Every OpenSTL tensor is renamed by the method's rules below (`KEY_RULES`) into the
stpdist backbone; tensors that OpenSTL builds but its forward never uses (`UNUSED`) are
dropped with a note. Any other tensor without a rule, any stpdist tensor left unfilled,
and any shape that disagrees is an error naming it. The mapped weights keep the
checkpoint's dtype.

Methods and their stpdist form: ConvLSTM → `convlstm` (variant openstl), PredRNN,
PredRNN++, PredRNN.V2, MAU, SimVP (translators incepu, gsta, tau, uniformer, convmixer,
poolformer, van, hornet, moganet, and timm's convnext, mlp → mlpmixer and vit; convnext
without dropout, since OpenSTL never hands it `drop`; swin with `swin_shift_mask: false`,
since OpenSTL's SwinSubBlock runs its shifted windows with mask=None), TAU → `tau` with OpenSTL's
divergence (weight `alpha`, `divergence_form: openstl`), MIM and E3D-LSTM (variant openstl, E3D-LSTM with OpenSTL's
MSE + L1 loss), PhyDNet (variant openstl; OpenSTL's `patch_size` is its encoder's
stride: stpdist's `downsample`, with stpdist patch size 1), SwinLSTM-D → `swinlstm`
(OpenSTL's patch size 2 only: its head strides by 2 whatever the patch; the patch-merging
weights are permuted from timm's 2×2 order to stpdist's). SwinLSTM-B is refused (see
`canonical_method`).
Each is checked against OpenSTL's own forward by tests/test_openstl_import.py on the
fixtures of tests/fixtures/openstl (float64, ≤1e-12).
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import pickle
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import InputError

log = logging.getLogger("stpdist")

# ---------------------------------------------------------------------------- methods
_ALIASES = {
    "convlstm": "convlstm",
    "predrnn": "predrnn",
    "predrnnpp": "predrnnpp",
    "predrnnv2": "predrnnv2",
    "mau": "mau",
    "simvp": "simvp",
    "tau": "tau",
    "mim": "mim",
    "phydnet": "phydnet",
    "e3dlstm": "e3dlstm",
    "swinlstm": "swinlstm",
    "swinlstmd": "swinlstm",
    "swinlstmb": "swinlstmb",
}
METHODS = (
    "ConvLSTM",
    "PredRNN",
    "PredRNNpp",
    "PredRNNv2",
    "MIM",
    "E3DLSTM",
    "MAU",
    "PhyDNet",
    "SimVP",
    "TAU",
    "SwinLSTM_D",
)
"""OpenSTL methods this importer converts (any spelling: PredRNN++, PredRNN.V2, …)."""

_RECURRENT = {"convlstm", "predrnn", "predrnnpp", "predrnnv2", "mau", "mim", "e3dlstm"}

# OpenSTL's Moving MNIST settings: the dataset's defaults, then configs/mmnist/<Method>.py
_COMMON = {
    "in_shape": [10, 1, 64, 64],
    "pre_seq_length": 10,
    "aft_seq_length": 10,
    "batch_size": 16,
    "sched": "onecycle",
}
_SAMPLING = {
    "reverse_scheduled_sampling": 0,
    "r_sampling_step_1": 25000,
    "r_sampling_step_2": 50000,
    "r_exp_alpha": 5000,
    "scheduled_sampling": 1,
    "sampling_stop_iter": 50000,
    "sampling_start_value": 1.0,
    "sampling_changing_rate": 0.00002,
}
_RNN = {**_SAMPLING, "num_hidden": "128,128,128,128", "filter_size": 5, "stride": 1,
        "patch_size": 4, "layer_norm": 0}  # fmt: skip
_SIMVP = {"spatio_kernel_enc": 3, "spatio_kernel_dec": 3, "hid_S": 64, "hid_T": 512,
          "N_T": 8, "N_S": 4, "model_type": "gSTA", "mlp_ratio": 8.0, "drop": 0.0,
          "drop_path": 0.0, "lr": 1e-3}  # fmt: skip
DEFAULTS: dict[str, dict[str, Any]] = {
    "convlstm": {**_RNN, "lr": 5e-4},
    "predrnn": {**_RNN, "lr": 5e-4},
    "predrnnpp": {**_RNN, "lr": 1e-4},
    "predrnnv2": {**_RNN, "reverse_scheduled_sampling": 1, "decouple_beta": 0.1, "lr": 5e-4},
    "mau": {
        **_SAMPLING,
        "num_hidden": "64,64,64,64",
        "filter_size": 5,
        "stride": 1,
        "patch_size": 1,
        "layer_norm": 0,
        "sr_size": 4,
        "tau": 5,
        "cell_mode": "normal",
        "model_mode": "normal",
        "lr": 1e-3,
    },  # fmt: skip
    "mim": {**_RNN, "lr": 5e-4},
    "e3dlstm": {**_RNN, "lr": 1e-4},
    "simvp": dict(_SIMVP),
    "tau": {**_SIMVP, "model_type": "tau", "alpha": 0.1},
    "phydnet": {"patch_size": 4, "lr": 1e-3},
    "swinlstm": {
        "depths_downsample": "2,6",
        "depths_upsample": "6,2",
        "num_heads": "4,8",
        "patch_size": 2,
        "window_size": 4,
        "embed_dim": 128,
        "lr": 1e-4,
    },
}
"""OpenSTL's Moving MNIST settings per method (its configs/mmnist files, its parser's
defaults and the dataset's 10→10 frames of 1×64×64)."""

# OpenSTL's dataset defaults (openstl/datasets/dataset_constant.py): its config files never
# hold the frame shape or counts, its `--dataname` brings them
_SHAPE_KEYS = ("in_shape", "pre_seq_length", "aft_seq_length")


def _shape(t_in: int, c: int, h: int, w: int, t_out: int) -> dict[str, Any]:
    return {"in_shape": [t_in, c, h, w], "pre_seq_length": t_in, "aft_seq_length": t_out}


DATASETS: dict[str, dict[str, Any]] = {
    "mmnist": _shape(10, 1, 64, 64, 10),
    "mfmnist": _shape(10, 1, 64, 64, 10),
    "mmnist_cifar": _shape(10, 3, 64, 64, 10),
    "noisymmnist": _shape(10, 1, 64, 64, 10),
    "taxibj": _shape(4, 2, 32, 32, 4),
    "human": _shape(4, 3, 256, 256, 4),
    "kth": _shape(10, 1, 128, 128, 20),
    "kth20": _shape(10, 1, 128, 128, 20),
    "kth40": _shape(10, 1, 128, 128, 40),
    "kitticaltech": _shape(10, 3, 128, 160, 1),
    "bair": _shape(4, 3, 64, 64, 12),
    "kinetics": _shape(4, 3, 256, 256, 4),
    "kinetics400": _shape(4, 3, 256, 256, 4),
    "kinetics600": _shape(4, 3, 256, 256, 4),
    "weather": _shape(12, 1, 32, 64, 12),
    "weather_t2m_5_625": _shape(12, 1, 32, 64, 12),
    "weather_r_5_625": _shape(12, 1, 32, 64, 12),
    "weather_tcc_5_625": _shape(12, 1, 32, 64, 12),
    "weather_uv10_5_625": _shape(12, 2, 32, 64, 12),
    "weather_mv_4_4_s6_5_625": _shape(4, 12, 32, 64, 4),
    "weather_mv_4_28_s6_5_625": _shape(4, 12, 32, 64, 28),
    "weather_t2m_1_40625": _shape(12, 1, 128, 256, 12),
    "weather_r_1_40625": _shape(12, 1, 128, 256, 12),
    "weather_tcc_1_40625": _shape(12, 1, 128, 256, 12),
    "weather_uv10_1_40625": _shape(12, 2, 128, 256, 12),
}
"""OpenSTL `--dataname` → its frame shape and counts (its dataset_parameters); `--dataset`."""

_DATA_ROOTS = {"mmnist": "data/mmnist", "kth": "data/kth", "kth20": "data/kth",
               "taxibj": "data/taxibj"}  # fmt: skip
"""Datasets with an stpdist recipe: the `data.root` its recipes use (others: data/NAME)."""

KNOWN_KEYS = sorted(
    {k for d in DEFAULTS.values() for k in d} | set(_COMMON) | {"method", "dataname"}
)


# ---------------------------------------------------------------------------- key maps
def _cell_rules(convs: tuple[str, ...]) -> list[tuple[str, str]]:
    """OpenSTL's `conv_*` Sequentials (conv, then LayerNorm with layer_norm) → stpdist's
    `conv_*` and `norm_*` of the same cell."""
    rules = []
    for conv in convs:
        rules.append((rf"cell_list\.(\d+)\.{conv}\.0\.weight", rf"cells.\1.{conv}.weight"))
        rules.append(
            (rf"cell_list\.(\d+)\.{conv}\.1\.(weight|bias)", rf"cells.\1.norm_{conv[5:]}.\2")
        )
    return rules


_STLSTM = [*_cell_rules(("conv_x", "conv_h", "conv_m", "conv_o")),
           (r"cell_list\.(\d+)\.conv_last\.weight", r"cells.\1.conv_last.weight"),
           (r"conv_last\.weight", "output.weight")]  # fmt: skip

_SIMVP_COMMON = [
    (r"enc\.enc\.(\d+)\.conv\.(.+)", r"encoder.blocks.\1.\2"),
    (r"dec\.dec\.(\d+)\.conv\.(.+)", r"decoder.blocks.\1.\2"),
    (r"dec\.readout\.(weight|bias)", r"decoder.readout.\1"),
    (r"hid\.enc\.(\d+)\.reduction\.(weight|bias)", r"translator.blocks.\1.1.\2"),
]
_BLOCK = r"hid\.enc\.(\d+)\.block\."
_TO = r"translator.blocks.\1.0."
_PARAM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


def _block_rules(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Rules for one MetaFormer block type: (OpenSTL name in the block, stpdist name)."""
    rules = []
    for source, target in pairs:
        if source.endswith("."):  # a module: all its parameters and buffers
            rules.append((_BLOCK + re.escape(source) + _PARAM, _TO + target + r"\2"))
        else:
            rules.append((_BLOCK + re.escape(source), _TO + target))
    return rules


_LARGE_KERNEL = [("layer_scale_1", "scale1"), ("layer_scale_2", "scale2"),
                 ("norm1.", "norm1."), ("norm2.", "norm2."),
                 ("attn.proj_1.", "attn.proj_in."), ("attn.proj_2.", "attn.proj_out."),
                 ("attn.spatial_gating_unit.conv0.", "attn.unit.spatial.0."),
                 ("attn.spatial_gating_unit.conv_spatial.", "attn.unit.spatial.1."),
                 ("mlp.fc1.", "mlp.fc1."), ("mlp.dwconv.dwconv.", "mlp.dwconv."),
                 ("mlp.fc2.", "mlp.fc2.")]  # fmt: skip
_TRANSFORMER = [("norm1.", "norm1."), ("norm2.", "norm2."), ("attn.qkv.", "attn.qkv."),
                ("attn.proj.", "attn.proj."), ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2.")]  # fmt: skip
TRANSLATOR_RULES: dict[str, list[tuple[str, str]]] = {
    "gsta": _block_rules([*_LARGE_KERNEL, ("attn.spatial_gating_unit.conv1.", "attn.unit.gate_value.")]),
    "tau": _block_rules([*_LARGE_KERNEL, ("attn.spatial_gating_unit.conv1.", "attn.unit.static."),
                         ("attn.spatial_gating_unit.fc.0.", "attn.unit.excite.0."),
                         ("attn.spatial_gating_unit.fc.2.", "attn.unit.excite.2.")]),
    "van": _block_rules([*_LARGE_KERNEL, ("attn.spatial_gating_unit.conv1.", "attn.unit.pointwise.")]),
    "convmixer": _block_rules([("conv_dw.", "depthwise.0."), ("norm_1.", "depthwise.2."),
                               ("conv_pw.", "pointwise.0."), ("norm_2.", "pointwise.2.")]),
    "hornet": _block_rules([("gamma1", "scale1"), ("gamma2", "scale2"), ("norm1.", "norm1."),
                            ("norm2.", "norm2."), ("gnconv.proj_in.", "gnconv.proj_in."),
                            ("gnconv.dwconv.", "gnconv.depthwise."),
                            ("gnconv.proj_out.", "gnconv.proj_out."),
                            ("pwconv1.", "mlp.fc1."), ("pwconv2.", "mlp.fc2.")])
    + [(_BLOCK + r"gnconv\.pws\.(\d+)\." + _PARAM, _TO + r"gnconv.pointwise.\2.\3")],
    "moganet": _block_rules([("layer_scale_1", "scale1"), ("layer_scale_2", "scale2"),
                             ("norm1.", "norm1."), ("norm2.", "norm2."),
                             ("attn.sigma", "attn.sigma"), ("attn.proj_1.", "attn.proj_in."),
                             ("attn.gate.", "attn.gate."), ("attn.value.DW_conv0.", "attn.dw_base."),
                             ("attn.value.DW_conv1.", "attn.dw_mid."),
                             ("attn.value.DW_conv2.", "attn.dw_far."),
                             ("attn.value.PW_conv.", "attn.context_out."),
                             ("attn.proj_2.", "attn.proj_out."), ("mlp.sigma", "mlp.sigma"),
                             ("mlp.fc1.", "mlp.fc1."), ("mlp.dwconv.", "mlp.dwconv."),
                             ("mlp.decompose.", "mlp.decompose."), ("mlp.fc2.", "mlp.fc2.")]),
    "poolformer": _block_rules([("layer_scale_1", "scale1"), ("layer_scale_2", "scale2"),
                                ("norm1.", "norm1."), ("norm2.", "norm2."),
                                ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2.")]),
    # UniFormer: conv blocks (first and last) and self-attention blocks (in between)
    "uniformer": _block_rules([("pos_embed.", "pos_embed."), ("norm1.", "norm1."),
                               ("norm2.", "norm2."), ("conv1.", "mixer.0."),
                               ("attn.qkv.", "mixer.qkv."), ("attn.proj.", "mixer.proj."),
                               ("attn.", "mixer.1."), ("conv2.", "mixer.2."),
                               ("gamma_1", "scale1"), ("gamma_2", "scale2"),
                               ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2.")]),
    # timm's blocks (OpenSTL subclasses them, overriding only `forward`)
    "convnext": _block_rules([("gamma", "scale"), ("conv_dw.", "depthwise."), ("norm.", "norm."),
                              ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2.")]),
    "mlpmixer": _block_rules([("norm1.", "norm1."), ("norm2.", "norm2."),
                              ("mlp_tokens.fc1.", "token_mlp.fc1."),
                              ("mlp_tokens.fc2.", "token_mlp.fc2."),
                              ("mlp_channels.fc1.", "channel_mlp.fc1."),
                              ("mlp_channels.fc2.", "channel_mlp.fc2.")]),
    "vit": _block_rules(_TRANSFORMER),
    "swin": _block_rules([*_TRANSFORMER,
                          ("attn.relative_position_bias_table", "relative_bias")]),
    # SimVP v1's U-Net of gInception_ST blocks
    "incepu": [(r"hid\.enc\.(\d+)\.conv1\.(weight|bias)", r"translator.down.\1.reduce.\2"),
               (r"hid\.dec\.(\d+)\.conv1\.(weight|bias)", r"translator.up.\1.reduce.\2"),
               (r"hid\.enc\.(\d+)\.layers\.(\d+)\.conv\.(weight|bias)", r"translator.down.\1.branches.\2.0.\3"),
               (r"hid\.enc\.(\d+)\.layers\.(\d+)\.norm\.(weight|bias)", r"translator.down.\1.branches.\2.1.\3"),
               (r"hid\.dec\.(\d+)\.layers\.(\d+)\.conv\.(weight|bias)", r"translator.up.\1.branches.\2.0.\3"),
               (r"hid\.dec\.(\d+)\.layers\.(\d+)\.norm\.(weight|bias)", r"translator.up.\1.branches.\2.1.\3")],
}  # fmt: skip
"""OpenSTL SimVP translator (model_type) → rules for its blocks' tensors."""

_TRANSLATOR_NAMES = {
    "incepu": "incepu", "gsta": "gsta", "tau": "tau", "uniformer": "uniformer",
    "convmixer": "convmixer", "poolformer": "poolformer", "van": "van", "hornet": "hornet",
    "moga": "moganet", "moganet": "moganet", "convnext": "convnext", "mlp": "mlpmixer",
    "mlpmixer": "mlpmixer", "swin": "swin", "vit": "vit",
}  # fmt: skip
_DIFFERENT_TRANSLATORS: dict[str, str] = {}
"""OpenSTL translators whose architecture differs from stpdist's: refused, saying how."""

KEY_RULES: dict[str, list[tuple[str, str]]] = {
    "convlstm": [*_cell_rules(("conv_x", "conv_h")), (r"conv_last\.weight", "output.weight")],
    "predrnn": _STLSTM,
    "predrnnv2": [*_STLSTM, (r"adapter\.weight", "adapter.weight")],
    "predrnnpp": [*_cell_rules(("conv_x", "conv_h", "conv_c", "conv_m", "conv_c2m", "conv_om")),
                  (r"cell_list\.(\d+)\.conv_last\.weight", r"cells.\1.conv_last.weight"),
                  (r"gradient_highway\.x_concat\.0\.weight", "highway.conv_x.weight"),
                  (r"gradient_highway\.z_concat\.0\.weight", "highway.conv_z.weight"),
                  (r"gradient_highway\.x_concat\.1\.(weight|bias)", r"highway.norm_x.\1"),
                  (r"gradient_highway\.z_concat\.1\.(weight|bias)", r"highway.norm_z.\1"),
                  (r"conv_last\.weight", "output.weight")],
    "mau": [(r"encoders\.0\.encoder_t_conv-1\.(weight|bias)", r"encoder.0.\1"),
            (r"cell_list\.(\d+)\.conv_s_next\.(.+)", r"cells.\1.conv_s_query.\2"),
            (r"cell_list\.(\d+)\.conv_t_next\.(.+)", r"cells.\1.conv_t_gate.\2"),
            (r"cell_list\.(\d+)\.conv_t\.(.+)", r"cells.\1.conv_t.\2"),
            (r"cell_list\.(\d+)\.conv_s\.(.+)", r"cells.\1.conv_s.\2")],
    "e3dlstm": [(r"cell_list\.(\d+)\.conv_x\.0\.conv3d\.weight", r"cells.\1.conv_x.weight"),
                (r"cell_list\.(\d+)\.conv_h\.0\.conv3d\.weight", r"cells.\1.conv_h.weight"),
                (r"cell_list\.(\d+)\.conv_gm\.0\.conv3d\.weight", r"cells.\1.conv_m.weight"),
                (r"cell_list\.(\d+)\.conv_new_cell\.0\.conv3d\.weight", r"cells.\1.conv_c_out.weight"),
                (r"cell_list\.(\d+)\.conv_new_gm\.0\.conv3d\.weight", r"cells.\1.conv_m_out.weight"),
                (r"cell_list\.(\d+)\.conv_last\.conv3d\.weight", r"cells.\1.conv_last.weight"),
                (r"cell_list\.(\d+)\._norm_c_t\.(weight|bias)", r"cells.\1.norm_c.\2"),
                (r"cell_list\.(\d+)\.conv_(x|h)\.1\.(weight|bias)", r"cells.\1.norm_\2.\3"),
                (r"cell_list\.(\d+)\.conv_gm\.1\.(weight|bias)", r"cells.\1.norm_m.\2"),
                (r"cell_list\.(\d+)\.conv_new_cell\.1\.(weight|bias)", r"cells.\1.norm_c_out.\2"),
                (r"cell_list\.(\d+)\.conv_new_gm\.1\.(weight|bias)", r"cells.\1.norm_m_out.\2"),
                (r"conv_last\.weight", "output.weight")],
}  # fmt: skip
"""OpenSTL key (regular expression, matched whole) → stpdist backbone key, per method;
MAU's encoder and decoder positions depend on `sr_size` (`_mau_rules`), SimVP's
translator on `model_type` (`TRANSLATOR_RULES`)."""

_SWIN_CONSTANTS = [
    r"hid\.enc\.\d+\.block\.attn\.relative_position_index",
    r"hid\.enc\.\d+\.block\.attn_mask",
]
UNUSED: dict[str, list[str]] = {
    # each OpenSTL ConvLSTM cell builds a 5×5 conv_o (2h → h) and a 1×1 conv_last it never calls
    "convlstm": [r"cell_list\.\d+\.conv_o\.\d+\.(weight|bias)", r"cell_list\.\d+\.conv_last\.weight"],
    # PredRNN++'s Causal LSTM builds a 5×5 conv_o (2h → h) it never calls
    "predrnnpp": [r"cell_list\.\d+\.conv_o\.\d+\.(weight|bias)"],
    # MAU's `merge` (2h → h) and `conv_last_sr` (2C → C) 1×1 convs are never called
    "mau": [r"merge\.(weight|bias)", r"conv_last_sr\.(weight|bias)"],
    # MIM-N's 1×1 conv_last (2h → h) is never called
    "mim": [r"stlstm_layer_diff\.\d+\.conv_last\.weight"],
    # the moment matrices of PhyDNet's moment loss: constants (stpdist builds its own)
    "phydnet": [r"k2m\._(inv)?M[01]"],
    # SwinLSTM: every block builds `red` (Linear 2D → D), only even blocks call it; the up
    # path builds a patch embedding it never calls; timm's index and mask buffers are constants
    "swinlstm": [r"(Down|Up)sample\.layers\.\d+\.STBs\.\d*[13579]\.red\.(weight|bias)",
                 r"Upsample\.patch_embed\..+", r".+\.attn\.relative_position_index",
                 r".+\.attn_mask"],
    # SimVP's swin translator: timm's index and shift-mask buffers (constants; OpenSTL's
    # forward never reads the mask)
    "simvp": _SWIN_CONSTANTS,
    "tau": _SWIN_CONSTANTS,
}  # fmt: skip
"""OpenSTL tensors its forward never uses (or constants stpdist rebuilds): dropped with a
note."""

COPIES: dict[str, list[tuple[str, str]]] = {
    # PhyDNet's encoder holds the PhyCell and ConvLSTM that the model holds: one module each,
    # saved under both names
    "phydnet": [(r"encoder\.(phycell|convcell)\.(.+)", r"\1.\2")],
}
"""OpenSTL keys that name another key's tensor (copy → original): checked equal, dropped."""


def _below(template: str) -> Callable[[re.Match], str]:
    """A template whose `{j}` is the matched number minus one (MIM's blocks start at
    OpenSTL's second layer; PhyDNet's blocks count from 1)."""
    return lambda match: template.format(*match.groups()[1:], j=int(match.group(1)) - 1)


_MIM_CONVS = {"conv_x_cc": "{j}.conv_x", "conv_t_cc": "{j}.conv_h", "conv_s_cc": "{j}.conv_m",
              "conv_x_concat": "{j}.stationary.conv_x", "conv_h_concat": "{j}.stationary.conv_h"}  # fmt: skip
MIM_RULES: list[tuple[str, Any]] = [
    (r"stlstm_layer\.0\.conv_(x|h|m|o)\.0\.weight", r"first.conv_\1.weight"),
    (r"stlstm_layer\.0\.conv_(x|h|m|o)\.1\.(weight|bias)", r"first.norm_\1.\2"),
    (r"stlstm_layer\.0\.conv_last\.weight", "first.conv_last.weight"),
    *[(rf"stlstm_layer\.(\d+)\.{conv}\.0\.weight", _below("blocks." + to + ".weight"))
      for conv, to in _MIM_CONVS.items()],
    *[(rf"stlstm_layer\.(\d+)\.{conv}\.1\.(weight|bias)",
       _below("blocks." + to.replace("conv_", "norm_") + ".{0}")) for conv, to in _MIM_CONVS.items()],
    (r"stlstm_layer\.(\d+)\.conv_last\.weight", _below("blocks.{j}.conv_last.weight")),
    (r"stlstm_layer\.(\d+)\.ct_weight", _below("blocks.{j}.stationary.peephole_if")),
    (r"stlstm_layer\.(\d+)\.oc_weight", _below("blocks.{j}.stationary.peephole_o")),
    (r"stlstm_layer_diff\.(\d+)\.conv_(x|h)_concat\.0\.weight", r"nonstationary.\1.conv_\2.weight"),
    (r"stlstm_layer_diff\.(\d+)\.conv_(x|h)_concat\.1\.(weight|bias)", r"nonstationary.\1.norm_\2.\3"),
    (r"stlstm_layer_diff\.(\d+)\.ct_weight", r"nonstationary.\1.peephole_if"),
    (r"stlstm_layer_diff\.(\d+)\.oc_weight", r"nonstationary.\1.peephole_o"),
    (r"conv_last\.weight", "output.weight"),
]  # fmt: skip
"""MIM (variant openstl): the key table of stpdist/models/mim.py."""

_PHYDNET_BLOCK = r"\.main\.(0|1)\.(weight|bias)"
PHYDNET_RULES: list[tuple[str, Any]] = [
    (r"encoder\.encoder_E\.c(\d)" + _PHYDNET_BLOCK, _below("encoder.{j}.{0}.{1}")),
    (r"encoder\.encoder_Ep\.c(\d)" + _PHYDNET_BLOCK, _below("encoder_physics.{j}.{0}.{1}")),
    (r"encoder\.encoder_Er\.c(\d)" + _PHYDNET_BLOCK, _below("encoder_residual.{j}.{0}.{1}")),
    (r"encoder\.decoder_Dp\.upc(\d)" + _PHYDNET_BLOCK, _below("decoder_physics.{j}.{0}.{1}")),
    (r"encoder\.decoder_Dr\.upc(\d)" + _PHYDNET_BLOCK, _below("decoder_residual.{j}.{0}.{1}")),
    (r"encoder\.decoder_D\.upc(\d)" + _PHYDNET_BLOCK, _below("decoder.{j}.{0}.{1}")),
    (r"encoder\.decoder_D\.upc3\.(weight|bias)", r"decoder.2.\1"),
    (r"phycell\.cell_list\.0\.F\.conv1\.(weight|bias)", r"phycell.physics.0.\1"),
    (r"phycell\.cell_list\.0\.F\.bn1\.(weight|bias)", r"phycell.physics.1.\1"),
    (r"phycell\.cell_list\.0\.F\.conv2\.(weight|bias)", r"phycell.physics.2.\1"),
    (r"phycell\.cell_list\.0\.convgate\.(weight|bias)", r"phycell.gain.\1"),
    (r"convcell\.cell_list\.(\d+)\.conv\.(weight|bias)", r"convlstm.\1.gates.\2"),
]  # fmt: skip
"""PhyDNet (variant openstl): the key table of stpdist/models/phydnet.py."""

_STB = r"(Down|Up)sample\.layers\.(\d+)\.STBs\.(\d+)\."
_TO_STB = {"Down": "down", "Up": "up"}
SWINLSTM_RULES: list[tuple[str, Any]] = [
    (r"Downsample\.patch_embed\.proj\.(weight|bias)", r"embed.0.\1"),
    (r"Downsample\.patch_embed\.norm\.(weight|bias)", r"embed.1.\1"),
    *[(_STB + source, lambda m, to=to: f"{_TO_STB[m[1]]}.{m[2]}.blocks.{m[3]}.{to}{m[4]}")
      for source, to in ((r"norm1\.(weight|bias)", "norm_attention."), (r"red\.(weight|bias)", "reduce."),
                         (r"attn\.qkv\.(weight|bias)", "qkv."), (r"attn\.proj\.(weight|bias)", "projection."),
                         (r"norm2\.(weight|bias)", "norm_mlp."), (r"mlp\.fc1\.(weight|bias)", "mlp.0."),
                         (r"mlp\.fc2\.(weight|bias)", "mlp.2."))],
    (_STB + r"attn\.relative_position_bias_table",
     lambda m: f"{_TO_STB[m[1]]}.{m[2]}.blocks.{m[3]}.position_bias"),
    (r"Downsample\.downsample\.(\d+)\.norm\.(weight|bias)", r"merges.\1.norm.\2"),
    (r"Downsample\.downsample\.(\d+)\.reduction\.weight", r"merges.\1.reduce.weight"),
    (r"Upsample\.upsample\.(\d+)\.expand\.weight", r"expands.\1.expand.weight"),
    (r"Upsample\.upsample\.(\d+)\.norm\.(weight|bias)", r"expands.\1.norm.\2"),
    (r"Upsample\.Unembed\.Conv\.(weight|bias)", r"head.\1"),
]  # fmt: skip
"""SwinLSTM-D: OpenSTL (its STB = timm's SwinTransformerBlock + `red`) → stpdist/models/
swinlstm.py. OpenSTL's up layers are listed in the order they run, as stpdist's `up`."""


def _swinlstm_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenSTL's SwinLSTM tensors in stpdist's layout: the patch embedding's p×p conv as
    the linear map over (c, y, x) patches it is; timm's patch merging concatenates the 2×2
    tokens as (0,0), (1,0), (0,1), (1,1) (row, column), stpdist as (0,0), (0,1), (1,0),
    (1,1): its norm and reduction see the middle two blocks swapped."""
    out = dict(tensors)
    embed = out.get("Downsample.patch_embed.proj.weight")
    if embed is not None and embed.dim() == 4:
        out["Downsample.patch_embed.proj.weight"] = embed.reshape(embed.shape[0], -1)
    for key, tensor in tensors.items():
        if re.fullmatch(
            r"Downsample\.downsample\.\d+\.(norm\.(weight|bias)|reduction\.weight)", key
        ):
            blocks = tensor.unflatten(-1, (4, tensor.shape[-1] // 4))
            out[key] = blocks[..., [0, 2, 1, 3], :].flatten(-2).contiguous()
    return out


def _mau_rules(levels: int) -> list[tuple[str, str]]:
    """MAU's encoder (1×1 conv, then `levels` stride-2 convs, each with a LeakyReLU) and
    decoder (`levels` transposed convs, LeakyReLU between them, a 1×1 readout)."""
    rules = list(KEY_RULES["mau"])
    for i in range(levels):
        rules.append(
            (rf"encoders\.{i + 1}\.encoder_t{i}\.(weight|bias)", rf"encoder.{2 * (i + 1)}.\1")
        )
        rules.append((rf"decoders\.{i}\.c_decoder{i}\.(weight|bias)", rf"decoder.{2 * i}.\1"))
    readout = 2 * levels - 1 if levels else 0
    rules.append((r"srcnn\.0\.(weight|bias)", rf"decoder.{readout}.\1"))
    return rules  # fmt: skip


# ---------------------------------------------------------------------------- reading
class _Opaque:
    """What a checkpoint's non-tensor objects become when read without unpickling them:
    it accepts any construction and state and does nothing (no code of theirs runs)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Opaque:
        return _Opaque()

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


def _load_tensors_only(path: Path, refusal: str) -> Any:
    """`torch.load` of a checkpoint that holds objects besides tensors, by torch's own
    weights-only unpickler: each global it would refuse is allowed as a stand-in class of
    its name (an `_Opaque`), so that no code of the checkpoint's runs and nothing outside
    the checkpoint is touched (`refusal`: why the plain weights-only load refused it).
    Only torch's zip format (every `torch.save` since torch 1.6): the globals of a legacy
    file cannot be listed beforehand (`get_unsafe_globals_in_checkpoint` reads zip files)."""
    import zipfile

    from torch import serialization

    with open(path, "rb") as handle:
        pickled = handle.read(1) == b"\x80"  # a pickle's PROTO opcode (protocol 2 and up)
    zipped = zipfile.is_zipfile(path)
    if not zipped and not pickled:
        raise InputError(f"{path}: not a torch checkpoint (neither a zip archive nor a pickle)")
    if not zipped:
        raise InputError(
            f"{path}: a legacy torch file (not torch's zip format) holding objects besides "
            "tensors, which only a full unpickling could read (it can run any code); load "
            "and re-save it with torch.save where you trust it, or save its state_dict alone"
        )
    if not hasattr(serialization, "get_unsafe_globals_in_checkpoint"):  # torch < 2.5
        raise InputError(
            f"{path}: holds objects besides tensors; reading its tensors alone needs torch "
            f"≥ 2.5 (this is {torch.__version__}), or save its state_dict alone"
        )
    names = serialization.get_unsafe_globals_in_checkpoint(path)
    stand_ins = [(_stand_in(name), name) for name in names]
    try:
        with serialization.safe_globals(stand_ins):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not _is_weights_only_refusal(exc):
            raise
        # what stand-ins cannot mimic: a call of a call's result, a module torch never
        # allows (os, sys), a class object given state
        raise InputError(
            f"{path}: holds objects besides tensors that cannot be read without running "
            f"their code ({_refusal(exc)}); where you trust the file, load it and torch.save "
            "its state_dict alone, then import that"
        ) from None
    log.warning(
        "%s holds objects besides tensors that a weights-only load refuses (%s); reading "
        "its tensors only (nothing else is unpickled); its hyper_parameters are ignored: "
        "pass the OpenSTL config with --config",
        path, refusal,
    )  # fmt: skip
    return raw


def _stand_in(name: str) -> type:
    """An `_Opaque` class named like the global `module.name` it stands in for."""
    module, _, qualname = name.rpartition(".")
    return type(qualname or name, (_Opaque,), {"__module__": module})


def _is_weights_only_refusal(exc: Exception) -> bool:
    return isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc).lower()


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(OpenSTL model state dict without the `model.` prefix, plain hyper-parameters) of a
    Lightning `.ckpt`, a plain state dict (`.pth`/`.pt`) or a `.safetensors` file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(
            f"{path} is a folder; expected a checkpoint file (.ckpt, .pth, .pt or .safetensors)"
        )
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path))), {}
        except Exception as exc:
            raise InputError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        safe = True
    except Exception as exc:
        if not _is_weights_only_refusal(exc):
            raise InputError(_unreadable(path, exc)) from None
        try:
            raw = _load_tensors_only(path, _refusal(exc))
        except InputError:
            raise
        except Exception as inner:
            raise InputError(f"{path}: cannot read its tensors ({_first_line(inner)})") from None
        safe = False
    return _state_dict(raw, path), _hyper_parameters(raw) if safe else {}


def _unreadable(path: Path, exc: Exception) -> str:
    """Why torch.load could not read `path`, by what the file starts with: torch's zip
    archive (damaged or cut short), a legacy pickle, or neither (not a torch checkpoint)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith(b"PK"):
        kind = "a damaged or truncated torch checkpoint (a zip archive torch cannot read)"
    elif head[:1] == b"\x80":
        kind = "an unreadable torch checkpoint (a pickle torch cannot read)"
    else:
        return f"{path}: not a torch checkpoint (neither a zip archive nor a pickle)"
    first_sentence = _first_line(exc).split(". ")[0].rstrip(".")
    return f"{path}: {kind}: {first_sentence}"


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _refusal(exc: Exception) -> str:
    """What a weights-only load refused, in one clause: the global torch names ("Unsupported
    global: GLOBAL x.Y …") where it names one, else its first sentence (terminal escapes
    removed)."""
    text = _ANSI.sub("", str(exc))
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if match:
        return f"the first: {match.group(1)}"
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    for paragraph in re.split(r"\n\s*\n", text):  # the unpickler's own reason, if given
        paragraph = " ".join(paragraph.replace("WeightsUnpickler error:", "").split())
        if paragraph and not paragraph.startswith(boilerplate):
            return paragraph.rstrip(".")[:200]
    first = " ".join(text.split()).split(". ")[0].rstrip(".")
    return (first or type(exc).__name__)[:200]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _state_dict(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not raw:
        raise InputError(
            f"{path}: neither a Lightning checkpoint with a state_dict nor a state dict"
        )
    tensors = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(
                f"{path}: state dict entry {key!r} is {type(value).__name__}, not a tensor"
            )
        tensors[key.removeprefix("model.") if isinstance(key, str) else key] = value
    return tensors


_WRAPPER_PREFIXES = ("module.",)
"""Prefixes a wrapper module puts before every key: DDP and DataParallel's `module.`
(OpenSTL's multi-GPU training before Lightning saved `checkpoint.pth` from the wrapped
model; a Lightning state dict of a wrapped model holds `model.module.`)."""


def strip_wrappers(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """`tensors` without the wrapper prefixes (`_WRAPPER_PREFIXES`) that every key carries,
    and those prefixes; a prefix only some keys carry stays."""
    stripped: list[str] = []
    while tensors:
        prefix = next(
            (w for w in _WRAPPER_PREFIXES if all(str(k).startswith(w) for k in tensors)), None
        )
        if prefix is None:
            break
        tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
        stripped.append(prefix)
    return tensors, stripped


@dataclasses.dataclass
class EmaSplit:
    tensors: dict[str, torch.Tensor]
    """The state dict to import: the raw weights, or with `ema` the averaged ones."""
    averaged: list[str]
    """Keys whose EMA copy the checkpoint holds."""


def split_ema(tensors: dict[str, torch.Tensor], ema: bool, where: str) -> EmaSplit:
    """OpenSTL's EMA hook (before its Lightning version) registers on the model, per
    parameter `a.b.c`, a buffer `ema_a_b_c` holding its moving average; the checkpoint
    holds both (the parameters raw: the hook swaps the averages in only around a
    validation). Without `ema`: those buffers are left out; with `ema`: each parameter is
    replaced by its average (tensors without one, such as BatchNorm statistics, stay)."""
    by_ema_name = {f"ema_{k.replace('.', '_')}": k for k in tensors if not k.startswith("ema_")}
    averages = {k: by_ema_name[k] for k in tensors if k.startswith("ema_") and k in by_ema_name}
    if ema and not averages:
        raise InputError(
            f"{where}: --ema, but the checkpoint holds no EMA weights (the ema_* buffers of "
            "OpenSTL's EMA hook); leave out --ema"
        )
    kept = {k: v for k, v in tensors.items() if k not in averages}
    if ema:
        for key, original in averages.items():
            if tensors[key].shape != tensors[original].shape:
                raise InputError(
                    f"{where}: EMA buffer '{key}' {tuple(tensors[key].shape)} does not have "
                    f"the shape of '{original}' {tuple(tensors[original].shape)}"
                )
            kept[original] = tensors[key]
    return EmaSplit(kept, sorted(averages.values()))


def _plain(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str)


def _hyper_parameters(raw: Any) -> dict[str, Any]:
    found = raw.get("hyper_parameters") if isinstance(raw, dict) else None
    if not isinstance(found, dict):
        return {}
    return {k: v for k, v in found.items() if k in KNOWN_KEYS and _plain(v)}


def read_config(path: str | Path) -> dict[str, Any]:
    """The top-level literal assignments of OpenSTL config file `path` (Python, never run:
    `ast.literal_eval` on each). An assignment of a setting the importer reads that is
    not a literal is an error naming its line."""
    path = Path(path)
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(
            f"{path}: not a readable OpenSTL config file ({_first_line(exc)})"
        ) from None
    values: dict[str, Any] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target = node.targets[0]
        if not isinstance(target, ast.Name):
            continue
        try:
            values[target.id] = ast.literal_eval(node.value)
        except ValueError:
            if target.id in KNOWN_KEYS:
                raise InputError(
                    f"{path}:{node.lineno}: '{target.id}' is not a literal value; the config "
                    "is read, never run: write the value itself"
                ) from None
    return values


# ---------------------------------------------------------------------------- settings
def canonical_method(name: str) -> str:
    """The importer's name for OpenSTL method `name` (any spelling), or an InputError."""
    key = re.sub(r"[\s._\-]", "", name.lower()).replace("++", "pp")
    method = _ALIASES.get(key)
    if method is None:
        raise InputError(
            f"--method {name!r}: not an OpenSTL method this importer knows; valid: {', '.join(METHODS)}"
        )
    if method == "swinlstmb":
        raise InputError(
            f"--method {name}: not imported: OpenSTL's SwinLSTM-B is one SwinLSTM cell at the "
            "patch grid (patch embedding, cell, transposed-conv head), which stpdist does not "
            "build; stpdist's swinlstm is SwinLSTM-D (down and up paths), imported with "
            "--method SwinLSTM_D"
        )
    return method


def settings(
    method: str,
    hyper_parameters: dict[str, Any],
    config: dict[str, Any],
    *,
    dataset: str | None = None,
    shape: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """OpenSTL's settings for `method`: Moving MNIST defaults ← checkpoint ← config file ←
    `dataset` (an OpenSTL dataset name: its frame shape and counts, `DATASETS`) ← `shape`
    (`in_shape`, `pre_seq_length`, `aft_seq_length` given on the command line). A
    checkpoint's or config's `dataname` fills the shape keys they leave out. `notes` gets
    one line saying which shape was assumed when no source gave it, and one per value the
    command line replaced."""
    merged = {**_COMMON, **DEFAULTS[method]}
    given: set[str] = set()
    for source, values in (
        ("the checkpoint's hyper_parameters", hyper_parameters),
        ("--config", config),
    ):
        named = values.get("method")
        if (
            named is not None
            and _ALIASES.get(re.sub(r"[\s._\-]", "", str(named).lower()).replace("++", "pp"))
            != method
        ):
            raise InputError(f"{source} says method {named!r}, but --method is {method}")
        found = {k: v for k, v in values.items() if k in KNOWN_KEYS}
        merged.update(found)
        given |= set(found) | ({"aft_seq_length"} if "total_length" in values else set())
    if "total_length" in merged and "aft_seq_length" not in config:
        merged["aft_seq_length"] = int(merged["total_length"]) - int(merged["pre_seq_length"])
    named_data = str(merged.get("dataname") or "").lower()
    if named_data in DATASETS:  # the checkpoint's dataset: the shape keys it leaves out
        merged.update({k: v for k, v in DATASETS[named_data].items() if k not in given})
        given |= set(_SHAPE_KEYS)
    replaced = {}
    if dataset is not None:
        name = dataset.lower()
        if name not in DATASETS:
            raise InputError(
                f"--dataset {dataset!r}: not an OpenSTL dataset name; valid: {', '.join(DATASETS)}"
            )
        replaced.update(DATASETS[name])
        merged["dataname"] = name
    replaced.update(shape or {})
    for key, value in replaced.items():
        if key in given and merged.get(key) != value and notes is not None:
            notes.append(f"{key} {value} from the command line replaces {merged[key]} of "
                         "the checkpoint or --config")  # fmt: skip
        merged[key] = value
    assumed = [k for k in _SHAPE_KEYS if k not in given and k not in replaced]
    if assumed and notes is not None:
        t, (c, h, w) = merged["pre_seq_length"], merged["in_shape"][1:]
        notes.append(
            f"assumed {', '.join(assumed)} of OpenSTL's Moving MNIST ({t}→"
            f"{merged['aft_seq_length']} frames of {c}×{h}×{w}): neither the checkpoint nor "
            "--config gives them; for another dataset pass --dataset NAME (OpenSTL's, e.g. "
            "taxibj, kth) or --in-shape T,C,H,W --pre N --aft M"
        )
    return merged  # fmt: skip


def _hidden(s: dict[str, Any]) -> list[int]:
    value = s["num_hidden"]
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        return [int(v) for v in items]
    except (TypeError, ValueError):
        raise InputError(
            f"num_hidden {value!r}: expected widths such as '128,128,128,128'"
        ) from None


def _sampling(s: dict[str, Any]) -> dict[str, Any]:
    if int(s.get("reverse_scheduled_sampling", 0)) == 1:
        return {"mode": "reverse", "reverse_steps": [int(s["r_sampling_step_1"]),
                int(s["r_sampling_step_2"])], "reverse_alpha": float(s["r_exp_alpha"])}  # fmt: skip
    if int(s.get("scheduled_sampling", 1)) == 1:
        return {"mode": "linear", "start": float(s["sampling_start_value"]),
                "decay": float(s["sampling_changing_rate"]), "stop_step": int(s["sampling_stop_iter"])}  # fmt: skip
    return {"mode": "none"}


def _phydnet_section(s: dict[str, Any]) -> dict[str, Any]:
    """PhyDNet: OpenSTL's `patch_size` (2 or 4; anything else means 4 there) is its
    encoder's stride, stpdist's `downsample` on unpatched frames. Its other widths are
    fixed in OpenSTL's code (the ConvLSTM branch's are read off the checkpoint). Teacher
    forcing: OpenSTL's ratio 1 − 0.003 per epoch, per step at Moving MNIST's 625 steps per
    epoch (10 000 sequences at batch 16), as stpdist's recipes (configs/*/phydnet.yaml)."""
    stride = int(s["patch_size"]) if int(s["patch_size"]) in (2, 4) else 4
    backbone = {"downsample": stride, "encoder_channels": 32, "phycell_hidden_channels": 49,
                "phycell_kernel_size": 7,
                "convlstm_hidden_channels": list(s.get("convlstm_hidden", [128, 128, 64])),
                "convlstm_kernel_size": int(s.get("convlstm_kernel", 3)), "moment_weight": None,
                "variant": "openstl"}  # fmt: skip
    sampling = {"mode": "linear", "start": 1.0, "decay": 4.8e-6, "stop_step": 208334}
    return {"name": "phydnet", "backbone": backbone, "patch_size": 1, "loss": "mse",
            "loss_frames": "all", "sampling": sampling}  # fmt: skip


def _swinlstm_section(s: dict[str, Any]) -> dict[str, Any]:
    """SwinLSTM-D: OpenSTL's patch size is stpdist's backbone `patch_size` on unpatched
    frames; only 2 (its head, a 3×3 transposed conv, strides by 2 whatever the patch)."""
    if int(s["patch_size"]) != 2:
        raise InputError(
            f"SwinLSTM patch_size {s['patch_size']}: OpenSTL's head strides by 2 whatever "
            "the patch size, so only patch_size 2 gives frames of the input's size"
        )
    lists = {}
    for key in ("depths_downsample", "depths_upsample", "num_heads"):
        value = s[key]
        try:
            lists[key] = [int(v) for v in (value.split(",") if isinstance(value, str) else value)]
        except (TypeError, ValueError):
            raise InputError(f"{key} {value!r}: expected integers such as '2,6'") from None
    backbone = {"patch_size": 2, "embed_dim": int(s["embed_dim"]),
                "depths_down": lists["depths_downsample"], "depths_up": lists["depths_upsample"],
                "num_heads": lists["num_heads"], "window_size": int(s["window_size"]),
                "drop_path_rate": 0.1}  # fmt: skip
    return {"name": "swinlstm", "backbone": backbone, "patch_size": 1, "loss": "mse",
            "loss_frames": "all", "sampling": {"mode": "none"}}  # fmt: skip


def _simvp_section(method: str, s: dict[str, Any]) -> dict[str, Any]:
    """SimVP and TAU: OpenSTL's `model_type` → stpdist's translator."""
    kind = str(s.get("model_type") or "gsta").lower()
    if kind in _DIFFERENT_TRANSLATORS:
        raise InputError(
            f"SimVP model_type {kind!r}: {_DIFFERENT_TRANSLATORS[kind]}; supported: "
            + ", ".join(sorted(set(_TRANSLATOR_NAMES) - set(_DIFFERENT_TRANSLATORS)))
        )
    if kind not in _TRANSLATOR_NAMES:
        raise InputError(
            f"SimVP model_type {kind!r}: not an OpenSTL translator this importer knows"
        )
    translator = _TRANSLATOR_NAMES[kind]
    # OpenSTL's ConvNeXtSubBlock never hands `drop` to timm's block: no dropout there
    drop = 0.0 if translator == "convnext" else float(s["drop"])
    backbone = {"translator": translator, "spatial_channels": int(s["hid_S"]),
                "temporal_channels": int(s["hid_T"]), "num_spatial_blocks": int(s["N_S"]),
                "num_translator_blocks": int(s["N_T"]),
                "encoder_kernel_size": int(s["spatio_kernel_enc"]),
                "decoder_kernel_size": int(s["spatio_kernel_dec"]),
                "mlp_ratio": float(s["mlp_ratio"]), "drop": drop,
                "drop_path": float(s["drop_path"])}  # fmt: skip
    if translator == "swin":  # OpenSTL's SwinSubBlock: shifted windows with mask=None
        backbone["swin_shift_mask"] = False
    section = {"name": method, "backbone": backbone, "patch_size": 1, "loss": "mse"}
    if method == "tau":  # OpenSTL's regulariser: one softmax over C·H·W, its ε
        section.update(divergence_weight=float(s["alpha"]), divergence_form="openstl")
    return section


def _model_section(method: str, s: dict[str, Any]) -> dict[str, Any]:
    """The `model` section of the stpdist config for OpenSTL settings `s`."""
    if method == "phydnet":
        section = _phydnet_section(s)
    elif method == "swinlstm":
        section = _swinlstm_section(s)
    elif method in _RECURRENT:
        if int(s.get("stride", 1)) != 1 and method != "e3dlstm":
            raise InputError(f"stride {s['stride']}: stpdist's {method} cells use stride 1 only")
        backbone: dict[str, Any] = {
            "hidden_channels": _hidden(s),
            "kernel_size": int(s["filter_size"]),
        }
        if method == "mau":
            for key, value in (("model_mode", "normal"), ("cell_mode", "normal")):
                if s.get(key, value) != value:
                    raise InputError(
                        f"MAU with {key} {s[key]!r}: stpdist's MAU is OpenSTL's '{value}' only"
                    )
            backbone.update(downsample=int(s["sr_size"]), attention_window=int(s["tau"]))
        else:
            backbone["layer_norm"] = bool(s.get("layer_norm", 0))
        if method in ("convlstm", "mim", "e3dlstm"):
            backbone["variant"] = "openstl"
        if method == "e3dlstm":  # OpenSTL fixes the clip (2 frames) and kernel (2×5×5)
            backbone.update(kernel_size=5, temporal_kernel_size=2, window_length=2,
                            stride=int(s.get("stride", 1)))  # fmt: skip
        if method == "predrnnv2":
            backbone["decouple_weight"] = float(s["decouple_beta"])
        section = {"name": method, "backbone": backbone, "patch_size": int(s["patch_size"]),
                   "loss": "mse+l1" if method == "e3dlstm" else "mse", "loss_frames": "all",
                   "sampling": _sampling(s)}  # fmt: skip
    else:
        section = _simvp_section(method, s)
    section["optimizer"] = {"name": "adam", "lr": float(s.get("lr", 1e-3))}
    section["schedule"] = {"name": "onecycle" if s.get("sched") == "onecycle" else "none"}
    return section


def stpdist_config(method: str, s: dict[str, Any]) -> dict[str, Any]:
    """The stpdist config (as a nested dict) for OpenSTL settings `s` of `method`."""
    t_in, t_out = int(s["pre_seq_length"]), int(s["aft_seq_length"])
    dataname = str(s.get("dataname") or "").lower()
    if dataname in DATASETS:
        root = _DATA_ROOTS.get(dataname, f"data/{dataname}")
    else:
        root = "data/mmnist" if list(s["in_shape"])[1:] == [1, 64, 64] else "data"
    return {
        "trainer": {"output_dir": f"runs/openstl-{method}"},
        "data": {"root": root, "batch_size": int(s.get("batch_size", 16)),
                 "num_input_frames": t_in, "num_output_frames": t_out},
        "model": _model_section(method, s),
    }  # fmt: skip


def from_tensors(
    method: str, s: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """Settings `s` with what OpenSTL fixes in code but a checkpoint's shapes tell: PhyDNet's
    ConvLSTM widths (gates conv i: 4·h_i × (in + h_i) × k × k) and kernel."""
    if method != "phydnet":
        return s
    gates = {}
    for key, tensor in tensors.items():
        match = re.fullmatch(r"(?:encoder\.)?convcell\.cell_list\.(\d+)\.conv\.weight", key)
        if match and tensor.dim() == 4:
            gates[int(match.group(1))] = tensor
    if not gates or sorted(gates) != list(range(len(gates))):
        return s  # OpenSTL's 128, 128, 64; the mapping names what is missing
    ordered = [gates[i] for i in range(len(gates))]
    return {**s, "convlstm_hidden": [int(g.shape[0]) // 4 for g in ordered],
            "convlstm_kernel": int(ordered[0].shape[-1])}  # fmt: skip


def key_rules(method: str, s: dict[str, Any]) -> list[tuple[str, Any]]:
    if method == "phydnet":
        return PHYDNET_RULES
    if method == "swinlstm":
        return SWINLSTM_RULES
    if method == "mau":
        return _mau_rules(int(s["sr_size"]).bit_length() - 1)
    if method == "mim":
        return MIM_RULES
    if method in ("simvp", "tau"):
        kind = _TRANSLATOR_NAMES[str(s.get("model_type") or "gsta").lower()]
        return [*_SIMVP_COMMON, *TRANSLATOR_RULES[kind]]
    return KEY_RULES[method]


# ---------------------------------------------------------------------------- mapping
@dataclasses.dataclass
class Mapped:
    tensors: dict[str, torch.Tensor]
    """stpdist module key → tensor (the checkpoint's dtype)."""
    dropped: list[str]
    """OpenSTL tensors its forward never uses, left out."""


def map_tensors(
    tensors: dict[str, torch.Tensor],
    rules: list[tuple[str, Any]],
    unused: list[str],
    target: dict[str, torch.Tensor],
    where: str,
    prefix: str = "backbone.",
    hint: str = "",
) -> Mapped:
    """Rename OpenSTL `tensors` by `rules` into the keys of `target` (a module's state
    dict); a tensor matching `unused` is dropped. An InputError names the first tensor
    that maps nowhere, lands twice or has another shape (`hint` appended: what to pass),
    or the first target key left unfilled."""
    mapped: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    dropped, unmapped = [], []
    for key, tensor in tensors.items():
        if any(re.fullmatch(pattern, key) for pattern in unused):
            dropped.append(key)
            continue
        new = _rename(key, rules)
        if new is None or prefix + new not in target:
            unmapped.append((key, new))
            continue
        new = prefix + new
        if new in mapped:
            raise InputError(
                f"{where}: OpenSTL tensors '{sources[new]}' and '{key}' both map to '{new}'"
            )
        mapped[new], sources[new] = _shaped(tensor, target[new], key, new, where, hint), key
    if unmapped:
        key, new = unmapped[0]
        more = (
            f" (and {len(unmapped) - 1} more: {', '.join(k for k, _ in unmapped[1:4])}…)"
            if len(unmapped) > 1
            else ""
        )
        why = (
            f"its stpdist name '{new}' is not a parameter of the model"
            if new
            else "no rule maps it"
        )
        raise InputError(
            f"{where}: OpenSTL tensor '{key}' {tuple(tensors[key].shape)} has no place in stpdist's model: {why}{more}"
        )
    missing = [k for k in target if k not in mapped]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(
            f"{where}: stpdist tensor '{missing[0]}' {tuple(target[missing[0]].shape)} gets no OpenSTL tensor{more}: the checkpoint lacks it or --method/--config do not describe it"
        )
    return Mapped(mapped, dropped)  # fmt: skip


def resolve_copies(
    tensors: dict[str, torch.Tensor], copies: list[tuple[str, str]], where: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """`tensors` without the keys that copy another (`copies`: pattern → original's key),
    and those keys. A copy must equal its original (OpenSTL saves one module under two
    names); a copy whose original is absent stands for it."""
    kept, dropped = dict(tensors), []
    for key, tensor in tensors.items():
        original = _rename(key, copies)
        if original is None:
            continue
        del kept[key]
        if original not in tensors:
            kept[original] = tensor
            continue
        if tensors[original].shape != tensor.shape or not torch.equal(tensors[original], tensor):
            raise InputError(
                f"{where}: OpenSTL tensor '{key}' should be a copy of '{original}' (one module "
                "saved under both names) but differs from it"
            )
        dropped.append(key)
    return kept, dropped


def _rename(key: str, rules: list[tuple[str, Any]]) -> str | None:
    for pattern, template in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return template(match) if callable(template) else match.expand(template)
    return None


def _shaped(
    tensor: torch.Tensor, target: torch.Tensor, key: str, new: str, where: str, hint: str = ""
) -> torch.Tensor:
    """`tensor` in `target`'s shape: equal, or equal after dropping size-1 axes (layer
    scales are (C,) in OpenSTL and C×1×1 here)."""
    if tuple(tensor.shape) == tuple(target.shape):
        return tensor.contiguous()
    squeeze = [n for n in tensor.shape if n != 1], [n for n in target.shape if n != 1]
    if squeeze[0] == squeeze[1]:
        return tensor.reshape(target.shape).contiguous()
    raise InputError(
        f"{where}: OpenSTL tensor '{key}' has shape {tuple(tensor.shape)}, stpdist's '{new}' "
        f"{tuple(target.shape)}: --method/--config do not describe this checkpoint's sizes{hint}"
    )


_METHOD_MARKS = (
    ("MIM", ("stlstm_layer.",)),
    ("PhyDNet", ("convcell.", "phycell.")),
    ("SwinLSTM_D", ("Downsample.", ".STBs.")),
    ("PredRNNpp", (".conv_c2m.", ".conv_om.")),
    ("E3DLSTM", (".conv3d.",)),
    ("MAU", (".conv_t_next.", ".conv_s_next.")),
    ("PredRNNv2", ("adapter.",)),
    ("PredRNN", (".conv_m.",)),
    ("ConvLSTM", ("cell_list.",)),
)
"""OpenSTL methods by what their tensor names hold, the most telling first (every PredRNN
has a cell_list; MIM's and PhyDNet's names are their own)."""


def _looks_like(tensors: dict[str, torch.Tensor]) -> str | None:
    """The OpenSTL method whose tensor names `tensors` (its state dict, prefixes stripped)
    hold, as far as names tell: SimVP and TAU alike ("SimVP or TAU"); None when no mark
    is found."""
    keys = [f".{key}" for key in tensors]
    if any(k.startswith((".enc.", ".hid.", ".dec.")) for k in keys):
        return "SimVP or TAU"
    for method, marks in _METHOD_MARKS:
        if any(mark in key for key in keys for mark in marks):
            return method
    return None


def _another_method(tensors: dict[str, torch.Tensor], name: str) -> str:
    """`; its tensor names look like OpenSTL's X: --method X?` when they name another
    method than `name` (canonical), else ""."""
    guess = _looks_like(tensors)
    if guess is None:
        return ""
    guessed = [canonical_method(g) for g in guess.split(" or ")]
    if name in guessed:
        return ""
    return f"; its tensor names look like OpenSTL's {guess}: --method {guess.split(' or ')[0]}?"


# ---------------------------------------------------------------------------- import
def import_checkpoint(
    checkpoint: str | Path,
    method: str,
    out: str | Path,
    *,
    config: str | Path | None = None,
    overwrite: bool = False,
    dataset: str | None = None,
    in_shape: list[int] | None = None,
    pre: int | None = None,
    aft: int | None = None,
    ema: bool = False,
    say: Callable[[str], None] = print,
) -> Path:
    """Convert OpenSTL `checkpoint` of `method` into the stpdist model folder `out`
    (config.yaml, model.safetensors, index.json), written into a staging folder that
    replaces `out` only when complete. Returns `out`.

    `dataset` (an OpenSTL dataset name) or `in_shape` (T, C, H, W), `pre` and `aft` give
    the frame shape and counts, which OpenSTL's config files never hold (otherwise the
    checkpoint's, or Moving MNIST's, said in one line). `ema`: import the averages of
    OpenSTL's EMA hook instead of the raw weights (see `split_ema`)."""
    from .build import build_module
    from .checkpoint import MODEL_FILE, save_weights
    from .config import to_yaml
    from .data.convert import EarlierOutput, staged_output
    from .data.format import INDEX_FILE, SplitIndex, write_index
    from .inference import check_output_folder

    name = canonical_method(method)
    protected = (checkpoint,) if config is None else (checkpoint, config)
    earlier = EarlierOutput(
        "import", (MODEL_FILE, "config.yaml", INDEX_FILE), markers=(MODEL_FILE,)
    )
    check_output_folder(out, overwrite=overwrite, protected=protected, earlier=earlier)
    shape = _shape_options(in_shape, pre, aft)
    tensors, hyper_parameters = read_checkpoint(checkpoint)
    tensors, wrappers = strip_wrappers(tensors)
    if wrappers:
        say(f"stripped the wrapper prefix {''.join(wrappers)!r} that every key carries (a "
            "model saved inside DistributedDataParallel or DataParallel)")  # fmt: skip
    split = split_ema(tensors, ema, str(checkpoint))
    tensors = split.tensors
    if split.averaged and ema:
        say(f"imported the EMA weights (OpenSTL's EMA hook) of {len(split.averaged)} tensors "
            "in place of the raw ones")  # fmt: skip
    elif split.averaged:
        say(f"left out the EMA weights of {len(split.averaged)} tensors (the ema_* buffers of "
            "OpenSTL's EMA hook): the raw weights are imported; --ema imports the averages")  # fmt: skip
    tensors, copies = resolve_copies(tensors, COPIES.get(name, []), str(checkpoint))
    notes: list[str] = []
    found = settings(name, hyper_parameters, read_config(config) if config else {},
                     dataset=dataset, shape=shape, notes=notes)  # fmt: skip
    for note in notes:
        say(note)
    found = from_tensors(name, found, tensors)
    if name == "swinlstm":
        tensors = _swinlstm_tensors(tensors)
    cfg_dict = stpdist_config(name, found)
    cfg = _load_dict(cfg_dict)
    t_in, t_out = int(found["pre_seq_length"]), int(found["aft_seq_length"])
    t, (c, h, w) = t_in + t_out, list(found["in_shape"])[1:]
    index = SplitIndex(split="test", shape=[int(t), int(c), int(h), int(w)], dtype="uint8",
                       value_scale=255.0, shards=[], min=[0.0] * int(c), max=[1.0] * int(c),
                       source="openstl", args={"checkpoint": Path(checkpoint).name, "method": method,
                                               "openstl": _jsonable(found)})  # fmt: skip
    try:
        module = build_module(cfg, index=index)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{checkpoint}: the settings do not build stpdist's {name}: {exc}"
        ) from None
    hint = (f" (the model was built for {t_in}→{t_out} frames of {c}×{h}×{w}; a checkpoint "
            "of another dataset needs --dataset NAME, or --in-shape T,C,H,W --pre N --aft M; "
            "other widths or kernels (num_hidden, filter_size, patch_size) need the run's "
            "OpenSTL --config)")  # fmt: skip
    try:
        mapped = map_tensors(tensors, key_rules(name, found), UNUSED.get(name, []),
                             module.state_dict(), str(checkpoint), hint=hint)  # fmt: skip
    except InputError as exc:  # a checkpoint of another method: said first
        raise InputError(f"{exc}{_another_method(tensors, name)}") from None
    module.load_state_dict(
        {k: v.to(module.state_dict()[k].dtype) for k, v in mapped.tensors.items()}
    )
    if mapped.dropped:
        say(f"dropped {len(mapped.dropped)} OpenSTL tensors its forward never uses (or "
            "constants stpdist rebuilds): "
            + ", ".join(mapped.dropped[:6]) + (" …" if len(mapped.dropped) > 6 else ""))  # fmt: skip
    if copies:
        say(f"dropped {len(copies)} OpenSTL tensors that repeat another key's tensor (one "
            "module saved under two names, checked equal): "
            + ", ".join(copies[:6]) + (" …" if len(copies) > 6 else ""))  # fmt: skip
    with staged_output(out, overwrite, sources=protected, earlier=earlier) as staging:
        save_weights(mapped.tensors, staging / MODEL_FILE)
        (staging / "config.yaml").write_text(to_yaml(cfg))
        write_index(staging, index)
    say(f"{name}: {len(mapped.tensors)} tensors from {checkpoint} → {out}")
    return Path(out)


def _shape_options(in_shape: list[int] | None, pre: int | None, aft: int | None) -> dict[str, Any]:
    """The shape settings given on the command line: `--in-shape` T,C,H,W (T is OpenSTL's
    pre_seq_length unless `--pre` says it), `--pre`, `--aft`."""
    shape: dict[str, Any] = {}
    if in_shape is not None:
        if len(in_shape) != 4 or any(int(n) < 1 for n in in_shape):
            raise InputError(
                f"--in-shape {','.join(map(str, in_shape))}: expected four positive sizes T,C,H,W"
            )
        shape["in_shape"] = [int(n) for n in in_shape]
        if pre is not None and pre != shape["in_shape"][0]:
            raise InputError(
                f"--pre {pre} but --in-shape's T is {in_shape[0]}: OpenSTL's in_shape starts "
                "with the input frames (pre_seq_length)"
            )
        shape["pre_seq_length"] = shape["in_shape"][0]
    for flag, key, value in (("--pre", "pre_seq_length", pre), ("--aft", "aft_seq_length", aft)):
        if value is not None:
            if value < 1:
                raise InputError(f"{flag} {value}: expected a positive number of frames")
            shape[key] = int(value)
    return shape


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _load_dict(cfg_dict: dict[str, Any]) -> Any:
    """A validated `Config` from a nested dict (through the YAML loader, so every check of
    a config file applies)."""
    from omegaconf import OmegaConf

    from .config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(OmegaConf.to_yaml(OmegaConf.create(cfg_dict)))
        return load_config(path)
