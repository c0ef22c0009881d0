"""Benchmarks printed by `stpdist bench …`: figures measured side by side in one run,
in interleaved rounds, reported as medians with their spread and the thread settings
they ran with. `stpdist.gpu_check` builds on the model pieces here (`StepRunner`,
`CompileWatch`, `compile_for_bench`).

Legend: B batch, T time, C channels, H×W frame size.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import functools
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

from .errors import InputError
from .models.fused import BACKEND_ENV
from .module import EnhancedModule, cpu_compile_defaults, to_channels_last


class _BenchNet(EnhancedModule):
    """A small conv net over B×T×C×H×W sequences (T_in=4 → T_out=4, 1×32×32)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(4, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 4, 3, padding=1),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = inputs.shape
        return self.net(inputs.reshape(b, t * c, h, w)).reshape(b, t, c, h, w)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)

    def training_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(self(inputs), targets)


def _dataset(num: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(num, 8, 1, 32, 32, generator=g)
    return TensorDataset(frames[:, :4], frames[:, 4:])


def _raw_loop(steps: int, batch: int) -> float:
    """The minimal hand-written accelerate loop: steps/s."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(0)
    module = _BenchNet()
    model, optimizer = accelerator.prepare(module, module.configure_optimizer())
    loader = DataLoader(_dataset(steps * batch), batch_size=batch, shuffle=True)
    start = time.perf_counter()
    for inputs, targets in loader:
        inputs, targets = inputs.to(accelerator.device), targets.to(accelerator.device)
        loss = nn.functional.mse_loss(model(inputs), targets)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the raw loop also reads its loss, as any loop that logs does
    return steps / (time.perf_counter() - start)


def _trainer_loop(steps: int, batch: int) -> float:
    """The Trainer on the same model, data and batch: steps/s (checkpoint excluded)."""
    from .config import CheckpointConfig
    from .trainer import Trainer

    torch.manual_seed(0)
    module = _BenchNet()
    loader = DataLoader(_dataset(steps * batch), batch_size=batch, shuffle=True)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            max_epochs=1,
            output_dir=out,
            progress_bar=True,
            log_every_n_steps=50,
            checkpoint=CheckpointConfig(every_epoch=False),
        )
        trainer.checkpoints.save = lambda *a, **k: None  # time the loop, not the disk
        trainer._print = lambda message: None
        from .console import quiet

        start = time.perf_counter()
        with quiet():  # the banner and step lines: not the benchmark's output
            trainer.fit(module, loader)
        return steps / (time.perf_counter() - start)


def bench_trainer(repeats: int = 5, steps: int = 200, batch: int = 16) -> float:
    """Interleaved repeats of raw loop and Trainer; prints medians and their ratio."""
    raw, ours = [], []
    _raw_loop(20, batch)  # warm-up
    for repeat in range(repeats):  # alternate which goes first: no order bias
        if repeat % 2:
            ours.append(_trainer_loop(steps, batch))
            raw.append(_raw_loop(steps, batch))
        else:
            raw.append(_raw_loop(steps, batch))
            ours.append(_trainer_loop(steps, batch))
    ratio = statistics.median(ours) / statistics.median(raw)
    print(
        f"a 3-convolution net, 4→4 frames of 1×32×32, batch {batch}, {steps} steps a run; "
        f"medians of {repeats} interleaved runs each. The raw loop's clock starts after its "
        "prepare; the Trainer's covers the whole fit() (its setup counted against it)"
    )
    print(
        f"raw accelerate loop : {statistics.median(raw):8.1f} steps/s  (runs: "
        f"{', '.join(f'{x:.1f}' for x in raw)})"
    )
    print(
        f"stpdist Trainer     : {statistics.median(ours):8.1f} steps/s  (runs: "
        f"{', '.join(f'{x:.1f}' for x in ours)})"
    )
    print(f"Trainer / raw       : {ratio:.3f}× (batch {batch}, {steps} steps)")
    print(describe_threads())
    return ratio


# --------------------------------------------------------------------------- settings
def thread_settings() -> dict[str, Any]:
    """The CPU thread settings this process runs with (what decides CPU timings)."""
    return {
        "torch_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        # fused regions compiled by another backend than inductor time other kernels
        "STPDIST_FUSED_BACKEND": os.environ.get(BACKEND_ENV),
    }


def describe_threads(settings: dict[str, Any] | None = None) -> str:
    s = settings or thread_settings()
    backend = s.get("STPDIST_FUSED_BACKEND")
    return (
        f"threads: torch {s['torch_threads']} intra-op / {s['interop_threads']} inter-op, "
        f"OMP_NUM_THREADS={s['OMP_NUM_THREADS'] or 'unset'}, "
        f"OMP_WAIT_POLICY={s['OMP_WAIT_POLICY'] or 'unset (OpenMP default: active)'}"
        + (f", fused regions compiled by {backend} ({BACKEND_ENV})" if backend else "")
    )


def _range(values: list[float], fmt: str = ".0f") -> str:
    return f"{min(values):{fmt}}–{max(values):{fmt}}"


def _spread(values: list[float], fmt: str = ".0f") -> str:
    """'median (min–max)' of `values`."""
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


# ----------------------------------------------------------------------------- memory
def _status_kb(pid: int | str, field: str) -> int | None:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM), None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _private_kb(pid: int) -> int | None:
    """Memory only process `pid` holds (Private_Clean + Private_Dirty): for a forked
    worker, what it added beyond the pages it still shares with its parent."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            return sum(int(line.split()[1]) for line in rollup if line.startswith("Private_"))
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    """Live child processes of `pid` (DataLoader workers), read from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields: state, ppid, …
            found.append(int(entry))
    return found


class MemoryWatch:
    """The peak memory one loader adds, separated from everything else in its process:

    - `process_mb`: this process' peak RSS over `baseline_kb` (taken before the loader
      was built): the kernel's high-water mark, reset to the current RSS at the start with
      /proc/self/clear_refs; where that is refused, RSS sampled every 10 ms;
    - `workers_mb`: the peak, over 50 ms samples, of the summed private memory of this
      process' children (DataLoader workers), 0 without workers.
    """

    def __init__(self, baseline_kb: int, workers: bool) -> None:
        self.baseline_kb, self.workers = baseline_kb, workers
        self.method = "unavailable"
        self._stop = threading.Event()
        self._peak_rss_kb = self._peak_workers_kb = 0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemoryWatch:
        self._hwm = False
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # resets VmHWM to the current RSS
            self._hwm = _status_kb("self", "VmHWM") is not None
        except OSError:
            pass
        self.method = "high-water mark" if self._hwm else "sampled"
        if self.workers or not self._hwm:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        me, pids, next_scan = os.getpid(), [], 0.0
        while not self._stop.is_set():
            if not self._hwm:
                self._peak_rss_kb = max(self._peak_rss_kb, _status_kb("self", "VmRSS") or 0)
            if self.workers:
                if time.monotonic() >= next_scan:  # workers start at the pass' start
                    pids = _children(me)
                    next_scan = time.monotonic() + (0.5 if pids else 0.0)
                total = sum(_private_kb(pid) or 0 for pid in pids)
                self._peak_workers_kb = max(self._peak_workers_kb, total)
            self._stop.wait(0.05 if self.workers else 0.01)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._hwm:
            self._peak_rss_kb = _status_kb("self", "VmHWM") or 0

    def result(self) -> dict[str, Any]:
        return {
            "process_mb": max(0, self._peak_rss_kb - self.baseline_kb) / 1024,
            "workers_mb": self._peak_workers_kb / 1024,
            "memory_method": self.method,
        }


# ------------------------------------------------------------------------------- data
# Each loader lives in its own process (`python -m stpdist.bench probe KIND PATH BATCH`),
# started before the first round and asked for one pass per round, so its memory is its
# own; the parent runs the rounds interleaved (one pass at a time, order rotated).

LOADERS = {
    "shards": "stpdist shards",
    "npz": "seed per-example .npz",
    "ram": "in-RAM array",
}
_REPLY = "@probe "  # marks the probe's answers on its stdout


class _PerFileNpz(torch.utils.data.Dataset):
    """The seed project's layout: one float32 `inputs`/`labels` .npz per example."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        import numpy as np

        with np.load(self.files[i]) as data:
            return torch.from_numpy(data["inputs"]), torch.from_numpy(data["labels"])


