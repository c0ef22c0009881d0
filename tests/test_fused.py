"""Fused gate arithmetic (issue 22): ConvLSTM, the PredRNN family, MIM, MAU, PhyDNet, TrajGRU.

With `model.fused_kernels` off, the cells run exactly the ops they ran before the regions
were marked (bitwise equal to the commit before, `BEFORE`); on, each region runs as one
compiled custom op forward and one backward: the same outputs and gradients to float
rounding (≤1e-6 relative) with at most half the kernel-launching ops per training step.

The bodies compile with `aot_eager` as in the whole suite (tests/conftest.py): the same
custom ops, traced, without code generation. The test of fused on against off also runs
them as inductor's generated kernels with STPDIST_TEST_INDUCTOR=1 (minutes of C++ compiles
on a CPU), and as Triton kernels on a GPU (GPU-marked)."""

from __future__ import annotations

import contextlib
import importlib
import unittest.mock

import pytest
import torch
from helpers import INDUCTOR_OPT_IN, model_file_at
from torch import nn

from stpdist.bench import NO_KERNEL_OPS, count_step_ops
from stpdist.models.base import FrameSpec
from stpdist.models.fused import BACKEND_ENV, fusion

BEFORE = "0e38f79"  # the last commit before the gate arithmetic moved into fused regions

SPEC = FrameSpec(channels=2, height=8, width=8, num_input_frames=3, num_output_frames=2)

# two channels per GroupNorm group (one would make the conv biases' gradients exactly 0)
PHYDNET = {
    "encoder_channels": 32,
    "phycell_hidden_channels": 9,
    "phycell_kernel_size": 3,
    "convlstm_hidden_channels": [64],
    "downsample": 2,
}

CASES = {
    "convlstm-stpdist": ("convlstm", "ConvLSTM", {"hidden_channels": [4, 4], "kernel_size": 3}),
    "convlstm-openstl": (
        "convlstm",
        "ConvLSTM",
        {"variant": "openstl", "hidden_channels": [4, 4], "kernel_size": 3},
    ),
    "convlstm-shi": (
        "convlstm",
        "ConvLSTM",
        {"variant": "shi", "hidden_channels": [4, 4], "kernel_size": 3},
    ),
    "predrnn": ("predrnn", "PredRNN", {"hidden_channels": [4, 4], "kernel_size": 3}),
    "predrnnv2": ("predrnn", "PredRNNv2", {"hidden_channels": [4, 4], "kernel_size": 3}),
    "predrnnpp": ("predrnn", "PredRNNpp", {"hidden_channels": [4, 4], "kernel_size": 3}),
    "mim-paper": ("mim", "MIM", {"hidden_channels": [4, 4, 4], "kernel_size": 3}),
    "mim-openstl": (
        "mim",
        "MIM",
        {"variant": "openstl", "hidden_channels": [4, 4, 4], "kernel_size": 3},
    ),
    # float64 for MAU and PhyDNet: their gradients are ill-conditioned in float32 (a conv
    # bias before a LayerNorm or GroupNorm gets the small difference of large terms; the
    # op-by-op float32 gradients are themselves 1–3e-6 from float64 at these shapes), so
    # rounding alone would exceed 1e-6; in float64 the check still tells a changed
    # computation from rounding
    "mau": (
        "mau",
        "MAU",
        {"hidden_channels": [4, 4], "kernel_size": 3, "downsample": 2, "attention_window": 2},
        torch.float64,
    ),
    "phydnet-paper": (
        "phydnet",
        "PhyDNet",
        {**PHYDNET, "convlstm_hidden_channels": [8, 64]},
        torch.float64,
    ),
    "phydnet-openstl": ("phydnet", "PhyDNet", {**PHYDNET, "variant": "openstl"}, torch.float64),
    "trajgru": (
        "trajgru",
        "TrajGRU",
        {"conv_channels": [4, 4], "hidden_channels": [4, 4], "links": [8, 8]},
    ),
    # no fused regions: batched over time only (the frame loop's encode / decode)
    "e3dlstm": ("e3dlstm", "E3DLSTM", {"hidden_channels": [4, 4], "kernel_size": 3}),
    "swinlstm": (
        "swinlstm",
        "SwinLSTM",
        {
            "patch_size": 1,
            "embed_dim": 8,
            "depths_down": [1, 1],
            "depths_up": [1, 1],
            "num_heads": [2, 2],
            "window_size": 2,
            "drop_path_rate": 0.0,
        },
    ),
}


