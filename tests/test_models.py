"""Backbones and the Forecaster: shapes, gradients, patching, import purity."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from helpers import forecaster

from stpdist.models import FrameSpec, available, build_backbone
from stpdist.task import reshape_patch, reshape_patch_back

MODEL_FILES = sorted((Path(__file__).parent.parent / "stpdist" / "models").glob("*.py"))


@pytest.mark.parametrize("path", MODEL_FILES, ids=[p.name for p in MODEL_FILES])
def test_model_files_import_torch_only(path):
    # importlib: translators.py resolves `package.module:ClassName` translator paths;
    # contextlib, contextvars, logging, os, types: fused.py's switch and compiled regions
    # (os: the compile backend from STPDIST_FUSED_BACKEND)
    allowed = {"torch", "math", "typing", "collections", "dataclasses", "__future__", "importlib"}
    allowed |= {"contextlib", "contextvars", "logging", "os", "types"}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:  # a sibling model file
                continue
            if node.level == 2:  # stpdist's own pure-torch pieces only
                pure = ("module",)
                names = [node.module] if node.module else [a.name for a in node.names]
                assert all(name in pure for name in names), names
                continue
            names = [node.module]
        else:
            continue
        for name in names:
            assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


def test_patch_round_trip_and_layout():
    x = torch.arange(2 * 3 * 2 * 8 * 12, dtype=torch.float32).reshape(2, 3, 2, 8, 12)
    patched = reshape_patch(x, 4)
    assert patched.shape == (2, 3, 32, 2, 3)
    assert torch.equal(reshape_patch_back(patched, 4), x)
    # channel block (i, j) of a patch holds pixel (i, j) of that 4×4 patch
    assert patched[0, 0, (1 * 4 + 2) * 2 + 1, 1, 2] == x[0, 0, 1, 1 * 4 + 1, 2 * 4 + 2]
    with pytest.raises(ValueError, match="not divisible by patch_size 5"):
        reshape_patch(x, 5)


SMALL = {
    "convlstm": {"hidden_channels": [4, 4], "kernel_size": 3},
    "predrnn": {"hidden_channels": [4, 4], "kernel_size": 3},
    "predrnnv2": {"hidden_channels": [4, 4], "kernel_size": 3},
    "predrnnpp": {"hidden_channels": [4, 4], "kernel_size": 3},
    "trajgru": {"conv_channels": [4, 4], "hidden_channels": [4, 4], "links": [2, 2]},
    "simvp": {
        "spatial_channels": 8,
        "temporal_channels": 32,
        "num_spatial_blocks": 2,
        "num_translator_blocks": 2,
    },
    "tau": {
        "spatial_channels": 8,
        "temporal_channels": 32,
        "num_spatial_blocks": 2,
        "num_translator_blocks": 2,
    },
}


def test_every_registered_backbone_is_tested():
    """Here (through the Forecaster), or in test_zoo.py (the backbones that downsample
    inside, at their own small shapes) and test_simvp.py."""
    from test_zoo import ZOO

    assert sorted({*SMALL, *ZOO}) == available()


def test_zoo_aux_losses_reach_the_task_loss_and_logs():
    from test_zoo import SMALL as ZOO_SMALL

    torch.manual_seed(0)
    model = forecaster("phydnet", (2, 8, 8), 3, 2, backbone=ZOO_SMALL["phydnet"])
    out = model.training_step(torch.rand(2, 3, 2, 8, 8), torch.rand(2, 2, 2, 8, 8))
    assert set(out) == {"loss", "frames_loss", "moment"}
    assert out["loss"].item() == pytest.approx(out["frames_loss"].item() + out["moment"].item())


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize(
    "channels, height, width, t_in, t_out, patch", [(1, 16, 24, 3, 2, 1), (2, 16, 16, 2, 4, 4)]
)
def test_forecaster_shapes_and_gradients(name, channels, height, width, t_in, t_out, patch):
    torch.manual_seed(0)
    model = forecaster(
        name, (channels, height, width), t_in, t_out, patch_size=patch, backbone=SMALL[name]
    )
    inputs = torch.rand(2, t_in, channels, height, width)
    targets = torch.rand(2, t_out, channels, height, width)
    pred = model.predict_frames(inputs)
    assert pred.shape == targets.shape and torch.isfinite(pred).all()
    loss = model.training_step(inputs, targets)
    (loss["loss"] if isinstance(loss, dict) else loss).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", sorted(SMALL))
def test_backbone_overfits_one_batch(name):
    torch.manual_seed(0)
    wider = {
        k: [2 * x for x in v]
        for k, v in SMALL[name].items()
        if k != "links" and isinstance(v, list)
    }
    model = forecaster(name, (1, 8, 8), 3, 2, backbone={**SMALL[name], **wider}, lr=1e-2)
    # two samples: a batch (not one sequence), fitted in ~40% fewer steps than four
    inputs, targets = torch.rand(2, 3, 1, 8, 8), torch.rand(2, 2, 1, 8, 8)
    optimizer = model.configure_optimizer()
    first = None
    for _ in range(300):
        loss = model.training_step(inputs, targets)
        loss = loss["loss"] if isinstance(loss, dict) else loss
        first = first if first is not None else loss.item()
        if loss.item() < 0.1 * first:
            break  # reached: no need to run the remaining steps
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first


# OpenSTL's Moving MNIST settings: patch 4 → 16×16×16, hidden 128×4, filter 5
OPENSTL = {"predrnn": 23.8e6, "predrnnv2": 23.9e6, "predrnnpp": 38.6e6}
COUNTS = {
    "convlstm": 12_077_072,
    "predrnn": 23_838_720,
    "predrnnv2": 23_855_104,
    "predrnnpp": 35_307_520,
}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_counts_at_openstl_settings(name):
    spec = FrameSpec(16, 16, 16, 10, 10)
    model = build_backbone(name, spec, {"hidden_channels": [128] * 4, "kernel_size": 5})
    count = sum(p.numel() for p in model.parameters())
    assert count == COUNTS[name]
    if name in ("predrnn", "predrnnv2"):
        assert abs(count - OPENSTL[name]) / OPENSTL[name] < 0.02
    if name == "predrnnpp":
        # OpenSTL's cell also defines a 5×5 conv from 2h to h that its forward never uses
        unused = 4 * (2 * 128) * 128 * 5 * 5
        assert abs(count + unused - OPENSTL[name]) / OPENSTL[name] < 0.02


@pytest.mark.parametrize("name", ["convlstm", "predrnn", "predrnnpp"])
def test_without_teacher_forcing_predictions_never_read_targets(name):
    torch.manual_seed(0)
    model = forecaster(
        name,
        (1, 8, 8),
        3,
        4,
        backbone=SMALL[name],
        sampling="linear",
        stop_step=10,
    )
    inputs = torch.rand(2, 3, 1, 8, 8)
    mask = model.teacher_mask(inputs, 10)  # schedule over: no true output frames
    assert mask.shape == (2, 3) and mask.sum() == 0
    a = model(inputs, torch.rand(2, 4, 1, 8, 8), mask).predictions
    b = model(inputs, torch.rand(2, 4, 1, 8, 8), mask).predictions
    assert torch.equal(a, b)
    c = model(
        inputs, torch.rand(2, 4, 1, 8, 8), torch.ones_like(mask)
    ).predictions  # teacher forcing on
    assert not torch.equal(a, c)


def test_linear_schedule_statistics():
    model = forecaster("convlstm", (1, 8, 8), 10, 10, backbone=SMALL["convlstm"], sampling="linear")
    inputs = torch.zeros(20_000, 10, 1, 1, 1)
    for step, expected in [
        (0, 1.0),
        (10_000, 0.8),
        (25_000, 0.5),
        (49_999, 0.00002),
        (50_000, 0.0),
    ]:
        assert model.teacher_probabilities(step) == pytest.approx((1.0, expected))
        mask = model.teacher_mask(inputs, step)
        assert mask.shape == (20_000, 9)
        assert mask.mean().item() == pytest.approx(expected, abs=0.01)


def test_reverse_schedule_statistics():
    import math

    model = forecaster(
        "predrnnv2",
        (1, 8, 8),
        10,
        10,
        backbone=SMALL["predrnnv2"],
        sampling="reverse",
    )
    inputs = torch.zeros(20_000, 10, 1, 1, 1)
    for step, p_in, p_out in [
        (0, 0.5, 0.5),
        (30_000, 1 - 0.5 * math.exp(-1), 0.4),
        (50_000, 1.0, 0.0),
    ]:
        assert model.teacher_probabilities(step) == pytest.approx((p_in, p_out))
        mask = model.teacher_mask(inputs, step)
        assert mask.shape == (20_000, 18)
        assert mask[:, :9].mean().item() == pytest.approx(p_in, abs=0.01)
        assert mask[:, 9:].mean().item() == pytest.approx(p_out, abs=0.01)


def test_predrnnv2_adds_its_decoupling_loss_explicitly():
    torch.manual_seed(0)
    model = forecaster("predrnnv2", (1, 8, 8), 3, 2, backbone={**SMALL["predrnnv2"]})
    inputs, targets = torch.rand(2, 3, 1, 8, 8), torch.rand(2, 2, 1, 8, 8)
    out = model.training_step(inputs, targets)
    assert set(out) == {"loss", "frames_loss", "decouple"}
    assert 0 < out["decouple"].item() <= 0.1  # β 0.1 × a mean |cosine| in (0, 1]
    assert out["loss"].item() == pytest.approx(out["frames_loss"].item() + out["decouple"].item())
    # β scales it: the same weights with β 0.5
    heavier = forecaster(
        "predrnnv2", (1, 8, 8), 3, 2, backbone={**SMALL["predrnnv2"], "decouple_weight": 0.5}
    )
    heavier.load_state_dict(model.state_dict())
    again = heavier.training_step(inputs, targets)
    assert again["decouple"].item() == pytest.approx(5 * out["decouple"].item(), rel=1e-5)


def test_scheduled_sampling_refused_for_encoder_forecaster():
    with pytest.raises(ValueError, match="does not feed frames back"):
        forecaster("trajgru", (1, 8, 8), 3, 2, backbone=SMALL["trajgru"], sampling="linear")


def test_unknown_backbone_names_available():
    with pytest.raises(KeyError, match="available: convlstm"):
        build_backbone("nope", FrameSpec(1, 8, 8, 2, 2))


def test_frame_size_not_divisible_by_patch_is_clear():
    with pytest.raises(ValueError, match="30×30 is not divisible by patch_size 4"):
        forecaster("convlstm", (1, 30, 30), 2, 2, patch_size=4)


def test_tau_divergence_regulariser_is_in_the_loss_and_logged():
    from stpdist.config import ModelConfig
    from stpdist.models.simvp import differential_divergence
    from stpdist.task import Forecaster

    torch.manual_seed(0)
    config = ModelConfig(name="tau", backbone=dict(SMALL["tau"]), divergence_weight=0.1)
    model = Forecaster(config, (1, 8, 8), 3, 3)
    inputs, targets = torch.rand(2, 3, 1, 8, 8), torch.rand(2, 3, 1, 8, 8)
    out = model.training_step(inputs, targets)
    pred = model(inputs).predictions
    expected = 0.1 * differential_divergence(pred, targets)
    assert out["divergence"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(
        out["frames_loss"].item() + expected.item(), rel=1e-5
    )