class _InRamBatches(torch.utils.data.Dataset):
    """The upper bound: the split preloaded as one N×T×C×H×W array in its stored dtype;
    batch j is ONE gather of it (rows `order[j*B:(j+1)*B]` of a seeded permutation), then,
    only when the shard stream hands out floats, the same float conversion as the stream.
    The gather is numpy's: a row copy per sample, no thread pool. (torch's `frames[idx]`
    took 8 ms a batch here, `index_select` 0.3 ms on 1 thread and 11 ms on 2 busy ones.)"""

    def __init__(self, frames: Any, batch: int, seed: int, floats: bool, scale: float) -> None:
        import numpy as np

        self.frames = np.asarray(frames)
        self.batch, self.floats, self.scale = batch, floats, scale
        generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(self.frames), generator=generator).numpy()

    def __len__(self) -> int:
        return len(self.frames) // self.batch

    def __getitem__(self, j: int) -> Any:
        rows = self.order[j * self.batch : (j + 1) * self.batch]
        frames_BTCHW = torch.from_numpy(self.frames[rows])  # one gather, a fresh array
        if not self.floats:
            return frames_BTCHW  # as stored: the Trainer scales on the device
        inputs = frames_BTCHW[:, :1].float().div_(self.scale)
        return inputs, frames_BTCHW[:, 1:].float().div_(self.scale)


def _stored_batches() -> bool:
    """Whether the shard stream can hand out frames as stored (uint8), as the Trainer
    asks it to; older streams hand out floats."""
    from .data.loading import LoaderContext

    return "stored_dtype" in {f.name for f in dataclasses.fields(LoaderContext)}


def _context(workers: int) -> Any:
    from .data.loading import LoaderContext

    extra = {"stored_dtype": True} if _stored_batches() else {}  # what the Trainer asks for
    return LoaderContext(num_workers=workers, **extra)


def _preload(folder: Path) -> tuple[Any, float]:
    """Every sample of a split's shards as one array in the stored dtype, and its scale."""
    import numpy as np

    from .data.format import FRAMES_EXT, decode_frames, iter_shard, read_index

    index = read_index(folder)
    frames = [
        decode_frames(sample[FRAMES_EXT], f"{folder / shard.name}: {key}")
        for shard in index.shards
        for key, sample in iter_shard(folder / shard.name)
    ]
    return np.stack(frames), index.value_scale


