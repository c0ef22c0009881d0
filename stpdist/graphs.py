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
is the compiler's own CUDA graphs), not with `strategy: fsdp`. What it does not capture,
with one line, running eagerly instead: a module that may skip batches (a host read of
every loss), a batch whose shapes differ from the captured one (a last partial batch).

On a CPU the option is accepted and reported as not applicable. For tests and the GPU
check's dry run, `STPDIST_EMULATE_CUDA_GRAPHS=1` replays a "graph" on the CPU by running
the captured step function again on the static buffers with the host state of the
capture (the module's `global_step` as it was then): a step that read a host value not
refreshed through the device would train differently from eager, and the tests see it.
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
    if not why:
        return None
    return "trainer.cuda_graphs cannot run with " + "; ".join(why)


class StepGraph:
    """The captured training step of one run. `body(inputs, targets, extras)` is the
    step's forward, backward and optimizer step, returning the training step's output."""

    def __init__(self, module: Any, optimizer: Any, device: torch.device) -> None:
        self.module = module
        self.optimizer = optimizer
        self.device = device
        self.emulate = device.type != "cuda"
        self.eager_steps = 0
        self.graph: Any = None
        self.static: tuple | None = None
        self.output: Any = None
        self.shape_key: tuple | None = None
        self._told: set[tuple] = set()
        self._body: Callable[..., Any] | None = None
        self._capture_step = 0
        self._lrs: list[torch.Tensor] = []
        self._grads: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._stream = torch.cuda.Stream() if not self.emulate else None
        if not self.emulate:
            self._capturable()

    def _capturable(self) -> None:
        """The optimizer's step as device work only: `capturable` where it has the flag
        (Adam, AdamW, …), and each group's learning rate a device tensor that the scheduler
        fills in place (a float would be baked into the graph)."""
        for group in self._groups():
            if "capturable" in group:
                group["capturable"] = True
            group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
            self._lrs.append(group["lr"])
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        for state in inner.state.values():  # resumed: a capturable step count lives on the device
            if isinstance(state.get("step"), torch.Tensor):
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
        if not self.captured:
            return self.eager_steps >= WARMUP_STEPS
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

    def run(self, batch: Any, step: int, body: Callable[..., Any], extras: dict) -> Any:
        """Step `step` on `batch` through the graph (captured at the first call, with the
        hook extras `extras`); returns what `body` returns, in static buffers valid until
        the next replay."""
        self.module.refresh_graph_inputs(step)
        if not self.captured:
            self._capture(batch, step, body, extras)
        else:
            self._fill(batch)
        self._replay()
        return self.output

    def _capture(self, batch: Any, step: int, body: Callable[..., Any], extras: dict) -> None:
        self.shape_key = _shapes(batch)
        self.static = (batch.inputs.clone(), batch.targets.clone(), _cloned(extras))
        self._body, self._capture_step = body, step
        self.optimizer.zero_grad(set_to_none=True)  # the graph's backward writes them anew
        if self.emulate:
            self.graph = "emulated"
            return
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = body(*self.static)
        params = [p for group in self._groups() for p in group["params"]]
        self._grads = [(p, p.grad) for p in params if p.grad is not None]

    def _groups(self) -> list[dict]:
        return getattr(self.optimizer, "optimizer", self.optimizer).param_groups

    def _fill(self, batch: Any) -> None:
        inputs, targets, extras = self.static
        inputs.copy_(batch.inputs, non_blocking=True)
        targets.copy_(batch.targets, non_blocking=True)
        for name, value in extras.items():
            if isinstance(value, torch.Tensor) and name in batch.extras:
                value.copy_(batch.extras[name], non_blocking=True)

    def _replay(self) -> None:
        for group, lr in zip(self._groups(), self._lrs):
            if group["lr"] is not lr:  # a scheduler that assigns floats: into the graph's tensor
                lr.fill_(float(group["lr"]))
                group["lr"] = lr
        if not self.emulate:
            self.graph.replay()
            for param, grad in self._grads:  # after an eager step: the graph's buffers again
                if param.grad is not grad:
                    param.grad = grad
            return
        # the emulated replay: the captured function again, on the static buffers, with the
        # host state of the capture; the backward writes the gradients anew, as in a graph
        self.optimizer.zero_grad(set_to_none=True)
        now = self.module.global_step
        self.module.global_step = self._capture_step - 1
        try:
            self.output = self._body(*self.static)
        finally:
            self.module.global_step = now


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
    rates back to floats (a tensor one is what graphs made, and a non-capturable foreach
    optimizer refuses it) and `capturable` off where graphs had set it."""
    for group in getattr(optimizer, "optimizer", optimizer).param_groups:
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"] = float(group["lr"])
            if group.get("capturable"):
                group["capturable"] = False
