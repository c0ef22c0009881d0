"""The model zoo under a user's shapes and settings (review R19): every backbone through the
path a config takes (`load_config` → `build_module` → a training step) on frames that are
not Moving MNIST's (non-square, 2 or 3 channels, T_in ≠ T_out both ways, 1 → 1), and the
refusals a user meets at build time instead of a torch shape error mid-step: even kernel
sizes, `model.patch_size` against the data's frames, ConvLSTM `shi` with the frame loop's
settings, out-of-range SimVP and PredRNN.V2 arguments, SwinLSTM's window.

Legend: B batch, T time, C channels, H×W frame size."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from stpdist.build import build_module
from stpdist.config import ConfigError, load_config

torch.set_num_threads(1)

TINY = {  # (model.name, model.backbone): the smallest of each family and form
    "convlstm": ("convlstm", {"hidden_channels": [4, 4], "kernel_size": 3}),
    "convlstm-openstl": (
        "convlstm",
        {"hidden_channels": [4, 4], "kernel_size": 3, "variant": "openstl"},
    ),
    "convlstm-shi": ("convlstm", {"hidden_channels": [4, 4], "kernel_size": 3, "variant": "shi"}),
    "trajgru": ("trajgru", {"conv_channels": [4, 4], "hidden_channels": [4, 4], "links": [2, 2]}),
    "predrnn": ("predrnn", {"hidden_channels": [4, 4], "kernel_size": 3}),
    "predrnnpp": ("predrnnpp", {"hidden_channels": [4, 4], "kernel_size": 3}),
    "predrnnv2": ("predrnnv2", {"hidden_channels": [4, 4], "kernel_size": 3}),
    "simvp-gsta": (
        "simvp",
        {"spatial_channels": 4, "temporal_channels": 16, "num_translator_blocks": 2},
    ),
    "simvp-incepu": (
        "simvp",
        {
            "translator": "incepu",
            "spatial_channels": 4,
            "temporal_channels": 16,
            "num_translator_blocks": 2,
            "inception_groups": 2,
        },
    ),
    "simvp-mlpmixer": (
        "simvp",
        {
            "translator": "mlpmixer",
            "spatial_channels": 4,
            "temporal_channels": 16,
            "num_translator_blocks": 2,
        },
    ),
    "tau": ("tau", {"spatial_channels": 4, "temporal_channels": 16, "num_translator_blocks": 2}),
    "mim": ("mim", {"hidden_channels": [4, 4], "kernel_size": 3}),
    "e3dlstm": ("e3dlstm", {"hidden_channels": [4], "kernel_size": 3}),
    "phydnet": (
        "phydnet",
        {
            "downsample": 2,
            "encoder_channels": 16,
            "phycell_hidden_channels": 9,
            "phycell_kernel_size": 3,
            "convlstm_hidden_channels": [32],
        },
    ),
    "mau": ("mau", {"hidden_channels": [4], "kernel_size": 3, "downsample": 2}),
    "swinlstm": (
        "swinlstm",
        {
            "patch_size": 1,
            "embed_dim": 8,
            "depths_down": [2],
            "depths_up": [2],
            "num_heads": [2],
            "window_size": 2,
        },
    ),
    "predformer": (
        "predformer",
        {"patch_size": 2, "embed_dim": 8, "num_heads": 2, "num_groups": 1},
    ),
}


def build(key: str, frame_CHW, t_in: int, t_out: int, *overrides: str, **backbone):
    """`build_module` of a config made as a user makes one: TINY[key] (plus `backbone`
    arguments), the frame counts and `overrides`, for frames C×H×W `frame_CHW`."""
    name, args = TINY[key]
    dotted = [f"model.backbone.{k}={json.dumps(v)}" for k, v in {**args, **backbone}.items()]
    cfg = load_config(
        None,
        [
            f"model.name={name}",
            *dotted,
            f"data.num_input_frames={t_in}",
            f"data.num_output_frames={t_out}",
            *overrides,
        ],
    )
    return build_module(cfg, tuple(frame_CHW))


def train_step(module, frame_CHW, t_in: int, t_out: int) -> torch.Tensor:
    """One training step's loss (backward run) after checking the predictions' shape."""
    torch.manual_seed(0)
    inputs = torch.rand(2, t_in, *frame_CHW)
    targets = torch.rand(2, t_out, *frame_CHW)
    module.eval()
    with torch.no_grad():
        assert module.predict_frames(inputs).shape == targets.shape
    module.train()
    out = module.training_step(inputs, targets)
    loss = out["loss"] if isinstance(out, dict) else out
    loss.backward()
    assert torch.isfinite(loss)
    return loss.detach()


# ------------------------------------------------------------------ a user's shapes train
@pytest.mark.parametrize("key", sorted(TINY))
@pytest.mark.parametrize(
    "frame_CHW, t_in, t_out, patch",
    [((3, 8, 12), 2, 3, 1), ((2, 12, 8), 3, 1, 1), ((2, 8, 16), 1, 1, 2)],
    ids=["3ch-8x12-2to3", "2ch-12x8-3to1", "2ch-8x16-1to1-patch2"],
)
def test_every_backbone_trains_on_non_square_frames(key, frame_CHW, t_in, t_out, patch):
    module = build(key, frame_CHW, t_in, t_out, f"model.patch_size={patch}")
    train_step(module, frame_CHW, t_in, t_out)


# ------------------------------------------------------------ refusals at build time
@pytest.mark.parametrize(
    "key, argument",
    [
        ("convlstm", "kernel_size"),
        ("convlstm-openstl", "kernel_size"),
        ("convlstm-shi", "kernel_size"),
        ("trajgru", "kernel_size"),
        ("predrnn", "kernel_size"),
        ("predrnnpp", "kernel_size"),
        ("mim", "kernel_size"),
        ("e3dlstm", "kernel_size"),
        ("mau", "kernel_size"),
        ("phydnet", "convlstm_kernel_size"),
        ("simvp-gsta", "encoder_kernel_size"),
        ("simvp-gsta", "decoder_kernel_size"),
    ],
)
def test_even_kernel_sizes_are_refused_at_build_naming_the_key(key, argument):
    """An even kernel padded k//2 grows the frame by a pixel: the step died in a torch shape
    error (or, E3D-LSTM `openstl`, resampled the frame back to size without a word)."""
    with pytest.raises(ConfigError, match=rf"'model\.backbone\.{argument}' .*must be odd"):
        build(key, (1, 8, 8), 2, 2, **{argument: 4})


@pytest.mark.parametrize(
    "key, setting",
    [("simvp-gsta", {"inception_kernel_sizes": [4]}), ("tau", {"swin_window": 3}),
     ("simvp-incepu", {"swin_shift_mask": False}), ("simvp-mlpmixer", {"inception_groups": 4})],
)  # fmt: skip
def test_another_translators_setting_is_said_at_build(key, setting, caplog):
    """A zoo review: a setting only another translator reads was ignored silently (gsta
    with `inception_kernel_sizes: [4]` built as if it were not there). Said at build, not
    refused (a diff review: models trained with such a key, which never touched their
    weights, stopped loading); a default given as a tuple is the default."""
    (name,) = setting
    with caplog.at_level(logging.WARNING, logger="stpdist"):
        build(key, (1, 16, 16), 2, 2, **setting)
    assert f"model.backbone.{name} is the " in caplog.text, caplog.text
    assert "translator's setting; translator" in caplog.text and "is ignored" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stpdist"):
        build("simvp-gsta", (1, 16, 16), 2, 2, inception_kernel_sizes=(3, 5, 7, 11))
    assert "translator's setting" not in caplog.text, caplog.text


def test_even_inception_kernels_and_phycell_kernel_are_refused():
    with pytest.raises(ConfigError, match=r"inception_kernel_sizes' .*holds 4.*odd"):
        build("simvp-incepu", (1, 8, 8), 2, 2, inception_kernel_sizes=[3, 4])
    with pytest.raises(ConfigError, match=r"phycell_kernel_size' .*must be odd"):
        build("phydnet", (1, 8, 8), 2, 2, phycell_kernel_size=4, phycell_hidden_channels=16)


def test_e3dlstm_openstl_even_kernel_is_refused_not_resampled():
    with pytest.raises(ConfigError, match=r"kernel_size' .*must be odd"):
        build("e3dlstm", (1, 8, 8), 2, 2, variant="openstl", kernel_size=4)


def test_patch_size_not_dividing_the_frames_is_a_config_error_with_the_fits():
    with pytest.raises(ConfigError) as caught:
        build("convlstm", (1, 20, 12), 2, 2, "model.patch_size=8")
    message = str(caught.value)
    assert message.startswith("'model.patch_size' is 8") and "20×12" in message
    assert "(1, 2, 4)" in message


def test_a_refusal_about_frame_size_says_the_frames_were_patched():
    """The backbone sees 10×6 frames; the user's data are 20×12 at patch_size 2."""
    with pytest.raises(ConfigError) as caught:
        build("phydnet", (3, 20, 12), 2, 2, "model.patch_size=2", downsample=4)
    message = str(caught.value)
    assert "'model.backbone.downsample'" in message and "10×6" in message
    assert "after 'model.patch_size' 2: 12×10×6, from the data's 3×20×12" in message