class _Step(nn.Module):
    """One training step of a backbone with its regions fused or not."""

    def __init__(self, backbone: nn.Module, fused: bool) -> None:
        super().__init__()
        self.backbone, self.fused = backbone, fused

    def training_step(self, frames: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.backbone_loss(frames, targets)

    def backbone_loss(self, frames: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with fusion(self.fused):
            out = self.backbone(frames, SPEC.num_output_frames, targets_BTCHW=targets)
        predictions = getattr(out, "predictions", out)
        loss = (predictions - targets).square().mean()
        for aux in getattr(out, "aux_losses", {}).values():
            loss = loss + aux
        return loss


def _case(case: str) -> tuple[str, str, dict, torch.dtype]:
    """(model file, class, arguments, dtype: float32 unless the case names one)."""
    file, cls, args, *dtype = CASES[case]
    return file, cls, args, dtype[0] if dtype else torch.float32


def _build(file: str, cls: str, args: dict, dtype: torch.dtype) -> nn.Module:
    model_class = getattr(importlib.import_module(f"stpdist.models.{file}"), cls)
    return model_class(SPEC, model_class.Args(**args)).to(dtype)


def _batch(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    frames = torch.rand(2, 3, 2, 8, 8, generator=g)
    targets = torch.rand(2, 2, 2, 8, 8, generator=g)
    return frames.to(dtype), targets.to(dtype)


def _gradients(step: _Step, batch: tuple) -> tuple[torch.Tensor, dict]:
    step.zero_grad(set_to_none=True)
    loss = step.backbone_loss(*batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in step.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_off_is_bitwise_the_code_before(case):
    file, cls, args, dtype = _case(case)
    old = model_file_at(BEFORE, file)
    torch.manual_seed(0)
    reference = getattr(old, cls)(SPEC, getattr(old, cls).Args(**args)).to(dtype)
    model = _build(file, cls, args, dtype)
    model.load_state_dict(reference.state_dict())
    batch = _batch(dtype)
    loss_old, grads_old = _gradients(_Step(reference, fused=False), batch)
    loss_new, grads_new = _gradients(_Step(model, fused=False), batch)
    assert torch.equal(loss_old, loss_new)
    assert grads_old.keys() == grads_new.keys()
    for name, grad in grads_old.items():
        assert torch.equal(grad, grads_new[name]), name


# Fused on, each region compiles (seconds on a CPU): variants whose regions another case
# already runs are left out here (convlstm-shi runs convlstm-stpdist's `_peephole_gates`,
# mim-paper mim-openstl's three regions); their fused-off path is tested above.
ON_CASES = sorted(set(CASES) - {"convlstm-shi", "mim-paper", "e3dlstm", "swinlstm"})


# Each case with the bodies compiled by aot_eager (the custom ops, their autograd and the
# recomputing backward, without code generation), and, with STPDIST_TEST_INDUCTOR=1, by
# inductor, the generated C++ kernel (a cold compile is seconds per kernel here: 15 s for
# ConvLSTM's region, ~150 s for every case). On a CPU the fused regions are off by default
# (`model.fused_kernels: auto`); the GPU's generated kernels, Triton's, are the GPU-marked
# test below.
ON_BACKENDS = [(case, "aot_eager") for case in ON_CASES] + [
    pytest.param(case, "inductor", marks=INDUCTOR_OPT_IN) for case in ON_CASES
]


@pytest.mark.parametrize(("case", "backend"), ON_BACKENDS)
def test_fused_on_same_results_with_at_most_half_the_kernel_launches(case, backend, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, backend)
    file, cls, args, dtype = _case(case)
    torch.manual_seed(0)
    backbone = _build(file, cls, args, dtype)
    batch = _batch(dtype)
    loss_off, grads_off = _gradients(_Step(backbone, fused=False), batch)
    loss_on, grads_on = _gradients(_Step(backbone, fused=True), batch)
    assert _relative(loss_on, loss_off) <= 1e-6
    assert grads_on.keys() == grads_off.keys()
    for name, grad in grads_off.items():
        assert _relative(grads_on[name], grad) <= 1e-6, name
    counts = {}
    for fused in (False, True):
        step = _Step(backbone, fused)
        # fused Adam (one op): the CPU default, a loop over the parameters, would add ~9 ops
        # per parameter to both counts, which at these few steps hides the backbone's
        optimizer = torch.optim.Adam(step.parameters(), lr=0.0, fused=True)
        _, launching, per_op = count_step_ops(step, batch, optimizer)
        counts[fused] = launching, per_op
    assert counts[True][0] * 2 <= counts[False][0], counts
    # the fused ops are there, once forward and once backward per region call
    fused_ops = {n: k for n, k in counts[True][1].items() if n.startswith(file)}
    assert fused_ops and all(n not in NO_KERNEL_OPS for n in fused_ops)
    forward = {n: k for n, k in fused_ops.items() if not n.endswith("_backward")}
    for name, calls in forward.items():
        assert fused_ops[name + "_backward"] == calls, fused_ops


@pytest.mark.gpu
@pytest.mark.parametrize("case", ON_CASES)
def test_fused_regions_run_as_triton_kernels_on_cuda(case, monkeypatch):
    """On a GPU, inductor compiles each region to Triton: no region falls back to the
    op-by-op arithmetic, and the loss and gradients match the unfused ops on the same device
    (cuDNN deterministic, TF32 off) to ≤1e-5 relative."""
    from stpdist.models import fused

    monkeypatch.setenv(BACKEND_ENV, "inductor")
    file, cls, args, dtype = _case(case)
    torch.manual_seed(0)
    backbone = _build(file, cls, args, dtype).cuda()
    batch = tuple(t.cuda() for t in _batch(dtype))
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        with torch.backends.cudnn.flags(enabled=True, deterministic=True, allow_tf32=False):
            loss_off, grads_off = _gradients(_Step(backbone, fused=False), batch)
            loss_on, grads_on = _gradients(_Step(backbone, fused=True), batch)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    assert not fused._BROKEN, f"regions ran unfused after a compile failure: {fused._BROKEN}"
    assert _relative(loss_on, loss_off) <= 1e-5
    assert grads_on.keys() == grads_off.keys()
    for name, grad in grads_off.items():
        assert _relative(grads_on[name], grad) <= 1e-5, name


# every backbone whose step is split into encode / advance / decode (FrameRecurrent)
SPLIT_CASES = sorted(set(ON_CASES) - {"trajgru"} | {"e3dlstm", "swinlstm"})


@pytest.mark.parametrize("case", SPLIT_CASES)
def test_fused_frame_loop_batches_over_time_with_the_same_results(case):
    """With fused kernels on, the frame loop encodes the frames known before it in one call
    and decodes the predictions no step reads in one call after it: for each kind of teacher
    mask (none, over the outputs, over every step), with every next-frame prediction
    returned or the outputs only, and under activation checkpointing (which keeps the
    step-by-step loop), the same predictions, loss and gradients as the step-by-step loop
    with fused kernels off (float32: ≤1e-6 relative; float64 cases: ≤1e-10)."""
    file, cls, args, dtype = _case(case)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-10
    torch.manual_seed(0)
    model = _build(file, cls, args, dtype)
    frames, targets = _batch(dtype)  # B = 2, T_in = 3, T_out = 2: 4 steps
    calls: dict[str, list[int]] = {}

    def recorded(part: str):
        method = getattr(model, part)

        def call(value):
            first = value if isinstance(value, torch.Tensor) else value[0]
            calls[part].append(first.shape[0])  # frames (or steps' samples) in this call
            return method(value)

        return call

    for part in ("encode", "decode"):
        setattr(model, part, recorded(part))
    every = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])  # B×(T_in + T_out − 2)
    # kind → (mask, every prediction returned, encode calls' frames, decode calls' frames)
    # with fused kernels on; off, each step encodes and decodes its own 2 frames
    kinds = {
        # the 3 inputs in one call, then the fed-back prediction; step 2's prediction
        # decoded at its step (step 3 reads it), steps 0, 1 and 3 in one call after the loop
        "none": (None, True, [6, 2], [2, 6]),
        "outputs": (torch.tensor([[1.0], [0.0]]), True, [6, 2], [2, 6]),
        # every step after the first reads the step before: only the last deferred
        "every step": (every, True, [2, 2, 2, 2], [2, 2, 2, 2]),
        # only the T_out outputs returned: steps 0 and 1 never decoded
        "outputs only": (None, False, [6, 2], [2, 2]),
        # activation checkpointing: the step-by-step loop, fused or not (each step run
        # again in the backward)
        "checkpointed": (every, True, [2] * 8, [2] * 8),
    }
    for kind, (mask, all_frames, encoded, decoded) in kinds.items():
        model.checkpoint_steps = kind == "checkpointed"
        results = {}
        for fused in (False, True):
            model.zero_grad(set_to_none=True)
            calls.update(encode=[], decode=[])
            with fusion(fused):
                out = model(
                    frames,
                    SPEC.num_output_frames,
                    targets_BTCHW=targets,
                    teacher_mask_BT=None if mask is None else mask.to(dtype),
                    all_frames=all_frames,
                )
            predictions = getattr(out, "predictions", out)
            truth = torch.cat([frames[:, 1:], targets], dim=1)[:, 0 if all_frames else 2 :]
            loss = (predictions - truth).square().mean()
            for aux in getattr(out, "aux_losses", {}).values():
                loss = loss + aux
            loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results[fused] = predictions.detach(), loss.detach(), grads
            expected = (encoded, decoded) if fused or kind == "checkpointed" else ([2] * 4,) * 2
            assert (calls["encode"], calls["decode"]) == expected, (kind, fused, calls)
        (predictions_off, loss_off, grads_off), (predictions_on, loss_on, grads_on) = (
            results[False],
            results[True],
        )
        assert predictions_on.shape == (2, 4 if all_frames else 2, 2, 8, 8), kind
        assert _relative(predictions_on, predictions_off) <= tolerance, kind
        assert _relative(loss_on, loss_off) <= tolerance, kind
        assert grads_on.keys() == grads_off.keys()
        for name, grad in grads_off.items():
            assert _relative(grads_on[name], grad) <= tolerance, (kind, name)


def test_a_backend_that_does_not_exist_is_an_error_naming_the_setting(monkeypatch):
    """A misspelt STPDIST_FUSED_BACKEND is refused as a setting; it does not pass for a
    compiler failure, which would turn fusion off for the rest of the process."""
    from stpdist.models import fused

    monkeypatch.setenv(BACKEND_ENV, "inductr")
    file, cls, args, dtype = _case("convlstm-stpdist")
    step = _Step(_build(file, cls, args, dtype), fused=True)
    with pytest.raises(ValueError, match=r"STPDIST_FUSED_BACKEND=inductr is not a torch.compile"):
        step.backbone_loss(*_batch(dtype))
    assert not fused._BROKEN


def _gates(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A small region like a cell's: two outputs, one of which a caller may leave unused."""
    c = torch.sigmoid(x) * c + torch.tanh(x)
    return torch.sigmoid(x) * torch.tanh(c), c


def test_many_dtypes_shapes_and_gradient_offsets_compile_once_each_and_stay_fused(
    monkeypatch,
):
    """A long process meets a region under many signatures: fp32, bf16 and fp64 (the
    gpu_check's sections; autocast), batch sizes (a last partial batch), an unused output
    (its gradient None), and gradients that are slices of one tensor over time (each at
    its own storage offset). Each signature compiles once, an offset alone compiles
    nothing, and fusion never runs out of dynamo's recompile limit (8). On a GPU the one
    shared body did: the 9th variant turned fusion off for the rest of the process."""
    from torch._dynamo.utils import counters

    from stpdist.models import fused

    monkeypatch.setattr(fused, "_BROKEN", [])
    region = fused.pointwise(_gates)
    calls = 0

    def step(batch: int, dtype: torch.dtype, unused: int | None, offsets: int) -> None:
        nonlocal calls
        g = torch.Generator().manual_seed(calls)
        x = torch.rand(batch, 3, 4, 4, generator=g, dtype=dtype, requires_grad=True)
        c = torch.rand(batch, 3, 4, 4, generator=g, dtype=dtype, requires_grad=True)
        # the gradients of `offsets` time steps: slices of one tensor, each at its offset
        over_time = torch.rand(offsets, 2, batch, 3, 4, 4, generator=g, dtype=dtype)
        for t in range(offsets):
            calls += 1
            results = {}
            for on in (False, True):
                x.grad = c.grad = None
                with fusion(on):
                    outputs = region(x, c)
                used = [i for i in (0, 1) if i != unused]
                torch.autograd.backward([outputs[i] for i in used], [over_time[t, i] for i in used])
                results[on] = [o.detach() for o in outputs] + [x.grad, c.grad]
            for a, b in zip(results[True], results[False]):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)

    counters.clear()
    step(2, torch.float32, None, offsets=3)
    graphs_one_signature = counters["stats"]["unique_graphs"]
    assert graphs_one_signature == 2  # forward and backward, whatever the offset
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for unused in (None, 0, 1):
            step(3, dtype, unused, offsets=2)
    step(2, torch.float32, None, offsets=2)  # seen before: nothing compiles
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step(2, torch.float32, None, offsets=1)
    assert not fused._BROKEN, fused._BROKEN
    # the first signature, 3 dtypes × 3 gradient patterns at batch 3 (the forwards shared
    # per dtype), and autocast: one compile each
    assert counters["stats"]["unique_graphs"] == 2 + (3 + 9) + 2


# Under autocast a region's outputs that only convolutions read come out in the
# convolutions' dtype (`pointwise(conv_outputs=…, conv_copies=…)`, `conv_cat`): fewer cast
# kernels forward and backward, the convolutions reading the same values
BEFORE_CONV_DTYPE = "7e1b7ee"  # the last commit before those outputs took autocast's dtype
# the changed regions, few cases (seconds of compiling each): ConvLSTM's peephole cell and
# [x, h] cat (shi), its OpenSTL cell, the Causal LSTM's c copy and [c, m] cat, ST-LSTM's
# memories with the MIM block and MIM-N (MIM's first layer is an ST-LSTM), MAU, PhyCell and
# PhyDNet's ConvLSTM; PredRNN and PredRNN.V2 share ST-LSTM's region
LOWERED = ["convlstm-shi", "convlstm-openstl", "predrnnpp", "mim-paper", "mau", "phydnet-openstl"]


def _casts_and_launches(step: _Step, batch: tuple) -> tuple[int, int]:
    optimizer = torch.optim.Adam(step.parameters(), lr=0.0, fused=True)
    with torch.autocast("cpu", torch.bfloat16):
        _, launching, per_op = count_step_ops(step, batch, optimizer)
    return per_op["_to_copy"], launching


@contextlib.contextmanager
def _bodies_op_by_op():
    """Fused regions still run as their custom ops (one op each, forward and backward, to an
    op counter), each body as the op-by-op region instead of a compiled one: an op counter
    sees the same ops either way (the body runs without modes, `_Region._run`), and the
    code before's regions (the reference count) need no compile, seconds a region here."""
    from stpdist.models import fused

    def op_by_op(region, which, backend, args):
        return region._call if which == "forward" else region._vjp

    with unittest.mock.patch.object(fused._Region, "_compiled", op_by_op):
        yield


@pytest.mark.parametrize("case", LOWERED)
def test_under_autocast_outputs_read_by_convolutions_cost_fewer_casts(case):
    """In bf16 autocast: the loss is bitwise the code before's, fused regions off and on
    (the convolutions read the same values); the gradients differ by bf16 rounding only
    (readers' gradients summed in bf16): as close to float32's as the code before's were,
    within a quarter; and a fused step dispatches at most 70% of the casts it did (at these
    few steps the weights' casts, once a forward, weigh more than at a recipe's)."""
    file, cls, args, _ = _case(case)
    old = model_file_at(BEFORE_CONV_DTYPE, file)
    torch.manual_seed(0)
    reference = getattr(old, cls)(SPEC, getattr(old, cls).Args(**args))
    model = _build(file, cls, args, torch.float32)
    model.load_state_dict(reference.state_dict())
    batch = _batch(torch.float32)
    _, grads_fp32 = _gradients(_Step(reference, fused=False), batch)
    with torch.autocast("cpu", torch.bfloat16):
        loss_old, grads_old = _gradients(_Step(reference, fused=False), batch)
        loss_new, grads_new = _gradients(_Step(model, fused=False), batch)
        loss_fused, _ = _gradients(_Step(model, fused=True), batch)
    assert torch.equal(loss_old, loss_new) and torch.equal(loss_old, loss_fused)
    for name, grad in grads_old.items():
        bf16_error = _relative(grad, grads_fp32[name])
        assert _relative(grads_new[name], grads_fp32[name]) <= 1.25 * bf16_error + 1e-6, name
    with _bodies_op_by_op():
        casts_old, _ = _casts_and_launches(_Step(reference, True), batch)
    casts_new, _ = _casts_and_launches(_Step(model, True), batch)
    assert casts_new <= 0.7 * casts_old, (casts_new, casts_old)


def test_a_float64_model_under_autocast_keeps_its_convolutions_in_float64():
    """Autocast leaves float64 convolutions in float64: a float64 model run under it (as
    `stpdist.load(dtype=torch.float64)` then the user's own autocast) gets no bf16 input
    for a float64 weight from the lowered outputs, copies or initial states."""
    for case in ("convlstm-openstl", "predrnnpp", "phydnet-openstl"):
        file, cls, args, _ = _case(case)
        model = _build(file, cls, args, torch.float64)
        frames, targets = _batch(torch.float64)
        with torch.autocast("cpu", torch.bfloat16), fusion(True):
            out = model(frames, SPEC.num_output_frames, targets_BTCHW=targets)
        assert getattr(out, "predictions", out).dtype == torch.float64, case
