"""DDP against FSDP for one config on 1…N CPU ranks: per rank, the bytes of parameters +
gradients + optimizer state (tensor storages, not RSS), the peak RSS, and the median time
of an optimizer step. Prints a Markdown table (the one in docs/pages/guides/launching.md).

    .venv/bin/python launch/fsdp_memory.py                        # the 336 M weather recipe
    .venv/bin/python launch/fsdp_memory.py --ranks 1 2 --shape 2 32 64 --steps 4

Each (strategy, ranks) cell is a fresh `torchrun` of this file (`--worker`), on random
frames of `--shape` (the recipe's channels at a small frame: the state's size does not
depend on the frame, the step time does). A cell whose processes do not fit this
machine's memory is skipped up front (estimated from the model's size) and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "weatherbench" / "predformer-large.yaml"


def worker(args: argparse.Namespace) -> None:
    """One cell, on every rank: train `args.steps` optimizer steps, write this rank's
    figures to `args.out/r<rank>.json`."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from stpdist import Trainer
    from stpdist.build import build_module
    from stpdist.config import load_config
    from stpdist.fsdp import local_bytes

    torch.manual_seed(0)
    cfg = load_config(args.config, ["trainer.mixed_precision=no"])
    module = build_module(cfg, tuple(args.shape))
    stored, stamps = [], []
    configure = module.configure_optimizer

    def configure_optimizer():  # measured at each step: gradients there, state not yet updated
        optimizer = configure()

        def at_step(opt, *_):
            stored.append(local_bytes(module, opt))
            stamps.append(time.perf_counter())

        optimizer.register_step_pre_hook(at_step)
        return optimizer

    module.configure_optimizer = configure_optimizer
    trainer = Trainer(
        max_epochs=None,
        max_steps=args.steps,
        strategy=args.strategy,
        output_dir=str(args.out / "run"),
        progress_bar=False,
        log_every_n_steps=10**6,
    )
    t_in, t_out = cfg.data.num_input_frames, cfg.data.num_output_frames
    count = cfg.data.batch_size * trainer.accelerator.num_processes * (args.steps + 1)
    frames = torch.randn(count, t_in + t_out, *args.shape)
    data = TensorDataset(frames[:, :t_in].contiguous(), frames[:, t_in:].contiguous())
    trainer.fit(module, DataLoader(data, batch_size=cfg.data.batch_size))
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]))  # the first step's set-up left out
    result = {
        "parameters": sum(p.numel() for p in module.parameters()),
        "stored_bytes": max(stored),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "step_s": gaps[len(gaps) // 2] if gaps else None,
    }
    rank = trainer.accelerator.process_index
    (args.out / f"r{rank}.json").write_text(json.dumps(result))


def _parameters(config: Path, shape: list[int]) -> int:
    from stpdist.build import build_module
    from stpdist.config import load_config

    module = build_module(load_config(config), tuple(shape))
    return sum(p.numel() for p in module.parameters())


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=RECIPE)
    parser.add_argument("--shape", type=int, nargs=3, default=[2, 32, 32], metavar=("C", "H", "W"))
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps a cell (≥ 3)")
    parser.add_argument("--strategy", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    params = _parameters(args.config, args.shape)
    print(f"{args.config.name}: {params / 1e6:.1f} M parameters, frames {args.shape}, fp32, "
          f"AdamW; {os.cpu_count()} CPUs, {_available_bytes() / 2**30:.1f} GiB available")  # fmt: skip
    print("| ranks | strategy | params + grads + optimizer state per rank | peak RSS per rank "
          "| s per step |\n|---|---|---|---|---|")  # fmt: skip
    for ranks in args.ranks:
        for strategy in ("ddp", "fsdp"):
            # DDP: 16 B a parameter of state + its gradient buckets (4 B) + the model as built
            need = ranks * params * (24 if strategy == "ddp" or ranks == 1 else 4 + 20 / ranks)
            if need > 0.9 * _available_bytes():
                print(f"| {ranks} | {strategy} | — | does not fit: ≈ {need / 2**30:.0f} GiB for "
                      f"{ranks} processes | — |")  # fmt: skip
                continue
            print(_cell(args, ranks, strategy), flush=True)


def _cell(args: argparse.Namespace, ranks: int, strategy: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                   str(ranks), "--master_port", str(_free_port()), __file__, "--worker", "--config",
                   str(args.config), "--shape", *map(str, args.shape), "--steps",
                   str(args.steps), "--strategy", strategy, "--out", str(out)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))}
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            return f"| {ranks} | {strategy} | failed: {last[:120]} | | |"
        rows = [json.loads((out / f"r{r}.json").read_text()) for r in range(ranks)]
    stored = max(r["stored_bytes"] for r in rows) / 2**30
    rss = max(r["peak_rss_bytes"] for r in rows) / 2**30
    step = sorted(r["step_s"] for r in rows)[ranks // 2]
    return f"| {ranks} | {strategy} | {stored:.2f} GiB | {rss:.2f} GiB | {step:.1f} |"


if __name__ == "__main__":
    main()