@pytest.mark.parametrize(
    "argument, value, words",
    [
        ("mlp_ratio", 0.0, "must be > 0"),
        ("drop", -0.1, r"must be in \[0, 1\)"),
        ("drop_path", 1.5, r"must be in \[0, 1\)"),
        ("translator", "nope", "unknown SimVP translator 'nope'"),
        # an import path that does not resolve: a config error too (a plugins review: an
        # ImportError, exit 1, naming no key)
        ("translator", "json:NoSuchBlock", "module 'json' has no 'NoSuchBlock'"),
    ],
)
def test_simvp_arguments_out_of_range_are_config_errors(argument, value, words):
    with pytest.raises(ConfigError, match=rf"^'model\.backbone\.{argument}' of simvp: .*{words}"):
        build("simvp-gsta", (1, 8, 8), 2, 2, **{argument: value})


def test_predrnnv2_refuses_a_negative_decoupling_weight():
    with pytest.raises(ConfigError, match=r"'model\.backbone\.decouple_weight' .*≥ 0"):
        build("predrnnv2", (1, 8, 8), 2, 2, decouple_weight=-1.0)


def test_swinlstm_window_refusal_names_window_size():
    with pytest.raises(ConfigError, match=r"window_size.*token grid 4×6 .*window 4"):
        build("swinlstm", (1, 8, 12), 2, 2, window_size=4)


