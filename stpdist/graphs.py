"""CUDA graphs for the training step (`trainer.cuda_graphs`).

A recurrent model's GPU step is launch-bound: thousands of small kernels, each launched by
the host. A CUDA graph records the whole step once — forward, loss, backward, clipping and
the optimizer step — and replays it with one launch. stpdist's step needs no host read
(measured: 0 syncs per steady-state step), which is what capture needs.

How a run goes: the first `WARMUP_STEPS` optimizer steps run eagerly (on a side stream,
as capture wants: lazy initialisation, cuDNN's choices, the optimizer's state); the next
step is captured into a graph with static input buffers, and every later step copies its
batch into those buffers and replays. Host values that change per step and that the step
reads stay correct because they live on the device: the learning rate is a tensor the
scheduler fills (a capturable optimizer), and a module refreshes its own before each
replay (`EnhancedModule.refresh_graph_inputs`: scheduled sampling's probabilities).

What it composes with, and what it refuses at start, with the reason (`refusal`): one
process only (DDP's bucketed all-reduce inside a graph needs its own warm-up protocol,
not verified here), no gradient accumulation (a window's micro-steps differ: only the
last steps the optimizer), no fp16 (the grad scaler reads its overflow flag on the host
every step; bf16 needs no scaler), not with `trainer.compile` (its `reduce-overhead` mode
is the compiler's own CUDA graphs), not with `strategy: fsdp`, not with
`trainer.activation_checkpointing` (recomputation saves and restores the CUDA random
state, which a capture forbids). What it does not capture, with one line, running eagerly
instead: a module that may skip batches (a host read of every loss), an optimizer without
a capturable mode (SGD: its step reads the learning rate on the host), a batch whose
shapes differ from the captured one (a last partial batch), and, from the step it
happens on, an optimizer setting changed after the capture other than the learning rate
and Adam's beta1 (a graph would replay the captured value), or a capture that fails.

Hyperparameters a scheduler changes every step reach the graph through device tensors:
every group's learning rate, and Adam's beta1 when the scheduler cycles momentum
(OneCycleLR, CyclicLR: the recipes' schedule); such a group's Adam then takes its
single-tensor path, the one that reads beta1 from the device without a host read.

On a CPU the option is accepted and reported as not applicable. For tests and the GPU
check's dry run, `STPDIST_EMULATE_CUDA_GRAPHS=1` replays a "graph" on the CPU by running
the captured step function again on the static buffers with the host state of the
capture (the module's `global_step`, and every optimizer setting held as a Python value,
as they were then): a step that read a host value not refreshed through the device would
train differently from eager, and the tests see it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from . import console

WARMUP_STEPS = 3
"""Eager optimizer steps before the capture."""
EMULATE_ENV = "STPDIST_EMULATE_CUDA_GRAPHS"


def emulated() -> bool:
    return os.environ.get(EMULATE_ENV, "") not in ("", "0")


def refusal(config: Any, num_processes: int) -> str | None:
    """Why `trainer.cuda_graphs` cannot run with this trainer config (None: it can)."""
    why = []
    if num_processes > 1:
        why.append(f"{num_processes} processes (DDP inside a graph is not supported yet)")
    if config.gradient_accumulation_steps > 1:
        why.append(
            f"gradient_accumulation_steps {config.gradient_accumulation_steps} (a graph "
            "replays one whole optimizer step)"
        )
    if config.mixed_precision == "fp16":
        why.append("mixed_precision fp16 (its grad scaler reads a flag on the host every step)")
    if config.compile:
        why.append("trainer.compile (use one: compile_mode reduce-overhead is its own graphs)")
    if config.strategy == "fsdp":
        why.append("strategy fsdp")
    if config.activation_checkpointing:
        why.append(
            "trainer.activation_checkpointing (its recomputation saves and restores the CUDA "
            "random state, which a capture forbids)"
        )
    if not why:
        return None
    return "trainer.cuda_graphs cannot run with " + "; ".join(why)


def optimizer_refusal(optimizer: Any) -> str | None:
    """Why this optimizer's step cannot be captured (None: it can): one without a
    capturable mode reads its learning rate, or its step count, on the host."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if all("capturable" in group for group in inner.param_groups):
        return None
    return (
        f"{type(inner).__name__} has no capturable mode (its step reads the learning rate on "
        "the host, which a graph would replay as captured); the step runs eagerly (Adam and "
        "AdamW have one)"
    )


