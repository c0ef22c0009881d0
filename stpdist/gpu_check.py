"""One GPU check, one table: `python -m stpdist.gpu_check [--dry] [--out FILE]
[--budget-s S] [--only SECTIONS] [--models NAMES]` (`launch/gpu_check.sh` runs it). Sized
for under 8 minutes on one H200; `--only graphs,backbones --models mau,phydnet` measures
what an earlier run's budget left out.

On a CUDA device it runs, in this order, and prints one table (also written as JSON to
`--out`, rewritten after every section, so a run cut short keeps what it measured):

1. tests: the GPU-marked tests (`pytest -m gpu`), before anything else uses the device;
2. host syncs: synchronising CUDA calls per steady-state Trainer step, counted as the
   warnings of `torch.cuda.set_sync_debug_mode("warn")`, and host reads of device tensor
   values (`item`, `tolist`, `bool`, `float`, `int`, `numpy`, `cpu`) per step;
3. the stpdist Trainer against a hand-written loop on the same model and batches
   (samples/s, interleaved rounds, medians);
4. fp16: an inf injected into one gradient skips exactly one optimizer step, the grad
   scaler halves its scale, and the next step applies (a raw GradScaler loop, and the
   Trainer with `mixed_precision="fp16"`);
5. every backbone at OpenSTL's Moving MNIST settings (the `configs/mmnist` recipes'
   backbone arguments, 10→10 frames of 1×64×64, batch 16), bf16 and fp32: training
   samples/s, inference FPS (batch-16 forward) beside OpenSTL's published V100 FPS, peak
   memory (`torch.cuda.max_memory_allocated`), and the training step's FLOPs (counted by
   `torch.utils.flop_counter.FlopCounterMode`) per second as a share of the device's dense
   bf16 peak (a table of constants by device name; unknown devices: n/a);
6. the launch-bound recurrent step (`stpdist.gpu_steps`): aten ops per eager step with
   the fused regions off and on, and the Trainer's steady-state samples/s with
   `trainer.cuda_graphs` off and on, per recurrent recipe at batch 16 and 64; after the
   backbones, bf16 against fp32 per backbone;
7. torch.compile on and off (what `trainer.compile` compiles) for ConvLSTM with its
   recipe's scheduled sampling, and for SimVP: compile time, steady-state step time,
   recompilations per 100 steps after the warm-up.

Timed regions on the GPU begin and end with `torch.cuda.synchronize()`.

`--dry` runs the same code paths on the CPU at tiny shapes (2 backbones with small
arguments, 2 steps, fp32 only; compile with dynamo's "eager" backend, no code
generation) so the script cannot rot; what cannot run on a CPU says "skipped" and why.
Row status: `measured` (on the GPU), `dry` (ran on the CPU at toy sizes: the code path
works, the numbers mean nothing), `passed`/`failed` (a check), `skipped` (with the
reason), `error` (the section raised; the message is the result). Exit status 1 when
any row failed or errored.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from . import recipes
from .bench import (
    StepRunner,
    _inference_fps,
    bench_model,
    bench_module,
    describe_threads,
    synchronize,
    thread_settings,
)
from .gpu_steps import RECURRENT, graph_rows, ops_rows, precision_rows

ROOT = Path(__file__).resolve().parent.parent  # a checkout's root (its tests/)
RECIPES = (recipes.folder() or ROOT / recipes.FOLDER_NAME) / "mmnist"  # a wheel ships them

OPENSTL_V100_FPS = {
    "convlstm": 113,
    "predrnn": 54,
    "predrnnpp": 38,
    "mim": 37,
    "e3dlstm": 18,
    "phydnet": 182,
    "mau": 201,
    "predrnnv2": 52,
    "simvp": 282,  # SimVP v2 (gSTA), the recipe's translator
    "tau": 283,
}
"""The FPS column of OpenSTL's Moving MNIST table (one V100, batch 16), shown beside our
sequences per second of a batch-16 eval forward (as `stpdist bench model` reports it).
TrajGRU, SwinLSTM and PredFormer are not in that table."""

BF16_DENSE_TFLOPS = (
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM (HBM3)
    ("A100", 312.0),
)
"""Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, matched in order
against the device name (so 'H100 PCIe' before 'H100')."""


def bf16_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a device by name, None when it is not in the table."""
    for key, tflops in BF16_DENSE_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


