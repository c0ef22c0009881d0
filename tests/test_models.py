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
            if node.level:  # stpdist's own pure-torch pieces
                assert node.module in (
                    None,
                    "forecaster",
                    "convlstm",
                    "data.transforms",
                    "module",
                ) or node.module.startswith("."), node.module
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


@pytest.mark.parametrize("name", available())
@pytest.mark.parametrize(
    "channels, height, width, t_in, t_out, patch", [(1, 16, 24, 3, 2, 1), (2, 16, 16, 2, 4, 4)]
)
def test_forecaster_shapes_and_gradients(name, channels, height, width, t_in, t_out, patch):
    torch.manual_seed(0)
    model = Forecaster(
        name,
        (channels, height, width),
        t_in,
        t_out,
        patch_size=patch,
        backbone_args={"hidden_channels": [4, 4], "kernel_size": 3},
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
    model = Forecaster(
        name, (1, 8, 8), 3, 2, backbone_args={"hidden_channels": [8], "kernel_size": 3}, lr=1e-2
    )
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


def test_unknown_backbone_names_available():
    with pytest.raises(KeyError, match="available: convlstm"):
        build_backbone("nope", 1, 8, 8)


def test_frame_size_not_divisible_by_patch_is_clear():
    with pytest.raises(ValueError, match="30×30 is not divisible by patch_size 4"):
        Forecaster("convlstm", (1, 30, 30), 2, 2, patch_size=4)
