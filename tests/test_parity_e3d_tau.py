"""OpenSTL's forms of E3D-LSTM (`variant: openstl`) and of TAU's divergence term
(`model.divergence_form: openstl`), next to the paper's / per-channel forms they sit beside.

Legend: B batch, T time, C channels, H×W frame size (after patching).

The references here are written in the test, from what OpenSTL's code does (commit c74deb5:
openstl/models/e3dlstm_model.py, openstl/modules/e3dlstm_modules.py, openstl/methods/tau.py),
in plain float64 tensor operations, and read weights under OpenSTL's state-dict keys:
they also pin the key correspondence documented in stpdist/models/e3dlstm.py.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stpdist.config import ModelConfig, load_config
from stpdist.models.base import FrameSpec
from stpdist.models.e3dlstm import E3DLSTM
from stpdist.models.simvp import differential_divergence

ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------ E3D-LSTM, openstl

# OpenSTL key suffix (per cell) → stpdist's (the docstring of stpdist/models/e3dlstm.py)
CELL_KEYS = {
    "conv_x.0.conv3d.weight": "conv_x.weight",
    "conv_h.0.conv3d.weight": "conv_h.weight",
    "conv_gm.0.conv3d.weight": "conv_m.weight",
    "conv_new_cell.0.conv3d.weight": "conv_c_out.weight",
    "conv_new_gm.0.conv3d.weight": "conv_m_out.weight",
    "conv_last.conv3d.weight": "conv_last.weight",
    "_norm_c_t.weight": "norm_c.weight",
    "_norm_c_t.bias": "norm_c.bias",
}


def openstl_weights(cin: int, hidden: int, layers: int, size: int, seed: int) -> dict:
    """Random weights under OpenSTL's keys and shapes (kernel 2×5×5, window 2)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {}
    for i in range(layers):
        c = cin if i == 0 else hidden
        for key, (cout, cinp, k) in {
            "conv_x.0.conv3d.weight": (7 * hidden, c, (2, 5, 5)),
            "conv_h.0.conv3d.weight": (4 * hidden, hidden, (2, 5, 5)),
            "conv_gm.0.conv3d.weight": (4 * hidden, hidden, (2, 5, 5)),
            "conv_new_cell.0.conv3d.weight": (hidden, hidden, (2, 5, 5)),
            "conv_new_gm.0.conv3d.weight": (hidden, hidden, (2, 5, 5)),
            "conv_last.conv3d.weight": (hidden, 2 * hidden, (1, 1, 1)),
        }.items():
            shapes[f"cell_list.{i}.{key}"] = (cout, cinp, *k)
        shapes[f"cell_list.{i}._norm_c_t.weight"] = (hidden, 2, size, size)
        shapes[f"cell_list.{i}._norm_c_t.bias"] = (hidden, 2, size, size)
    shapes["conv_last.weight"] = (cin, hidden, 2, 1, 1)
    scale = {4: 1.0, 5: 0.3}
    return {
        k: torch.randn(s, generator=g, dtype=torch.float64) * scale.get(len(s), 0.2)
        for k, s in shapes.items()
    }


def to_stpdist(weights: dict) -> dict:
    mapped = {}
    for key, value in weights.items():
        if key == "conv_last.weight":
            mapped["output.weight"] = value
            continue
        _, i, suffix = key.split(".", 2)
        mapped[f"cells.{i}.{CELL_KEYS[suffix]}"] = value
    return mapped


