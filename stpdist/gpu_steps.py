"""The GPU check's sections on the launch-bound recurrent step (issue 22), kept apart from
`gpu_check` (which runs them and owns the plan, rows and report):

- ops: aten ops per eager training step (kernel-launching ones and all), each recurrent
  recipe with its fused regions off and on (`stpdist.bench.count_step_ops`);
- graphs: samples/s of the Trainer's steady-state step with `trainer.cuda_graphs` off and
  on, per recurrent recipe, at batch 16 and 64 (the dry run: the emulated graph on the
  CPU, `stpdist.graphs`), and how far the parameters after the run differ between the two;
- bf16 vs fp32: the ratio of the two precisions' training throughput per backbone, read
  from the backbone rows;
- steady-state step times of a Trainer (`trainer_step_times`), for the Trainer-vs-raw row.

Steady state: each optimizer step is timed from the end of the one before it (with a
device synchronisation after each), the first steps — warm-up, capture, compilation of
the fused regions — left out; medians.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch

from .bench import NO_KERNEL_OPS, bench_module, count_step_ops, synchronize

RECURRENT = ["convlstm", "predrnn", "predrnnpp", "predrnnv2", "mim", "mau", "phydnet", "trajgru"]
"""The recurrent recipes whose step issue 22 is about."""
STEADY_AFTER = 5
"""Optimizer steps left out before the steady state (3 warm-up steps, the capture, one)."""


@contextlib.contextmanager
def _emulated_graphs(on: bool) -> Iterator[None]:
    """The dry run's graphs: emulated on the CPU (see `stpdist.graphs`)."""
    from .graphs import EMULATE_ENV

    before = os.environ.get(EMULATE_ENV)
    if on:
        os.environ[EMULATE_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(EMULATE_ENV, None)
        else:
            os.environ[EMULATE_ENV] = before


def trainer_step_times(
    make_trainer: Callable[..., Any], module: Any, loader: Any, device: torch.device, **options
) -> list[float]:
    """Seconds of each optimizer step of `make_trainer(**options).fit(module, loader)`,
    each from the end of the one before (synchronised), the first leaving out set-up."""
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(out, **options)
        step = trainer._micro_step

        def timed(*args: Any, **kwargs: Any) -> bool:
            stop = step(*args, **kwargs)
            synchronize(device)
            stamps.append(time.perf_counter())
            return stop

        trainer._micro_step = timed
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the Trainer's own lines
                trainer.fit(module, loader)
        finally:
            trainer.close()
    return [b - a for a, b in zip(stamps, stamps[1:])]


def steady_median(times: list[float]) -> float:
    steady = times[STEADY_AFTER - 1 :] or times
    return statistics.median(steady)


def ops_rows(plan: Any, recipe_model: Callable[..., Any], row: Callable[..., Any]) -> list:
    """Per recurrent recipe: kernel-launching (and all) aten ops per eager training step,
    fused regions off and on, and on under bf16 autocast (its casts apart)."""
    from .bench import AutocastStep

    rows = []
    names = plan.recurrent
    for name in names:
        counts = {}
        # bf16 where the plan has it (not the dry run's CPU, where autocast is no GPU's)
        runs = [("off", "fp32"), ("on", "fp32")] + [("on", "bf16")] * ("bf16" in plan.precisions)
        for mode, precision in runs:
            torch.manual_seed(0)
            model = dataclasses.replace(recipe_model(plan, name), fused_kernels=mode)
            module = bench_module(model, plan.shape, plan.output_frames, plan.device)
            inputs = torch.rand(plan.shape, device=plan.device)
            targets = torch.rand(
                plan.batch, plan.output_frames, *plan.shape[2:], device=plan.device
            )
            step = AutocastStep(module, plan.device.type) if precision == "bf16" else module
            total, launching, per_op = count_step_ops(
                step, (inputs, targets), module.configure_optimizer()
            )
            top = [(n, k) for n, k in per_op.most_common() if n not in NO_KERNEL_OPS][:3]
            key = mode if precision == "fp32" else f"{mode}_{precision}"
            counts[key] = {
                "launching": launching, "all": total, "casts": per_op["_to_copy"], "top": top
            }  # fmt: skip
        off, on = counts["off"]["launching"], counts["on"]["launching"]
        bf16 = counts.get("on_bf16")
        rows.append(
            row(
                "ops",
                name,
                "dry" if plan.dry else "measured",
                f"kernel-launching aten ops per eager step: {off} fused off → {on} on "
                f"({on / off:.2f}×); all ops {counts['off']['all']} → {counts['on']['all']}"
                + (f"; on in bf16: {bf16['launching']} ({bf16['casts']} casts)" if bf16 else ""),
                counts,
            )
        )
    return rows


class GraphVariant(NamedTuple):
    """One way of running a recipe's training step in the graphs rows."""

    name: str
    label: str  # in the row
    precision: str
    cuda_graphs: bool
    cudnn_benchmark: bool | None
    channels_last: bool
    batches: tuple[int, ...]


GRAPH_VARIANTS = (
    # eager fp32 is the baseline; bf16 under graphs is the one that can be compute-bound;
    # channels-last is cuDNN's native layout for bf16 tensor cores (a channels-first
    # convolution converts its operands)
    GraphVariant("eager", "eager fp32", "fp32", False, None, False, (16, 64)),
    GraphVariant("graphs", "graphs", "fp32", True, None, False, (16, 64)),
    GraphVariant("graphs_bf16", "graphs bf16", "bf16", True, None, False, (16, 64)),
    GraphVariant(
        "graphs_bf16_cudnn_benchmark", "+ cudnn.benchmark", "bf16", True, True, False, (16,)
    ),
    GraphVariant("graphs_bf16_channels_last", "+ channels-last", "bf16", True, None, True, (16,)),
)
_LABELS = {variant.name: variant.label for variant in GRAPH_VARIANTS}


def step_flops(plan: Any, model: Any, shape: tuple) -> int:
    """FLOPs of one eager training step of `model` (a ModelConfig) at `shape`
    (`FlopCounterMode`: convolutions and matrix products, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    from .bench import _train_step

    torch.manual_seed(0)
    module = bench_module(model, shape, plan.output_frames, plan.device)
    inputs = torch.rand(shape, device=plan.device)
    targets = torch.rand(shape[0], plan.output_frames, *shape[2:], device=plan.device)
    with FlopCounterMode(display=False) as counter:
        _train_step(module, (inputs, targets), module.configure_optimizer())
    return counter.get_total_flops()


def graph_rows(
    plan: Any,
    recipe_model: Callable[..., Any],
    make_trainer: Callable[..., Any],
    row: Callable[..., Any],
    left_s: Callable[[], float],
) -> list:
    """Per recurrent recipe and batch size: the Trainer's steady-state samples/s eager in
    fp32 (the baseline), with `trainer.cuda_graphs` in fp32, in bf16, and (batch 16) in
    bf16 with `trainer.cudnn_benchmark` and with `trainer.channels_last` (GRAPH_VARIANTS;
    the recipe's scheduled sampling each time); the
    TFLOP/s each reaches; and the largest relative difference of a parameter after the
    eager and graphed fp32 runs. Every recipe at batch 16 first, then at 64, so a spent
    budget skips the larger batch. Why bf16: at batch 64, where launches are amortised, the
    H100's fp32 steps of ConvLSTM and PredRNN ran at 126 and 141 TFLOP/s, below what 3× their
    batch-16 eager speed needs (docs: performance, The GPU check)."""
    from torch.utils.data import DataLoader, TensorDataset

    rows = []
    sizes = (16, 64) if not plan.dry else (plan.batch,)
    steps = STEADY_AFTER + (10 if not plan.dry else 2)
    flops: dict[str, int | None] = {}  # per recipe at batch 1 (a step's FLOPs grow with the batch)
    for batch in sizes:
        for name in plan.recurrent:
            if left_s() < (0 if plan.dry else 30):
                rows.append(row("graphs", f"{name} batch {batch}", "skipped", "time budget spent"))
                continue
            shape = (batch, *plan.shape[1:])
            if name not in flops:
                try:  # the rows are worth more than their TFLOP/s
                    flops[name] = step_flops(plan, recipe_model(plan, name), shape) // batch
                except Exception:  # noqa: BLE001 - the row then says n/a
                    flops[name] = None
            g = torch.Generator().manual_seed(4)
            frames = torch.rand(
                steps * batch, shape[1] + plan.output_frames, *shape[2:], generator=g
            )
            data = TensorDataset(
                frames[:, : shape[1]].contiguous(), frames[:, shape[1] :].contiguous()
            )
            speed, params, errors = {}, {}, {}
            for variant in GRAPH_VARIANTS:
                if batch not in variant.batches and not plan.dry:
                    continue
                torch.manual_seed(0)
                module = bench_module(
                    recipe_model(plan, name), shape, plan.output_frames, plan.device
                )
                loader = DataLoader(data, batch_size=batch)
                try:  # one variant's failure is its row's error, not the section's
                    with _emulated_graphs(plan.dry and variant.cuda_graphs):
                        times = trainer_step_times(
                            make_trainer, module, loader, plan.device, max_steps=steps,
                            precision=variant.precision, cuda_graphs=variant.cuda_graphs,
                            cudnn_benchmark=variant.cudnn_benchmark,
                            channels_last=variant.channels_last,
                        )  # fmt: skip
                except Exception as exc:  # noqa: BLE001 - reported in the row
                    why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    errors[variant.name] = why
                    continue
                speed[variant.name] = batch / steady_median(times)
                if variant.precision == "fp32":
                    params[variant.cuda_graphs] = [
                        p.detach().float().clone() for p in module.parameters()
                    ]
            rows.append(
                _graph_row(plan, row, name, batch, steps, speed, params, errors, flops[name])
            )
    return rows


def _graph_row(
    plan: Any, row: Callable[..., Any], name: str, batch: int, steps: int,
    speed: dict[str, float], params: dict[bool, list], errors: dict[str, str],
    flops_per_sample: int | None,
) -> Any:  # fmt: skip
    diff = None
    if len(params) == 2:
        diff = max(
            float((a - b).norm() / b.norm().clamp_min(1e-30))
            for a, b in zip(params[True], params[False])
        )
    eager = speed.get("eager")
    tflops = {v: s * flops_per_sample / 1e12 for v, s in speed.items() if flops_per_sample}
    parts = []
    for variant, s in speed.items():
        times = f"{s / eager:.2f}×, " if eager and variant != "eager" else ""
        rate = f"{tflops[variant]:.3g} TFLOP/s" if variant in tflops else "TFLOP/s n/a"
        parts.append(f"{_LABELS[variant]} {s:.1f} samples/s ({times}{rate})")
    parts += [f"{_LABELS[v]}: {why}" for v, why in errors.items()]
    if diff is not None:
        parts.append(
            f"fp32 parameters after {steps} steps, eager and graphs, differ by ≤ {diff:.1e} "
            "(relative)"
        )
    return row(
        "graphs",
        f"{name} batch {batch}",
        "error" if errors else "dry" if plan.dry else "measured",
        "; ".join(parts) + "; steady state",
        {
            **{f"samples_per_s_{v}": s for v, s in speed.items()},
            **{f"speedup_{v}": s / eager for v, s in speed.items() if eager and v != "eager"},
            **{f"train_tflops_per_s_{v}": t for v, t in tflops.items()},
            "train_flops_per_sample": flops_per_sample,
            "max_relative_param_diff": diff,
            "errors": errors,
            "steps": steps,
        },
    )


def precision_rows(rows: list, row: Callable[..., Any]) -> list:
    """bf16 against fp32 per backbone, from the backbone rows of this run."""
    by = {}
    for r in rows:
        if r.section == "backbones" and "samples_per_s" in r.values:
            name, precision = r.item.rsplit(" ", 1)
            by.setdefault(name, {})[precision] = r.values["samples_per_s"]
    out = []
    for name, speeds in sorted(by.items()):
        if {"bf16", "fp32"} <= speeds.keys():
            ratio = speeds["bf16"] / speeds["fp32"]
            verdict = "bf16 at least as fast" if ratio >= 1 else "bf16 SLOWER than fp32"
            out.append(
                row("bf16 vs fp32", name, "measured", f"{ratio:.2f}× ({verdict})", {"ratio": ratio})
            )
    return out