# ------------------------------------------------------------------------------ plan
@dataclasses.dataclass
class Plan:
    """What one run does; `Plan.for_device` gives the GPU or the dry (CPU) plan."""

    dry: bool
    device: torch.device
    backbones: list[str]
    """Recipe names under configs/mmnist."""
    precisions: tuple[str, ...]
    batch: int
    input_frames: int
    output_frames: int
    size: int
    warmup: int
    steps: int
    rounds: int
    trainer_steps: int
    compile_models: list[str]
    compile_backend: str
    budget_s: float
    recurrent: list[str] = dataclasses.field(default_factory=list)
    """The recurrent recipes of the ops and graphs sections."""
    """Wall-clock budget: the backbone section shortens its timed steps, and the compile
    section skips a model, rather than run over it."""

    @classmethod
    def for_device(cls, dry: bool, budget_s: float) -> Plan:
        if dry:
            return cls(
                dry=True,
                device=torch.device("cpu"),
                backbones=["convlstm", "simvp"],
                precisions=("fp32",),
                batch=2,
                input_frames=2,
                output_frames=2,
                size=16,
                warmup=1,
                steps=2,
                rounds=1,
                trainer_steps=4,
                compile_models=["convlstm"],
                compile_backend="eager",
                budget_s=budget_s,
                recurrent=["convlstm"],
            )
        return cls(
            dry=False,
            device=torch.device("cuda"),
            backbones=sorted(p.stem for p in RECIPES.glob("*.yaml")),
            precisions=("bf16", "fp32"),
            batch=16,
            input_frames=10,
            output_frames=10,
            size=64,
            warmup=3,
            steps=10,
            rounds=2,
            trainer_steps=30,
            compile_models=["convlstm", "simvp"],
            compile_backend="inductor",
            budget_s=budget_s,
            recurrent=list(RECURRENT),
        )

    def only_models(self, names: list[str]) -> None:
        """Keep these models in every per-model section (`--models`)."""
        known = set(self.backbones) | set(self.recurrent) | set(self.compile_models)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(
                f"--models: {', '.join(unknown)} not in this check; its models are "
                + ", ".join(sorted(known))
            )
        self.backbones = [n for n in self.backbones if n in names]
        self.recurrent = [n for n in self.recurrent if n in names]
        self.compile_models = [n for n in self.compile_models if n in names]

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (self.batch, self.input_frames, 1, self.size, self.size)


DRY_BACKBONES = {
    # the recipes' arguments at toy widths, so a CPU runs each path in well under a second
    "convlstm": {"hidden_channels": [4], "kernel_size": 3},
    "simvp": {
        "spatial_channels": 8,
        "temporal_channels": 16,
        "num_spatial_blocks": 2,
        "num_translator_blocks": 2,
    },
}


def recipe_model(plan: Plan, name: str) -> Any:
    """The `model` section of configs/mmnist/NAME.yaml (dry: at toy widths)."""
    from .config import load_config

    model = load_config(RECIPES / f"{name}.yaml").model
    if plan.dry:
        model = dataclasses.replace(
            model, backbone={**dict(model.backbone), **DRY_BACKBONES.get(name, {})}
        )
    return model