def cycles_momentum(scheduler: Any) -> bool:
    """Whether `scheduler` writes Adam's beta1 every step (OneCycleLR, CyclicLR with
    `cycle_momentum` on an optimizer with betas)."""
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper
    return bool(getattr(inner, "cycle_momentum", False) and getattr(inner, "use_beta1", False))


class StepGraph:
    """The captured training step of one run. `body(inputs, targets, extras)` is the
    step's forward, backward and optimizer step, returning the training step's output."""

    def __init__(
        self, module: Any, optimizer: Any, device: torch.device, momentum: bool = False
    ) -> None:
        self.module = module
        self.optimizer = optimizer
        self.device = device
        self.emulate = device.type != "cuda"
        self.eager_steps = 0
        self.replays = 0
        self.graph: Any = None
        self.static: tuple | None = None
        self.output: Any = None
        self.shape_key: tuple | None = None
        self.abandoned: str | None = None
        self._told: set[tuple] = set()
        self._body: Callable[..., Any] | None = None
        self._capture_step = 0
        self._synced: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self._frozen: list[dict[str, Any]] = []
        self._grads: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._stream = torch.cuda.Stream() if not self.emulate else None
        self._capturable(momentum)

    def _capturable(self, momentum: bool) -> None:
        """The optimizer's step as device work only: `capturable` where it has the flag
        (Adam, AdamW, …), each group's learning rate a device tensor that the scheduler
        fills in place (a float would be baked into the graph), and with `momentum` (a
        scheduler that cycles it) Adam's beta1 one too, on its single-tensor path (the
        foreach one reads a tensor beta1 on the host). The emulation makes the same tensors
        on the CPU, where a non-capturable step reads them."""
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        # emulated: float64, so that a value read back is the scheduler's float exactly
        kind = {"device": self.device, "dtype": torch.float64 if self.emulate else None}
        # AdamW is Adam's subclass from torch 2.7 only
        adam = isinstance(inner, torch.optim.Adam | torch.optim.AdamW)
        for group in self._groups():
            lr, beta1 = torch.tensor(float(group["lr"]), **kind), None
            if momentum and adam and not group.get("fused"):
                beta1 = torch.tensor(float(group["betas"][0]), **kind)
            self._synced.append((lr, beta1))
            if self.emulate:  # the group keeps floats: eager steps as eager training's
                continue
            if "capturable" in group:
                group["capturable"] = True
            group["lr"] = lr
            if beta1 is not None:
                group["betas"], group["foreach"] = (beta1, float(group["betas"][1])), False
        for state in inner.state.values():  # resumed: a capturable step count lives on the device
            if isinstance(state.get("step"), torch.Tensor) and not self.emulate:
                state["step"] = state["step"].to(self.device, torch.float32)

    @property
    def captured(self) -> bool:
        return self.graph is not None

    @contextlib.contextmanager
    def eager(self, optimizer: Any) -> Iterator[None]:
        """Around an eager step: before the capture, a warm-up step (on a side stream, on
        a GPU); after it, a step the graph does not take, which starts from no gradients
        (the parameters' gradients are the graph's buffers, holding the last replay's)."""
        if self.captured:
            optimizer.zero_grad(set_to_none=True)
            yield
            return
        self.eager_steps += 1
        if self._stream is None:
            yield
            return
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            yield
        torch.cuda.current_stream().wait_stream(self._stream)

    def takes(self, batch: Any) -> bool:
        """Whether this batch runs through the graph (captured now if due); False: eager."""
        if self.abandoned is not None:
            return False
        if not self.captured:
            return self.eager_steps >= WARMUP_STEPS
        if self._drifted():
            return False
        key = _shapes(batch)
        if key == self.shape_key:
            return True
        if key not in self._told:
            self._told.add(key)
            console.log.info(
                "cuda_graphs: a batch of shapes %s differs from the captured %s (e.g. the "
                "last partial batch): such steps run eagerly",
                key,
                self.shape_key,
            )
        return False

    def _drifted(self) -> bool:
        """Whether an optimizer setting the graph holds as captured has changed since (a
        scheduler of weight decay, of SGD's momentum…): said once, and every step from
        here runs eagerly, with the values the scheduler set."""
        groups = zip(self._groups(), self._frozen, self._synced)
        for index, (group, frozen, (_, beta1)) in enumerate(groups):
            for key, value in frozen.items():
                now = group.get(key)
                if key == "lr":  # (emulated: a float) reaches the graph as a tensor
                    continue
                if key == "betas" and beta1 is not None:
                    now, value = now[1:], value[1:]  # beta1 too
                if now != value:
                    fused = " (a fused Adam reads betas on the host: fused=False keeps the graph)"
                    self.abandoned = (
                        f"cuda_graphs: the optimizer's {key} (param group {index}) changed "
                        f"from {value} to {now} after the capture, and a graph replays the "
                        "captured value: every step from here runs eagerly"
                        + (fused if key == "betas" and group.get("fused") else "")
                    )
                    console.log.info(self.abandoned)
                    return True
        return False

    def run(self, batch: Any, step: int, body: Callable[..., Any], extras: dict) -> Any:
        """Step `step` on `batch` through the graph (captured at the first call, with the
        hook extras `extras`); returns what `body` returns, in static buffers valid until
        the next replay. A capture that fails raises `CaptureFailed` (the step's batch is
        then taken eagerly, and so is every later one)."""
        self.module.refresh_graph_inputs(step)
        capture = not self.captured
        if capture:
            self._capture(batch, step, body, extras)
        else:
            self._fill(batch)
        try:
            self._replay()
        except Exception as exc:
            if not (capture and self.emulate):
                raise
            self._give_up(exc)  # the emulation's capture: its first run failed
        return self.output

    def _capture(self, batch: Any, step: int, body: Callable[..., Any], extras: dict) -> None:
        self.shape_key = _shapes(batch)
        self.static = (batch.inputs.clone(), batch.targets.clone(), _cloned(extras))
        self._body, self._capture_step = body, step
        # the device tensors back in the groups first: the warm-up steps' scheduler wrote
        # floats there (OneCycleLR a new betas tuple each step), which a capture would bake
        self._sync()
        self._frozen = [_host_values(group) for group in self._groups()]
        self.optimizer.zero_grad(set_to_none=True)  # the graph's backward writes them anew
        if self.emulate:  # the first emulated replay stands for the capture (see `run`)
            self.graph = "emulated"
            return
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the DataLoader's pin-memory thread goes on allocating pinned
            # buffers while this thread captures; "global" would count that as an error
            with self._in_graph(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.output = body(*self.static)
        except Exception as exc:
            self._give_up(exc)
        self.graph = graph
        params = [p for group in self._groups() for p in group["params"]]
        self._grads = [(p, p.grad) for p in params if p.grad is not None]

    def _give_up(self, exc: Exception) -> None:
        first = str(exc).splitlines()[0] if str(exc) else ""
        self.graph = None
        self.abandoned = (
            f"cuda_graphs: the step could not be captured ({type(exc).__name__}: {first}); "
            "it runs eagerly"
        )
        console.log.info(self.abandoned)
        self.optimizer.zero_grad(set_to_none=True)
        raise CaptureFailed(self.abandoned) from exc

    @contextlib.contextmanager
    def _in_graph(self) -> Iterator[None]:
        """The module told that the code it runs now is what a graph replays
        (`EnhancedModule.in_step_graph`): it reads its refreshed device values then, and
        its host values in an eager step."""
        self.module.in_step_graph = True
        try:
            yield
        finally:
            self.module.in_step_graph = False

    def _groups(self) -> list[dict]:
        return getattr(self.optimizer, "optimizer", self.optimizer).param_groups

    def _fill(self, batch: Any) -> None:
        inputs, targets, extras = self.static
        inputs.copy_(batch.inputs, non_blocking=True)
        targets.copy_(batch.targets, non_blocking=True)
        for name, value in extras.items():
            if isinstance(value, torch.Tensor) and name in batch.extras:
                value.copy_(batch.extras[name], non_blocking=True)

    def _sync(self) -> None:
        """The scheduler's values into the tensors the graph reads, and (on a GPU) those
        tensors back in the groups where a scheduler assigned floats: the learning rate
        (a scheduler that assigns floats) and a synced beta1 (OneCycleLR's momentum)."""
        for group, (lr, beta1) in zip(self._groups(), self._synced):
            if group["lr"] is not lr:
                lr.fill_(float(group["lr"]))
                if not self.emulate:
                    group["lr"] = lr
            if beta1 is not None and group["betas"][0] is not beta1:
                beta1.fill_(float(group["betas"][0]))
                if not self.emulate:
                    group["betas"] = (beta1, *group["betas"][1:])

    def _replay(self) -> None:
        self._sync()
        if not self.emulate:
            self.replays += 1
            self.graph.replay()
            for param, grad in self._grads:  # after an eager step: the graph's buffers again
                if param.grad is not grad:
                    param.grad = grad
            return
        # the emulated replay: the captured function again, on the static buffers, with the
        # host state of the capture (the step, the optimizer's Python values) but for what
        # reaches a graph through the device (the learning rate, a synced beta1: read from
        # the tensors filled above); the backward writes the gradients anew, as in a graph
        self.optimizer.zero_grad(set_to_none=True)
        now = self.module.global_step
        current = [_host_values(group) for group in self._groups()]
        self.module.global_step = self._capture_step - 1
        for group, frozen, synced in zip(self._groups(), self._frozen, self._synced):
            group.update(_replayed(frozen, *synced))
        try:
            with self._in_graph():
                self.output = self._body(*self.static)
            self.replays += 1
        finally:
            self.module.global_step = now
            for group, values in zip(self._groups(), current):
                group.update(values)


class CaptureFailed(RuntimeError):
    """The step could not be captured; it runs eagerly (said in one line)."""


def _host_values(group: dict[str, Any]) -> dict[str, Any]:
    """A param group's settings held as Python values (a graph bakes them in)."""
    return {
        key: value
        for key, value in group.items()
        if key != "params" and not isinstance(value, torch.Tensor)
    }


def _replayed(
    frozen: dict[str, Any], lr: torch.Tensor, beta1: torch.Tensor | None
) -> dict[str, Any]:
    """What an emulated replay's optimizer reads: the capture's values `frozen`, but the
    learning rate and a synced beta1 from their tensors (as floats: the eager path)."""
    values = {**frozen, "lr": float(lr)}
    if beta1 is not None:
        values["betas"] = (float(beta1), *frozen["betas"][1:])
    return values


def _shapes(batch: Any) -> tuple:
    extras = tuple(
        (k, tuple(v.shape), v.dtype)
        for k, v in sorted(batch.extras.items())
        if isinstance(v, torch.Tensor)
    )
    return (tuple(batch.inputs.shape), batch.inputs.dtype, tuple(batch.targets.shape), extras)


def _cloned(extras: dict[str, Any]) -> dict[str, Any]:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in extras.items()}


def plain_learning_rates(optimizer: Any) -> None:
    """After a resume without graphs from a checkpoint written with them: the learning
    rates and betas back to floats (tensor ones are what graphs made, and a non-capturable
    foreach optimizer refuses them), `capturable` off where graphs had set it, and the
    step counts on the CPU (on the device, a non-capturable step reads each on the host:
    a sync per parameter per step)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    for group in inner.param_groups:
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"] = float(group["lr"])
            if group.get("capturable"):
                group["capturable"] = False
                for param in group["params"]:
                    state = inner.state.get(param, {})
                    if isinstance(state.get("step"), torch.Tensor):
                        state["step"] = state["step"].to("cpu", torch.float32)
        betas = group.get("betas")
        if betas is not None and any(isinstance(b, torch.Tensor) for b in betas):
            group["betas"] = tuple(float(b) for b in betas)
            if group.get("foreach") is False:
                group["foreach"] = None