# ---------------------------------------------------------------- ConvLSTM's shi form
@pytest.mark.parametrize("override", ["model.sampling.mode=linear", "model.loss_frames=all"])
def test_shi_refuses_the_frame_loops_settings_at_build(override):
    """Before: built, then a ValueError at the first training step (exit 1 on the CLI)."""
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"'{key}' .*variant shi"):
        build("convlstm-shi", (1, 8, 8), 2, 2, override)


def _saved_bytes(module, frame_CHW, t_in, t_out) -> tuple[int, torch.Tensor]:
    """Bytes of the tensors autograd keeps for the backward of one training step."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = train_step(module, frame_CHW, t_in, t_out)
    return total, loss


def test_shi_honours_activation_checkpointing():
    """`trainer.activation_checkpointing` was silently ignored by the shi form (its own loop)."""
    shape = (1, 8, 12)
    torch.manual_seed(1)
    plain = build("convlstm-shi", shape, 3, 3)
    torch.manual_seed(1)
    checkpointed = build("convlstm-shi", shape, 3, 3, "trainer.activation_checkpointing=true")
    checkpointed.enable_activation_checkpointing()
    kept, loss = _saved_bytes(plain, shape, 3, 3)
    kept_checkpointed, loss_checkpointed = _saved_bytes(checkpointed, shape, 3, 3)
    assert kept_checkpointed < kept / 4
    assert torch.equal(loss, loss_checkpointed)
    for a, b in zip(plain.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-8)


def test_shi_runs_every_step_through_step_which_trainer_compile_compiles():
    """`compile_for_training` replaces the backbone's `step`; the shi loop never called it,
    so `trainer.compile` compiled nothing."""
    module = build("convlstm-shi", (1, 8, 8), 3, 2)
    backbone, calls = module.backbone, []
    step = backbone.step

    def counted(frame, state):
        calls.append(frame is None)
        return step(frame, state)

    before = train_step(module, (1, 8, 8), 3, 2)
    backbone.step = counted  # as compile_for_training installs the compiled step
    module.zero_grad()
    assert torch.equal(train_step(module, (1, 8, 8), 3, 2), before)
    # per forward: 3 encoder steps (a frame each), 2 forecaster steps (none); 2 forwards
    assert calls == [False, False, False, True, True] * 2


# ------------------------------------------------------------------------------ PhyDNet
def test_phydnet_trains_after_the_module_is_cast():
    """`.float()` / `.to(dtype)` casts the float64 moment buffer too: the moment loss then
    mixed float32 and float64 in one einsum (a RuntimeError at the step)."""
    module = build("phydnet", (1, 8, 8), 2, 2)
    module.float()
    train_step(module, (1, 8, 8), 2, 2)


# --------------------------------------------------------------------------------- TAU
@pytest.mark.parametrize("form, t_out", [("per_channel", 1), ("openstl", 2)])
def test_tau_divergence_that_cannot_act_is_said(form, t_out, caplog):
    """With too few output frames the divergence is 0: the weight did nothing, silently."""
    with caplog.at_level("WARNING", logger="stpdist"):
        build(
            "tau",
            (1, 8, 8),
            2,
            t_out,
            "model.divergence_weight=0.1",
            f"model.divergence_form={form}",
        )
    assert f"needs at least {t_out + 1} output frames" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="stpdist"):
        build(
            "tau",
            (1, 8, 8),
            2,
            t_out + 1,
            "model.divergence_weight=0.1",
            f"model.divergence_form={form}",
        )
    assert "divergence_weight" not in caplog.text
