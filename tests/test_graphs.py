"""`trainer.cuda_graphs` on a CPU: accepted and reported as not applicable; the combinations
it refuses, refused at start in one line; and its code path — warm-up, capture into static
buffers, replays with the capture's host state, eager fallback for a batch of other shapes,
device-side scheduled-sampling probabilities, learning rate and clipping — run with the
emulated graph (`STPDIST_EMULATE_CUDA_GRAPHS=1`): training equal to eager training, bitwise.
The emulation replays with the capture's host state, so a step that read a per-step host
value without refreshing it would train differently: the last test shows it does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from helpers import forecaster
from torch.utils.data import DataLoader

from stpdist import EnhancedModule, Trainer
from stpdist.config import CheckpointConfig, ConfigError
from stpdist.graphs import EMULATE_ENV, WARMUP_STEPS

ROOT = Path(__file__).resolve().parent.parent


class _Sequences(torch.utils.data.Dataset):
    """28 sequences of 6 frames of 1×8×8 (a fifth batch of 4 of 1×12×12 with `odd`)."""

    def __init__(self, odd: bool = False) -> None:
        g = torch.Generator().manual_seed(1)
        side = [12 if odd and 16 <= i < 20 else 8 for i in range(28)]
        self.items = [torch.rand(6, 1, s, s, generator=g) for s in side]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.items[i][:3], self.items[i][3:]


def _data(odd: bool = False) -> DataLoader:
    return DataLoader(_Sequences(odd), batch_size=4)


class _Convolutional(EnhancedModule):
    """Frames of any size: the next frames from a convolution of the last one."""

    skips_batches = False

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)

    def configure_optimizer(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)

    def training_step(self, inputs, targets):
        return (self.conv(inputs[:, -1]).unsqueeze(2) - targets).square().mean()


def _trainer(tmp_path, name: str, graphs: bool, epochs: int) -> Trainer:
    return Trainer(
        output_dir=tmp_path / name,
        max_epochs=epochs,
        progress_bar=False,
        log_every_n_steps=2,
        grad_clip_norm=0.05,
        cuda_graphs=graphs,
        checkpoint=CheckpointConfig(every_epoch=False, keep_last=1),
    )


def _train(tmp_path, name: str, graphs: bool, epochs: int = 2) -> tuple[dict, list]:
    """The openstl ConvLSTM with reverse scheduled sampling (both probabilities change at
    every step), gradient clipping and its cosine schedule: (final weights, the
    `global_step` each training step saw)."""
    torch.manual_seed(0)
    module = forecaster(
        "convlstm", (1, 8, 8), 3, 3,
        backbone={"hidden_channels": [4], "kernel_size": 3, "variant": "openstl"},
        lr=0.01, sampling="reverse", reverse_steps=[1, 12], reverse_alpha=3.0,
    )  # fmt: skip
    seen = []
    original = module.training_step

    def recorded(inputs, targets):
        seen.append(module.global_step)
        return original(inputs, targets)

    module.training_step = recorded
    _trainer(tmp_path, name, graphs, epochs).fit(module, _data())
    return {k: v.detach().clone() for k, v in module.state_dict().items()}, seen


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_on_a_cpu_it_is_accepted_and_not_applicable(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(EMULATE_ENV, raising=False)
    eager, _ = _train(tmp_path, "eager", graphs=False, epochs=1)
    graphs, _ = _train(tmp_path, "graphs", graphs=True, epochs=1)
    assert "trainer.cuda_graphs: not applicable on cpu" in capsys.readouterr().out
    assert _same(eager, graphs)


def test_emulated_graph_trains_as_eager_bitwise(tmp_path, capsys, monkeypatch):
    eager, eager_steps = _train(tmp_path, "eager", graphs=False)
    monkeypatch.setenv(EMULATE_ENV, "1")
    graphs, graph_steps = _train(tmp_path, "graphs", graphs=True)
    assert "not applicable" not in capsys.readouterr().out
    # warm-up steps ran as themselves; the replays ran the captured step with the host
    # state of the capture (global_step WARMUP_STEPS)
    assert eager_steps == list(range(14))
    assert graph_steps == [*range(WARMUP_STEPS + 1), *[WARMUP_STEPS] * (13 - WARMUP_STEPS)]
    assert _same(eager, graphs)
    assert not _same(eager, _train(tmp_path, "short", graphs=False, epochs=1)[0])


def test_a_batch_of_other_shapes_runs_eagerly_between_replays(tmp_path, capsys, monkeypatch):
    weights = {}
    for graphs in (False, True):
        monkeypatch.setenv(EMULATE_ENV, "1" if graphs else "0")
        torch.manual_seed(0)
        module = _Convolutional()
        _trainer(tmp_path, f"conv-{graphs}", graphs, epochs=2).fit(module, _data(odd=True))
        weights[graphs] = {k: v.detach().clone() for k, v in module.state_dict().items()}
    out = capsys.readouterr().out
    assert out.count("cuda_graphs: a batch of shapes ((4, 3, 1, 12, 12)") == 1, out
    assert _same(weights[False], weights[True])


def test_a_host_value_left_unrefreshed_would_show(tmp_path, monkeypatch):
    """The control: with the Forecaster's refresh switched off, the replays draw the
    scheduled-sampling masks with the capture's probabilities — and training differs."""
    from stpdist.task import Forecaster

    eager, _ = _train(tmp_path, "eager", graphs=False)
    monkeypatch.setenv(EMULATE_ENV, "1")
    monkeypatch.setattr(Forecaster, "refresh_graph_inputs", lambda self, step: None)
    stale, _ = _train(tmp_path, "stale", graphs=True)
    assert not _same(eager, stale)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (["trainer.gradient_accumulation_steps=2"], "gradient_accumulation_steps 2"),
        (["trainer.strategy=fsdp"], "strategy fsdp"),
        (["trainer.compile=true"], "trainer.compile"),
    ],
)
def test_refused_combinations_exit_2_in_one_line(tmp_path, overrides, reason):
    done = run_cli(
        "train", str(ROOT / "configs" / "debug.yaml"), "trainer.cuda_graphs=true", *overrides,
        f"trainer.output_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'data'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "trainer.cuda_graphs cannot run with" in lines[0], done.stderr
    assert reason in lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_refusal_names_every_reason():
    from stpdist.config import TrainerConfig
    from stpdist.graphs import refusal

    config = TrainerConfig(mixed_precision="fp16", gradient_accumulation_steps=2)
    why = refusal(config, num_processes=4)
    assert why.startswith("trainer.cuda_graphs cannot run with 4 processes")
    assert "mixed_precision fp16" in why and "gradient_accumulation_steps 2" in why
    assert refusal(TrainerConfig(), num_processes=1) is None


def test_refused_by_the_trainer_object_too():
    with pytest.raises(ConfigError, match="gradient_accumulation_steps 3"):
        Trainer(max_epochs=1, cuda_graphs=True, gradient_accumulation_steps=3)


def test_a_resume_without_graphs_gets_float_learning_rates_back():
    """A checkpoint of a run with graphs holds tensor learning rates and `capturable`; an
    eager foreach Adam refuses a tensor learning rate, so they are made plain again."""
    from stpdist.graphs import plain_learning_rates

    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([param], lr=0.1)
    saved = optimizer.state_dict()
    saved["param_groups"][0].update(lr=torch.tensor(0.05), capturable=True)
    optimizer.load_state_dict(saved)
    plain_learning_rates(optimizer)
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(0.05) and not isinstance(group["lr"], torch.Tensor)
    assert group["capturable"] is False
    param.grad = torch.ones(3)
    optimizer.step()  # raises "If capturable=True, params … must be on supported devices" unmade
    assert param.detach().lt(1).all()


class _BenchmarkSeen(_Convolutional):
    """Records `torch.backends.cudnn.benchmark` as each training step sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def training_step(self, inputs, targets):
        self.seen.append(torch.backends.cudnn.benchmark)
        return super().training_step(inputs, targets)


def _benchmark_run(tmp_path, value) -> tuple[list[bool], bool]:
    """(the setting each step saw, the setting after `close`) of a run with
    `trainer.cudnn_benchmark: value`, started with the setting off."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        trainer = Trainer(
            output_dir=tmp_path / f"cudnn-{value}", max_epochs=1, progress_bar=False,
            cudnn_benchmark=value, checkpoint=CheckpointConfig(every_epoch=False),
        )  # fmt: skip
        module = _BenchmarkSeen()
        trainer.fit(module, _data())
        trainer.close()
        return module.seen, torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's answer")