def _open_loader(kind: str, path: str, batch: int) -> Callable[[int, int], Iterable[Any]]:
    """A function (workers, round) → the batches of one pass of loader `kind`; whatever
    it needs up front (the in-RAM array) is built here and counts as its memory."""
    from torch.utils.data import DataLoader

    if kind == "shards":
        from .data.stream import ShardTrainStream

        stream = ShardTrainStream(
            path, batch_size=batch, num_input_frames=1, num_output_frames=1, shuffle_buffer=256
        )
        stream.num_output_frames = stream.index.shape[0] - 1  # the whole sequence
        return lambda workers, round_: stream.iterate(_context(workers), round_)
    if kind == "npz":
        files = sorted(Path(path).glob("example*.npz"))
        dataset = _PerFileNpz(files)
        return lambda workers, round_: DataLoader(
            dataset,
            batch_size=batch,
            shuffle=True,
            num_workers=workers,
            generator=torch.Generator().manual_seed(round_),
        )
    if kind == "ram":
        frames, scale = _preload(Path(path))
        floats = not _stored_batches()
        return lambda workers, round_: DataLoader(
            _InRamBatches(frames, batch, round_, floats, scale),
            batch_size=None,
            num_workers=workers,
        )
    raise ValueError(f"unknown loader kind '{kind}'; known: {', '.join(LOADERS)}")


def _count(batch: Any) -> tuple[int, int]:
    """(samples, bytes of frames) of a batch in any of the loaders' forms: what it moves
    (uint8 frames as stored are a quarter of the same frames in float32)."""

    def size(tensor: torch.Tensor) -> int:
        return tensor.numel() * tensor.element_size()

    if isinstance(batch, torch.Tensor):
        return batch.shape[0], size(batch)
    if hasattr(batch, "frames"):  # frames as stored, split on the device
        return batch.frames.shape[0], size(batch.frames)
    return batch[0].shape[0], size(batch[0]) + size(batch[1])


def _one_pass(
    loader: Callable[[int, int], Iterable[Any]], workers: int, round_: int, baseline_kb: int
) -> dict:
    samples = values = 0
    with MemoryWatch(baseline_kb, workers > 0) as memory:
        start = time.perf_counter()
        for batch in loader(workers, round_):
            count, numel = _count(batch)
            samples, values = samples + count, values + numel
        elapsed = time.perf_counter() - start
    return {
        "samples": samples,
        "seconds": elapsed,
        "samples_per_s": samples / elapsed,
        "mb_per_s": values / elapsed / 2**20,  # MiB/s of the batches' frames, as they come
        **memory.result(),
    }


