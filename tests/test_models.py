"""Backbones and the Forecaster: shapes, gradients, patching, import purity."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from stpdist.data.transforms import reshape_patch, reshape_patch_back
from stpdist.models import available, build_backbone
from stpdist.models.forecaster import Forecaster

MODEL_FILES = sorted((Path(__file__).parent.parent / "stpdist" / "models").glob("*.py"))


@pytest.mark.parametrize("path", MODEL_FILES, ids=[p.name for p in MODEL_FILES])
def test_model_files_import_torch_only(path):
    allowed = {"torch", "math", "typing", "collections", "dataclasses", "__future__"}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:  # a sibling model file
                continue
            if node.level == 2:  # stpdist's own pure-torch pieces only
                pure = ("module", "data.transforms", "metrics")
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
}


def test_every_registered_backbone_is_tested():
    assert sorted(SMALL) == available()


@pytest.mark.parametrize("name", available())
@pytest.mark.parametrize(
    "channels, height, width, t_in, t_out, patch", [(1, 16, 24, 3, 2, 1), (2, 16, 16, 2, 4, 4)]
)
def test_forecaster_shapes_and_gradients(name, channels, height, width, t_in, t_out, patch):
    torch.manual_seed(0)
    model = Forecaster(
        name, (channels, height, width), t_in, t_out, patch_size=patch, backbone_args=SMALL[name]
    )
    inputs = torch.rand(2, t_in, channels, height, width)
    targets = torch.rand(2, t_out, channels, height, width)
    pred = model(inputs)
    assert pred.shape == targets.shape and torch.isfinite(pred).all()
    model.training_step(inputs, targets).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", available())
def test_backbone_overfits_one_batch(name):
    torch.manual_seed(0)
    wider = {
        k: [2 * x for x in v]
        for k, v in SMALL[name].items()
        if k != "links" and isinstance(v, list)
    }
    model = Forecaster(name, (1, 8, 8), 3, 2, backbone_args={**SMALL[name], **wider}, lr=1e-2)
    inputs, targets = torch.rand(4, 3, 1, 8, 8), torch.rand(4, 2, 1, 8, 8)
    optimizer = model.configure_optimizer()
    first = None
    for _ in range(300):
        loss = model.training_step(inputs, targets)
        first = first if first is not None else loss.item()
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
    model = build_backbone(name, 16, 16, 16, hidden_channels=[128] * 4, kernel_size=5)
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
    model = Forecaster(
        name,
        (1, 8, 8),
        3,
        4,
        backbone_args=SMALL[name],
        scheduled_sampling="linear",
        sampling_stop_step=10,
    )
    inputs = torch.rand(2, 3, 1, 8, 8)
    mask = model.teacher_mask(inputs, 10)  # schedule over: no true output frames
    assert mask.shape == (2, 3) and mask.sum() == 0
    a = model(inputs, torch.rand(2, 4, 1, 8, 8), mask)
    b = model(inputs, torch.rand(2, 4, 1, 8, 8), mask)
    assert torch.equal(a, b)
    c = model(inputs, torch.rand(2, 4, 1, 8, 8), torch.ones_like(mask))  # teacher forcing on
    assert not torch.equal(a, c)


def test_linear_schedule_statistics():
    model = Forecaster(
        "convlstm", (1, 8, 8), 10, 10, backbone_args=SMALL["convlstm"], scheduled_sampling="linear"
    )
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

    model = Forecaster(
        "predrnnv2",
        (1, 8, 8),
        10,
        10,
        backbone_args=SMALL["predrnnv2"],
        scheduled_sampling="reverse",
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


def test_predrnnv2_adds_its_decoupling_loss():
    torch.manual_seed(0)
    model = Forecaster(
        "predrnnv2", (1, 8, 8), 3, 2, backbone_args=SMALL["predrnnv2"], aux_loss_weight=0.0
    )
    inputs, targets = torch.rand(2, 3, 1, 8, 8), torch.rand(2, 2, 1, 8, 8)
    plain = model.training_step(inputs, targets).item()
    aux = model.backbone.aux_loss.item()
    assert 0 < aux <= 1
    model.aux_loss_weight = 0.5
    assert model.training_step(inputs, targets).item() == pytest.approx(plain + 0.5 * aux)


def test_scheduled_sampling_refused_for_encoder_forecaster():
    with pytest.raises(ValueError, match="does not feed frames back"):
        Forecaster(
            "trajgru", (1, 8, 8), 3, 2, backbone_args=SMALL["trajgru"], scheduled_sampling="linear"
        )


def test_unknown_backbone_names_available():
    with pytest.raises(KeyError, match="available: convlstm"):
        build_backbone("nope", 1, 8, 8)


def test_frame_size_not_divisible_by_patch_is_clear():
    with pytest.raises(ValueError, match="30×30 is not divisible by patch_size 4"):
        Forecaster("convlstm", (1, 30, 30), 2, 2, patch_size=4)
