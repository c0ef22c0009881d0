"""The training step shaped for accelerators: host reads, stored-dtype batches, regional
compilation surviving scheduled sampling, activation checkpointing — on real shards and
the Forecaster, on CPU."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from helpers import HostReads, forecaster

from stpdist import Trainer
from stpdist.config import CheckpointConfig
from stpdist.data.format import SplitWriter
from stpdist.data.stream import ShardTrainStream


def shards(folder, num=24, frames=6, size=8, seed=0):
    rng = np.random.default_rng(seed)
    with SplitWriter(folder, "train", value_scale=255) as writer:
        for i in range(num):
            writer.write(f"s{i:03d}", rng.integers(0, 256, (frames, 1, size, size), np.uint8))
    return ShardTrainStream(folder, batch_size=4, num_input_frames=3, num_output_frames=3)


def convlstm(**sampling):
    return forecaster(
        "convlstm", (1, 8, 8), 3, 3, backbone={"hidden_channels": [4], "kernel_size": 3}, **sampling
    )


def test_forecaster_on_uint8_shards_reads_nothing_on_the_host_between_check_points(
    tmp_path, monkeypatch
):
    """ConvLSTM with scheduled sampling and gradient clipping on real uint8 shards: only
    the check points (log every 3 steps, the epoch's end at 6) read tensors on the host."""
    stream = shards(tmp_path / "train")
    torch.manual_seed(0)
    module = convlstm(sampling="linear", decay=0.1)
    reads = HostReads(monkeypatch)
    original = module.training_step

    def marked(inputs, targets):
        assert inputs.dtype == torch.float32 and float(inputs.max()) <= 1.0
        reads.mark(module.global_step + 1)
        return original(inputs, targets)

    module.training_step = marked
    trainer = Trainer(
        output_dir=tmp_path / "run",
        max_epochs=1,
        progress_bar=False,
        log_every_n_steps=3,
        grad_clip_norm=1.0,
        checkpoint=CheckpointConfig(every_epoch=False, keep_last=1),
    )
    trainer.fit(module, stream)
    monkeypatch.undo()
    assert sorted(reads.per_step) == [1, 2, 3, 4, 5, 6]
    reading = {step for step, found in reads.per_step.items() if found}
    assert reading == {3, 6}, reads.per_step


def test_grad_norm_logged_without_clipping_adds_no_host_read_between_log_steps(
    tmp_path, monkeypatch
):
    """Issue 27: without `grad_clip_norm` the global gradient norm is still logged
    (`train/grad_norm` at steps 3 and 6, log every 3), equal to the norm of the gradients
    the optimizer steps with, and computing it adds no host read to steps 1, 2, 4, 5."""
    import json

    stream = shards(tmp_path / "train")
    torch.manual_seed(0)
    module = convlstm()
    reads = HostReads(monkeypatch)
    original, norms = module.training_step, {}

    def marked(inputs, targets):
        reads.mark(module.global_step + 1)
        return original(inputs, targets)

    configure = module.configure_optimizer

    def with_reference(*args):
        optimizer = configure(*args)

        def record(opt, *_):  # the gradients this step applies, by hand, in float64
            grads = [p.grad.double().flatten() for p in module.parameters() if p.grad is not None]
            norms[module.global_step + 1] = float(torch.cat(grads).norm())

        optimizer.register_step_pre_hook(record)
        return optimizer

    module.training_step, module.configure_optimizer = marked, with_reference
    trainer = Trainer(
        output_dir=tmp_path / "run",
        max_epochs=1,
        progress_bar=False,
        log_every_n_steps=3,
        checkpoint=CheckpointConfig(every_epoch=False, keep_last=1),
    )
    trainer.fit(module, stream)
    trainer.close()
    monkeypatch.undo()
    reading = {step for step, found in reads.per_step.items() if found}
    assert reading == {3, 6}, reads.per_step
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    logged = {x["step"]: x["train/grad_norm"] for x in map(json.loads, lines) if "train/lr" in x}
    assert sorted(logged) == [3, 6]
    for step, norm in logged.items():
        assert norm == pytest.approx(norms[step], rel=1e-5) and norm > 0, step


class CompileCounter:
    """A torch.compile backend that runs the captured graph eagerly and counts captures."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


@pytest.fixture
def inductor_config(monkeypatch):
    """torch._inductor.config with layout_optimization on and no environment override;
    both restored afterwards."""
    import torch._inductor.config as config

    monkeypatch.delenv("TORCHINDUCTOR_LAYOUT_OPTIMIZATION", raising=False)
    with config.patch(layout_optimization=True):
        yield config


def test_regional_compile_does_not_recompile_under_scheduled_sampling(
    tmp_path, monkeypatch, inductor_config
):
    """`trainer.compile`: the recurrent step is captured during the first optimizer step
    and never again while the sampling probability changes every step; the losses equal
    eager training's."""
    counter = CompileCounter()
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", functools.partial(real_compile, backend=counter))
    torch._dynamo.reset()
    stream = shards(tmp_path / "train", num=32)
    losses, graphs_after = {}, []
    for compiled in (False, True):
        torch.manual_seed(0)
        module = convlstm(sampling="linear", decay=0.1)
        original = module.training_step

        def spy(inputs, targets, _original=original, _module=module):
            if _module.global_step == 1:
                graphs_after.append(counter.graphs)
            return _original(inputs, targets)

        module.training_step = spy
        out = tmp_path / f"run{compiled}"
        Trainer(
            output_dir=out, max_epochs=1, progress_bar=False, log_every_n_steps=1, compile=compiled
        ).fit(module, stream)
        losses[compiled] = [
            line
            for line in (out / "metrics.jsonl").read_text().splitlines()
            if "train/loss" in line
        ]
    torch._dynamo.reset()
    # compiling for the CPU turned inductor's channels-last layout optimisation off
    assert inductor_config.layout_optimization is False
    assert graphs_after[-1] >= 1  # the step was captured in step 1
    assert counter.graphs == graphs_after[-1]  # and not once more in steps 2..8
    eager = [float(x.split('"train/loss": ')[1].split(",")[0]) for x in losses[False]]
    compiled = [float(x.split('"train/loss": ')[1].split(",")[0]) for x in losses[True]]
    assert len(eager) == 8 and compiled == pytest.approx(eager, rel=1e-5)


def test_regional_compile_runs_the_compiled_step_with_fused_kernels_on(monkeypatch):
    """With fused kernels on, the frame loop batches over time by calling a backbone's step
    parts; once `trainer.compile` has compiled the step, the loop calls that step at every
    frame instead, so compiling is not silently bypassed."""
    module = forecaster(
        "predrnn", (1, 8, 8), 3, 2, backbone={"hidden_channels": [4], "kernel_size": 3}
    )
    module.config.fused_kernels = "on"
    frames, targets = torch.rand(2, 3, 1, 8, 8), torch.rand(2, 2, 1, 8, 8)
    calls = []
    original = module.backbone.step
    module.backbone.step = lambda frame, state: calls.append(1) or original(frame, state)
    eager = module(frames, targets, all_frames=True).predictions
    assert calls == []  # eager and fused: batched over time, `step` unused
    del module.backbone.step

    runs = []

    def counting_backend(graph_module, example_inputs):
        return lambda *args: runs.append(1) or graph_module.forward(*args)

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", functools.partial(real_compile, backend=counting_backend))
    torch._dynamo.reset()
    module.compile_for_training()
    compiled = module(frames, targets, all_frames=True).predictions
    torch._dynamo.reset()
    assert len(runs) >= 4  # the compiled step ran at each of the T_in + T_out − 1 frames
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def test_cpu_compile_defaults_respect_the_users_layout_setting(monkeypatch, inductor_config):
    from stpdist.module import cpu_compile_defaults

    monkeypatch.setenv("TORCHINDUCTOR_LAYOUT_OPTIMIZATION", "1")
    assert not cpu_compile_defaults(torch.device("cpu"))  # the user chose: left alone
    assert inductor_config.layout_optimization is True
    monkeypatch.delenv("TORCHINDUCTOR_LAYOUT_OPTIMIZATION")
    assert not cpu_compile_defaults(torch.device("cuda"))  # GPUs keep inductor's default
    assert inductor_config.layout_optimization is True
    assert cpu_compile_defaults(torch.device("cpu"))
    assert inductor_config.layout_optimization is False


@pytest.mark.parametrize("name, backbone", [
    ("convlstm", {"hidden_channels": [4, 4], "kernel_size": 3}),
    ("predrnnv2", {"hidden_channels": [4, 4], "kernel_size": 3}),
])  # fmt: skip
def test_activation_checkpointing_gives_the_same_gradients_keeping_fewer_activations(
    name, backbone
):
    """Same loss and gradients with each step recomputed in the backward; what autograd
    saves for the backward outside the recomputed steps (counted by a saved-tensor hook;
    the steps' inputs that checkpointing keeps for the recompute are not seen by it)
    shrinks. Peak memory itself: `stpdist bench model --activation-checkpointing`."""
    torch.manual_seed(0)
    inputs, targets = torch.rand(2, 4, 1, 8, 8), torch.rand(2, 4, 1, 8, 8)
    results = {}
    for on in (False, True):
        torch.manual_seed(1)
        module = forecaster(name, (1, 8, 8), 4, 4, backbone=backbone)
        if on:
            module.enable_activation_checkpointing()
        saved = []

        def pack(tensor, saved=saved):
            saved.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = module.training_step(inputs, targets)
        loss = loss["loss"] if isinstance(loss, dict) else loss
        loss.backward()
        grads = [p.grad.clone() for p in module.parameters()]
        results[on] = (loss.detach(), grads, sum(saved))
    assert torch.equal(results[True][0], results[False][0])
    for a, b in zip(results[True][1], results[False][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert results[True][2] < 0.6 * results[False][2]


def test_activation_checkpointing_needs_a_frame_recurrent_backbone():
    small = {"spatial_channels": 4, "temporal_channels": 8, "num_spatial_blocks": 2}
    module = forecaster("simvp", (1, 8, 8), 4, 4, backbone=small)
    with pytest.raises(ValueError, match="frame-recurrent"):
        module.enable_activation_checkpointing()


def test_the_regionally_compiled_step_has_no_graph_break(monkeypatch):
    """`trainer.compile` (`compile_for_training`) compiles a recurrent backbone's step.
    Each fused region asked a context variable whether fusion was on, which dynamo cannot
    trace: the step broke into pieces at every region call (a 2-layer ConvLSTM's step: 15
    breaks, 10 graphs). Now no break, in float32 and under bf16 autocast."""
    from torch._dynamo.utils import counters

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", functools.partial(real_compile, backend="aot_eager"))
    torch._dynamo.reset()
    counters.clear()
    backbone = {"hidden_channels": [4, 4], "kernel_size": 3, "variant": "openstl"}
    module = forecaster("convlstm", (1, 8, 8), 3, 2, backbone=backbone)
    module.compile_for_training()
    frames = torch.rand(2, 3, 1, 8, 8)
    for precision in ("fp32", "bf16"):
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            module(frames, all_frames=True)
    torch._dynamo.reset()
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])


def test_validation_reads_nothing_on_the_host_until_its_results(tmp_path, monkeypatch):
    """Each validation batch's scalars were summed with `float(value)`: a host read per
    batch, which on a GPU waits for the batch before the next one is queued. The sums stay
    on the device until the pass's one reduce."""
    from stpdist.data.stream import ShardEvalStream

    shards(tmp_path / "val")
    stream = ShardEvalStream(tmp_path / "val", batch_size=4, num_input_frames=3,
                             num_output_frames=3)  # fmt: skip
    torch.manual_seed(0)
    module = convlstm()
    reads = HostReads(monkeypatch)
    original = module.validation_step
    batches = []

    def marked(inputs, targets):
        batches.append(len(batches) + 1)
        reads.mark(len(batches))
        return original(inputs, targets)

    module.validation_step = marked
    trainer = Trainer(output_dir=tmp_path / "run", max_epochs=1, progress_bar=False,
                      checkpoint=CheckpointConfig(every_epoch=False, keep_last=1))  # fmt: skip
    results = trainer.validate(module, stream)
    monkeypatch.undo()
    assert len(batches) > 2 and results["val/loss"] > 0
    # the last batch's mark also holds the pass's end: the reduce, the metrics read once
    reading = {step for step, found in reads.per_step.items() if found}
    assert reading <= {len(batches)}, {step: reads.per_step[step] for step in reading}