def serve_probe(kind: str, path: str, batch: int) -> None:
    """The loader process: build loader `kind`, say so, then run one pass per `run W R`
    line on stdin (W workers, round R), answering each with one JSON line."""
    from .data import stream  # noqa: F401  (code, not the loader's data: before the baseline)

    baseline_kb = _status_kb("self", "VmRSS") or 0
    loader = _open_loader(kind, path, batch)
    ready = {
        "baseline_mb": baseline_kb / 1024,
        "setup_mb": ((_status_kb("self", "VmRSS") or 0) - baseline_kb) / 1024,
        "threads": thread_settings(),
    }
    print(_REPLY + json.dumps(ready), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "run":
            break
        result = _one_pass(loader, int(words[1]), int(words[2]), baseline_kb)
        print(_REPLY + json.dumps(result), flush=True)


class _Probe:
    """The parent's handle on one loader process."""

    def __init__(self, kind: str, path: str, batch: int) -> None:
        self.kind = kind
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stpdist.bench", "probe", kind, path, str(batch)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.ready: dict | None = None

    def _answer(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(_REPLY):
                return json.loads(line[len(_REPLY) :])
        self.process.wait()
        self._stderr.seek(0)
        lines = [line for line in self._stderr.read().splitlines() if line.strip()]
        raise RuntimeError(  # its error: the last line of its traceback
            f"loader process '{self.kind}' exited {self.process.returncode}: "
            f"{lines[-1] if lines else 'no message'}"
        )

    def wait_ready(self) -> dict:
        if self.ready is None:
            self.ready = self._answer()
        return self.ready

    def run(self, workers: int, round_: int) -> dict:
        self.wait_ready()
        self.process.stdin.write(f"run {workers} {round_}\n")
        self.process.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
            except OSError:
                pass
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stderr.close()


def interleaved_rounds(
    run: Callable[[str, int, int], dict], kinds: list[str], workers: tuple[int, ...], rounds: int
) -> dict[tuple[str, int], list[dict]]:
    """`run(kind, workers, round)` for every (kind, workers) pair in each of `rounds`
    rounds, one at a time; each round starts one pair later than the last, so no pair
    always runs first (or right after the same neighbour)."""
    pairs = [(kind, count) for kind in kinds for count in workers]
    results: dict[tuple[str, int], list[dict]] = {pair: [] for pair in pairs}
    for round_ in range(rounds):
        shift = round_ % len(pairs)
        for kind, count in pairs[shift:] + pairs[:shift]:
            results[(kind, count)].append(run(kind, count, round_))
    return results


def summarize_rounds(results: dict[tuple[str, int], list[dict]]) -> list[dict]:
    """Per (loader, workers): median and spread of samples/s, median MB/s, and the
    largest memory any of its rounds added."""
    rows = []
    for (kind, count), runs in results.items():
        rates = [r["samples_per_s"] for r in runs]
        rows.append(
            {
                "loader": kind,
                "label": LOADERS[kind],
                "workers": count,
                "rounds": len(runs),
                "samples_per_s": statistics.median(rates),
                "samples_per_s_min": min(rates),
                "samples_per_s_max": max(rates),
                "samples_per_s_runs": rates,
                "mb_per_s": statistics.median(r["mb_per_s"] for r in runs),
                "process_mb": max(r["process_mb"] for r in runs),
                "workers_mb": max(r["workers_mb"] for r in runs),
                "memory_method": runs[0]["memory_method"],
                "samples": runs[0]["samples"],
            }
        )
    return rows


def bench_data(
    folder: str | Path,
    batch: int = 16,
    workers: tuple[int, ...] = (0, 2),
    rounds: int = 3,
) -> dict[str, Any]:
    """Training-loader throughput of the shards vs the seed's per-example .npz vs an
    in-RAM array (ONE fancy index per batch), at each worker count: `rounds` interleaved
    rounds of one pass each, medians and spread; the memory each loader adds, measured in
    its own process; then conversion MB/s vs plain `tar`. Returns the figures."""
    import shutil

    import numpy as np

    from .data.convert import convert
    from .data.format import INDEX_FILE, read_index
    from .data.sources.seed_layout import SeedLayout
    from .data.stream import LoaderContext, ShardEvalStream

    folder = Path(folder)
    if not (folder / INDEX_FILE).is_file() and folder.is_dir():  # a dataset folder:
        splits = sorted(p for p in folder.iterdir() if (p / INDEX_FILE).is_file())
        named = [p for p in splits if p.name == "train"] or splits  # train, else the first
        if named:
            folder = named[0]
    index = read_index(folder)
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    most = max(1, *workers)  # the shard stream deals each worker whole batches
    if index.num_samples < batch * most:
        raise InputError(
            f"{folder}: {index.num_samples} samples are too few to time batches of {batch} "
            f"with {most} loader worker(s): at least {batch * most} are needed "
            "(--batch-size, --loader-workers)"
        )
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        seed = Path(tmp) / "seed" / "train"
        seed.mkdir(parents=True)
        half = index.shape[0] // 2
        stream = ShardEvalStream(
            folder, batch_size=64, num_input_frames=half, num_output_frames=index.shape[0] - half
        )
        number = 0
        for inputs, targets, _ in stream.iterate(LoaderContext()):
            for a, b in zip(inputs.numpy(), targets.numpy()):
                number += 1
                np.savez(seed / f"example{number:06d}.npz", inputs=a, labels=b)
        # the loader processes start together (their imports overlap); rounds run one
        # pass at a time
        where = {"shards": str(folder), "npz": str(seed), "ram": str(folder)}
        probes = {kind: _Probe(kind, where[kind], batch) for kind in LOADERS}
        try:
            ready = {kind: probe.wait_ready() for kind, probe in probes.items()}
            results = interleaved_rounds(
                lambda kind, count, r: probes[kind].run(count, r), list(LOADERS), workers, rounds
            )
        finally:
            for probe in probes.values():
                probe.close()
        rows = summarize_rounds(results)
        stored = _stored_batches()
        print(
            f"dataset: {folder} — {index.num_samples} samples of {index.shape} "
            f"{index.dtype}; seed layout copy: {number} float32 .npz files"
        )
        print(
            f"batches: shards {'as stored (' + index.dtype + ', scaled on the device)' if stored else 'float32'}"
            f", seed .npz float32, in-RAM array one gather per batch "
            f"{'as stored' if stored else 'then float32'}; {rounds} interleaved round(s) "
            "of one pass each, median (min–max)"
        )
        print(
            f"{'loader':<24}{'workers':>8}{'samples/s':>24}{'MiB/s':>9}"
            f"{'own MB: process + workers':>28}"
        )
        for r in rows:
            rate = _spread(r["samples_per_s_runs"])
            memory = f"{r['process_mb']:.0f} + {r['workers_mb']:.0f}"
            print(f"{r['label']:<24}{r['workers']:>8}{rate:>24}{r['mb_per_s']:>9.1f}{memory:>28}")
        best = {
            kind: max(r["samples_per_s"] for r in rows if r["loader"] == kind) for kind in LOADERS
        }
        ratios = {
            "shards_over_npz": best["shards"] / best["npz"],
            "shards_over_ram": best["shards"] / best["ram"],
        }
        print(
            f"shards / per-file npz: {ratios['shards_over_npz']:.2f}×   "
            f"shards / in-RAM array: {ratios['shards_over_ram']:.2f}×  (medians, best of "
            f"{'/'.join(map(str, workers))} workers)"
        )
        print(
            "own MB: the loader process' peak RSS above its RSS before the loader was built "
            f"({rows[0]['memory_method']}), plus its workers' peak private memory; the "
            "in-RAM array's preload counts"
        )
        print(describe_threads(ready["shards"]["threads"]) + " (each loader process)")
        load_end = os.getloadavg()
        print(
            f"load average (1/5/15 min): {' '.join(f'{x:.2f}' for x in load_start)} at start, "
            f"{' '.join(f'{x:.2f}' for x in load_end)} at end"
        )

        seed_bytes = sum(p.stat().st_size for p in seed.iterdir())
        start = time.perf_counter()
        convert(
            SeedLayout(str(seed.parent), "mmnist"), Path(tmp) / "shards", workers=2, progress=False
        )
        convert_s = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run(
            ["tar", "cf", str(Path(tmp) / "plain.tar"), "-C", str(seed), "."], check=True
        )
        tar_s = time.perf_counter() - start
        mb = seed_bytes / 2**20
        print(
            f"conversion of {mb:.0f} MB of .npz: stpdist shard {mb / convert_s:.0f} MB/s, "
            f"plain tar {mb / tar_s:.0f} MB/s ({tar_s / convert_s:.2f}×)"
        )
        shutil.rmtree(Path(tmp) / "shards", ignore_errors=True)
    return {
        "rows": rows,
        "ratios": ratios,
        "rounds": rounds,
        "threads": ready["shards"]["threads"],
        "setup_mb": {kind: r["setup_mb"] for kind, r in ready.items()},
        "load_average": {"start": load_start, "end": load_end},
        "conversion_mb_per_s": mb / convert_s,
        "tar_mb_per_s": mb / tar_s,
    }


# ------------------------------------------------------------------------------ model
def synchronize(device: torch.device) -> None:
    """Wait for the device: timed regions on a GPU end only when its work has."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepRunner:
    """Training steps of `module` as the Trainer runs them: `global_step` set before each
    step (scheduled sampling reads it), the step under bf16 autocast when asked, backward,
    optimizer step, zero_grad. `step_fn` replaces `module.training_step` (a compiled one)."""

    def __init__(
        self,
        module: torch.nn.Module,
        step_fn: Callable[..., Any] | None = None,
        precision: str = "fp32",
    ) -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got '{precision}'")
        self.module, self.precision = module, precision
        self.step_fn = step_fn or module.training_step
        self.optimizer = module.configure_optimizer()
        self.device = next(module.parameters()).device
        self.steps_taken = 0

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.module.global_step = self.steps_taken
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.step_fn(inputs, targets)
        loss = out["loss"] if isinstance(out, dict) else out
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps_taken += 1
        return loss.detach()

    def timed_steps(self, inputs: torch.Tensor, targets: torch.Tensor, count: int) -> list[float]:
        """Seconds of each of `count` steps, the device synchronised around each."""
        times = []
        for _ in range(count):
            synchronize(self.device)
            start = time.perf_counter()
            self.step(inputs, targets)
            synchronize(self.device)
            times.append(time.perf_counter() - start)
        return times

    def timed_block(self, inputs: torch.Tensor, targets: torch.Tensor, count: int) -> float:
        """Seconds per step over `count` steps queued back to back (one synchronisation
        before and after: the host may run ahead of the device, as in training)."""
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(count):
            self.step(inputs, targets)
        synchronize(self.device)
        return (time.perf_counter() - start) / count


class CompileWatch:
    """Dynamo compilations between entering and `count()`: frames compiled (first compiles
    and recompiles; cache hits do not count), from `torch._dynamo.utils.counters`, and
    whether a frame hit the recompile limit (it then runs uncompiled for good, so the
    count stops growing while the cost has moved to eager code)."""

    def __enter__(self) -> CompileWatch:
        self._start = self._read()
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    @staticmethod
    def _read() -> tuple[int, int]:
        from torch._dynamo.utils import counters

        def at_limit(reason: str) -> bool:  # 2.13: "recompile limit exceeded"; older: cache_size
            reason = reason.lower()
            return "cache_size_limit" in reason or ("recompile" in reason and "limit" in reason)

        limit_hits = sum(n for reason, n in counters["unimplemented"].items() if at_limit(reason))
        return counters["frames"]["total"], limit_hits

    def count(self) -> tuple[int, bool]:
        """(frames compiled since entering, whether the recompile limit was hit)."""
        frames, limits = self._read()
        return frames - self._start[0], limits > self._start[1]


COMPILE_TARGETS = ("trainer", "backbone", "step")
"""What `--compile` compiles: `trainer`, what `trainer.compile: true` compiles
(`module.compile_for_training`: a Forecaster's recurrent cell step, or its whole
non-recurrent backbone); `backbone`, the whole backbone in one graph; `step`, the whole
`training_step`, scheduled sampling included."""


@contextmanager
def _default_backend(backend: str) -> Iterator[None]:
    """`torch.compile` with `backend` for code that calls it without one."""
    original = torch.compile
    torch.compile = functools.partial(original, backend=backend)
    try:
        yield
    finally:
        torch.compile = original


def compile_for_bench(
    module: torch.nn.Module, target: str, backend: str = "inductor", mode: str = "default"
) -> Callable[..., Any]:
    """Compile `module` (in place) as `target` says; returns its training-step function."""
    if target not in COMPILE_TARGETS:
        raise ValueError(f"compile target must be one of {', '.join(COMPILE_TARGETS)}")
    cpu_compile_defaults(next(module.parameters()).device)  # as the Trainer does
    if target == "step":
        return torch.compile(module.training_step, backend=backend, mode=mode)
    if target == "backbone":
        module.backbone.compile(backend=backend, mode=mode)
        return module.training_step
    hook = getattr(module, "compile_for_training", None)
    if hook is None:
        raise ValueError(
            f"{type(module).__name__} has no compile_for_training(); use --compile-target "
            "backbone or step"
        )
    if "backend" in inspect.signature(hook).parameters:
        hook(mode=mode, backend=backend)
    else:
        with _default_backend(backend):  # the hook takes no backend argument
            hook(mode)
    return module.training_step


def bench_module(
    config: Any,
    shape: tuple[int, int, int, int, int],
    num_output_frames: int,
    device: torch.device | str,
) -> Any:
    """A Forecaster for `config` (a ModelConfig) on frames C×H×W of `shape`, on `device`. A
    backbone's refusal of its settings is the ConfigError `train` says, naming the key (it
    came as the raw exception, exit 1; a zoo review)."""
    from .build import _backbone_refusal
    from .config import Config
    from .task import Forecaster

    b, t_in, c, h, w = shape
    try:
        module = Forecaster(config, (c, h, w), t_in, num_output_frames)
    except (ValueError, TypeError, KeyError, ImportError) as exc:
        refusal = _backbone_refusal(Config(model=config), exc, (c, h, w))
        if refusal is None:
            raise
        raise refusal from None
    return module.to(device)


NO_KERNEL_OPS = frozenset(
    {
        # views: new tensor metadata over the same storage
        "view",
        "_unsafe_view",
        "_reshape_alias",
        "alias",
        "as_strided",
        "detach",
        "slice",
        "select",
        "narrow",
        "transpose",
        "t",
        "expand",
        "permute",
        "unsqueeze",
        "squeeze",
        "split",
        "split_with_sizes",
        "unsafe_split",
        "unsafe_split_with_sizes",
        "chunk",
        "unbind",
        "diagonal",
        "unfold",
        "view_as_real",
        "view_as_complex",
        "lift_fresh",
        # allocations without initialisation: memory from the caching allocator, no kernel
        "empty",
        "empty_like",
        "empty_strided",
        "new_empty",
        "new_empty_strided",
        # profiler markers (record_function, around optimizer.step and zero_grad)
        "_record_function_enter",
        "_record_function_enter_new",
        "_record_function_exit",
    }
)
"""Aten ops (overload packets) that launch no kernel on a GPU: views (metadata over the
same storage: `reshape` reaches the dispatcher as `view`/`_unsafe_view` when it is a view,
as a copy op when it is not), uninitialised allocations and profiler markers. `count_step_ops` counts every
other op as one kernel launch; ops that launch several kernels still count as one."""


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched while active, by overload packet name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _train_step(
    module: nn.Module, batch: tuple[torch.Tensor, ...], optimizer: torch.optim.Optimizer
) -> None:
    out = module.training_step(*batch)
    loss = out["loss"] if isinstance(out, dict) else out
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def count_step_ops(
    module: nn.Module, batch: tuple[torch.Tensor, ...], optimizer: torch.optim.Optimizer
) -> tuple[int, int, collections.Counter[str]]:
    """Aten ops dispatched by one eager training step of `module` (`module.training_step
    (*batch)` returning a loss or a dict with "loss", backward, `optimizer.step()`,
    `zero_grad(set_to_none=True)`), counted after one warm-up step (the optimizer's state
    is created there, as in steady-state training): (all ops, kernel-launching ops, i.e.
    all but NO_KERNEL_OPS, per-op counts)."""
    _train_step(module, batch, optimizer)  # warm-up: optimizer state, lazy buffers
    with _OpCounter() as counter:
        _train_step(module, batch, optimizer)
    ops = counter.ops
    launching = sum(n for name, n in ops.items() if name not in NO_KERNEL_OPS)
    return sum(ops.values()), launching, ops


class AutocastStep:
    """`module`'s training step with its forward under bf16 autocast on `device_type`
    (backward and optimizer outside it, as the Trainer runs them), for `count_step_ops`."""

    def __init__(self, module: nn.Module, device_type: str) -> None:
        self.module, self.device_type = module, device_type

    def training_step(self, *batch: torch.Tensor) -> Any:
        with torch.autocast(self.device_type, torch.bfloat16):
            return self.module.training_step(*batch)


def bench_ops(
    config: Any,
    shape: tuple[int, int, int, int, int],
    num_output_frames: int,
    *,
    top: int = 10,
    precision: str = "fp32",
) -> dict:
    """`stpdist bench model --ops`: aten ops per eager training step of the Forecaster for
    `config` (a ModelConfig) at `shape`, on this machine's device (see count_step_ops),
    with the backbone's fused regions off (the op-by-op arithmetic) and on
    (`model.fused_kernels`), and the `top` most frequent kernel-launching ops of each;
    `precision` bf16: the forward under autocast (its casts, `_to_copy`, counted apart)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    b, t_in, c, h, w = shape
    result: dict = {
        "model": config.name, "device": device.type, "shape": list(shape), "precision": precision
    }  # fmt: skip
    for mode in ("off", "on"):
        torch.manual_seed(0)
        fused_config = dataclasses.replace(config, fused_kernels=mode)
        module = bench_module(fused_config, shape, num_output_frames, device)
        inputs = torch.rand(b, t_in, c, h, w, device=device)
        targets = torch.rand(b, num_output_frames, c, h, w, device=device)
        optimizer = module.configure_optimizer()
        step = AutocastStep(module, device.type) if precision == "bf16" else module
        total, launching, ops = count_step_ops(step, (inputs, targets), optimizer)
        frequent = [(n, k) for n, k in ops.most_common() if n not in NO_KERNEL_OPS][:top]
        print(
            f"{config.name:<10} {device.type} batch {b} {t_in}→{num_output_frames} {c}×{h}×{w} "
            f"patch {config.patch_size}, {precision}, fused kernels {mode}: aten ops per eager "
            f"training step (forward, backward, optimizer): {launching} kernel-launching "
            f"({ops['_to_copy']} of them casts), {total} in all (views and allocations "
            "included)"
        )
        print("  most frequent: " + ", ".join(f"{n} {k}" for n, k in frequent))
        result[mode] = {
            "ops": total, "launching_ops": launching, "casts": ops["_to_copy"], "per_op": dict(ops)
        }  # fmt: skip
    off, on = result["off"]["launching_ops"], result["on"]["launching_ops"]
    print(f"kernel-launching ops, fused / op by op: {on} / {off} = {on / off:.2f}")
    return result


def bench_model(
    name: str,
    shape: tuple[int, int, int, int, int] = (4, 10, 1, 64, 64),
    num_output_frames: int = 10,
    patch_size: int = 4,
    backbone_args: dict | None = None,
    steps: int = 5,
    compile_: bool = False,
    channels_last: bool = False,
    fps_batch: int = 16,
    *,
    model_config: Any = None,
    rounds: int = 1,
    warmup: int = 2,
    compile_target: str = "trainer",
    compile_backend: str = "inductor",
    precision: str = "fp32",
) -> dict:
    """Forward+backward+optimizer step time, peak memory and forward FLOPs of backbone
    `name` on inputs of `shape` (B, T_in, C, H, W), and inference FPS: sequences per second
    of an eval-mode forward of `fps_batch` sequences (default 16; OpenSTL's FPS column
    comes from its `measure_throughput`, at batch 100, or 10 when the frames' longer side is
    ≥ 128 px, on a V100: not the same measurement).

    `model_config` (a ModelConfig, e.g. a recipe's `model` section) replaces name, patch
    size and backbone arguments, and brings the recipe's scheduled sampling: the steps run
    as in training, `global_step` advancing, so the schedule moves as it does there.

    `compile_`: the same model compiled (`compile_target`, see COMPILE_TARGETS) against
    eager, in `rounds` interleaved rounds of `steps` steps each after `warmup` compiled
    steps: compile time (the first step), steady-state medians of both, and compilations
    per 100 steps after the warm-up (target 0)."""
    import resource

    from torch.utils.flop_counter import FlopCounterMode

    from .config import ModelConfig

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    b, t_in, c, h, w = shape
    config = model_config or ModelConfig(
        name=name, backbone=backbone_args or {}, patch_size=patch_size
    )
    torch.manual_seed(0)
    module = bench_module(config, shape, num_output_frames, device)
    if channels_last:
        to_channels_last(module)
    params = sum(p.numel() for p in module.parameters())
    inputs = torch.rand(b, t_in, c, h, w, device=device)
    targets = torch.rand(b, num_output_frames, c, h, w, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(inputs[:1])
    flops = counter.get_total_flops()
    variants = {"eager": StepRunner(module, precision=precision)}
    if compile_:
        twin = copy.deepcopy(module)  # the same weights, compiled
        step_fn = compile_for_bench(twin, compile_target, compile_backend)
        variants["compiled"] = StepRunner(twin, step_fn, precision)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    variants["eager"].timed_steps(inputs, targets, 1)  # warm-up (allocator, kernels)
    compile_s = None
    if compile_:
        compiled = variants["compiled"]
        compile_s = compiled.timed_steps(inputs, targets, 1)[0]  # compiles
        compiled.timed_steps(inputs, targets, max(0, warmup - 1))
    times: dict[str, list[float]] = {key: [] for key in variants}
    round_medians: dict[str, list[float]] = {key: [] for key in variants}
    with CompileWatch() as watch:
        for round_ in range(rounds):  # alternate which goes first: no order bias
            order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
            for key in order:
                measured = variants[key].timed_steps(inputs, targets, steps)
                times[key] += measured
                round_medians[key].append(statistics.median(measured))
        compilations, limit_hit = watch.count()
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    )
    # after the peak is read: the batch-16 forward must not count as the step's memory
    measured_key = "compiled" if compile_ else "eager"
    fps_shape = (fps_batch, t_in, c, h, w)
    fps = {
        key: _inference_fps(runner.module, fps_shape, num_output_frames, steps, device.type)
        for key, runner in variants.items()
    }
    translator = (config.backbone or {}).get("translator")
    label = f"{config.name} ({translator})" if translator else config.name
    step_ms = {key: 1000 * statistics.median(t) for key, t in times.items()}
    timed = rounds * steps
    result = {
        "model": label,
        "device": device.type,
        "params": params,
        "gmacs_per_sample": flops / 2 / 1e9,
        "step_ms": step_ms[measured_key],
        "peak_mb": peak,
        "inference_fps": fps[measured_key],
        "fps_batch": fps_batch,
        "compile": compile_,
        "channels_last": channels_last,
        "precision": precision,
        "sampling": config.sampling.mode,
        "timed_steps": timed,
        "round_medians_ms": {k: [1000 * x for x in v] for k, v in round_medians.items()},
        "threads": thread_settings(),
    }
    if compile_:
        result.update(
            {
                "eager_step_ms": step_ms["eager"],
                "eager_inference_fps": fps["eager"],
                "speedup": step_ms["eager"] / step_ms["compiled"],
                "compile_s": compile_s,
                "compile_target": compile_target,
                "compile_backend": compile_backend,
                "compilations_after_warmup": compilations,
                "recompiles_per_100_steps": 100 * compilations / timed,
                "recompile_limit_hit": limit_hit,
            }
        )
    print(
        f"{label:<10} {device.type} batch {b} {t_in}→{num_output_frames} {c}×{h}×{w} patch "
        f"{config.patch_size}: {params / 1e6:.2f}M params, {result['gmacs_per_sample']:.2f} "
        f"GMACs forward/sample, step {result['step_ms']:.0f} ms (median of {timed}), peak "
        f"{'GPU memory' if device.type == 'cuda' else 'RSS growth'} {peak:.0f} MB, inference "
        f"{fps[measured_key]:.1f} sequences/s (OpenSTL's 'FPS': an eval forward of batch "
        f"{fps_batch})"
        f"{', compiled' if compile_ else ''}{', channels-last' if channels_last else ''}"
        f"{', bf16 autocast' if precision == 'bf16' else ''}"
    )
    sampling = config.sampling
    print(
        "  scheduled sampling: "
        + (
            "none"
            if sampling.mode == "none"
            else f"{sampling.mode} (global_step advances every step, as in training)"
        )
    )
    if compile_:
        print(
            f"  compiled ({compile_target}, {compile_backend}): first step {compile_s:.1f} s "
            f"(compilation included); steady {step_ms['compiled']:.0f} ms vs eager "
            f"{step_ms['eager']:.0f} ms per step: {result['speedup']:.2f}× (medians of "
            f"{rounds} interleaved round(s) × {steps} steps; round medians "
            f"{_range(result['round_medians_ms']['compiled'])} vs "
            f"{_range(result['round_medians_ms']['eager'])} ms); inference "
            f"{fps['compiled']:.1f} vs {fps['eager']:.1f} sequences/s"
        )
        print(
            f"  compilations after {warmup} warm-up step(s): {compilations} in {timed} steps "
            f"= {result['recompiles_per_100_steps']:.0f} per 100 steps"
            + (
                "; the recompile limit was hit: the code that kept recompiling now runs uncompiled"
                if limit_hit
                else ""
            )
        )
    print("  " + describe_threads())
    return result


def _release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's malloc_trim), so the next peak RSS
    is measured from what is live, not from what an earlier variant left cached."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


def bench_checkpointing(
    config: Any,
    shape: tuple[int, int, int, int, int],
    num_output_frames: int,
    *,
    steps: int = 2,
    rounds: int = 3,
) -> dict:
    """`trainer.activation_checkpointing` measured: the same Forecaster (same weights)
    with and without, each step's peak memory (GPU: max_memory_allocated; CPU: this
    process' peak RSS growth over a step, after freed memory is handed back) and the step
    time in interleaved rounds (medians). The checkpointed twin is measured first in
    every round, so memory it freed cannot hide the other's peak."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    b, t_in, c, h, w = shape
    torch.manual_seed(0)
    plain = bench_module(config, shape, num_output_frames, device)
    twin = copy.deepcopy(plain)
    twin.enable_activation_checkpointing()  # a clear error for non-recurrent backbones
    runners = {"checkpointed": StepRunner(twin), "plain": StepRunner(plain)}
    inputs = torch.rand(b, t_in, c, h, w, device=device)
    targets = torch.rand(b, num_output_frames, c, h, w, device=device)
    times: dict[str, list[float]] = {key: [] for key in runners}
    peaks: dict[str, float] = {key: 0.0 for key in runners}
    for runner in runners.values():
        runner.timed_steps(inputs, targets, 1)  # warm-up
    for _ in range(rounds):
        for key, runner in runners.items():
            _release_freed_memory()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                times[key] += runner.timed_steps(inputs, targets, steps)
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            else:
                with MemoryWatch(_status_kb("self", "VmRSS") or 0, workers=False) as watch:
                    times[key] += runner.timed_steps(inputs, targets, steps)
                peak = watch.result()["process_mb"]
            peaks[key] = max(peaks[key], peak)
    step_ms = {key: 1000 * statistics.median(t) for key, t in times.items()}
    result = {
        "model": config.name,
        "device": device.type,
        "shape": list(shape),
        "step_ms": step_ms,
        "peak_mb": peaks,
        "memory": "GPU memory allocated" if device.type == "cuda" else "peak RSS growth",
        "time_ratio": step_ms["checkpointed"] / step_ms["plain"],
        "threads": thread_settings(),
    }
    print(
        f"{config.name:<10} {device.type} batch {b} {t_in}→{num_output_frames} {c}×{h}×{w} "
        f"patch {config.patch_size}, activation checkpointing: step "
        f"{step_ms['checkpointed']:.0f} vs {step_ms['plain']:.0f} ms "
        f"({result['time_ratio']:.2f}×, medians of {rounds} interleaved rounds × {steps}); "
        f"{result['memory']} {peaks['checkpointed']:.0f} vs {peaks['plain']:.0f} MB per step"
    )
    print("  " + describe_threads())
    return result


def _inference_fps(
    module: torch.nn.Module,
    shape: tuple[int, ...],
    num_output_frames: int,
    repeats: int,
    device: str,
) -> float:
    """Sequences per second of an eval-mode forward on a batch of `shape` (median of
    `repeats` timed forwards after one warm-up); the module is left in training mode."""
    inputs = torch.rand(*shape, device=device)
    module.eval()
    times = []
    with torch.no_grad():
        for i in range(max(1, repeats) + 1):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            module(inputs)
            if device == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    module.train()
    return shape[0] / statistics.median(times)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "probe":
        serve_probe(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit("usage: python -m stpdist.bench probe KIND PATH BATCH (started by bench_data)")
