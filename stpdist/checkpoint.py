"""Checkpoints: atomic save, exact resume, retention of the last k and the best k.

A checkpoint is a folder `<output_dir>/checkpoints/step-00000120/` holding

    model.safetensors     the module's weights
    optimizer.pt          optimizer state   (tensors and numbers only: loaded weights_only)
    scheduler.pt          LR-scheduler state, when there is a scheduler
    scaler.pt             fp16 grad-scaler state, when there is one
    rng-<rank>.pt         every rank's python / numpy / torch / CUDA RNG state
    trainer_state.json    epoch, batch position, global step, metrics, world size
    config.yaml           the resolved config, when the run has one

It is written into `.tmp-step-…` and renamed when every rank has finished, so a crash
mid-save leaves the previous checkpoint as the newest complete one. Nothing is ever
unpickled on load (safetensors, `torch.load(weights_only=True)`, JSON).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
_NAME = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainState:
    """Where training stands; saved as JSON in every checkpoint."""

    epoch: int = 0
    batch: int = 0
    """Micro-batches of `epoch` already consumed on each rank."""
    global_step: int = 0
    """Optimizer steps taken."""
    world_size: int = 1
    metrics: dict[str, float] = field(default_factory=dict)
    """Latest validation results at save time (used to rank best-k)."""


def _barrier(accelerator: Any) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


def _rng_state() -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": torch.tensor(mt_state, dtype=torch.int64),
        "python_version": version,
        "python_gauss": gauss if gauss is not None else float("nan"),
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    gauss = state["python_gauss"]
    random.setstate(
        (
            state["python_version"],
            tuple(state["python"].tolist()),
            None if math.isnan(gauss) else gauss,
        )
    )
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def assert_finite(module: torch.nn.Module, what: str) -> None:
    """Raise if any parameter holds NaN or Inf (such weights are never saved)."""
    for name, param in module.named_parameters():
        if not torch.isfinite(param).all():
            raise FloatingPointError(f"{what}: parameter '{name}' holds NaN or Inf")


def load_weights(path: str | Path, module: torch.nn.Module) -> Path:
    """Load weights from a checkpoint folder or a `.safetensors` file into `module`."""
    path = Path(path)
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint weights at {file}")
    missing, unexpected = module.load_state_dict(load_file(str(file)), strict=False)
    if missing or unexpected:
        raise KeyError(
            f"{file} does not match {type(module).__name__}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return file


class CheckpointManager:
    """Owns `<output_dir>/checkpoints`: saving, finding, loading and retention."""

    def __init__(
        self,
        root: str | Path,
        *,
        keep_last: int = 2,
        keep_best: int = 1,
        monitor: str = "val/loss",
        mode: str = "min",
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"checkpoint mode must be 'min' or 'max', got {mode!r}")
        self.root = Path(root)
        self.keep_last = max(1, keep_last)  # the newest always stays, so a run can resume
        self.keep_best = max(0, keep_best)
        self.monitor = monitor
        self.mode = mode

    # ---------------------------------------------------------------- finding
    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [
            p for p in self.root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()
        ]
        return sorted(found, key=lambda p: p.name)

    def latest(self) -> Path | None:
        found = self.complete()
        return found[-1] if found else None

    def best(self) -> Path | None:
        ranked = self._ranked()
        return ranked[0] if ranked else None

    def _ranked(self) -> list[Path]:
        scored = []
        for path in self.complete():
            value = read_state(path).metrics.get(self.monitor)
            if value is not None and math.isfinite(value):
                scored.append((value if self.mode == "min" else -value, path.name, path))
        return [p for _, _, p in sorted(scored)]

    # ---------------------------------------------------------------- saving
    def save(
        self,
        accelerator: Any,
        module: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        state: TrainState,
        config_yaml: str | None = None,
    ) -> Path:
        """Write a checkpoint of the current step on every rank; returns its folder."""
        assert_finite(module, f"refusing to checkpoint step {state.global_step}")
        final = self.root / f"step-{state.global_step:08d}"
        tmp = self.root / f".tmp-{final.name}"
        main = accelerator.is_main_process
        if main:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        _barrier(accelerator)
        rank = accelerator.process_index
        torch.save(_rng_state(), tmp / f"rng-{rank}.pt")
        if main:
            weights = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            save_file(weights, str(tmp / MODEL_FILE))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            if scheduler is not None:
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if accelerator.scaler is not None:
                torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
            if config_yaml is not None:
                (tmp / "config.yaml").write_text(config_yaml)
            # the state file goes last: a folder without it is never taken as complete
            (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        _barrier(accelerator)
        if main:
            for file in tmp.iterdir():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
            if final.exists():  # the same step saved again (e.g. step and epoch policy)
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            self._retain()
        _barrier(accelerator)
        return final

    def _retain(self) -> None:
        found = self.complete()
        keep = set(found[-self.keep_last :])
        keep.update(self._ranked()[: self.keep_best])
        for path in found:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)
        for stale in self.root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)

    # ---------------------------------------------------------------- loading
    def resolve(self, resume: str | Path | None) -> Path | None:
        """`None` → no resume; `"auto"` → newest complete checkpoint (or None); a path →
        that checkpoint, which must be complete."""
        if resume is None:
            return None
        if str(resume) == "auto":
            return self.latest()
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"not a complete checkpoint (no {STATE_FILE}): {path}")
        return path

    def load(
        self,
        path: Path,
        accelerator: Any,
        module: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
    ) -> TrainState:
        """Restore everything `save` wrote; returns the trainer state."""
        load_weights(path, module)
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        if scheduler is not None:
            if not (path / "scheduler.pt").is_file():
                raise FileNotFoundError(
                    f"{path} has no scheduler.pt but the module has a scheduler"
                )
            scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        if accelerator.scaler is not None and (path / "scaler.pt").is_file():
            accelerator.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
        _restore_rng(path, accelerator)
        return read_state(path)

    def restore_weights_and_rng(
        self, path: Path, accelerator: Any, module: torch.nn.Module
    ) -> None:
        """Put back the weights, buffers and this rank's RNG state of checkpoint `path`."""
        load_weights(path, module)
        _restore_rng(path, accelerator)


def _restore_rng(path: Path, accelerator: Any) -> None:
    rng_file = Path(path) / f"rng-{accelerator.process_index}.pt"
    if rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=True))


def read_state(path: Path) -> TrainState:
    return TrainState(**json.loads((Path(path) / STATE_FILE).read_text()))