def test_cudnn_benchmark_on_a_cpu_is_accepted_and_not_applicable(tmp_path, capsys):
    seen, after = _benchmark_run(tmp_path, True)
    assert seen and not any(seen) and after is False
    assert "trainer.cudnn_benchmark: not applicable on cpu" in capsys.readouterr().out


def test_cudnn_benchmark_is_the_latest_open_holders_and_torchs_own_after_the_last():
    """Set per Trainer on a CUDA device (here the setting alone: torch keeps it on any
    build): closed in any order, or an unclosed Trainer collected, the setting goes back
    to the latest open holder's value, then to what it was before the first."""
    import gc

    from stpdist.trainer import hold_cudnn_benchmark

    class Owner:  # what holds the setting: a Trainer in the Trainer
        pass

    cuda, before = torch.device("cuda"), torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        assert hold_cudnn_benchmark(Owner(), None, cuda) is None
        a, b = Owner(), Owner()
        release_a = hold_cudnn_benchmark(a, True, cuda)
        release_b = hold_cudnn_benchmark(b, True, cuda)
        release_a()  # closed out of order: b's setting stays
        assert torch.backends.cudnn.benchmark is True
        release_b()
        assert torch.backends.cudnn.benchmark is False
        c = Owner()
        hold_cudnn_benchmark(c, True, cuda)
        assert torch.backends.cudnn.benchmark is True
        del c  # never released: collected
        gc.collect()
        assert torch.backends.cudnn.benchmark is False
        release_a()  # a second release does nothing
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


