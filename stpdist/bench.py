"""Benchmarks printed by `stpdist bench …`: figures measured side by side in one run."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .module import EnhancedModule


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
        start = time.perf_counter()
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
        f"raw accelerate loop : {statistics.median(raw):8.1f} steps/s  (runs: "
        f"{', '.join(f'{x:.1f}' for x in raw)})"
    )
    print(
        f"stpdist Trainer     : {statistics.median(ours):8.1f} steps/s  (runs: "
        f"{', '.join(f'{x:.1f}' for x in ours)})"
    )
    print(
        f"Trainer / raw       : {ratio:.3f}× (batch {batch}, {steps} steps, "
        f"{torch.get_num_threads()} threads)"
    )
    return ratio


# ------------------------------------------------------------------------------- data
# Each loader is measured in a fresh process (`python -m stpdist.bench probe …`), so peak
# RSS figures are its own.


def _probe(kind: str, path: str, workers: int, batch: int) -> dict:
    import resource

    import numpy as np

    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if kind == "shards":
        from .data.stream import LoaderContext, ShardTrainStream

        stream = ShardTrainStream(
            path, batch_size=batch, num_input_frames=1, num_output_frames=1, shuffle_buffer=256
        )
        t_total = stream.index.shape[0]
        stream.num_output_frames = t_total - 1  # the whole sequence, as the others read it
        loader = stream.iterate(LoaderContext(num_workers=workers), 0)
    elif kind == "npz":
        files = sorted(Path(path).glob("example*.npz"))

        class PerFile(torch.utils.data.Dataset):
            def __len__(self) -> int:
                return len(files)

            def __getitem__(self, i: int):
                with np.load(files[i]) as data:
                    return torch.from_numpy(data["inputs"]), torch.from_numpy(data["labels"])

        loader = DataLoader(PerFile(), batch_size=batch, shuffle=True, num_workers=workers)
    else:  # in-RAM uint8 array: the upper bound
        from .data.stream import LoaderContext, ShardEvalStream

        stream = ShardEvalStream(path, batch_size=256, num_input_frames=1, num_output_frames=1)
        stream.num_output_frames = stream.index.shape[0] - 1
        array = torch.cat(
            [
                torch.cat([a, b], dim=1).mul_(255).round_().to(torch.uint8)
                for a, b, _ in stream.iterate(LoaderContext())
            ]
        )

        class InRam(torch.utils.data.Dataset):
            def __len__(self) -> int:
                return len(array)

            def __getitem__(self, i: int):
                frames = array[i].float().div_(255)
                return frames[:1], frames[1:]

        loader = DataLoader(InRam(), batch_size=batch, shuffle=True, num_workers=workers)
    samples = nbytes = 0
    start = time.perf_counter()
    for batch_ in loader:
        samples += batch_[0].shape[0]
        nbytes += batch_[0].numel() + batch_[1].numel()  # as uint8 frames
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "samples_per_s": samples / elapsed,
        "mb_per_s": nbytes / elapsed / 2**20,
        "peak_rss_mb": peak,
        "rss_growth_mb": peak - start_rss,
        "samples": samples,
    }


def _run_probe(kind: str, path: str, workers: int, batch: int) -> dict:
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "stpdist.bench", "probe", kind, path, str(workers), str(batch)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_data(folder: str | Path, batch: int = 16, workers: tuple[int, ...] = (0, 2)) -> None:
    """Training-loader throughput of shards vs the seed's per-example .npz vs an in-RAM
    array (0 and 2 workers), peak RSS of each, and conversion MB/s vs plain `tar`."""
    import shutil
    import subprocess

    import numpy as np

    from .data.convert import convert
    from .data.format import INDEX_FILE, read_index
    from .data.sources.seed_layout import SeedLayout
    from .data.stream import LoaderContext, ShardEvalStream

    folder = Path(folder)
    if not (folder / INDEX_FILE).is_file() and (folder / "train" / INDEX_FILE).is_file():
        folder = folder / "train"
    index = read_index(folder)
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
        print(
            f"dataset: {folder} — {index.num_samples} samples of {index.shape} "
            f"{index.dtype}; seed layout copy: {number} float32 .npz files"
        )
        rows = []
        for kind, label in (
            ("shards", "stpdist shards"),
            ("npz", "seed per-example .npz"),
            ("ram", "in-RAM uint8 array"),
        ):
            for count in workers:
                where = str(folder if kind != "npz" else seed)
                rows.append((label, count, _run_probe(kind, where, count, batch)))
        print(f"{'loader':<24}{'workers':>8}{'samples/s':>12}{'MB/s':>9}{'peak RSS MB':>13}")
        for label, count, r in rows:
            print(
                f"{label:<24}{count:>8}{r['samples_per_s']:>12.0f}{r['mb_per_s']:>9.1f}"
                f"{r['peak_rss_mb']:>13.0f}"
            )
        best = {
            k: max(r["samples_per_s"] for lbl, _, r in rows if lbl == k)
            for k in {lbl for lbl, _, _ in rows}
        }
        ours = best["stpdist shards"]
        print(
            f"shards / per-file npz: {ours / best['seed per-example .npz']:.2f}×   "
            f"shards / in-RAM array: {ours / best['in-RAM uint8 array']:.2f}×  "
            f"(best of {'/'.join(map(str, workers))} workers)"
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


if __name__ == "__main__":
    import json
    import sys

    if sys.argv[1] == "probe":
        kind, path, workers, batch = sys.argv[2:6]
        print(json.dumps(_probe(kind, path, int(workers), int(batch))))


# ------------------------------------------------------------------------------ model


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
) -> dict:
    """Forward+backward step time, peak memory and forward FLOPs of backbone `name` on
    inputs of `shape` (B, T_in, C, H, W), and inference FPS: sequences per second of an
    eval-mode forward of `fps_batch` sequences (OpenSTL's table: batch 16)."""
    import resource

    from torch.utils.flop_counter import FlopCounterMode

    from .config import ModelConfig
    from .task import Forecaster

    device = "cuda" if torch.cuda.is_available() else "cpu"
    b, t_in, c, h, w = shape
    torch.manual_seed(0)
    config = ModelConfig(name=name, backbone=backbone_args or {}, patch_size=patch_size)
    module = Forecaster(config, (c, h, w), t_in, num_output_frames).to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in module.parameters())
    inputs = torch.rand(b, t_in, c, h, w, device=device)
    targets = torch.rand(b, num_output_frames, c, h, w, device=device)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            module(inputs[:1])
    flops = counter.get_total_flops()
    step = torch.compile(module.training_step) if compile_ else module.training_step
    optimizer = module.configure_optimizer()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 1):  # the first step warms up (and compiles)
        start = time.perf_counter()
        loss = step(inputs, targets)
        loss = loss["loss"] if isinstance(loss, dict) else loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    )
    # after the peak is read: the batch-16 forward must not count as the step's memory
    fps = _inference_fps(module, (fps_batch, t_in, c, h, w), num_output_frames, steps, device)
    translator = (backbone_args or {}).get("translator")
    label = f"{name} ({translator})" if translator else name
    result = {
        "model": label,
        "device": device,
        "params": params,
        "gmacs_per_sample": flops / 2 / 1e9,
        "step_ms": 1000 * statistics.median(times),
        "peak_mb": peak,
        "inference_fps": fps,
        "fps_batch": fps_batch,
        "compile": compile_,
        "channels_last": channels_last,
    }
    print(
        f"{label:<10} {device} batch {b} {t_in}→{num_output_frames} {c}×{h}×{w} patch "
        f"{patch_size}: {params / 1e6:.2f}M params, {result['gmacs_per_sample']:.2f} GMACs "
        f"forward/sample, step {result['step_ms']:.0f} ms (median of {steps}), peak "
        f"{'GPU memory' if device == 'cuda' else 'RSS growth'} {peak:.0f} MB, inference "
        f"{fps:.1f} FPS (batch {fps_batch} forward)"
        f"{', compiled' if compile_ else ''}{', channels-last' if channels_last else ''}"
    )
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
            start = time.perf_counter()
            module(inputs)
            if device == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    module.train()
    return shape[0] / statistics.median(times)
