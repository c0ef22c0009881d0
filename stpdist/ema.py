"""An exponential moving average (EMA) of a module's weights (`trainer.ema`).

After every optimizer step (a real one: the last micro-batch of an accumulation window)
the trainer calls `WeightAverage.update`; up to `start_step` the average is a copy of the
weights, after it, every `every_n_steps` steps, `ema ← ema + (1 − decay) · (w − ema)`.
The update is device math on the parameters' own devices (`torch._foreach_lerp_`): no
host read. Under DDP every rank holds the same parameters after the all-reduced step, so
every rank's average is the same.

Parameters are averaged; buffers (e.g. normalisation statistics) are those of the live
model. A checkpoint holds the average as `ema.safetensors` (parameter name → tensor),
listed in its manifest; validation during training, `validate`, `predict`, `forecast`,
`stpdist.load` and `export` use it in place of the raw weights unless asked for the raw
ones (`raw_weights=True`, CLI `--raw-weights`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from .checkpoint import CheckpointError, load_weights, reading
from .config import EmaConfig
from .console import say, warn_main

EMA_FILE = "ema.safetensors"
log = logging.getLogger("stpdist")


def _averaged(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters that are averaged: every floating-point one, by name."""
    return [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]


class WeightAverage:
    """The EMA of `module`'s floating-point parameters, started as a copy of them."""

    def __init__(self, config: EmaConfig, module: torch.nn.Module) -> None:
        self.config = config
        named = _averaged(module)
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimizer step `step` (1-based): copy up to `start_step`, then average
        every `every_n_steps` steps. Queued on the device; reads nothing back."""
        cfg = self.config
        shadow, params = _local(self.shadow), _local(self.params)
        if step <= cfg.start_step:
            torch._foreach_copy_(shadow, params)
        elif (step - cfg.start_step) % cfg.every_n_steps == 0:
            torch._foreach_lerp_(shadow, params, 1.0 - cfg.decay)

    def averages(self, module: torch.nn.Module) -> bool:
        """Whether this is the average of `module`'s own parameters."""
        named = _averaged(module)
        return len(named) == len(self.params) and all(
            p is q for (_, p), q in zip(named, self.params, strict=True)
        )

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The average in the module's parameters for the body (e.g. a validation), the
        raw weights put back, bit for bit, afterwards."""
        params = _local(self.params)
        with torch.no_grad():
            raw = [p.clone() for p in params]
            torch._foreach_copy_(params, _local(self.shadow))
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, raw)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The average by parameter name, whole. For parameters sharded by FSDP (DTensors)
        the shards are gathered: collective, every rank calls it."""
        return {n: _whole(s).detach().cpu().contiguous() for n, s in zip(self.names, self.shadow)}

    def to_bytes(self) -> bytes:
        """The `ema.safetensors` file's content."""
        return safetensors_bytes(self.state_dict())

    def restore(self, folder: Path) -> bool:
        """The average saved in checkpoint `folder`, bit for bit; False when the folder has
        none (a run resumed with EMA switched on: the average restarts from the weights)."""
        file = Path(folder) / EMA_FILE
        if not file.is_file():
            warn_main(  # the same on every rank
                "%s holds no %s (EMA was off when it was saved): the average starts from "
                "the resumed weights",
                folder,
                EMA_FILE,
            )
            torch._foreach_copy_(_local(self.shadow), _local(self.params))
            return False
        saved = _read(file)
        _check_names(file, saved, self.names)
        with torch.no_grad():
            for name, shadow in zip(self.names, self.shadow):
                shadow.copy_(_like(saved[name], shadow))
        return True


def _local(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor detached, as this rank's shard when it is a DTensor (FSDP): the average is
    kept shard by shard, in the parameters' layout."""
    return [t.detach().to_local() if hasattr(t, "to_local") else t.detach() for t in tensors]


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, gathered from its shards when it is a DTensor (collective)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _like(full: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Whole tensor `full` laid out as `target`: this rank's shard of it for a DTensor (every
    rank passes the same `full`; collective), else `full` itself."""
    if not hasattr(target, "device_mesh"):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(target.device), target.device_mesh, target.placements)


def _read(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except Exception as exc:  # a torn or foreign file: one line naming it
        raise CheckpointError(f"{file}: unreadable EMA weights ({exc})") from None


def _check_names(file: Path, saved: dict[str, torch.Tensor], names: list[str]) -> None:
    missing = [n for n in names if n not in saved]
    unexpected = [n for n in saved if n not in set(names)]
    if missing or unexpected:
        raise CheckpointError(
            f"{file} does not match the model's parameters: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )


def _check_raw_weights_there(path: Path) -> None:
    from .inference import read_export_info

    info = read_export_info(path) if path.is_dir() else None
    if info is not None and info.get("weights") == "ema":
        source = info.get("exported_from") or {}
        raise CheckpointError(
            f"--raw-weights: {path} was exported with the averaged weights (trainer.ema) of "
            f"{source.get('path', 'its checkpoint')}; its raw weights are not in it: load or "
            "export them from that checkpoint with --raw-weights"
        )
    say(f"--raw-weights: {path} holds no separate averaged weights; its weights are used")


def has_average(folder: str | Path) -> bool:
    """Whether `folder` (a checkpoint folder) holds an EMA of its weights."""
    return Path(folder).is_dir() and (Path(folder) / EMA_FILE).is_file()


def load_eval_weights(
    path: str | Path, module: torch.nn.Module, *, raw_weights: bool = False
) -> Path:
    """The weights to evaluate with, loaded into `module` from a checkpoint folder, a model
    folder or a `.safetensors` file: a checkpoint's EMA when it holds one (unless
    `raw_weights`), else its weights. Returns the file the parameters came from.
    `raw_weights` of a folder `stpdist export` wrote from averaged weights is refused (its
    raw weights are not in it); of any other without an EMA file, said (its weights are
    used as they are)."""
    if raw_weights and not has_average(path):
        _check_raw_weights_there(Path(path))
    with reading(path):  # a read lease: a run still training keeps the folder meanwhile
        file = load_weights(path, module)
        if raw_weights or not has_average(path):
            return file
        ema_file = Path(path) / EMA_FILE
        saved = _read(ema_file)
    named = dict(_averaged(module))
    _check_names(ema_file, saved, list(named))
    with torch.no_grad():
        for name, param in named.items():
            param.copy_(saved[name])
    return ema_file