def _repeat_to(y: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Nearest-neighbour resize of the last three dimensions of y to `shape`."""
    for dim, n in zip((2, 3, 4), shape):
        index = torch.arange(n) * y.shape[dim] // n
        y = y.index_select(dim, index)
    return y


def openstl_e3d(
    weights: dict, frames_BTCHW: torch.Tensor, mask_BT: torch.Tensor, t_in: int, stride: int
) -> torch.Tensor:
    """OpenSTL's E3DLSTM_Model forward (no layer_norm, forward scheduled sampling): all
    T−1 next-frame predictions."""
    layers = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("cell_list"))
    hidden = weights["conv_last.weight"].shape[1]
    b, t_all, _, height, width = frames_BTCHW.shape

    def conv(x, w):  # unpadded in time, `stride` everywhere, repeated back to x's size
        y = F.conv3d(x, w, stride=stride, padding=(0, w.shape[3] // 2, w.shape[4] // 2))
        return _repeat_to(y, x.shape[2:])

    def attend(query, history):  # memory-order rows of h, unscaled
        q = query.reshape(b, -1, hidden)
        kv = torch.cat(history, dim=1).reshape(b, -1, hidden)
        return (torch.softmax(q @ kv.transpose(1, 2), dim=2) @ kv).reshape(query.shape)

    zeros = frames_BTCHW.new_zeros(b, hidden, 2, height, width)
    h, c, history = [zeros] * layers, [zeros] * layers, [[] for _ in range(layers)]
    memory, previous, outputs = zeros, torch.zeros_like(frames_BTCHW[:, 0]), []
    for t in range(t_all - 1):
        frame = frames_BTCHW[:, t]
        if t >= t_in:
            keep = mask_BT[:, t - t_in].view(b, 1, 1, 1)
            frame = keep * frame + (1 - keep) * outputs[-1]
        x = torch.stack([previous, frame], dim=2)
        previous = frame
        for i in range(layers):
            w = {
                k.split(".", 2)[2]: v for k, v in weights.items() if k.startswith(f"cell_list.{i}.")
            }
            history[i].append(c[i])
            i_x, g_x, r_x, o_x, ti_x, tg_x, tf_x = conv(x, w["conv_x.0.conv3d.weight"]).split(
                hidden, 1
            )
            i_h, g_h, r_h, o_h = conv(h[i], w["conv_h.0.conv3d.weight"]).split(hidden, 1)
            recalled = c[i] + attend(torch.sigmoid(r_x + r_h), history[i])
            norm = F.layer_norm(
                recalled, recalled.shape[1:], w["_norm_c_t.weight"], w["_norm_c_t.bias"]
            )
            cell = norm + torch.sigmoid(i_x + i_h) * torch.tanh(g_x + g_h)
            i_m, f_m, g_m, m_m = conv(memory, w["conv_gm.0.conv3d.weight"]).split(hidden, 1)
            new_memory = torch.sigmoid(tf_x + f_m + 1.0) * torch.tanh(m_m) + torch.sigmoid(
                ti_x + i_m
            ) * torch.tanh(tg_x + g_m)
            gate = torch.tanh(
                o_x
                + o_h
                + conv(cell, w["conv_new_cell.0.conv3d.weight"])
                + conv(new_memory, w["conv_new_gm.0.conv3d.weight"])
            )
            mixed = F.conv3d(torch.cat([cell, new_memory], 1), w["conv_last.conv3d.weight"])
            h[i], c[i] = torch.tanh(mixed) * torch.sigmoid(gate), cell
            x = h[i]  # `memory` is not updated: OpenSTL's cell returns the one it was given
        outputs.append(F.conv3d(h[-1], weights["conv_last.weight"], stride=(2, 1, 1)).squeeze(2))
    return torch.stack(outputs, dim=1)


@pytest.mark.parametrize("stride", [1, 2])
def test_e3dlstm_openstl_variant_is_openstls_forward(stride):
    """Weights under OpenSTL's keys, mapped; 3 layers, 2 → 3 frames of 4×8×8, a mixed
    scheduled-sampling mask. The paper variant, given the same clip, is not this network
    (its parameters do not even have these shapes)."""
    t_in, t_out, cin, size, hidden, layers = 2, 3, 4, 8, 4, 3
    weights = openstl_weights(cin, hidden, layers, size, seed=stride)
    spec = FrameSpec(cin, size, size, t_in, t_out)
    args = E3DLSTM.Args(hidden_channels=[hidden] * layers, variant="openstl", stride=stride)
    model = E3DLSTM(spec, args).double()
    model.load_state_dict(to_stpdist(weights))  # strict: every key, every shape
    g = torch.Generator().manual_seed(7)
    frames = torch.rand(3, t_in + t_out, cin, size, size, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    expected = openstl_e3d(weights, frames, mask, t_in, stride)
    with torch.no_grad():
        got = model(
            frames[:, :t_in],
            t_out,
            targets_BTCHW=frames[:, t_in:],
            teacher_mask_BT=mask,
            all_frames=True,
        )
    assert got.shape == expected.shape == (3, t_in + t_out - 1, cin, size, size)
    assert expected.abs().mean() > 0.05  # not a degenerate comparison
    assert (got - expected).abs().max().item() <= 1e-12
    paper = E3DLSTM(spec, E3DLSTM.Args(hidden_channels=[hidden] * layers))
    assert paper.state_dict()["cells.0.conv_m.weight"].shape[0] == 3 * hidden


def test_e3dlstm_openstl_memory_stays_zero_and_only_feeds_the_output():
    """OpenSTL's cell hands back the memory it was given: M between layers and steps stays
    zero (the paper variant's M does not)."""
    torch.manual_seed(0)
    spec = FrameSpec(2, 6, 6, 2, 2)
    frames = torch.rand(2, 2, 2, 6, 6)
    for variant, stays_zero in [("openstl", True), ("paper", False)]:
        model = E3DLSTM(spec, E3DLSTM.Args(hidden_channels=[4, 4], kernel_size=3, variant=variant))
        state = model.init_state(frames)
        with torch.no_grad():
            for t in range(2):
                _, state = model.step(frames[:, t], state)
        assert (state["m"].abs().max().item() == 0.0) is stays_zero, variant


def test_e3dlstm_paper_variant_is_the_model_as_before():
    """The default (`paper`) forward at a fixed seed, recorded from the code before the
    `openstl` variant existed (float64, one thread): state-dict key hash, Σ|ŷ|, Σ ŷ·ramp."""
    torch.manual_seed(0)
    spec = FrameSpec(3, 6, 6, 4, 3)
    model = E3DLSTM(spec, E3DLSTM.Args(hidden_channels=[4, 4], kernel_size=3, recall_window=3))
    model = model.double()
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(2, 4, 3, 6, 6, generator=g, dtype=torch.float64)
    targets = torch.rand(2, 3, 3, 6, 6, generator=g, dtype=torch.float64)
    mask = (torch.rand(2, 2, generator=g) < 0.5).double()
    with torch.no_grad():
        out = model(frames, 3, targets_BTCHW=targets, teacher_mask_BT=mask, all_frames=True)
    ramp = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)
    keys = hashlib.sha256(" ".join(model.state_dict()).encode()).hexdigest()[:12]
    assert keys == "12513940dd32"
    assert out.abs().sum().item() == pytest.approx(84.77274598317034, rel=1e-12)
    assert (out * ramp).sum().item() == pytest.approx(-14.544154179315703, rel=1e-10)


def test_e3dlstm_stride_needs_the_openstl_variant():
    spec = FrameSpec(2, 8, 8, 2, 2)
    with pytest.raises(ValueError, match="stride 2"):
        E3DLSTM(spec, E3DLSTM.Args(hidden_channels=[4], stride=2))
    with pytest.raises(ValueError, match="variant"):
        E3DLSTM(spec, E3DLSTM.Args(hidden_channels=[4], variant="tf"))


# Per recipe: frame shape; the parameters of OpenSTL's own module at its settings (counted
# by building OpenSTL's E3DLSTM_Model); the reference they must be within 0.5% of (its
# table, whose Moving MNIST "51.0M" is below that module's 51.35M: the figure is
# used there); its table's "FLOPs" (fvcore MACs), to be within 2% of.
RECIPES = {
    "mmnist": ((1, 64, 64), 51_347_456, 51.35e6, 298.9),
    "kth": ((1, 128, 128), 53_510_144, 53.5e6, 217.0),
    "taxibj": ((2, 32, 32), 50_987_008, 50.99e6, 98.19),
}


@pytest.mark.parametrize("dataset", sorted(RECIPES))
def test_e3dlstm_recipes_are_openstls_model_and_loss_at_its_counts(dataset):
    """The recipe's model, built as `stpdist bench model --config` builds it (bench_module)
    but on the meta device, counted with the same FlopCounterMode: parameters equal to
    OpenSTL's module (within 0.5% of its table), MACs within 2% of its table."""
    from torch.utils.flop_counter import FlopCounterMode

    from stpdist.bench import bench_module

    cfg = load_config(ROOT / "configs" / dataset / "e3dlstm.yaml")
    assert cfg.model.backbone["variant"] == "openstl"
    assert (cfg.model.loss, cfg.model.loss_frames) == ("mse+l1", "all")
    frame, openstl_params, reference_params, table_gmacs = RECIPES[dataset]
    t_in, t_out = cfg.data.num_input_frames, cfg.data.num_output_frames
    with torch.device("meta"):
        module = bench_module(cfg.model, (1, t_in, *frame), t_out, "meta")
        inputs = torch.empty(1, t_in, *frame)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            module(inputs)
    params = sum(p.numel() for p in module.parameters())
    gmacs = counter.get_total_flops() / 2 / 1e9
    assert params == openstl_params
    assert math.isclose(params, reference_params, rel_tol=0.005)
    assert math.isclose(gmacs, table_gmacs, rel_tol=0.02), gmacs


def test_mse_plus_l1_over_all_frames_is_openstls_e3dlstm_loss():
    """`loss: mse+l1` with `loss_frames: all`: MSE + L1 of every next-frame prediction
    against frames 1..T−1, OpenSTL's E3D-LSTM loss."""
    from stpdist.task import Forecaster

    torch.manual_seed(0)
    backbone = {"hidden_channels": [4], "kernel_size": 3, "variant": "openstl"}
    config = ModelConfig(name="e3dlstm", backbone=backbone, loss="mse+l1", loss_frames="all")
    module = Forecaster(config, (1, 8, 8), 3, 2)
    inputs, targets = torch.rand(2, 3, 1, 8, 8), torch.rand(2, 2, 1, 8, 8)
    loss = module.training_step(inputs, targets)
    with torch.no_grad():
        every = module(inputs, all_frames=True).predictions  # no sampling: teacher inputs
    truth = torch.cat([inputs[:, 1:], targets], dim=1)
    expected = ((every - truth) ** 2).mean() + (every - truth).abs().mean()
    assert every.shape[1] == 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# ------------------------------------------------------------- TAU's divergence term


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def divergence_openstl_numpy(pred: np.ndarray, target: np.ndarray, tau: float = 0.1) -> float:
    """OpenSTL's diff_div_reg: per sample and frame difference one softmax over C·H·W,
    terms p·log(p / (q + ε) + ε), their mean; 0 for T ≤ 2."""
    b, t = pred.shape[:2]
    if t <= 2:
        return 0.0
    eps, terms = 1e-12, []
    for i in range(b):
        for j in range(t - 1):
            p = _softmax((pred[i, j + 1] - pred[i, j]).ravel() / tau)
            q = _softmax((target[i, j + 1] - target[i, j]).ravel() / tau)
            terms.append(p * np.log(p / (q + eps) + eps))
    return float(np.mean(terms))


def divergence_per_channel_numpy(pred: np.ndarray, target: np.ndarray, tau: float = 0.1) -> float:
    """One softmax over H·W per sample, frame difference and channel; KL terms, mean."""
    b, t, c = pred.shape[:3]
    terms = []
    for i in range(b):
        for j in range(t - 1):
            for k in range(c):
                p = _softmax((pred[i, j + 1, k] - pred[i, j, k]).ravel() / tau)
                q = _softmax((target[i, j + 1, k] - target[i, j, k]).ravel() / tau)
                terms.append(p * np.log(p / q))
    return float(np.mean(terms)) if terms else 0.0


@pytest.mark.parametrize(
    "shape", [(2, 4, 1, 5, 6), (2, 4, 2, 5, 6), (3, 3, 3, 4, 4), (2, 2, 2, 5, 6)]
)
def test_divergence_forms_match_numpy(shape):
    rng = np.random.default_rng(sum(shape))
    pred, target = rng.random(shape), rng.random(shape)
    got = differential_divergence(torch.tensor(pred), torch.tensor(target), form="openstl")
    assert got.item() == pytest.approx(divergence_openstl_numpy(pred, target), rel=1e-12, abs=0)
    got = differential_divergence(torch.tensor(pred), torch.tensor(target), form="per_channel")
    assert got.item() == pytest.approx(divergence_per_channel_numpy(pred, target), rel=1e-10)


def test_divergence_forms_differ_where_openstl_says_they_do():
    """C > 1: the per-channel form is about C× OpenSTL's; T = 2: OpenSTL's is 0."""
    rng = np.random.default_rng(3)
    pred, target = (
        torch.tensor(rng.random((2, 4, 2, 16, 16))),
        torch.tensor(rng.random((2, 4, 2, 16, 16))),
    )
    openstl = differential_divergence(pred, target, form="openstl").item()
    per_channel = differential_divergence(pred, target, form="per_channel").item()
    assert 1.8 < per_channel / openstl < 2.2
    two = differential_divergence(pred[:, :2], target[:, :2], form="openstl")
    assert two.item() == 0.0
    assert differential_divergence(pred[:, :2], target[:, :2]).item() > 0
    with pytest.raises(ValueError, match="divergence form"):
        differential_divergence(pred, target, form="joint")


@pytest.mark.parametrize("form", ["openstl", "per_channel"])
def test_divergence_form_is_chosen_by_the_config(form):
    """`model.divergence_form` reaches the training loss: the logged term is α times the
    chosen form on the T_out outputs (2 channels, where the forms differ)."""
    from stpdist.task import Forecaster

    torch.manual_seed(0)
    backbone = {
        "spatial_channels": 4,
        "temporal_channels": 8,
        "num_spatial_blocks": 2,
        "num_translator_blocks": 2,
    }
    config = ModelConfig(name="tau", backbone=backbone, divergence_weight=0.1, divergence_form=form)
    module = Forecaster(config, (2, 8, 8), 3, 3)
    inputs, targets = torch.rand(2, 3, 2, 8, 8), torch.rand(2, 3, 2, 8, 8)
    torch.manual_seed(1)
    logged = module.training_step(inputs, targets)
    torch.manual_seed(1)
    outputs = module(inputs, clamp=False).predictions.detach().double().numpy()
    numpy_form = divergence_openstl_numpy if form == "openstl" else divergence_per_channel_numpy
    expected = 0.1 * numpy_form(outputs, targets.double().numpy())
    assert logged["divergence"].item() == pytest.approx(expected, rel=1e-4)


def test_tau_recipes_use_openstls_divergence():
    for dataset in ("mmnist", "kth", "taxibj"):
        model = load_config(ROOT / "configs" / dataset / "tau.yaml").model
        assert (model.divergence_weight, model.divergence_form) == (0.1, "openstl"), dataset


@pytest.mark.parametrize("variant", ["paper", "openstl"])
@pytest.mark.parametrize("recall_window", [None, 2])
def test_e3dlstm_recall_memory_estimate_counts_the_attention_it_computes(
    monkeypatch, variant, recall_window
):
    """The estimate behind the build-time warning (an unusual-shapes review: 48×80 frames
    ran a 24 GiB machine out of memory without a word) is the attention the recall gates
    compute: counted here from the calls of a training forward."""
    from stpdist.models.e3dlstm import E3DLSTMArgs, recall_bytes

    counted = []
    attend = F.scaled_dot_product_attention

    def counting(query, key, value, *args, **kwargs):
        counted.append(query.shape[0] * query.shape[-2] * key.shape[-2])
        return attend(query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    spec = FrameSpec(1, 4, 6, 3, 2)
    args = E3DLSTMArgs(hidden_channels=[4, 4], kernel_size=3, variant=variant,
                       recall_window=recall_window)  # fmt: skip
    model = E3DLSTM(spec, args)
    model(torch.rand(2, 3, 1, 4, 6), 2)  # a batch of 2: 3 inputs, 2 outputs, 4 steps
    assert sum(counted) == 2 * recall_bytes(spec, 2, recall_window, 2) // 4


def test_e3dlstm_at_full_resolution_warns_of_its_recall_memory(caplog):
    from stpdist.models.e3dlstm import E3DLSTMArgs

    args = E3DLSTMArgs(hidden_channels=[4, 4], kernel_size=3)
    E3DLSTM(FrameSpec(3, 12, 20, 12, 6), args)  # 0.28 GB a sample: nothing to say
    assert "recall attention" not in caplog.text
    E3DLSTM(FrameSpec(3, 24, 40, 12, 6), args)  # 4.5 GB estimated, 5.1 GB measured
    assert "E3D-LSTM: its recall attention keeps about 4.2 GiB a sample" in caplog.text
    assert "model.patch_size p divides it by p⁴" in caplog.text