class _DeterminismSeen(_BenchmarkSeen):
    def training_step(self, inputs, targets):
        self.seen.append(
            (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
        )
        return _Convolutional.training_step(self, inputs, targets)


def _deterministic_fit(output_dir: Path, module: EnhancedModule, **fields) -> EnhancedModule:
    """`module` trained on `_data()` by a Trainer with `trainer.deterministic`, then closed.
    (A module built before its Trainer: `fields`' seed does not make its initial weights.)"""
    trainer = Trainer(output_dir=output_dir, progress_bar=False, deterministic=True,
                      checkpoint=CheckpointConfig(every_epoch=False), **fields)  # fmt: skip
    try:
        trainer.fit(module, _data())
    finally:
        trainer.close()
    return module


def test_deterministic_holds_while_the_trainer_is_open_and_goes_back_at_close(tmp_path):
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
    assert before == (False, False)  # torch's defaults: what the run must give back
    module = _deterministic_fit(tmp_path / "det", _DeterminismSeen(), max_epochs=1)
    assert module.seen and all(seen == (True, True) for seen in module.seen)
    after = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
    assert after == before


def test_deterministic_with_cudnn_benchmark_is_refused_at_start(tmp_path):
    with pytest.raises(ConfigError, match="trainer.deterministic and trainer.cudnn_benchmark"):
        Trainer(output_dir=tmp_path / "r", max_epochs=1, deterministic=True, cudnn_benchmark=True)


def test_deterministic_sets_cublas_workspace_on_cuda_and_refuses_one_that_is_not(monkeypatch):
    """On a CUDA device (the setting alone, as above): CUBLAS_WORKSPACE_CONFIG set when unset,
    kept when deterministic, refused naming the value otherwise."""
    from stpdist.trainer import hold_deterministic

    class Owner:
        pass

    cuda = torch.device("cuda")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert hold_deterministic(Owner(), False, cuda) is None
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    owner = Owner()
    release = hold_deterministic(owner, True, cuda)
    try:
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        release()
    assert not torch.are_deterministic_algorithms_enabled()
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    hold_deterministic(owner, True, cuda)()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
    with pytest.raises(ConfigError, match="CUBLAS_WORKSPACE_CONFIG is ':0:0'"):
        hold_deterministic(owner, True, cuda)
    assert not torch.are_deterministic_algorithms_enabled()
    # cuDNN's algorithm search on (another Trainer's cudnn_benchmark, the program's own):
    # refused, not run beside it (a diff review: it stayed on, deterministic said)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    with pytest.raises(ConfigError, match=r"cuDNN's algorithm search is on"):
        hold_deterministic(owner, True, cuda)
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.gpu
@pytest.mark.parametrize("value", [True, False])
def test_cudnn_benchmark_holds_while_the_trainer_is_open_on_a_gpu(tmp_path, value):
    seen, after = _benchmark_run(tmp_path, value)
    assert seen and all(s is value for s in seen) and after is False


@pytest.mark.gpu
def test_deterministic_trains_the_same_weights_twice_on_a_gpu(tmp_path):
    def weights(name: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(3)  # the same initial weights in both runs
        module = _deterministic_fit(tmp_path / name, _Convolutional(), max_epochs=2, seed=3)
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    first, second = weights("a"), weights("b")
    assert all(torch.equal(first[k], second[k]) for k in first)


# --------------------------------------------- what a graph would replay as captured
class _OneCycle(_Convolutional):
    """The recipes' schedule: OneCycleLR, which cycles Adam's beta1 every step."""

    def configure_lr_scheduler(self, optimizer):
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=14)


class _DecayingWeightDecay(_Convolutional):
    """A scheduler of weight decay (changed after the capture: the graph holds the old)."""

    def configure_optimizer(self):
        return torch.optim.AdamW(self.parameters(), lr=0.01, weight_decay=0.1)

    def configure_lr_scheduler(self, optimizer):
        class WeightDecay(torch.optim.lr_scheduler.LambdaLR):
            def step(self, *args, **kwargs):
                super().step(*args, **kwargs)
                for group in self.optimizer.param_groups:
                    group["weight_decay"] = 0.1 / (1 + self.last_epoch)

        return WeightDecay(optimizer, lambda step: 1.0)


class _Sgd(_Convolutional):
    def configure_optimizer(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class _UncapturableOnce(_Convolutional):
    """A step a capture refuses (here: raises while the Trainer runs the graph's step)."""

    def training_step(self, inputs, targets):
        if self.in_step_graph:
            raise RuntimeError("operation not permitted when stream is capturing")
        return super().training_step(inputs, targets)


def _weights_of(tmp_path, monkeypatch, kind, graphs: bool):
    monkeypatch.setenv(EMULATE_ENV, "1" if graphs else "0")
    torch.manual_seed(0)
    module = kind()
    trainer = _trainer(tmp_path, f"{kind.__name__}-{graphs}", graphs, epochs=2)
    trainer.fit(module, _data())
    return {k: v.detach().clone() for k, v in module.state_dict().items()}, trainer._graph


def test_a_scheduler_cycling_beta1_reaches_the_graph_through_the_device(tmp_path, monkeypatch):
    """OneCycleLR (every recipe's schedule) writes a new beta1 each step; a capturable Adam
    bakes a float beta1 into the graph. It is kept in a device tensor the replays refill,
    and the emulation, which replays every other Python value as captured, trains as eager."""
    import stpdist.graphs as graphs_module

    eager, _ = _weights_of(tmp_path, monkeypatch, _OneCycle, graphs=False)
    replayed, graph = _weights_of(tmp_path, monkeypatch, _OneCycle, graphs=True)
    assert graph.replays == 14 - WARMUP_STEPS and graph.abandoned is None
    assert _same(eager, replayed)
    # the capture itself reads the device tensors: OneCycleLR wrote floats during the
    # warm-up steps, which a capture would have baked in (a code review: the tensors were
    # put back only after it); without that, the emulated replays keep the captured beta1
    monkeypatch.setattr(graphs_module.StepGraph, "_sync", lambda self: None)
    skipped, graph = _weights_of(tmp_path / "unsynced", monkeypatch, _OneCycle, graphs=True)
    assert not _same(eager, skipped)
    monkeypatch.undo()
    # the control: beta1 left to the host, the replays keep the captured one
    monkeypatch.setattr(graphs_module, "cycles_momentum", lambda scheduler: False)
    stale, graph = _weights_of(tmp_path / "stale", monkeypatch, _OneCycle, graphs=True)
    assert graph.abandoned is not None and "betas" in graph.abandoned


def test_another_setting_changed_after_the_capture_turns_the_steps_eager(
    tmp_path, monkeypatch, caplog
):
    eager, _ = _weights_of(tmp_path, monkeypatch, _DecayingWeightDecay, graphs=False)
    with caplog.at_level("INFO", logger="stpdist"):
        replayed, graph = _weights_of(tmp_path, monkeypatch, _DecayingWeightDecay, graphs=True)
    assert _same(eager, replayed)
    assert caplog.text.count("after the capture, and a graph replays the captured value") == 1
    assert "the optimizer's weight_decay (param group 0) changed from 0.025 to 0.02" in caplog.text
    assert graph.replays == 1  # the capture's step; the scheduler changes it every step


def test_an_optimizer_without_a_capturable_mode_runs_eagerly(tmp_path, monkeypatch, capsys):
    eager, _ = _weights_of(tmp_path, monkeypatch, _Sgd, graphs=False)
    replayed, graph = _weights_of(tmp_path, monkeypatch, _Sgd, graphs=True)
    assert graph is None and _same(eager, replayed)
    assert "trainer.cuda_graphs: SGD has no capturable mode" in capsys.readouterr().out


def test_a_capture_that_fails_is_said_once_and_training_goes_on_eagerly(
    tmp_path, monkeypatch, caplog
):
    eager, _ = _weights_of(tmp_path, monkeypatch, _UncapturableOnce, graphs=False)
    with caplog.at_level("INFO", logger="stpdist"):
        replayed, graph = _weights_of(tmp_path, monkeypatch, _UncapturableOnce, graphs=True)
    assert _same(eager, replayed) and graph.replays == 0
    assert caplog.text.count("cuda_graphs: the step could not be captured (RuntimeError") == 1


def test_the_graphs_probabilities_are_read_inside_the_graphs_step_only():
    """After a graphed run the Forecaster kept reading the last replay's scheduled-sampling
    probabilities in every eager step (a batch of other shapes, a later `fit` without
    graphs): at step 50 010, where its schedule gives 0, 99.8% teacher frames."""
    torch.manual_seed(0)
    module = forecaster(
        "convlstm", (1, 8, 8), 3, 3, backbone={"hidden_channels": [4], "kernel_size": 3},
        sampling="reverse", reverse_steps=[1, 12], reverse_alpha=3.0,
    )  # fmt: skip
    module.refresh_graph_inputs(11)  # the replay of step 11: both probabilities high
    inputs = torch.rand(64, 3, 1, 8, 8)
    module.in_step_graph = True
    assert module.teacher_mask(inputs, 50_010).mean() > 0.3
    module.in_step_graph = False
    assert module.teacher_mask(inputs, 50_010)[:, 2:].mean() == 0  # the host's: after the end


def test_refused_with_activation_checkpointing():
    from stpdist.config import TrainerConfig
    from stpdist.graphs import refusal

    why = refusal(TrainerConfig(activation_checkpointing=True), num_processes=1)
    assert why and "trainer.activation_checkpointing" in why and "random state" in why


def test_compile_mode_reduce_overhead_is_refused_for_a_frame_recurrent_backbone():
    module = forecaster("convlstm", (1, 8, 8), 3, 3, backbone={"hidden_channels": [4]})
    with pytest.raises(ConfigError, match="compile_mode reduce-overhead with 'convlstm'"):
        module.compile_for_training("reduce-overhead")


def test_a_resume_without_graphs_puts_step_counts_and_betas_back_on_the_host():
    from stpdist.graphs import plain_learning_rates

    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([param], lr=0.1, foreach=None)
    param.grad = torch.ones(3)
    optimizer.step()
    group = optimizer.param_groups[0]
    group.update(lr=torch.tensor(0.05), capturable=True, foreach=False)
    group["betas"] = (torch.tensor(0.85), 0.999)
    plain_learning_rates(optimizer)
    assert group["betas"] == (pytest.approx(0.85), 0.999)
    assert not any(isinstance(b, torch.Tensor) for b in group["betas"])
    assert group["foreach"] is None and group["capturable"] is False
    assert optimizer.state[param]["step"].device.type == "cpu"
    optimizer.step()