def batches(plan: Plan, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` batches' worth of random inputs and targets on the host."""
    g = torch.Generator().manual_seed(seed)
    b, t_in, c, h, w = plan.shape
    frames = torch.rand(count * b, t_in + plan.output_frames, c, h, w, generator=g)
    return frames[:, :t_in].contiguous(), frames[:, t_in:].contiguous()


# ------------------------------------------------------------------------------- rows
@dataclasses.dataclass
class Row:
    section: str
    item: str
    status: str
    """measured | dry | passed | failed | skipped | error"""
    result: str
    values: dict[str, Any] = dataclasses.field(default_factory=dict)


class Report:
    """The rows so far, written as JSON after every section."""

    def __init__(self, plan: Plan, out: Path) -> None:
        self.plan, self.out, self.rows = plan, out, []
        self.started = time.perf_counter()
        self.meta = environment(plan)

    def add(self, row: Row) -> Row:
        """`row` kept, and printed with its result at once: a run cut off by a time limit
        still shows what it measured."""
        from .models import fused

        if fused._BROKEN:  # the fused gate arithmetic fell back to op-by-op: say which rows
            row.values["fused_fallback_after"] = list(fused._BROKEN)
        self.rows.append(row)
        took = row.values.get("section_s")
        print(
            f"gpu_check: {row.section} / {row.item}: {row.status}"
            + (f" ({took} s)" if took is not None else "")
            + (f": {row.result}" if row.result else ""),
            file=sys.stderr,
        )
        return row

    def measured(self) -> str:
        return "dry" if self.plan.dry else "measured"

    def left_s(self) -> float:
        return self.plan.budget_s - (time.perf_counter() - self.started)

    def write(self) -> None:
        self.meta["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        data = {"meta": self.meta, "rows": [dataclasses.asdict(r) for r in self.rows]}
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(data, indent=1, default=str) + "\n")

    def table(self) -> str:
        m = self.meta
        peak = m["bf16_peak_tflops"]
        lines = [
            f"stpdist GPU check — {m['device_name']}, torch {m['torch']}, CUDA {m['cuda']}, "
            f"{m['date']}; dense bf16 peak {f'{peak:.0f} TFLOP/s' if peak else 'n/a'}"
            + (" — DRY RUN on CPU at toy sizes: code paths only, no result" if m["dry"] else ""),
            f"{m['threads']}; TF32 matmul {m['tf32_matmul']}, cuDNN TF32 {m['tf32_cudnn']}, "
            f"cuDNN benchmark {m['cudnn_benchmark']}; {m['elapsed_s']} s",
        ]
        widths = (11, 30, 9)
        lines.append(
            f"{'section':<{widths[0]}} {'item':<{widths[1]}} {'status':<{widths[2]}} result"
        )
        for r in self.rows:
            lines.append(
                f"{r.section:<{widths[0]}} {r.item:<{widths[1]}} {r.status:<{widths[2]}} {r.result}"
            )
        fallen = [r for r in self.rows if r.values.get("fused_fallback_after")]
        if fallen:
            lines.append(
                f"note: the fused kernels failed to compile ({fallen[0].values['fused_fallback_after'][0]}"
                f"); the rows from '{fallen[0].section} / {fallen[0].item}' on ran steps "
                "with the op-by-op gate arithmetic"
            )
        return "\n".join(lines)


def environment(plan: Plan) -> dict[str, Any]:
    name = torch.cuda.get_device_name(plan.device) if plan.device.type == "cuda" else "CPU"
    return {
        "dry": plan.dry,
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "bf16_peak_tflops": bf16_peak_tflops(name) if plan.device.type == "cuda" else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "threads": describe_threads(),
        "thread_settings": thread_settings(),
        "plan": {
            k: (str(v) if isinstance(v, torch.device) else v)
            for k, v in dataclasses.asdict(plan).items()
        },
    }


def _guarded(report: Report, section: str, item: str, run: Callable[[], Row | list[Row]]) -> None:
    """Run one check; an exception becomes an `error` row naming it (the other checks
    still run, and the exit status says something failed)."""
    start = time.perf_counter()
    try:
        produced = run()
    except Exception as exc:  # recorded in the table and the exit status, not swallowed
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        produced = Row(section, item, "error", f"{type(exc).__name__}: {first}")
    rows = produced if isinstance(produced, list) else [produced]
    for row in rows:
        row.values["section_s"] = round(time.perf_counter() - start, 2)
        report.add(row)
    if plan_is_gpu(report):
        torch.cuda.empty_cache()


def plan_is_gpu(report: Report) -> bool:
    return report.plan.device.type == "cuda"


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """What a section prints (benchmark lines, the Trainer's banner) goes to a buffer: the
    check prints one table."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer


# ------------------------------------------------------------------------------ tests
def start_gpu_tests() -> subprocess.Popen | None:
    """`pytest -m gpu` over the test files that hold GPU-marked tests, started now."""
    tests = ROOT / "tests"
    files = [str(f) for f in sorted(tests.glob("test_*.py")) if "mark.gpu" in f.read_text()]
    if not files:
        return None
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    return subprocess.Popen(
        [*command, *files],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "WANDB_MODE": "offline"},
    )


def finish_gpu_tests(plan: Plan, process: subprocess.Popen | None) -> Row:
    if process is None:
        where = (
            "in tests/"
            if (ROOT / "tests").is_dir()
            else f"(no tests/ beside {ROOT}: not a checkout)"
        )
        return Row("tests", "pytest -m gpu", "skipped", f"no GPU-marked tests found {where}")
    try:
        output, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        return Row("tests", "pytest -m gpu", "failed", "timed out after 300 s")
    counts = {
        word.rstrip("s") if word.startswith("error") else word: int(n)
        for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", output)
    }
    summary = ", ".join(f"{n} {word}" for word, n in counts.items() if word != "deselected")
    values = {"counts": counts, "returncode": process.returncode}
    bad = counts.get("failed", 0) + counts.get("error", 0)
    if plan.device.type != "cuda":
        status = "failed" if bad else "skipped"
        return Row("tests", "pytest -m gpu", status, f"{summary} (no CUDA device here)", values)
    passed = counts.get("passed", 0)
    status = "passed" if passed and not bad and process.returncode == 0 else "failed"
    tail = "" if status == "passed" else " — " + output.strip().splitlines()[-1][:150]
    return Row("tests", "pytest -m gpu", status, summary + tail, values)


# ---------------------------------------------------------------------- host syncs
class HostReads(TorchFunctionMode):
    """Counts reads of tensor values into Python (`item`, `tolist`, `bool`, `float`, `int`,
    `index`, `numpy`, and `cpu`/`to` of a device tensor) per `module.global_step`, with
    where they came from. On a GPU only reads of device tensors count (each waits for the
    device); on a CPU every read counts except the optimizer's own step counters (host
    tensors, read by torch.optim on every device)."""

    READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy"}
    MOVES = {"cpu", "to"}

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.module, self.device = module, device
        self.by_step: Counter[int] = Counter()
        self.where: Counter[str] = Counter()

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if args and isinstance(args[0], torch.Tensor) and self._is_read(name, args, kwargs):
            site = self._site()
            if site is not None:
                self.by_step[self.module.global_step] += 1
                self.where[site] += 1
        return func(*args, **kwargs)

    def _is_read(self, name: str, args: tuple, kwargs: dict) -> bool:
        tensor = args[0]
        on_device = tensor.device.type != "cpu"
        if name in self.MOVES:
            target = kwargs.get("device", args[1] if len(args) > 1 else None)
            moves_out = name == "cpu" or str(target).startswith("cpu")
            return on_device and moves_out
        if name not in self.READS:
            return False
        return on_device or self.device.type == "cpu"

    @staticmethod
    def _site() -> str | None:
        """'file:line' of the code that read the value (None: torch.optim's host step
        counters). Frames inside torch's tensor wrappers are skipped."""
        frame = sys._getframe(2)
        while frame is not None and frame.f_code.co_filename.endswith(
            ("torch/_tensor.py", "torch/overrides.py", "torch/_tensor_str.py")
        ):
            frame = frame.f_back
        if frame is None:
            return "?"
        filename = frame.f_code.co_filename
        if "/torch/optim/" in filename:
            return None
        return f"{'/'.join(Path(filename).parts[-2:])}:{frame.f_lineno}"


def _bench_trainer(
    plan: Plan,
    output_dir: str,
    max_steps: int,
    precision: str,
    cuda_graphs: bool = False,
    cudnn_benchmark: bool | None = None,
    channels_last: bool = False,
) -> Any:
    """A Trainer for timing: no checkpoints written, no logging inside the timed steps."""
    from .config import CheckpointConfig
    from .trainer import Trainer

    trainer = Trainer(
        max_epochs=1,
        max_steps=max_steps,
        output_dir=output_dir,
        progress_bar=False,
        log_every_n_steps=10**9,
        checkpoint=CheckpointConfig(every_epoch=False),
        mixed_precision={"fp32": "no"}.get(precision, precision),
        cuda_graphs=cuda_graphs,
        cudnn_benchmark=cudnn_benchmark,
        channels_last=channels_last,
    )
    trainer.checkpoints.save = lambda *a, **k: None  # time the loop, not the disk
    return trainer


def check_host_syncs(plan: Plan) -> list[Row]:
    """Synchronising CUDA calls and host reads per steady-state Trainer step (ConvLSTM's
    recipe, scheduled sampling on): steps after the warm-up, before the last (whose end
    holds fit's final check point)."""
    from torch.utils.data import DataLoader, TensorDataset

    warm, counted = 3, 10
    total = warm + counted + 1
    precision = plan.precisions[0]
    torch.manual_seed(0)
    module = bench_module(
        recipe_model(plan, "convlstm"), plan.shape, plan.output_frames, plan.device
    )
    loader = DataLoader(TensorDataset(*batches(plan, total)), batch_size=plan.batch)
    syncs: Counter[int] = Counter()
    sync_sites: Counter[str] = Counter()

    def record(
        message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        if "synchroniz" in str(message):
            syncs[module.global_step] += 1
            sync_sites[f"{'/'.join(Path(filename).parts[-2:])}:{lineno}"] += 1

    reads = HostReads(module, plan.device)
    on_gpu = plan.device.type == "cuda"
    with tempfile.TemporaryDirectory() as out, _quiet(), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        trainer = _bench_trainer(plan, out, total, precision)
        try:
            if on_gpu:
                torch.cuda.set_sync_debug_mode("warn")
            with reads:
                trainer.fit(module, loader)
        finally:
            if on_gpu:
                torch.cuda.set_sync_debug_mode("default")
            trainer.close()
    steps = range(warm, warm + counted)  # global_step during optimizer steps warm+1 … warm+counted
    per_step_reads = sum(reads.by_step[s] for s in steps) / counted
    top = ", ".join(f"{site} ×{n}" for site, n in reads.where.most_common(3)) or "none"
    rows = [
        Row(
            "host syncs",
            "host reads / step",
            "dry" if plan.dry else "measured",
            f"{per_step_reads:.1f} per steady-state step (steps {warm + 1}–{warm + counted}, "
            f"{precision}); all reads of the run: {top}",
            {
                "per_step": per_step_reads,
                "by_step": dict(reads.by_step),
                "sites": dict(reads.where),
            },
        )
    ]
    if on_gpu:
        per_step = sum(syncs[s] for s in steps) / counted
        top = ", ".join(f"{site} ×{n}" for site, n in sync_sites.most_common(3)) or "none"
        rows.append(
            Row(
                "host syncs",
                "CUDA syncs / step",
                "measured",
                f"{per_step:.1f} per steady-state step (set_sync_debug_mode warnings); all "
                f"syncs of the run: {top}",
                {"per_step": per_step, "by_step": dict(syncs), "sites": dict(sync_sites)},
            )
        )
    else:
        rows.append(
            Row(
                "host syncs",
                "CUDA syncs / step",
                "skipped",
                "torch.cuda.set_sync_debug_mode needs a CUDA device",
            )
        )
    return rows


# ------------------------------------------------------------------ trainer vs raw
def check_trainer_vs_raw(plan: Plan) -> Row:
    """The Trainer against a hand-written loop (the same Forecaster, initial weights,
    batches, optimizer and precision): samples/s over a whole run each, in interleaved
    rounds (which goes first alternates), medians. The raw loop copies each batch to the
    device and calls `training_step`, backward, step; the Trainer adds its own work
    (device-side scaling, notes for the check points, its LR schedule)."""
    from torch.utils.data import DataLoader, TensorDataset

    precision = plan.precisions[0]
    model = recipe_model(plan, "convlstm")
    count = plan.trainer_steps
    dataset = TensorDataset(*batches(plan, count, seed=1))
    samples = count * plan.batch

    def raw() -> float:
        torch.manual_seed(0)
        module = bench_module(model, plan.shape, plan.output_frames, plan.device)
        runner = StepRunner(module, precision=precision)
        loader = DataLoader(dataset, batch_size=plan.batch, pin_memory=plan.device.type == "cuda")
        synchronize(plan.device)
        start = time.perf_counter()
        for inputs, targets in loader:
            inputs = inputs.to(plan.device, non_blocking=True)
            runner.step(inputs, targets.to(plan.device, non_blocking=True))
        synchronize(plan.device)
        return samples / (time.perf_counter() - start)

    def ours() -> float:
        torch.manual_seed(0)
        module = bench_module(model, plan.shape, plan.output_frames, plan.device)
        loader = DataLoader(dataset, batch_size=plan.batch)
        with tempfile.TemporaryDirectory() as out, _quiet():
            trainer = _bench_trainer(plan, out, count, precision)
            synchronize(plan.device)
            start = time.perf_counter()
            trainer.fit(module, loader)
            synchronize(plan.device)
            elapsed = time.perf_counter() - start
            trainer.close()
        return samples / elapsed

    if not plan.dry:  # cuDNN, cuBLAS and the allocator warm up outside the timing
        raw()
        ours()
    runs: dict[str, list[float]] = {"raw": [], "trainer": []}
    for round_ in range(max(plan.rounds, 1) + (0 if plan.dry else 1)):
        order = [("raw", raw), ("trainer", ours)]
        for key, run in order if round_ % 2 == 0 else reversed(order):
            runs[key].append(run())
    med = {k: statistics.median(v) for k, v in runs.items()}
    ratio = med["trainer"] / med["raw"]
    steady = _steady_trainer_vs_raw(plan, model, dataset, precision)
    return Row(
        "trainer",
        "Trainer vs raw loop",
        "dry" if plan.dry else "measured",
        f"whole runs: Trainer {med['trainer']:.1f} vs raw {med['raw']:.1f} samples/s = "
        f"{ratio:.3f}× (setup included); steady state: {steady['ratio']:.3f}× "
        f"({steady['trainer_ms']:.1f} vs {steady['raw_ms']:.1f} ms/step) (convlstm recipe, "
        f"{precision}, {count} steps a run, medians of {len(runs['raw'])} interleaved runs)",
        {"samples_per_s": med, "runs": runs, "ratio": ratio, "steady": steady},
    )


def _steady_trainer_vs_raw(plan: Plan, model: Any, dataset: Any, precision: str) -> dict:
    """Steady-state step times (each step synchronised, the first steps left out) of the
    Trainer and of the raw loop, interleaved rounds, medians."""
    from torch.utils.data import DataLoader

    from .gpu_steps import steady_median, trainer_step_times

    def raw() -> float:
        torch.manual_seed(0)
        module = bench_module(model, plan.shape, plan.output_frames, plan.device)
        runner, stamps = StepRunner(module, precision=precision), []
        for inputs, targets in DataLoader(dataset, batch_size=plan.batch):
            runner.step(inputs.to(plan.device), targets.to(plan.device))
            synchronize(plan.device)
            stamps.append(time.perf_counter())
        return steady_median([b - a for a, b in zip(stamps, stamps[1:])])

    def ours() -> float:
        torch.manual_seed(0)
        module = bench_module(model, plan.shape, plan.output_frames, plan.device)
        loader = DataLoader(dataset, batch_size=plan.batch)
        with _quiet():
            times = trainer_step_times(
                lambda out, **o: _bench_trainer(plan, out, len(loader), precision),
                module, loader, plan.device,
            )  # fmt: skip
        return steady_median(times)

    runs: dict[str, list[float]] = {"raw": [], "trainer": []}
    for round_ in range(max(plan.rounds, 1)):
        order = [("raw", raw), ("trainer", ours)]
        for key, run in order if round_ % 2 == 0 else reversed(order):
            runs[key].append(run())
    raw_s, ours_s = statistics.median(runs["raw"]), statistics.median(runs["trainer"])
    return {"ratio": raw_s / ours_s, "raw_ms": 1000 * raw_s, "trainer_ms": 1000 * ours_s}


# ---------------------------------------------------------------------------- fp16
def _adam_steps(optimizer: torch.optim.Optimizer) -> int:
    """Optimizer steps Adam applied (its per-parameter step count; skipped steps do not
    count)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state:
                return int(state["step"])
    return 0


def check_fp16_scaler(plan: Plan) -> Row:
    """A hand-written GradScaler loop: first warmed until its scale is stable (at the
    initial scale of 65536 the first fp16 steps may overflow by themselves, and each such
    step is skipped: that is the scaler working, not what is checked), then 4 steps with an
    inf written into one gradient at step 2: exactly one optimizer step skipped, the scale
    halved there, step 3 applied with the halved scale. (CPU: torch's CPU GradScaler on
    fp32 compute: the scaler's logic only.)"""
    device = plan.device
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 3, padding=1)
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type)
    x = torch.rand(4, 1, 16, 16, device=device)

    def fp16_step() -> None:
        with torch.autocast(device.type, torch.float16, enabled=device.type == "cuda"):
            loss = (model(x) - x).pow(2).mean()
        scaler.scale(loss).backward()

    warm_scales = [scaler.get_scale()]
    while len(warm_scales) < 20 and (len(warm_scales) < 3 or warm_scales[-1] != warm_scales[-3]):
        fp16_step()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        warm_scales.append(scaler.get_scale())
    warmed = _adam_steps(optimizer)
    scales, applied, changed = [], [], []
    for step in range(1, 5):
        before = [p.detach().clone() for p in model.parameters()]
        fp16_step()
        if step == 2:
            next(model.parameters()).grad.view(-1)[0] = math.inf  # the forced overflow
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scales.append(scaler.get_scale())
        applied.append(_adam_steps(optimizer) - warmed)
        changed.append(any(not torch.equal(a, b) for a, b in zip(before, model.parameters())))
    ok = (
        applied == [1, 1, 2, 3]
        and changed == [True, False, True, True]
        and scales[1] == scales[0] * scaler.get_backoff_factor()
        and scales[2] == scales[1]
    )
    where = "fp16 autocast" if device.type == "cuda" else "CPU GradScaler, fp32 compute"
    return Row(
        "fp16",
        "GradScaler, forced overflow",
        "passed" if ok else "failed",
        f"after {len(warm_scales) - 1} warm-up steps (scale {warm_scales[0]:g} → "
        f"{warm_scales[-1]:g}), inf at step 2: optimizer steps applied {applied}, weights "
        f"changed {changed}, scale {scales[0]:g} → {scales[1]:g} → {scales[2]:g} ({where})",
        {"applied": applied, "changed": changed, "scales": scales, "warm_scales": warm_scales},
    )


def check_fp16_trainer(plan: Plan) -> Row:
    """The Trainer with mixed_precision="fp16": an inf in one gradient at the 2nd backward
    of 4 leaves 3 applied optimizer steps and the scale halved once. The model is ConvLSTM
    at toy widths (what is checked is the Trainer's handling of the scaler; a large model
    can overflow by itself in its first fp16 steps, which would blur the count)."""
    if plan.device.type != "cuda":
        return Row(
            "fp16",
            "Trainer fp16, forced overflow",
            "skipped",
            "the Trainer refuses fp16 without CUDA (it would silently run fp32)",
        )
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = recipe_model(plan, "convlstm")
    model = dataclasses.replace(model, backbone={**model.backbone, **DRY_BACKBONES["convlstm"]})
    module = bench_module(model, plan.shape, plan.output_frames, plan.device)
    backwards = []

    def overflow_once(grad: torch.Tensor) -> torch.Tensor:
        backwards.append(1)
        return torch.full_like(grad, math.inf) if len(backwards) == 2 else grad

    next(module.parameters()).register_hook(overflow_once)
    made = []  # the optimizer the Trainer asks the module for, kept to read its state
    configure = module.configure_optimizer
    module.configure_optimizer = lambda: made.append(configure()) or made[-1]
    loader = DataLoader(TensorDataset(*batches(plan, 4, seed=2)), batch_size=plan.batch)
    with tempfile.TemporaryDirectory() as out, _quiet():
        trainer = _bench_trainer(plan, out, 4, "fp16")
        initial = trainer.accelerator.scaler.get_scale()
        trainer.fit(module, loader)
        scale = trainer.accelerator.scaler.get_scale()
        trainer.close()
    applied = _adam_steps(made[0])
    ok = scale == initial * 0.5 and len(backwards) == 4 and applied == 3
    return Row(
        "fp16",
        "Trainer fp16, forced overflow",
        "passed" if ok else "failed",
        f"inf at backward 2 of {len(backwards)}: optimizer steps applied {applied} of 4, "
        f"scale {initial:g} → {scale:g}",
        {"initial_scale": initial, "final_scale": scale, "applied": applied},
    )


# ----------------------------------------------------------------------- backbones
def check_backbones(plan: Plan, report: Report, deadline: float) -> None:
    """Every recipe's backbone in every precision (see the module docstring)."""
    rows_left = len(plan.backbones) * len(plan.precisions)
    for name in plan.backbones:
        flops: list[int] = []  # counted once per backbone (precision does not change it)
        for precision in plan.precisions:
            left = deadline - time.perf_counter()
            if left < 5:
                report.add(Row("backbones", f"{name} {precision}", "skipped", "time budget spent"))
            else:
                _guarded(
                    report,
                    "backbones",
                    f"{name} {precision}",
                    lambda n=name, p=precision, s=left / rows_left, f=flops: _backbone_row(
                        plan, n, p, s, f
                    ),
                )
            rows_left -= 1
        report.write()


def _backbone_row(
    plan: Plan, name: str, precision: str, allowance_s: float, flops: list[int]
) -> Row:
    from torch.utils.flop_counter import FlopCounterMode

    device, on_gpu = plan.device, plan.device.type == "cuda"
    torch.manual_seed(0)
    model = recipe_model(plan, name)
    module = bench_module(model, plan.shape, plan.output_frames, device)
    runner = StepRunner(module, precision=precision)
    inputs, targets = (t.to(device) for t in batches(plan, 1, seed=3))
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    runner.timed_block(inputs, targets, plan.warmup)
    warm_s = (time.perf_counter() - start) / plan.warmup
    # fit the timed steps into this row's share of the budget (never fewer than 2)
    steps = max(2, min(plan.steps, int(0.5 * allowance_s / max(warm_s, 1e-6) / plan.rounds)))
    seconds = [runner.timed_block(inputs, targets, steps) for _ in range(plan.rounds)]
    step_s = statistics.median(seconds)
    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if on_gpu else None
    if not flops:
        with FlopCounterMode(display=False) as counter:
            runner.step(inputs, targets)
        flops.append(counter.get_total_flops())
    with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
        fps = _inference_fps(module, plan.shape, plan.output_frames, steps, device.type)
    tflops = flops[0] / step_s / 1e12
    peak = bf16_peak_tflops(torch.cuda.get_device_name(device)) if on_gpu else None
    share = None if peak is None else 100 * tflops / peak
    openstl = OPENSTL_V100_FPS.get(name) if on_gpu else None  # a CPU dry run: no match
    values = {
        "precision": precision,
        "batch": plan.batch,
        "samples_per_s": plan.batch / step_s,
        "step_ms": 1000 * step_s,
        "step_ms_rounds": [1000 * s for s in seconds],
        "timed_steps": steps * plan.rounds,
        "inference_fps": fps,
        "openstl_v100_fps": openstl,
        "peak_mb": peak_mb,
        "train_flops_per_step": flops[0],
        "train_tflops_per_s": tflops,
        "percent_of_bf16_peak": share,
        "sampling": model.sampling.mode,
    }
    result = (
        f"train {plan.batch / step_s:.1f} samples/s ({1000 * step_s:.1f} ms/step, median of "
        f"{plan.rounds}×{steps}); infer {fps:.1f} sequences/s (OpenSTL's V100 'FPS': "
        f"{openstl if openstl else '—'}); peak "
        f"{f'{peak_mb / 1024:.2f} GiB' if peak_mb is not None else 'n/a (CPU)'}; "
        f"{tflops:.3g} TFLOP/s = "
        f"{f'{share:.1f}%' if share is not None else 'n/a'} of bf16 peak"
    )
    return Row(
        "backbones", f"{name} {precision}", "dry" if plan.dry else "measured", result, values
    )


# -------------------------------------------------------------------- launch-bound step
LATER_RESERVE_S = 120.0
"""Seconds of the budget the graphs rows leave to each later section that runs."""


def check_launch_bound(plan: Plan, report: Report, sections: frozenset[str]) -> None:
    """Ops per step (fused regions off and on) and CUDA graphs off and on, per recurrent
    recipe (`stpdist.gpu_steps`)."""

    def make_trainer(out: str, **o: Any) -> Any:
        return _bench_trainer(
            plan, out, o["max_steps"], o["precision"], o["cuda_graphs"],
            o.get("cudnn_benchmark"), o.get("channels_last", False),
        )  # fmt: skip

    if "ops" in sections:
        _guarded(report, "ops", "per step", lambda: ops_rows(plan, recipe_model, Row))
        report.write()
    if "graphs" in sections:
        # the sections after it keep a share of the budget (the backbone rows give bf16
        # against fp32 for the backbones that are not recurrent)
        later = 0 if plan.dry else LATER_RESERVE_S * len({"backbones", "compile"} & sections)
        _guarded(
            report,
            "graphs",
            "cuda_graphs",
            lambda: graph_rows(
                plan, recipe_model, make_trainer, Row, lambda: report.left_s() - later
            ),
        )
        report.write()


# ------------------------------------------------------------------------- compile
def check_compile(plan: Plan, report: Report) -> None:
    """torch.compile (what `trainer.compile` compiles) against eager, per model in
    `plan.compile_models`, via `stpdist.bench.bench_model`."""
    for name in plan.compile_models:
        if report.left_s() < (0 if plan.dry else 60):
            report.add(Row("compile", name, "skipped", "time budget spent"))
            continue
        _guarded(report, "compile", name, lambda n=name: _compile_row(plan, n))
        report.write()


def _compile_row(plan: Plan, name: str) -> Row:
    model = recipe_model(plan, name)
    precision = plan.precisions[0]
    with _quiet():
        r = bench_model(
            name,
            plan.shape,
            plan.output_frames,
            model.patch_size,
            dict(model.backbone),
            steps=plan.steps,
            compile_=True,
            fps_batch=plan.batch,
            model_config=model,
            rounds=plan.rounds,
            warmup=plan.warmup,
            compile_target="trainer",
            compile_backend=plan.compile_backend,
            precision=precision,
        )
    limit = "; recompile limit hit" if r["recompile_limit_hit"] else ""
    return Row(
        "compile",
        f"{name} ({r['compile_backend']})",
        "dry" if plan.dry else "measured",
        f"first step {r['compile_s']:.1f} s; steady {r['step_ms']:.1f} vs eager "
        f"{r['eager_step_ms']:.1f} ms/step = {r['speedup']:.2f}×; "
        f"{r['recompiles_per_100_steps']:.0f} recompiles/100 steps after warm-up{limit}; "
        f"sampling {r['sampling']}, {precision}",
        r,
    )


# ---------------------------------------------------------------------------- main
SECTIONS = ("tests", "syncs", "trainer", "fp16", "ops", "graphs", "backbones", "compile")
"""The sections, in the order they run (`--only` picks some)."""


def run_check(
    dry: bool,
    out: Path,
    budget_s: float = 420.0,
    sections: frozenset[str] = frozenset(SECTIONS),
    models: list[str] | None = None,
) -> Report:
    """Run the `sections` (all by default; see the module docstring) for `models` (every
    model of the plan by default); returns the report."""
    if not dry and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: run on a GPU, or pass --dry for the CPU dry run")
    plan = Plan.for_device(dry, budget_s)
    if models:
        plan.only_models(models)
    report = Report(plan, out)
    # On a GPU the tests run first, alone; in a dry run beside the rest (no timing matters)
    tests = start_gpu_tests() if "tests" in sections else None
    if tests is not None and not dry:
        report.add(finish_gpu_tests(plan, tests))
        report.write()
    if "syncs" in sections:
        _guarded(report, "host syncs", "Trainer steps", lambda: check_host_syncs(plan))
    if "trainer" in sections:
        _guarded(report, "trainer", "Trainer vs raw loop", lambda: check_trainer_vs_raw(plan))
    if "fp16" in sections:
        _guarded(report, "fp16", "GradScaler, forced overflow", lambda: check_fp16_scaler(plan))
        _guarded(report, "fp16", "Trainer fp16, forced overflow", lambda: check_fp16_trainer(plan))
    report.write()
    # what the compile section needs at least
    compile_reserve = 0 if dry or "compile" not in sections else 150
    check_launch_bound(plan, report, sections)
    if "backbones" in sections:
        check_backbones(plan, report, report.started + budget_s - compile_reserve)
        for row in precision_rows(report.rows, Row):
            report.add(row)
    if "compile" in sections:
        check_compile(plan, report)
    if tests is not None and dry:
        report.add(finish_gpu_tests(plan, tests))
    report.write()
    return report


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _sections(text: str) -> frozenset[str]:
    names = _names(text)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a comma-separated list of {', '.join(SECTIONS)}"
        )
    return frozenset(names)


def _positive_seconds(text: str) -> float:
    """A budget that lets something run: a positive finite number of seconds (0 skipped
    every row and exited 0)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of seconds")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m stpdist.gpu_check",
        description="One GPU check, one table: the GPU paths' tests, then measurements "
        "(sections below), within a time budget; --dry runs every path at tiny shapes on CPU",
    )
    p.add_argument("--dry", action="store_true", help="CPU, tiny shapes: exercise every path")
    p.add_argument(
        "--out",
        default="runs/gpu_check.json",
        help="JSON results, rewritten per section (default runs/gpu_check.json, under the "
        "working folder: the repository's root when run by launch/gpu_check.sh)",
    )
    p.add_argument(
        "--budget-s",
        type=_positive_seconds,
        default=420.0,
        help="wall-clock budget in seconds (default 420)",
    )
    p.add_argument(
        "--only",
        type=_sections,
        default=frozenset(SECTIONS),
        metavar="SECTIONS",
        help=f"run only these sections (comma-separated: {', '.join(SECTIONS)})",
    )
    p.add_argument(
        "--models",
        type=_names,
        default=None,
        metavar="NAMES",
        help="only these recipes in the per-model sections (comma-separated, e.g. mau,phydnet)",
    )
    args = p.parse_args(argv)
    if args.models:
        try:  # named before anything runs
            Plan.for_device(args.dry, args.budget_s).only_models(args.models)
        except ValueError as exc:
            p.error(str(exc))
    try:
        report = run_check(args.dry, Path(args.out), args.budget_s, args.only, args.models)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    print(f"JSON: {args.out}")
    bad = [r for r in report.rows if r.status in ("failed", "error")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
