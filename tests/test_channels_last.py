"""`trainer.channels_last` and `stpdist.module.to_channels_last`: 2-D convolution weights
stored channels-last (cuDNN's native layout for bf16 tensor cores), on CPU: the same
training, states that stay channels-last, checkpoints that load anywhere, an exact resume.
Whether it pays is a GPU measurement (the GPU check's graphs rows)."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import forecaster
from test_fused import _batch, _build, _case, _gradients, _relative, _Step
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from stpdist import Trainer
from stpdist.checkpoint import load_weights
from stpdist.config import CheckpointConfig
from stpdist.models.fused import _dense
from stpdist.module import to_channels_last

CL = torch.channels_last


def _convlstm():
    torch.manual_seed(0)
    return forecaster(
        "convlstm", (1, 8, 8), 3, 3, backbone={"hidden_channels": [4, 4], "kernel_size": 3},
        sampling="linear",
    )  # fmt: skip


def test_every_2d_convolution_weight_is_converted_in_place_and_other_ranks_are_left():
    module = _convlstm()
    # torch's own conversion refuses the Forecaster's 5-D normaliser buffers
    with pytest.raises(RuntimeError, match="rank 4"):
        copy.deepcopy(module).to(memory_format=CL)
    before = {name: p for name, p in module.named_parameters()}
    values = {name: t.clone() for name, t in module.state_dict().items()}
    assert to_channels_last(module) is module
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=CL) for c in convs)
    # (a weight of one input channel, or a 1×1 kernel, is laid out the same either way)
    laid_out = [c.weight for c in convs if c.weight.shape[1] > 1 and c.weight.shape[2:] != (1, 1)]
    assert laid_out and not any(w.is_contiguous() for w in laid_out)
    assert dict(module.named_parameters()) == before  # the same Parameter objects
    state = module.state_dict()
    assert all(torch.equal(state[name], value) for name, value in values.items())
    assert all(b.dim() != 4 for b in module.buffers())  # the normaliser's are 5-D, as they were


RECURRENT = ["convlstm-stpdist", "predrnnpp", "predrnnv2", "mim-paper", "mau",
             "phydnet-openstl", "trajgru"]  # fmt: skip
STATES_STAY = {"convlstm-stpdist", "predrnnpp", "predrnnv2", "mim-paper"}


@pytest.mark.parametrize("case", RECURRENT)
def test_every_recurrent_backbone_trains_the_same_with_its_states_channels_last(case):
    """Fused regions on (their compiled bodies get channels-last tensors and gradients):
    the same loss and gradients as channels-first op by op (test_fused checks fused on
    against off; one compile a case keeps the suite's time), to float rounding; the
    weights' gradients come back channels-last (what DDP's buckets are laid out by); and in
    the ConvLSTM and PredRNN family every convolution writes channels-last, step after step."""
    file, cls, args, dtype = _case(case)
    torch.manual_seed(0)
    plain = _Step(_build(file, cls, args, dtype), fused=False)
    converted = to_channels_last(copy.deepcopy(plain))
    converted.fused = True
    layouts = []
    for conv in (m for m in converted.modules() if isinstance(m, nn.Conv2d)):
        conv.register_forward_hook(
            lambda _m, _i, out: layouts.append(out.is_contiguous(memory_format=CL))
        )
    batch = _batch(dtype)
    loss, grads = _gradients(plain, batch)
    loss_cl, grads_cl = _gradients(converted, batch)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    assert _relative(loss_cl, loss) <= tolerance
    assert grads.keys() == grads_cl.keys()
    worst = max(_relative(grads_cl[name], grads[name]) for name in grads)
    assert worst <= 100 * tolerance, worst
    for name, param in converted.named_parameters():
        if param.dim() == 4 and param.grad is not None and not param.is_contiguous():
            assert param.grad.is_contiguous(memory_format=CL), name
    if case in STATES_STAY:
        assert layouts and all(layouts), f"{layouts.count(False)} of {len(layouts)} not"


def test_an_incoming_gradient_keeps_its_channels_last_layout_and_an_expanded_one_is_made_dense():
    grad = torch.rand(2, 3, 4, 5).contiguous(memory_format=CL)
    assert _dense(grad) is grad  # no copy into the other layout
    expanded = torch.rand(1, 3, 1, 1).expand(2, 3, 4, 5)
    dense = _dense(expanded)
    assert dense.is_contiguous() and torch.equal(dense, expanded)


def _data() -> DataLoader:
    g = torch.Generator().manual_seed(2)
    frames = torch.rand(16, 6, 1, 8, 8, generator=g)
    return DataLoader(TensorDataset(frames[:, :3], frames[:, 3:]), batch_size=4)


def _trainer(out, steps: int, channels_last: bool = True) -> Trainer:
    return Trainer(
        output_dir=out, max_steps=steps, max_epochs=None, progress_bar=False,
        channels_last=channels_last, grad_clip_norm=0.5,
        checkpoint=CheckpointConfig(every_n_steps=2, keep_last=5),
    )  # fmt: skip


def test_trainer_trains_channels_last_saves_contiguous_weights_and_resumes_exactly(tmp_path):
    """A run stopped at step 2 and resumed to 4 ends bitwise where an unbroken run ends;
    the checkpoint's weights load into a model that never heard of channels-last, and
    training channels-last follows the channels-first run to float rounding."""
    whole = _convlstm()
    _trainer(tmp_path / "whole", 4).fit(whole, _data())
    conv = next(m for m in whole.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=CL) and not conv.weight.is_contiguous()

    first = _convlstm()
    _trainer(tmp_path / "resumed", 2).fit(first, _data())
    resumed = _convlstm()
    _trainer(tmp_path / "resumed", 4).fit(resumed, _data(), resume="auto")
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name

    plain = _convlstm()
    load_weights(tmp_path / "whole" / "checkpoints" / "step-00000004", plain)
    for (name, a), b in zip(plain.state_dict().items(), whole.state_dict().values()):
        assert a.is_contiguous() and torch.equal(a, b), name

    channels_first = _convlstm()
    _trainer(tmp_path / "first", 4, channels_last=False).fit(channels_first, _data())
    for (name, a), b in zip(channels_first.state_dict().items(), whole.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
