"""Trainer: fit / validate / predict as straight-line loops on accelerate.

Runs unchanged on one CPU process, several CPU processes (torchrun or accelerate launch:
gloo is chosen by itself on a CPU-only host), one or many GPUs, several nodes.
Tensors: inputs B×T_in×C×H×W, targets B×T_out×C×H×W.

`fit`'s loop asks and small objects decide: `Lockstep` (rank agreement, lockstep.py),
`CheckpointManager.maybe_save` (when and how to save, checkpoint.py), `Validator` (when
to validate, and the exact reduction of results across ranks), `Meter` (loss and
throughput windows), `Tracker` (where results go, tracking.py).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import functools
import inspect
import itertools
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import (
    DistributedType,
    GradientAccumulationPlugin,
    gather_object,
    send_to_device,
    set_seed,
)
from torch import nn
from tqdm.auto import tqdm

from . import console, threads
from .checkpoint import STATE_FILE as TRAIN_STATE_FILE
from .checkpoint import (
    CheckpointError,
    CheckpointManager,
    RetiredCheckpoint,
    TrainState,
    read_state,
    reading,
    reading_chosen,
    replace_text,
    step_of,
)
from .config import (
    CheckpointConfig,
    Config,
    ConfigError,
    LoggingConfig,
    TrainerConfig,
    check_tracker_cadence,
    check_values,
    checked_section,
    environment_values,
    section_with,
    to_dict,
    to_yaml,
)
from .console import format_scalars, log, say
from .data.loading import (
    LAYOUT,
    Batch,
    EpochOrigin,
    LoaderContext,
    RedistributableSource,
    StoredFrames,
    TrainSource,
    as_eval_source,
    as_train_source,
    unpack_batch,
)
from .data.staging import make_durable, sync_folder
from .early_stopping import STATE_FILE as EARLY_STOPPING_FILE
from .early_stopping import EarlyStopping
from .ema import EMA_FILE, WeightAverage, load_eval_weights
from .errors import InputError, MissingInput, OutputExists, alike
from .graphs import CaptureFailed
from .lockstep import Lockstep, StopFlag, loss_of
from .module import EnhancedModule, cpu_compile_defaults, to_channels_last
from .runlock import RunInUseError, RunLock, RunLockedError
from .tracking import Tracker

PREEMPTED_EXIT_CODE = 75
"""`stpdist train` exits with this code after a SIGTERM/SIGUSR1 stop with a checkpoint
(EX_TEMPFAIL: try again; `--resume auto` continues)."""
INTERRUPTED_EXIT_CODE = 130
"""`stpdist train` exits with this code after a Ctrl-C (SIGINT) stop with a checkpoint, as
shells report a process that Ctrl-C ended (128 + SIGINT)."""


LR_KEY = "model.optimizer.lr"
"""Changed on resume, the restored schedule is scaled by new / old (`_rescale_lr`)."""


def _positive_numbers(*values: Any) -> bool:
    return all(
        isinstance(v, int | float) and not isinstance(v, bool) and v > 0 and math.isfinite(v)
        for v in values
    )


KEPT_ON_RESUME = (
    "model.optimizer.name",
    "model.optimizer.lr",
    "model.optimizer.weight_decay",
    "model.schedule.name",
    "model.schedule.interval",
    "model.schedule.total_steps",
    "data.normalize",
    "data.num_input_frames",
    "data.num_output_frames",
    "model.loss",
    "model.loss_frames",
)
"""Config keys a resume cannot change (but `model.optimizer.lr`, whose change scales the
restored schedule: `LR_KEY`): the restored optimizer state keeps its kind and weight decay,
and the restored scheduler state its kind (another's state
fails to load, or loads into it and goes on at the other's step), interval (it counts
steps or epochs) and length (OneCycleLR's `total_steps` is part of its state); what the
run's losses measure (the normalisation of the frames, the loss and its frames: `val/loss`,
the monitor of best checkpoints and of early stopping, would rank numbers that cannot be
compared)."""
MEASURE_KEYS = (
    "data.normalize",
    "data.num_input_frames",
    "data.num_output_frames",
    "model.loss",
    "model.loss_frames",
)
"""(a config review: other frame counts were taken on resume, val/loss then measuring
other predictions than the best checkpoints were ranked by)"""
ORDER_KEYS = ("trainer.seed",)
"""Settings that order every epoch's data: changed on resume, the epochs begun would see
samples twice and miss others (`TrainState.settings`)."""
MID_EPOCH_KEYS = ("data.batch_size", "data.shuffle_buffer", "data.shards", "data.reading")
"""Settings of the train source that shape the rest of an epoch: refused mid-epoch only.
`data.shards` and `data.reading` are no config keys: the train split's shards and their
counts, and the order they are read in (a shard stream's `shards` and `reading`: local
shards by bands, shards behind a `data.url_template` in order), whose change deals the rest
of an epoch anew (not recorded before 2026-12-07: not compared for such checkpoints)."""


def _scale_schedule(scheduler: Any, ratio: float) -> None:
    """A module's own scheduler, restored, scaled by `ratio`: the rates it computes the
    next ones from (`base_lrs`; CyclicLR's `max_lrs`; a SequentialLR's or
    ChainedScheduler's inner schedulers), as the param groups' own rates are (a diff
    review: CosineAnnealingWarmRestarts and CyclicLR said "scaled" and went on at the
    checkpoint's rates, recomputed from their restored bases)."""
    for inner in getattr(scheduler, "_schedulers", None) or []:
        _scale_schedule(inner, ratio)
    for name in ("base_lrs", "max_lrs"):
        rates = getattr(scheduler, name, None)
        if isinstance(rates, list) and all(isinstance(r, int | float) for r in rates):
            setattr(scheduler, name, [r * ratio for r in rates])


MODULE_LR_KEY = "optimizer.lrs"
"""A Trainer of keywords records its module's optimizer (its kind, "optimizer", and each
param group's lr, OneCycleLR's max_lr, "optimizer.lrs") in every checkpoint's state: another kind is
refused on resume, other rates of one ratio scale the restored schedule as `LR_KEY` does."""


def _optimizer_facts(optimizer: Any) -> dict[str, Any]:
    """{"optimizer": class name, "optimizer.lrs": each param group's rate as set}."""
    inner = getattr(optimizer, "optimizer", optimizer)
    # the rate a user sets: OneCycleLR's `max_lr` (its initial_lr moves with div_factor)
    rates = [
        group.get("max_lr", group.get("initial_lr", group.get("lr")))
        for group in inner.param_groups
    ]
    facts: dict[str, Any] = {"optimizer": type(inner).__name__}
    if all(isinstance(r, int | float) and not isinstance(r, bool) for r in rates):
        # text: a checkpoint's settings are scalars (as every stpdist reads them)
        facts[MODULE_LR_KEY] = ", ".join(f"{float(r):g}" for r in rates)
    return facts


def _rates(text: Any) -> list[float] | None:
    try:
        rates = [float(part) for part in str(text).split(",")]
    except ValueError:
        return None
    return rates if rates and all(r >= 0 for r in rates) and any(rates) else None


def _ratio(old: Any, new: Any) -> float | None:
    """The one positive number the rates `new` are the rates `old` times (one a param
    group, as text; a group at 0 in both, frozen, left out), else None."""
    before, now = _rates(old), _rates(new)
    if before is None or now is None or len(before) != len(now):
        return None
    if any((o == 0) != (n == 0) for o, n in zip(before, now)):
        return None
    pairs = [(o, n) for o, n in zip(before, now) if o]
    ratio = pairs[0][1] / pairs[0][0]
    return ratio if all(math.isclose(n / o, ratio, rel_tol=1e-9) for o, n in pairs) else None


def _settings_refusal(start: Path, changed: list[str], *, from_config: bool = True) -> str:
    """Why a resume from `start` refuses the `changed` settings (`key old → new`), said for
    the kinds changed only, and what to do instead (`from_config`: the run was made from a
    config; a Trainer of keywords, from Python, is told in Python's terms)."""
    keys = [line.split(" ", 1)[0] for line in changed]
    why = []
    if MODULE_LR_KEY in keys:
        why.append("a resume scales a module's learning rates by one ratio only (each "
                   "param group's, a frozen group at 0 left at 0)")  # fmt: skip
    if any(k.startswith(("model.optimizer.", "optimizer")) and k != MODULE_LR_KEY for k in keys):
        why.append("a resume restores the optimizer state (its kind and weight decay)")
    if any(k.startswith("model.schedule.") for k in keys):
        why.append("a resume restores the lr scheduler's state (its kind, its length, and "
                   "whether it counts steps or epochs)")  # fmt: skip
    if any(k in MEASURE_KEYS for k in keys):
        why.append("the run's losses would measure something else from here (val/loss, and "
                   "a monitor built on it, would compare numbers of both)")  # fmt: skip
    if any(k in ORDER_KEYS for k in keys):
        why.append("the seed orders every epoch's data")
    mid_epoch = [k for k in keys if k in MID_EPOCH_KEYS]
    if mid_epoch:
        why.append("an epoch begun is dealt in its batch size and shuffle buffer over its "
                   "training shards (samples would be seen twice and others missed)")  # fmt: skip
    at_epoch_end = ", from a checkpoint written at an epoch's end" * (len(mid_epoch) == len(keys))
    if not from_config:  # no config.yaml, no model.init_weights (a Python API review)
        return (
            f"resuming from {start} with {'; '.join(changed)}: {'; '.join(why)}; resume with "
            f"the checkpoint's values{at_epoch_end}, or start a new run in another "
            "output_dir from its weights (stpdist.load, or module.load_state_dict of its "
            "model.safetensors)"
        )
    return (
        f"resuming from {start} with {'; '.join(changed)}: {'; '.join(why)}, so the run would "
        "not honour the new value(s) while its config.yaml recorded them; resume with the "
        f"checkpoint's values{at_epoch_end}, or start a new run in another "
        f"trainer.output_dir from its weights (model.init_weights={start})"
    )


def _config_settings(checkpoint: Path) -> dict[str, Any]:
    """`KEPT_ON_RESUME` and `ORDER_KEYS` values from the config.yaml of a checkpoint whose
    state does not record them (written before it did); values read from the environment
    (kept there as `${oc.env:…}` text) and an unreadable file give none."""
    try:
        saved = yaml.safe_load((checkpoint / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    values = {key: _lookup(saved, key) for key in (*KEPT_ON_RESUME, *ORDER_KEYS)}
    return {k: v for k, v in values.items() if not (isinstance(v, str) and "${" in v)}


def _lookup(tree: Any, dotted: str) -> Any:
    """The value at `dotted` in nested mappings, or None."""
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


class Preempted(RuntimeError):
    """Training stopped on a signal after a completed optimizer step and a checkpoint.
    `exit_code`: 130 after Ctrl-C (SIGINT), 75 after SIGTERM/SIGUSR1. `fit` raises it for
    SIGTERM/SIGUSR1, and `Interrupted` (a KeyboardInterrupt) for Ctrl-C."""

    def __init__(
        self,
        step: int,
        checkpoint: Path | None,
        signum: int | None = None,
        resume: str = 'fit(…, resume="auto")',
    ) -> None:
        super().__init__(_stop_text(step, checkpoint, signum, resume))
        self.step, self.checkpoint, self.signum = step, checkpoint, signum
        interrupted = signum == signal.SIGINT
        self.exit_code = INTERRUPTED_EXIT_CODE if interrupted else PREEMPTED_EXIT_CODE


class Interrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C (SIGINT) after a completed optimizer step and a
    checkpoint: a KeyboardInterrupt, so that an experiment loop's `except Exception` does
    not swallow it and go on to the next trial (one Ctrl-C per trial). The attributes of
    `Preempted` (`step`, `checkpoint`, `signum`, `exit_code` 130)."""

    def __init__(
        self,
        step: int,
        checkpoint: Path | None,
        signum: int | None = signal.SIGINT,
        resume: str = 'fit(…, resume="auto")',
    ) -> None:
        super().__init__(_stop_text(step, checkpoint, signal.SIGINT, resume))
        self.step, self.checkpoint, self.signum = step, checkpoint, signum
        self.exit_code = INTERRUPTED_EXIT_CODE


STOPS = (Preempted, Interrupted)
"""What `fit` raises after a stop with a checkpoint."""


def stopped(
    step: int, checkpoint: Path | None, signum: int | None, resume: str = 'fit(…, resume="auto")'
) -> Preempted | Interrupted:
    """The stop `signum` asked for: `Interrupted` after Ctrl-C, else `Preempted`."""
    kind = Interrupted if signum == signal.SIGINT else Preempted
    return kind(step, checkpoint, signum, resume)


def _stop_text(step: int, checkpoint: Path | None, signum: int | None, resume: str) -> str:
    cause = "Ctrl-C" if signum == signal.SIGINT else "a signal"
    return (
        f"stopped on {cause} after step {step}; saved checkpoint {checkpoint}; resume with {resume}"
    )


class _TrainingStep(nn.Module):
    """Routes `training_step` through the (DDP-)wrapped forward, so DDP's gradient hooks
    and accelerate's autocast see it."""

    def __init__(self, module: EnhancedModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, **extras: Any) -> Any:
        step = call_hook(self.module.training_step, inputs, targets, extras)
        return _end_of(self.module, "training_step", step)


def _hook_of(module: EnhancedModule, hook: str) -> str:
    """The hook whose output the Trainer reads: `<hook>_end` where the module defines its
    own (the output passes through it, and an error in it is its), else `hook`."""
    return _hook_of_class(type(module), hook)


@functools.lru_cache(maxsize=64)
def _hook_of_class(cls: type, hook: str) -> str:
    """`_hook_of` for a module class, looked up once (it is asked at every step)."""
    own = getattr(cls, f"{hook}_end") is not getattr(EnhancedModule, f"{hook}_end")
    return f"{hook}_end" if own else hook


def _end_of(module: EnhancedModule, hook: str, output: Any) -> Any:
    """`<hook>_end(output)`; None from it for an output that was not None is an error naming
    it (a `*_step_end` that forgot its `return`: every batch skipped, or a confusing error
    naming `<hook>`), never a silent skip."""
    ended = getattr(module, f"{hook}_end")(output)
    if ended is None and output is not None:
        raise TypeError(
            f"{type(module).__name__}.{hook}_end returned None for the "
            f"{type(output).__name__} {hook} returned; return the (post-processed) output"
        )
    return ended


class _ShardedTrainingStep(_TrainingStep):
    """The training step as the FSDP2 root; `no_sync` is what accelerate's `accumulate`
    calls on the window's micro-batches before the last."""

    def no_sync(self) -> Any:
        from .fsdp import no_sync

        return no_sync(self)


class _Parameters(NamedTuple):
    """What a hook declares: the names extras may be given as, whether it takes **kwargs,
    and the names of the two parameters that receive inputs and targets by position."""

    keywords: frozenset[str]
    any_keyword: bool
    positional: tuple[str, ...]
    required: tuple[str, ...] = ()
    """Parameters after those two without a default: extras the batch must carry."""


def _declared(hook: Any) -> _Parameters:
    """The declared parameters of a hook (a bound method's own `self` left out), cached."""
    function = getattr(hook, "__func__", hook)
    bound = function is not hook
    found = _SIGNATURES.get((function, bound))
    if found is None:
        parameters = list(inspect.signature(function).parameters.values())[int(bound) :]
        by_position = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        plain = [p for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        found = _Parameters(
            frozenset(p.name for p in parameters if p.kind is not p.POSITIONAL_ONLY),
            any(p.kind is p.VAR_KEYWORD for p in parameters),
            tuple(p.name for p in parameters if p.kind in by_position)[:2],
            tuple(p.name for p in plain[2:] if p.default is p.empty),
        )
        _SIGNATURES[(function, bound)] = found
    return found


_SIGNATURES: dict[tuple[Any, bool], _Parameters] = {}
_NOT_PASSED: set[tuple[Any, str]] = set()  # (hook, extra) pairs already warned about


def call_hook(hook: Any, inputs: Any, targets: Any, extras: dict[str, Any]) -> Any:
    """`hook(inputs, targets, **extras)`, each extra (a batch dict's masks, timestamps,
    `keys`, …) given only to a hook that declares a parameter of its name or **kwargs, so
    the seed's `(inputs, labels)` hooks keep working on batches that carry more. An extra
    named like a parameter that already receives inputs or targets (a `labels` entry for
    `(inputs, labels)`) is not passed, with a warning once."""
    declared = _declared(hook)
    missing = [name for name in declared.required if name not in extras]
    if missing:  # Python's "missing 1 required positional argument" said not where from
        function = getattr(hook, "__func__", hook)
        carried = ", ".join(sorted(extras)) or "none"
        raise TypeError(
            f"{getattr(function, '__qualname__', hook)} takes {', '.join(missing)}, which the "
            f"batch does not carry (its extras: {carried}): extras come in a dict batch "
            f"({{'inputs': …, 'targets': …, '{missing[0]}': …}}); a tuple batch's third item is "
            "its sample keys"
        )
    if not extras:
        return hook(inputs, targets)
    given = {
        k: v
        for k, v in extras.items()
        if (declared.any_keyword or k in declared.keywords) and k not in declared.positional
    }
    if any(name in extras for name in declared.positional):
        _warn_taken(hook, declared, extras)
    return hook(inputs, targets, **given)


def _warn_taken(hook: Any, declared: _Parameters, extras: dict[str, Any]) -> None:
    function = getattr(hook, "__func__", hook)
    for name in declared.positional:
        if name in extras and (function, name) not in _NOT_PASSED:
            _NOT_PASSED.add((function, name))
            console.warn_main(
                "batch entry %r is not passed to %s: its parameter %r already receives the "
                "batch's %s; rename the entry to pass it as well",
                name,
                getattr(function, "__qualname__", hook),
                name,
                "inputs" if name == declared.positional[0] else "targets",
            )


def _tensors_in(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in nested dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors_in(item)


def _scalars_of(output: Any, hook: str = "validation_step") -> dict[str, Any]:
    """The scalar entries of a step's output (a tensor is the loss)."""
    if isinstance(output, torch.Tensor):
        if output.numel() != 1:
            raise TypeError(
                f"{hook} returned a tensor of shape {tuple(output.shape)}; expected its loss "
                "as one number (a batch mean: results are weighted by batch size and reduced "
                "exactly) or a dict of such scalars"
            )
        return {"loss": output}
    if isinstance(output, dict):
        loss = output.get("loss")
        if isinstance(loss, torch.Tensor) and loss.numel() != 1:  # as the tensor form is
            raise TypeError(
                f"{hook} returned a 'loss' of shape {tuple(loss.shape)}; expected one number "
                "(a batch mean: results are weighted by batch size and reduced exactly)"
            )
        scalars = {}
        reserved = TRAINER_SCALARS if hook == "training_step" else EVALUATION_SCALARS
        for k, v in output.items():
            if k in reserved or (hook == "training_step" and k.startswith("lr_group")):
                if (hook, k) not in _UNLOGGED:  # said once; the Trainer's value is logged
                    _UNLOGGED.add((hook, k))
                    console.warn_main(
                        "%s's entry %r is not logged: the Trainer logs its own value under "
                        "that name; rename yours",
                        hook,
                        k,
                    )
                continue
            if (isinstance(v, torch.Tensor) and v.numel() == 1) or isinstance(v, float | int):
                scalars[k] = v
            elif isinstance(v, np.generic | np.ndarray) and v.size == 1 and v.dtype.kind in "biuf":
                scalars[k] = float(v.reshape(()))  # numpy's float32, int64, 0-d arrays
            elif k not in CONSUMED_ENTRIES and (hook, k) not in _UNLOGGED:
                _UNLOGGED.add((hook, k))
                what = (
                    f"a tensor of shape {tuple(v.shape)}"
                    if isinstance(v, torch.Tensor)
                    else f"a {type(v).__name__}"
                )
                console.warn_main(
                    "%s's entry %r is %s, not one number: it is not logged (scalars are; "
                    "additive per-lead or per-variable sums go under 'sums' in validation_step)",
                    hook,
                    k,
                    what,
                )
        return scalars
    forgot = "; did it forget its `return`?" if output is None else ""
    raise TypeError(
        f"{hook} returned {type(output).__name__}; expected its loss (a tensor of one "
        f"number) or a dict of scalars{forgot}"
    )


TRAINER_SCALARS = frozenset({"lr", "grad_norm", "samples_per_s", "epoch_loss"})
"""Training scalars the Trainer logs itself (`train/lr`, …): a module's own entry of that
name was overwritten, or logged under the epoch's row's name, without a word."""
EVALUATION_SCALARS = frozenset({"num_samples"})
"""Evaluation results the Trainer adds itself (`val/num_samples`)."""


CONSUMED_ENTRIES = frozenset({"predictions", "sums"})
"""Entries of a step's output dict that the Trainer uses other than as logged scalars."""
_UNLOGGED: set[tuple[str, str]] = set()
"""(hook, entry) already warned about as not logged: once per process."""


def _optimizer_of(returned: Any) -> torch.optim.Optimizer:
    """What `configure_optimizer` returned, if it is one optimizer; Lightning's other forms
    of `configure_optimizers` (a list, a dict with a scheduler) are refused before the
    first step, saying where the scheduler goes."""
    if isinstance(returned, torch.optim.Optimizer):
        return returned
    if isinstance(returned, dict):
        hint = (
            "; return the optimizer alone, and its scheduler from configure_lr_scheduler(optimizer)"
        )
    elif isinstance(returned, (list, tuple)):
        hint = (
            "; the Trainer steps one optimizer (give it several parameter groups instead), "
            "and a scheduler comes from configure_lr_scheduler(optimizer)"
        )
    else:
        hint = ""
    raise TypeError(
        f"configure_optimizer returned a {type(returned).__name__}, expected a "
        f"torch.optim.Optimizer{hint}"
    )


def _scheduler_of(returned: Any, optimizer: Any) -> tuple[Any, str]:
    """(scheduler, interval) of what `configure_lr_scheduler(optimizer)` returned; what the
    Trainer would not honour (Lightning's `frequency`, `monitor`; ReduceLROnPlateau, which
    needs a metric at each step; a scheduler of another optimizer, which would schedule one
    nobody steps) is refused before the first step, not ignored or failed later."""
    if returned is None:
        return None, "step"
    scheduler, interval = returned, "step"
    if isinstance(returned, dict):
        interval = returned.get("interval", "step")
        if interval not in ("step", "epoch") or "scheduler" not in returned:
            raise ValueError(
                "configure_lr_scheduler dict needs 'scheduler' and 'interval' in ('step', 'epoch')"
            )
        unknown = sorted(set(returned) - {"scheduler", "interval", "name"})
        if unknown:
            raise ValueError(
                f"configure_lr_scheduler dict has {', '.join(map(repr, unknown))}, which the "
                "Trainer does not honour; it takes 'scheduler' and 'interval' (stepped once "
                "per optimizer step or per epoch)"
            )
        scheduler = returned["scheduler"]
        if scheduler is None:  # no scheduler, said as a dict
            return None, interval
    if isinstance(scheduler, (list, tuple)):
        raise TypeError(
            f"configure_lr_scheduler returned a {type(scheduler).__name__} of "
            f"{len(scheduler)}; the Trainer steps one scheduler: return it alone (several: "
            "combine them with torch.optim.lr_scheduler.SequentialLR or ChainedScheduler)"
        )
    if not callable(getattr(scheduler, "step", None)):
        raise TypeError(
            f"configure_lr_scheduler returned a {type(scheduler).__name__}, which has no "
            "step(); return a torch.optim.lr_scheduler scheduler, a dict {'scheduler': …, "
            "'interval': 'step' or 'epoch'}, or None"
        )
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise TypeError(
            "configure_lr_scheduler returned a ReduceLROnPlateau, which steps on a metric; the "
            "Trainer steps schedulers without one (once per optimizer step or epoch): use a "
            "schedule of the step count, or trainer.early_stopping to stop on a plateau"
        )
    _check_scheduler_calls(scheduler)
    if getattr(scheduler, "optimizer", optimizer) is not optimizer:
        raise TypeError(
            f"configure_lr_scheduler returned a {type(scheduler).__name__} of another "
            "optimizer than the one it was given (a second configure_optimizer() call?): the "
            "Trainer steps the one it was given, so the schedule would never reach it; build "
            "the scheduler on the optimizer argument"
        )
    return scheduler, interval


def _check_scheduler_calls(scheduler: Any) -> None:
    """What the Trainer calls of a scheduler, checked before the first step (a failure
    there came after a whole epoch, nothing saved): `step()` without arguments, and
    `state_dict()`/`load_state_dict()` for the checkpoints."""
    kind = type(scheduler).__name__
    missing = [
        n for n in ("state_dict", "load_state_dict") if not callable(getattr(scheduler, n, None))
    ]
    if missing:
        named = " or ".join(f"{n}()" for n in missing)
        raise TypeError(
            f"configure_lr_scheduler returned a {kind} without {named}: "
            "every checkpoint saves the schedule's state, so that a resume goes on where it "
            "stopped; add them, or use a torch.optim.lr_scheduler scheduler (LambdaLR takes "
            "any function of the step)"
        )
    try:
        signature = inspect.signature(scheduler.step)
    except (TypeError, ValueError):  # no signature to read (a builtin): called as it is
        return
    try:
        signature.bind()
    except TypeError:
        signature = signature.replace(return_annotation=inspect.Signature.empty)
        raise TypeError(
            f"configure_lr_scheduler returned a {kind} whose step{signature} needs arguments; "
            "the Trainer calls step() with none, once per optimizer step (or epoch, with "
            "'interval': 'epoch'); timm's schedulers take the epoch or the update count: "
            "use a torch.optim.lr_scheduler scheduler (LambdaLR takes any function of the "
            "step)"
        ) from None


def _clock(seconds: float) -> str:
    """H:MM:SS."""
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _multiples_below(limit: int, periods: list[int]) -> int:
    """How many steps in 1 … limit − 1 are a multiple of one of `periods` (one or two)."""
    count = sum((limit - 1) // p for p in periods)
    if len(periods) == 2:
        count -= (limit - 1) // math.lcm(*periods)
    return count


class Meter:
    """Running sums of the training loss (plus the main rank's extra scalars) over the
    current log window and epoch, and the window's throughput. Losses stay on the device
    as they come (no host read per step); `window` and `epoch`, called at the same steps
    on every rank, average them over ranks in one reduce."""

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self._window: dict[str, Any] = {}
        self._epoch: dict[str, Any] = {}
        self._window_start = self._epoch_start = time.perf_counter()
        self._paused_at: float | None = None
        self.partial_epoch = False
        """The current epoch began before this process (a mid-epoch resume)."""
        self.carried: dict[str, float] | None = None
        """Of a partial epoch: its loss before this process, as the checkpoint carried it
        (`TrainState.epoch_loss`); None: unknown (an older checkpoint), no epoch loss."""
        self.carried_window: dict[str, Any] | None = None
        """The log window's sums before this process (`TrainState.window`), added to the
        first window's; None: none (a resume at a log step, or an older checkpoint)."""
        self.held_grad_norm: Any = None
        """The grad norm of a log step whose row a stop held (carried by the checkpoint)."""

    @classmethod
    def resumed(cls, accelerator: Any, state: Any) -> Meter:
        """A Meter for training from `state`: an epoch begun before this process (a
        mid-epoch resume) has its loss so far from the checkpoint (`state.epoch_loss`)."""
        meter = cls(accelerator)
        meter.partial_epoch = state.batch > 0 or state.epoch_origin is not None
        meter.carried = state.epoch_loss if meter.partial_epoch else None
        if state.window is not None:  # the first window and the epoch's clock go on
            meter.carried_window = state.window if state.window["batches"] else None
            meter._epoch_start -= state.window["epoch_seconds"]
        if meter.partial_epoch and meter.carried is None:
            console.warn_main(
                "epoch %d's train/epoch_loss will not be logged: the checkpoint does not hold "
                "the loss of the epoch's batches before it (written by an stpdist before "
                "2026-12-05)",
                state.epoch,
            )
        return meter

    def add(self, loss: torch.Tensor | None, samples: int, extras: dict[str, Any]) -> None:
        """One micro-batch: this rank's loss (None when skipped on every rank), the global
        batch size, and this rank's extra scalars (tensors or numbers)."""
        for sums in (self._window, self._epoch):
            sums["samples"] = sums.get("samples", 0) + samples
            if loss is None:
                sums["skipped"] = sums.get("skipped", 0) + 1
                continue
            sums["batches"] = sums.get("batches", 0) + 1
            value = loss.detach().double()
            sums["loss"] = sums["loss"] + value if "loss" in sums else value
            # the module's own entries apart from the bookkeeping (an entry named "samples"
            # or "batches" is the module's), each with the batches that returned it: an
            # entry some batches leave out is its mean over the others
            added, counts = sums.setdefault("extras", {}), sums.setdefault("counts", {})
            for key, value in extras.items():
                if isinstance(value, torch.Tensor):
                    value = value.detach().double()
                added[key] = added[key] + value if key in added else value
                counts[key] = counts.get(key, 0) + 1

    def restart_clocks(self) -> None:
        """After a checkpoint or validation: the window's samples/s and the epoch's time_s
        count training time only (they held the pause, a 40× dip after each validation)."""
        if self._paused_at is None:
            return
        pause = time.perf_counter() - self._paused_at
        self._window_start += pause
        self._epoch_start += pause
        self._paused_at = None

    def pause_clocks(self) -> None:
        """Before a checkpoint or validation (see `restart_clocks`)."""
        self._paused_at = time.perf_counter()

    def _epoch_total(self) -> dict[str, float] | None:
        """The epoch's loss so far: the sum of every rank's per-batch losses, the number of
        (rank, batch) pairs in it, and the micro-batches every rank skipped, the part before
        a resume included; None when that part is unknown. Reduces over ranks when this
        process counted a batch (every rank did, or none: batches are equal on all ranks)."""
        sums = self._epoch
        if self.partial_epoch and self.carried is None:
            return None
        total = dict(self.carried or {"sum": 0.0, "batches": 0, "skipped": 0})
        total["skipped"] += sums.get("skipped", 0)
        if sums.get("batches"):
            loss = self.accelerator.reduce(sums["loss"].reshape(1), reduction="sum")
            total["sum"] += float(loss)  # a host read: at an epoch's end or a checkpoint
            total["batches"] += sums["batches"] * self.accelerator.num_processes
        return total

    def carry(self, state: Any) -> None:
        """Before a checkpoint, on every rank: the epoch's loss so far into `state`, so that
        a resume logs the whole epoch's `train/epoch_loss` (None at an epoch's start), and
        the log window's sums and the epoch's time so far, so that it logs the same rows."""
        at_start = state.batch == 0 and state.epoch_origin is None
        total = None if at_start else self._epoch_total()
        state.epoch_loss = (
            None if total is None or not total["batches"] + total["skipped"] else total
        )
        window = self._window_total(self._window, self.carried_window)
        now = self._paused_at if self._paused_at is not None else time.perf_counter()
        carried = self.carried_window or {}
        state.window = {
            **window,
            "samples": self._window.get("samples", 0) + carried.get("samples", 0),
            "seconds": round(max(now - self._window_start, 0.0) + carried.get("seconds", 0), 6),
            "epoch_seconds": round(max(now - self._epoch_start, 0.0), 6),
            "grad_norm": None if self.held_grad_norm is None else float(self.held_grad_norm),
        }

    def _window_total(self, sums: dict[str, Any], carried: dict[str, Any] | None) -> dict[str, Any]:
        """The window's loss sum over every rank and (rank, batch) count, and this rank's
        extras as name → [sum, count], with the part before a resume (`carried`)."""
        carried = carried or {"sum": 0.0, "batches": 0, "extras": {}}
        total = {"sum": carried["sum"], "batches": carried["batches"]}
        extras = {k: list(v) for k, v in carried["extras"].items()}
        if sums.get("batches"):
            loss = self.accelerator.reduce(sums["loss"].reshape(1), reduction="sum")
            total["sum"] += float(loss)  # a host read: at a checkpoint
            total["batches"] += sums["batches"] * self.accelerator.num_processes
            counts = sums.get("counts", {})
            for key, value in sums.get("extras", {}).items():
                before = extras.get(key, [0.0, 0])
                extras[key] = [before[0] + float(value), before[1] + counts[key]]
        return {**total, "extras": extras}

    def _means(self, sums: dict[str, Any]) -> dict[str, float]:
        """Per-batch means: the loss over every rank, the extras of this rank; with the
        sums a resumed window carried (`carried_window`)."""
        carried, self.carried_window = self.carried_window, None
        if carried is not None:
            total = self._window_total(sums, carried)
            means = {"loss": total["sum"] / total["batches"]}
            means.update({k: s / n for k, (s, n) in total["extras"].items() if n})
            return means
        batches, counts = sums["batches"], sums.get("counts", {})
        world = self.accelerator.num_processes
        loss = self.accelerator.reduce(sums["loss"].reshape(1), reduction="sum")
        means = {"loss": float(loss) / world / batches}  # the window's host read
        means.update({k: float(v) / counts[k] for k, v in sums.get("extras", {}).items()})
        return means

    def window(self) -> dict[str, float] | None:
        """`train/…` means and samples/s since the last call (None when no batch counted,
        here or before a resume); starts a new window. Samples/s counts every rank's (the
        global batch)."""
        sums, elapsed = self._window, time.perf_counter() - self._window_start
        self._window, self._window_start = {}, time.perf_counter()
        if not sums.get("batches") and self.carried_window is None:
            return None
        carried = self.carried_window or {}  # the window's part before a resume
        samples = sums.get("samples", 0) + carried.get("samples", 0)
        elapsed += carried.get("seconds", 0.0)
        means = {f"train/{k}": v for k, v in self._means(sums).items()}
        means["train/samples_per_s"] = samples / elapsed if elapsed > 0 else 0.0
        return means

    def epoch(self) -> tuple[dict[str, float], int]:
        """The epoch's mean loss over every rank's batches, the part before a mid-epoch
        resume included (none when every batch was skipped, or that part is unknown), its
        duration here, and the number of micro-batches every rank skipped; starts a new
        epoch."""
        elapsed = time.perf_counter() - self._epoch_start
        total = self._epoch_total()
        self._epoch, self._epoch_start = {}, time.perf_counter()
        self.partial_epoch, self.carried = False, None
        summary = {}
        if total is not None and total["batches"]:
            summary["train/epoch_loss"] = total["sum"] / total["batches"]
        return {**summary, "time_s": round(elapsed, 2)}, 0 if total is None else total["skipped"]


class ValidationAbandoned(RuntimeError):
    """A stop (SIGTERM, SIGUSR1, Ctrl-C) came during a validation inside `fit`: every rank
    left it, so that the run stops with a checkpoint within the launcher's grace period
    instead of being killed at the end of a long validation; it runs again on resume."""


def _fsdp_window_lost(step: int, latest: Path | None, whole: bool = False) -> InputError:
    """The error of a window whose last micro-batch every rank skipped, under FSDP, on a
    torch whose FSDP lacks the private methods `fsdp.reduce_pending_grads` runs: the
    skipped forward gathered the parameters and no backward reduce-scattered the window's
    gradients (a review: no weight changed from there, silently, until a checkpoint
    failed). Said where it happens; DDP averages the earlier micro-batches instead.
    `whole`: every micro-batch of the window was skipped (nothing to reduce, but the
    skipped forwards left the root's parameters gathered)."""
    if whole:
        return InputError(
            f"optimizer step {step}: every micro-batch of the step was skipped (training_step "
            "returned None), and under strategy fsdp on this torch the parameters its "
            "forwards gathered cannot be put back without a backward; the run stops here "
            f"(last checkpoint: {latest}): use strategy ddp (this torch's FSDP lacks the "
            "methods stpdist runs for it; torch 2.13 has them)"
        )
    return InputError(
        f"optimizer step {step}: the last micro-batch of an accumulation window was skipped "
        "(training_step returned None on a rank: every rank skips it), and under strategy "
        "fsdp the window's "
        "gradients are reduced only in that micro-batch's backward, so they cannot be "
        f"applied; the run stops here (last checkpoint: {latest}): skip earlier in a window, "
        "or use gradient_accumulation_steps 1 or strategy ddp"
    )


def _check_validation_source(source: Any) -> None:
    """The validation data before the first step: its shards' counts (a missing or
    miscounted one failed at the first validation, an epoch of training later), and any
    samples at all (an empty dataset was refused there too)."""
    getattr(source, "check_counts", lambda: None)()
    size = getattr(source, "__len__", None)
    if callable(size) and size() == 0:
        raise InputError(
            "the validation data holds no samples (an empty dataset); pass data with samples, "
            "or val_data=None to train without validation"
        )


def _checked_sums(sums: Any) -> dict[str, torch.Tensor]:
    """A validation output's "sums" (additive results, reduced over ranks by summing: a
    dict of tensors), else a TypeError naming the entry."""
    if not isinstance(sums, dict):
        raise TypeError(
            f"validation_step returned 'sums' as a {type(sums).__name__}; expected a dict of "
            "tensors (additive results, summed over batches and ranks)"
        )
    for key, value in sums.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"validation_step returned sums['{key}'] as a {type(value).__name__}; expected "
                "a tensor (summed over batches and ranks: torch.as_tensor(value) for a number)"
            )
    return sums


class EvalSums:
    """Additive evaluation results of one pass: batch-size-weighted sums of the scalars
    each batch returned, the module's additive "sums", the sample count. `reduce` adds
    them over ranks exactly (ranks that saw no batch know no names or shapes: the union
    of names and shapes is agreed first)."""

    def __init__(self) -> None:
        # a tensor scalar's sum stays a float64 tensor on its device (a host read per
        # batch made the host wait for every validation batch on a GPU); numbers, floats
        self.scalars: dict[str, Any] = {}
        self.weights: dict[str, int] = {}  # per scalar: the samples of the batches holding it
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.abandoned = False
        """This rank left the pass early (a stop was requested): `reduce` raises
        `ValidationAbandoned` on every rank."""

    def add(self, output: Any, size: int) -> None:
        for key, value in _scalars_of(output).items():
            if isinstance(value, torch.Tensor):
                value = value.detach().reshape(()).double()
            self.scalars[key] = self.scalars.get(key, 0.0) + value * size
            self.weights[key] = self.weights.get(key, 0) + size
        if isinstance(output, dict) and "sums" in output:
            for key, value in _checked_sums(output["sums"]).items():
                value = value.detach().double()
                self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.count += size

    def reduce(self, accelerator: Any, module: EnhancedModule, prefix: str) -> dict[str, Any]:
        layouts = gather_object(
            [(sorted(self.scalars), sorted((k, tuple(v.shape)) for k, v in self.sums.items()))]
        )
        names = sorted(set().union(*(names for names, _ in layouts)))
        shapes = sorted(set().union(*(shapes for _, shapes in layouts)))
        device = accelerator.device
        sums = [torch.as_tensor(self.scalars.get(n, 0.0), dtype=torch.float64) for n in names]
        head = [self.weights.get(n, 0) for n in names] + [self.count, float(self.abandoned)]
        parts = [s.to(device).reshape(1) for s in sums]
        parts.append(torch.tensor(head, dtype=torch.float64, device=device))
        for key, shape in shapes:
            value = self.sums.get(key)
            if value is None:
                value = torch.zeros(shape, dtype=torch.float64, device=device)
            parts.append(value.flatten())
        flat = accelerator.reduce(torch.cat(parts), reduction="sum")
        values = flat[: 2 * len(names) + 2].tolist()
        if values[-1]:
            raise ValidationAbandoned(prefix)
        total = int(values[-2])
        if total == 0:
            raise InputError(f"the {prefix} data holds no samples")
        # each scalar over the samples of the batches that returned it (all, as a rule)
        sums, weights = values[: len(names)], values[len(names) : 2 * len(names)]
        results = {f"{prefix}/{n}": v / w for n, v, w in zip(names, sums, weights)}
        if shapes:
            reduced, offset = {}, 2 * len(names) + 2
            for key, shape in shapes:
                size = int(np.prod(shape)) if shape else 1
                reduced[key] = flat[offset : offset + size].view(shape)
                offset += size
            for key, value in module.metrics_from_sums(reduced).items():
                results[f"{prefix}/{key}"] = _one_number(value, key)
        results[f"{prefix}/num_samples"] = total
        return results


def _one_number(value: Any, key: str) -> float | int:
    """A result of `metrics_from_sums` as a Python number; anything else is refused naming
    the hook and the key (a Python API review: a vector failed after the checkpoint, in the
    console's formatting, naming neither, and `validate` returned tensors)."""
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return value.item()
    elif isinstance(value, np.ndarray | np.generic) and value.size == 1:
        return value.item()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    shape = tuple(value.shape) if hasattr(value, "shape") else type(value).__name__
    raise InputError(
        f"metrics_from_sums returned {shape} for '{key}'; expected one number a key (a "
        "per-lead-time metric: one key each, e.g. 'mse/t01', 'mse/t02')"
    )


class SampleKeeper:
    """The first `limit` (key, inputs, truth, prediction) of the main process' batches, as
    float numpy arrays, for pictures."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.samples: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        self._seen = 0
        self.offered = False  # whether any batch was offered (a validation with data)

    def offer(self, keys: list[str] | None, inputs: Any, targets: Any, output: Any) -> None:
        self.offered = True
        preds = output.get("predictions") if isinstance(output, dict) else None
        room = self.limit - len(self.samples)
        if preds is not None and room > 0:
            for i in range(min(room, inputs.shape[0])):
                key = keys[i] if keys is not None else f"{self._seen + i:08d}"
                as_np = [
                    None if x is None else x[i].float().cpu().numpy()
                    for x in (inputs, targets, preds)
                ]
                self.samples.append((key, *as_np))
        self._seen += inputs.shape[0]


def validation_due(config: TrainerConfig, state: TrainState, epoch_end: bool) -> bool:
    """Whether the validation schedule (`val_every_n_*`) validates after `state`'s step (at
    an epoch's end, `state.epoch` is already the next epoch's number)."""
    every_steps, every_epochs = config.val_every_n_steps, config.val_every_n_epochs
    due = bool(every_steps) and state.global_step % every_steps == 0
    if epoch_end:
        due = due or (bool(every_epochs) and state.epoch % every_epochs == 0)
    return due


class Validator:
    """Knows when validation is due (`trainer.val_every_n_*`) and runs it: results logged,
    sample pictures handed to the tracker at the end, `state.metrics` updated."""

    def __init__(self, trainer: Trainer, source: Any, module: EnhancedModule) -> None:
        self.trainer, self.source, self.module = trainer, source, module
        self._no_pictures_said = False
        self.last_step: int | None = None
        """The step whose validation ran (or, on resume, the checkpoint holds)."""
        self._nonfinite_said = False

    def is_due(self, state: TrainState, *, epoch_end: bool = False) -> bool:
        """Whether validation runs after this step (at an epoch's end, `state.epoch` is
        already the next epoch's number)."""
        return self.source is not None and validation_due(self.trainer.config, state, epoch_end)

    def _say_nonfinite(self, results: dict[str, Any], step: int) -> None:
        """Validation results that are NaN or ±Inf, said at the first validation that has
        any (a model whose evaluation gives NaN trained on with `val/mse nan`, silently)."""
        # the scores of every prediction (not thresholded skill scores, which are NaN by
        # convention where a threshold has no event, nor the persistence baseline's)
        bad = [
            k for k in ("val/loss", "val/mse", "val/mae")
            if isinstance(results.get(k), float) and not math.isfinite(results[k])
        ]  # fmt: skip
        if bad and not self._nonfinite_said:
            self._nonfinite_said = True
            listed = ", ".join(bad[:4]) + (f" … ({len(bad)} in all)" if len(bad) > 4 else "")
            console.warn_main(
                "validation at step %d: %s not finite: the model's predictions hold NaN or "
                "±Inf outside training (said once)",
                step, listed,
            )  # fmt: skip

    def maybe_run(self, state: TrainState, *, epoch_end: bool = False, last: bool = False) -> None:
        """Validate if due (or as the `last` act of a run), never twice at one step. Only
        a validation on the schedule counts toward early stopping: a run's last one off it
        (`max_steps` reached) would count differently once the run is resumed further."""
        if self.source is None or self.last_step == state.global_step:
            return
        scheduled = self.is_due(state, epoch_end=epoch_end)
        if scheduled or last:
            self.run(state, scheduled=scheduled)

    def resume(self, state: TrainState, *, end_pending: bool = False, final: bool = False) -> None:
        """At the start of `fit`, after a resume: run the validation that was due at the
        resumed step if its checkpoint does not hold its results (the run stopped, was
        killed or failed between the save and that validation), as an uninterrupted run
        did right after the save. `end_pending`: the checkpoint stands at its epoch's last
        batch, the epoch not yet closed (a stop there): closing it validates, as an
        uninterrupted run did, in its order. `final`: this run ends at the resumed step."""
        self.last_step = state.metrics_step
        if state.global_step and state.metrics_step == state.global_step:
            # stored in the checkpoint, but a process killed before it logged them (or
            # while retention deleted an old checkpoint) left them out of metrics.jsonl
            epoch = state.step_epoch
            if self.trainer.tracker.log_unless_logged(
                state.metrics, step=state.global_step, epoch=epoch
            ):
                say(f"step {state.global_step}: validation results logged from its checkpoint")
            return
        if not state.global_step or end_pending:
            return
        # a checkpoint at batch 0 was written at an epoch's end (`state.epoch` is the next)
        # (an epoch continued on other ranks restarts its batch count: no epoch end there)
        epoch_end = state.batch == 0 and state.epoch_origin is None
        if self.is_due(state, epoch_end=epoch_end):
            # a stop's checkpoint at a step the policy does not save at: an uninterrupted
            # run has none there (unless it ends there), so its results are not stored to
            # rank it as best
            policy = self.trainer.checkpoints.is_due(state.global_step, epoch_end=epoch_end)
            self.run(state, record=policy or final)

    def run(self, state: TrainState, *, scheduled: bool = True, record: bool = True) -> None:
        """Validate now; `record`: store the results in this step's checkpoint (best-k);
        `scheduled`: on the validation schedule (counts toward early stopping)."""
        tracker = self.trainer.tracker
        self.module.global_step = state.global_step  # also on resume, before any step
        trainer = self.trainer
        if trainer.is_main and not (trainer.config.progress_bar and _is_terminal(sys.stderr)):
            say(trainer._log_line(state.global_step, "validating"))  # a log file: not silent
        keeper = SampleKeeper(tracker.num_samples if self.trainer.is_main else 0)
        with self.trainer.evaluation_weights():  # the EMA when trainer.ema is on
            stop = self.trainer._stop
            results = self.trainer.evaluate(self.module, self.source, "val", keeper, stop)
        state.metrics, state.metrics_step = results, state.global_step
        self.last_step = state.global_step
        self._say_nonfinite(results, state.global_step)
        if keeper.limit and not keeper.samples and keeper.offered and not self._no_pictures_said:
            # a Python API review: no pictures, without a word
            self._no_pictures_said = True
            say(
                f"logging.num_samples is {keeper.limit}, but validation_step returns no "
                "'predictions' (a dict entry, B×T_out×C×H×W): no sample pictures are drawn"
            )
        for key, user in self.trainer.required_results.items():
            if key not in results:
                available = ", ".join(k for k in results if k.count("/") == 1)
                raise InputError(
                    f"{user} {key!r} is not among the validation results ({available})"
                )
        checkpoints = self.trainer.checkpoints
        if checkpoints.keep_best and checkpoints.monitor not in results:
            available = ", ".join(k for k in results if k.count("/") == 1)
            if checkpoints.monitor != DEFAULT_MONITOR:
                raise InputError(
                    f"trainer.checkpoint.monitor {checkpoints.monitor!r} is not among the "
                    f"validation results ({available}): best-k checkpoints cannot be ranked; "
                    "set it to one of them (or keep_best=0) and resume (--resume auto, "
                    "resume='auto'; this step's checkpoint is saved)"
                )
            # the default monitor, and a module whose validation reports no loss: keep the
            # newest checkpoints only, and say so once
            checkpoints.keep_best = 0
            say(
                f"the validation results hold no {DEFAULT_MONITOR} (the default "
                f"trainer.checkpoint.monitor) but {available}: no checkpoint is kept as best "
                "(set trainer.checkpoint.monitor to one of them to keep the best)"
            )
        if record:
            checkpoints.record_metrics(state.global_step, results)
        tracker.log(results, step=state.global_step, epoch=state.step_epoch)
        from .visualize import names_for_pictures, north_up

        tracker.log_samples(
            north_up(self.module, keeper.samples),
            results,
            step=state.global_step,
            channel_names=names_for_pictures(self.module, keeper.samples),
        )
        say(f"step {state.global_step}: {format_scalars(results)}")
        if self.trainer.early_stopping is not None and scheduled:
            self.trainer.early_stopping.check(state.global_step, results)


def _check_predictions(module: EnhancedModule, pred: Any, batch: Batch) -> None:
    """What is written as predictions: a tensor of one prediction per sample, shaped as the
    targets where the batch has them (N×T_out×C×H×W); else an error naming what came."""
    name = f"{type(module).__name__}.predict_step"
    if not isinstance(pred, torch.Tensor):
        raise TypeError(
            f"{name} returned a {type(pred).__name__}; expected a tensor of predictions"
        )
    size = batch.inputs.shape[0]
    if pred.ndim == 0 or pred.shape[0] != size:
        raise ValueError(
            f"{name} returned predictions of shape {tuple(pred.shape)} for a batch of {size}; "
            "expected one per sample (first dimension)"
        )
    targets = batch.targets  # (input-only data: no frames, as forecasting has)
    if targets is not None and targets.numel() and pred.shape != targets.shape:
        raise ValueError(
            f"{name} returned predictions of shape {tuple(pred.shape)}, the batch's targets "
            f"are {tuple(targets.shape)}; expected the targets' shape"
        )


def _check_every_parameter_trained(module: EnhancedModule, processes: int, step: int) -> None:
    """At the first synchronising backward (a window's last micro-batch): under DDP a
    trainable parameter that took no part in the window's losses fails the next step with
    torch's long message about `find_unused_parameters` (which the Trainer does not take);
    name the parameters now, in one line."""
    if processes == 1:
        return
    unused = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    if unused:
        more = f" (and {len(unused) - 3} more)" if len(unused) > 3 else ""
        raise RuntimeError(
            f"{type(module).__name__}.training_step at step {step} left trainable parameter(s) "
            f"{', '.join(map(repr, unused[:3]))}{more} out of the loss; with {processes} "
            "processes (DDP) every trainable parameter must take part in every step's loss: "
            "freeze them while training (requires_grad_(False)) or use them in training_step"
        )


def _warn_of_parameters_not_optimized(module: nn.Module, optimizer: Any, step: int) -> None:
    """At the first optimizer step: a trainable parameter in none of the optimizer's groups
    never changes, and torch says nothing (a layer created after configure_optimizer, in
    the first training_step, or one left out of the parameters the optimizer was given).
    One warning naming them: leaving some out may be meant (fine-tuning a part), and
    freezing them says so."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missed = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in held]
    if not missed:
        return
    more = f" (and {len(missed) - 3} more)" if len(missed) > 3 else ""
    console.warn_main(
        "%s: trainable parameter(s) %s%s are in none of the optimizer's parameter groups at "
        "step %d, so they never change (a layer created after configure_optimizer, or left "
        "out of the parameters given to the optimizer?): build the layers in __init__ and give "
        "the optimizer self.parameters(), or freeze them (requires_grad_(False)) to train "
        "without them",
        type(module).__name__, ", ".join(map(repr, missed[:3])), more, step,
    )  # fmt: skip


def _name_unreduced_parameters(
    exc: RuntimeError, module: nn.Module, processes: int, step: int
) -> None:
    """DDP's "Expected to have finished reduction in the prior iteration" (a parameter
    that took part in the first step's loss, checked then, but not in a later one's), said
    in one line naming the parameters by name instead of DDP's indices."""
    text = str(exc)
    if "Expected to have finished reduction" not in text:
        return
    found = re.search(r"did not receive grad for rank (\d+): ([\d ]+)", text)
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    indices = [int(i) for i in found.group(2).split()] if found else []
    names = [repr(trainable[i]) for i in indices if i < len(trainable)]
    which = (
        f"parameter(s) {', '.join(names[:3])}{' …' if len(names) > 3 else ''}"
        if names
        else "a parameter"
    )
    rank = f" on rank {found.group(1)}" if found else ""
    raise RuntimeError(
        f"{type(module).__name__}.training_step at step {step - 1}: {which} took no part in "
        f"the loss{rank}; with {processes} processes (DDP) every trainable parameter must "
        "take part in every step's loss: use it in every step (a branch that skips it can "
        "add 0 × its sum to the loss), or freeze it for the whole run"
    ) from exc


def _trainable(module: nn.Module) -> tuple[bool, ...]:
    return tuple(p.requires_grad for p in module.parameters())


def _check_trainable_unchanged(module: nn.Module, at_start: tuple[bool, ...], step: int) -> None:
    """With several processes, after each training_step: DDP (and FSDP) set up their
    gradient reduction for the parameters trainable when training started. One unfrozen
    later would get its gradient on each rank alone and train to other values on each,
    silently; one frozen later stalls the reduction. Refused in one line naming them (a
    host-side look at the flags: no device work)."""
    now = _trainable(module)
    if now == at_start:
        return
    names = [name for name, _ in module.named_parameters()]
    changed = [(n, was) for n, was, is_ in zip(names, at_start, now) if was != is_]
    unfrozen = [repr(n) for n, was in changed if not was]
    frozen = [repr(n) for n, was in changed if was]

    def listed(items: list[str]) -> str:
        more = f" (and {len(items) - 3} more)" if len(items) > 3 else ""
        return ", ".join(items[:3]) + more

    what = "; ".join(
        part
        for part in (
            f"became trainable: {listed(unfrozen)}" if unfrozen else "",
            f"was frozen: {listed(frozen)}" if frozen else "",
        )
        if part
    )
    raise RuntimeError(
        f"{type(module).__name__} changed which parameters train at step {step} ({what}); "
        "with several processes the gradient all-reduce covers the parameters trainable "
        "when training started, so each rank would train them apart: set requires_grad "
        "before fit (to unfreeze later, keep them trainable with their param group's lr at "
        "0 until then), or stop and resume with the new setting"
    )


_LIGHTNING_INDEX = frozenset({"batch_idx", "batch_nb", "batch_index", "dataloader_idx"})


def check_hook_signature(module: nn.Module, hook: str) -> None:
    """Refuse, before any batch, a hook that cannot be `hook(inputs, targets)`: fewer than
    two parameters for them (one beyond them may be required: a batch entry of its name is
    passed to it), or Lightning's `batch_idx` (`(batch, batch_idx)` would unpack the inputs
    tensor as the batch and train on nonsense without an error)."""
    function = getattr(module, hook, None)
    if function is None:
        return
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin or C function: nothing to read
        return
    where = f"{type(module).__name__}.{hook}{signature}"
    try:
        signature.bind_partial(None, None)
    except TypeError:
        raise TypeError(
            f"{where} cannot be called as {hook}(inputs, targets): stpdist passes the "
            "batch's input frames and target frames (B×T×C×H×W) as two arguments"
        ) from None
    positional = [
        p.name
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    lightning = [name for name in positional if name in _LIGHTNING_INDEX]
    if lightning:
        raise TypeError(
            f"{where} takes Lightning's {lightning[0]}; stpdist calls {hook}(inputs, "
            f"targets) with the input and target frames (and no batch index): write it as "
            f"{hook}(self, inputs, targets)"
        )


def check_state_is_tensors(module: nn.Module) -> None:
    """Refuse, before training, a state dict entry that is not a tensor (a module's
    `get_extra_state`): checkpoints hold tensors only (safetensors), so the first save, an
    epoch later, would fail and leave no checkpoint."""
    for name, value in module.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{type(module).__name__}'s state_dict entry {name!r} is a "
                f"{type(value).__name__}, not a tensor (get_extra_state?): checkpoints hold "
                "tensors only (safetensors); keep that state in a buffer (register_buffer)"
            )


def _check_validation_hook(module: EnhancedModule, val_data: Any) -> None:
    """Validation data for a module without `validation_step`: refused before training, not
    at the first validation after an epoch's work."""
    if val_data is not None and not _implements(module, "validation_step"):
        raise NotImplementedError(
            f"{type(module).__name__} has no validation_step(), and fit was given validation "
            "data: implement it, or pass no validation data"
        )


def _implements(module: EnhancedModule, hook: str) -> bool:
    """Whether `module`'s class defines `hook` itself (not EnhancedModule's, which raises)."""
    return getattr(type(module), hook, None) is not getattr(EnhancedModule, hook)


DEFAULT_MONITOR = CheckpointConfig().monitor
"""What ranks best-k checkpoints unless `trainer.checkpoint.monitor` says otherwise."""

# the first line of the config.yaml a run writes: stpdist may replace such a file
RESOLVED_CONFIG_HEADER = (
    "# the resolved config of this run, written by stpdist: a resume rewrites it\n"
)


def _written_by_us(file: Path, text: str, checkpoint: Path | None = None) -> bool:
    """Whether `file` is stpdist's to replace: a resolved config it wrote (an earlier run,
    a resume), one whose content is `text` already (nothing of the user's is lost), or,
    on a resume, the resumed `checkpoint`'s config.yaml (what an stpdist before the header
    of 2026-12-05 wrote in both places, unmarked)."""
    try:
        old = file.read_text()
    except (OSError, UnicodeDecodeError):
        return False
    if old.startswith(RESOLVED_CONFIG_HEADER) or old == text[len(RESOLVED_CONFIG_HEADER) :]:
        return True
    try:
        return checkpoint is not None and old == (checkpoint / "config.yaml").read_text()
    except (OSError, UnicodeDecodeError):
        return False


def _schedule_is_the_modules_own(module: Any) -> bool:
    """Whether the module's lr schedule comes from its own `configure_lr_scheduler`, not
    from the Forecaster's config-built one (`model.schedule`)."""
    from .task import Forecaster

    return getattr(type(module), "configure_lr_scheduler", None) is not (
        Forecaster.configure_lr_scheduler
    )


def _check_schedule_length(
    scheduler: Any, interval: str, total: int, done: int, start: Path | None, own: bool = False
) -> None:
    """Refuse, before any step, a run whose steps `done` → `total` outrun a per-step lr
    schedule of fixed length (`total_steps`: OneCycleLR), which would stop with an error at
    its end — hours in. Its length is set when it is built: by `model.schedule.total_steps`
    or by the steps the training first planned, restored from the checkpoint on a resume;
    by the module's own `configure_lr_scheduler` where `own` (not a config-built Forecaster:
    the fix is in its code, `module.planned_steps`)."""
    length, steps = getattr(scheduler, "total_steps", None), total - done
    if interval != "step" or not isinstance(length, int):
        return
    left = length - scheduler.last_epoch
    if steps <= left:
        return
    if start is None and own:
        raise InputError(
            f"the lr schedule ({type(scheduler).__name__}) that configure_lr_scheduler built "
            f"lasts {length} steps, this run plans {steps}: build it with total_steps="
            "self.planned_steps (the steps fit plans, set before configure_lr_scheduler is "
            f"called), or train at most {length} steps (max_steps)"
        )
    if start is None:
        raise InputError(
            f"the lr schedule ({type(scheduler).__name__}) lasts {length} steps, this run "
            f"plans {steps}: set model.schedule.total_steps to at least {steps} (or leave it "
            "unset: the planned steps), or trainer.max_steps to at most "
            f"{length}"
        )
    raise InputError(
        f"the lr schedule ({type(scheduler).__name__}) restored from {start} has {left} "
        f"steps left, this run plans {steps} more (more epochs, or other steps per epoch: "
        "another number of ranks, batch or accumulation); a one-cycle schedule cannot be "
        f"lengthened: resume with trainer.max_steps={done + left}, on another "
        "number of ranks with --keep-global-batch, or begin a new run from these weights "
        + (f"(module.load_state_dict(safetensors.torch.load_file('{start}/model.safetensors')) "
           "before fit, in another output_dir)" if own
           else "(model.init_weights)")
    )  # fmt: skip


def rank_seed(seed: int, rank: int, *salt: int) -> int:
    """The seed of a rank's random draws (scheduled sampling's masks, dropout): `seed` on
    rank 0, as a one-process run; on rank r a number drawn from both, not `seed + r`: that
    is rank 0's of seed + r, and the runs of two seeds on several ranks shared masks (a
    reproducibility review found seed 0's rank 1 drawing what seed 1's rank 0 drew). `salt`
    (a step): the stream of a rank a resumed run adds."""
    if rank == 0 and not salt:
        return seed
    entropy = [abs(seed), int(seed < 0), rank, *salt]  # SeedSequence takes no negative
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class Trainer:
    """Runs an `EnhancedModule`'s hooks with DDP, mixed precision, accumulation,
    clipping, exact checkpoint/resume and exact cross-rank validation.

    `Trainer(cfg.trainer, logging=cfg.logging, run_config=cfg)`, or keywords for the
    fields of `TrainerConfig` (`Trainer(max_epochs=2, output_dir="runs/x")`): the
    defaults live in that dataclass alone.
    """

    def __init__(
        self,
        config: TrainerConfig | Mapping[str, Any] | None = None,
        *,
        logging: LoggingConfig | Mapping[str, Any] | None = None,
        run_config: Config | None = None,
        **fields: Any,
    ) -> None:
        config = config or TrainerConfig()
        # a mapping for either, as for a sub-section (`ema={…}`): `logging={"num_samples":
        # 0}` was a TypeError (a Python API review)
        if isinstance(config, Mapping):
            config = section_with(TrainerConfig(), dict(config), "Trainer(config=…)")
        if isinstance(logging, Mapping):
            logging = section_with(LoggingConfig(), dict(logging), "Trainer(logging=…)", "logging.")
        # a config object built in Python (`TrainerConfig(compile="false")`), and keywords:
        # typed and checked as a config file's values (a mapping for a section)
        config = checked_section(config, TrainerConfig, "Trainer(config=…)")
        self.config = section_with(config, fields, "Trainer") if fields else config
        check_values(self.config)
        if logging is not None:
            logging = checked_section(logging, LoggingConfig, "Trainer(logging=…)", "logging.")
            check_tracker_cadence(logging, self.config)
        threads.configure(self.config.num_threads)
        if self.config.max_epochs is None and self.config.max_steps is None:
            raise ValueError("set max_epochs or max_steps")
        self.output_dir = Path(self.config.output_dir)
        if self.output_dir.is_symlink() and not self.output_dir.exists():  # a dangling link:
            Path(os.path.realpath(self.output_dir)).mkdir(parents=True, exist_ok=True)  # its target
        self.run_config = run_config
        self.attachments: dict[str, str | Callable[[], str | bytes]] = {}
        """Files (name → text, or a function giving text or bytes at each save) written
        into every checkpoint beside the weights and the config, e.g. the dataset's
        `index.json`, so a checkpoint is a model folder that `stpdist.load` can rebuild the
        model from."""
        self.required_results: dict[str, str] = {}
        """Validation result keys (`val/mse`) something relies on → what relies on it: the
        first validation that reports one of them not stops `fit` with an error naming
        it, rather than after the whole run (e.g. a sweep's metric)."""
        self._stop = StopFlag()
        self._train_workers = 0  # data-loading workers of the current fit (`_workers_of`)
        self._workers_shape_layout = False  # whether they shape its source's epoch layout
        self.ema: WeightAverage | None = None
        """The EMA of the weights while `fit` runs with `trainer.ema` (else None)."""
        self.early_stopping: EarlyStopping | None = None
        """The early-stopping counter while `fit` runs with `trainer.early_stopping`."""
        # the tracker decides the accelerate loggers, which the Accelerator needs at birth
        self.tracker = Tracker(
            self.output_dir, logging or LoggingConfig(num_samples=0), run_config=run_config
        )
        self.accelerator = _make_accelerator(self.config, self.tracker.log_with)
        # again: accelerate's CPU ranks set their own count (cores ÷ local ranks) when
        # OMP_NUM_THREADS is unset, over trainer.num_threads and SLURM's allocation
        threads.configure(self.config.num_threads)
        self.tracker.is_main = self.accelerator.is_main_process
        self._stop.announce = self.accelerator.is_main_process  # one "stopping" line, not N
        console.setup(self.accelerator.is_main_process)
        if self.config.compile_mode != "default" and not self.config.compile:
            console.warn_main(
                "trainer.compile_mode %r has no effect: trainer.compile is false",
                self.config.compile_mode,
            )
        if self.config.cuda_graphs:
            from .graphs import refusal

            why = refusal(self.config, self.accelerator.num_processes)
            if why:
                raise ConfigError(why)
        if self.config.channels_last and self._fsdp_sharded:
            say(
                "trainer.channels_last: not applied with strategy fsdp on "
                f"{self.accelerator.num_processes} processes (FSDP keeps parameters contiguous)"
            )
        self._graph: Any = None
        self._trainable: tuple[bool, ...] | None = None  # see _check_trainable_unchanged
        self._nothing_left = False  # a resume at or past the config's end
        self._data_layout = LAYOUT  # the epoch layout of the current fit's run (`_fit`)
        self._held_window: tuple | None = None  # see _log_window
        if self.config.deterministic and self.config.cudnn_benchmark:
            raise ConfigError(
                "trainer.deterministic and trainer.cudnn_benchmark are both set: the "
                "algorithm search picks kernels by timing them, so two runs may differ; "
                "drop one of them"
            )
        self._inner_optimizer: Any = None  # see _direct
        self.when_locked: list[Callable[[], None]] = []
        """Called by `fit` once it holds the output folder's run lock, before anything else
        (what a second run into the folder must not do: it is refused before)."""
        on_cpu = self.accelerator.device.type == "cpu"
        if self.config.mixed_precision == "bf16" and on_cpu and not _fast_bf16_cpu():
            console.warn_main(
                "mixed_precision 'bf16' on a CPU without AMX: measured 1.2–2.8× SLOWER than "
                "fp32 for ConvLSTM training on such a CPU (faster convolution forward, slower "
                "backward, ~1 200 extra casts per step); use 'no' unless you measured a "
                "gain on this CPU"
            )
        self.lockstep = Lockstep(self.accelerator, self._stop)
        self.checkpoints = CheckpointManager(
            self.output_dir / "checkpoints", self.config.checkpoint
        )
        # a process group left alive at interpreter exit can abort gloo's threads; held
        # weakly, so that a notebook's finished Trainers and their modules can be freed
        _OPEN_TRAINERS.add(self)
        self._shared_settings = _shared_settings()
        _SETTINGS_HOLDER[0] = weakref.ref(self)
        # a module built after the Trainer (`Trainer(…).fit(Net(), …)`) starts from the same
        # weights every run, as the CLI's does; `fit` seeds again, per rank (data order)
        set_seed(self.config.seed)
        # process-wide torch settings, held last: a Trainer that fails to be made holds none
        # (the deterministic hold, which may refuse, first)
        device = self.accelerator.device
        self._deterministic_release = hold_deterministic(self, self.config.deterministic, device)
        self._cudnn_release = hold_cudnn_benchmark(self, self.config.cudnn_benchmark, device)

    def _hold_settings(self) -> None:
        """Accelerate keeps mixed precision and gradient accumulation in process-wide
        state, which each new Trainer resets to its own: put this Trainer's back before it
        works (a notebook's earlier Trainer silently took a later one's accumulation)."""
        holder = _SETTINGS_HOLDER[0]
        if holder is not None and holder() is self:
            return
        accelerate_state, plugin = self._shared_settings
        AcceleratorState._shared_state.update(accelerate_state)
        GradientState._shared_state["plugin_kwargs"] = dict(plugin)
        _SETTINGS_HOLDER[0] = weakref.ref(self)

    @classmethod
    def from_config(cls, cfg: Config) -> Trainer:
        """The Trainer of a whole config (`stpdist train`'s): its `trainer` section, its
        `logging`, and the config itself, written into the run folder and checkpoints."""
        return cls(cfg.trainer, logging=cfg.logging, run_config=cfg)

    def close(self) -> None:
        """Finish trackers and destroy the process group (idempotent; also runs at exit).
        No barrier here: after a crash on one rank a barrier would never return."""
        self._close(at_exit=False)

    def _close_at_exit(self) -> None:
        """`close` at interpreter exit, for a process that raised before it closed: wandb's
        own exit hook (registered after this one, so run before it) has then ended its run
        with the exit status and stopped its service, and finishing that run again fails;
        a tracker that cannot finish is passed over, the others and the process group are
        still closed."""
        self._close(at_exit=True)

    def _close(self, at_exit: bool, exit_code: int = 0) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        _OPEN_TRAINERS.discard(self)
        for release in ("_cudnn_release", "_deterministic_release"):
            if getattr(self, release, None) is not None:
                getattr(self, release)()
        held, self._choice_lease = getattr(self, "_choice_lease", None), None
        if held is not None:  # a checkpoint chosen (`choose_checkpoint`) and never read
            held.close()
        try:
            for tracker in self.accelerator.trackers:  # accelerate's end_training, per tracker
                try:
                    if exit_code and tracker.name == "wandb":  # the run marked as failed
                        tracker.run.finish(exit_code=exit_code)
                    else:
                        tracker.finish()
                except Exception as exc:
                    if not at_exit:
                        raise
                    log.debug("tracker %s did not finish at exit: %r", tracker.name, exc)
        finally:  # a tracker that cannot finish leaves no process group behind
            self.accelerator.state.destroy_process_group()
        self.tracker.finish()  # offline wandb: the `wandb sync` command

    # ------------------------------------------------------------------ helpers
    @property
    def is_main(self) -> bool:
        """Whether this is the main process (rank 0), the one that writes shared files."""
        return self.accelerator.is_main_process

    def main_process_first(self) -> Any:
        """Context: the main process runs the body first, the others after it (e.g. to
        generate a dataset once)."""
        return self.accelerator.main_process_first()

    def _ctx(self) -> LoaderContext:
        acc = self.accelerator
        return LoaderContext(
            rank=acc.process_index,
            world_size=acc.num_processes,
            seed=self.config.seed,
            batch_multiple=acc.gradient_accumulation_steps,
            num_workers=self.config.num_workers,
            stored_dtype=True,  # uint8 stays uint8 until it is on the device
            pin_memory=acc.device.type == "cuda",
            layout=self._data_layout,
        )

    def _to_device(self, batch: Any) -> Batch:
        """The batch on this process' device: inputs, targets and every tensor among the
        extras (nested in dicts, lists, tuples), with keys as they are. Stored frames
        (uint8) travel as they are and are scaled to floats on the device. On a GPU the
        copy runs on a side stream, so it overlaps the step still running on the device
        (the host queues it ahead: a steady-state step reads nothing back)."""
        device = self.accelerator.device
        copies = self._copy_stream()
        if copies is None:
            return self._moved(batch, device)
        with torch.cuda.stream(copies):
            moved = self._moved(batch, device)
        compute = torch.cuda.current_stream(device)
        compute.wait_stream(copies)
        for tensor in _tensors_in((moved.inputs, moved.targets, moved.extras)):
            tensor.record_stream(compute)  # memory of the side stream, used here
        return moved

    @staticmethod
    def _moved(batch: Any, device: torch.device) -> Batch:
        if isinstance(batch, StoredFrames):
            return batch.to_device(device)
        inputs, targets, keys, extras = unpack_batch(batch)
        inputs, targets, extras = send_to_device(
            (inputs, targets, extras), device, non_blocking=True
        )
        return Batch(inputs, targets, keys, extras)

    def _copy_stream(self) -> Any:
        if self.accelerator.device.type != "cuda":
            return None
        if getattr(self, "_copies", None) is None:
            self._copies = torch.cuda.Stream(self.accelerator.device)
        return self._copies

    @staticmethod
    def _hook_extras(batch: Batch) -> dict[str, Any]:
        """What a hook may receive besides inputs and targets: the extras, and the keys."""
        if batch.keys is None:
            return batch.extras
        return {**batch.extras, "keys": batch.keys}

    def _planned_steps(
        self,
        batches_per_epoch: int,
        saved: TrainState | None = None,
        train: TrainSource | None = None,
        ctx: LoaderContext | None = None,
    ) -> int:
        """The optimizer step this run ends at: `max_steps`, or the end of epoch
        `max_epochs` at this run's steps per epoch counted on from `saved` (the checkpoint
        resumed), whichever comes first. A resume on another number of ranks, batch or
        accumulation finishes the epochs it has left at the new rate: `max_epochs` are
        epochs, whatever the steps per epoch were before."""
        accumulation = self.accelerator.gradient_accumulation_steps
        per_epoch = batches_per_epoch // accumulation
        limits = [n for n in [self.config.max_steps] if n]
        if self.config.max_epochs:
            if saved is None:
                limits.append(self.config.max_epochs * per_epoch)
            elif saved.epoch >= self.config.max_epochs:
                limits.append(saved.global_step)
            else:
                epoch_batches, done = self._resumed_epoch(saved, batches_per_epoch, train, ctx)
                left = max(0, epoch_batches // accumulation - done // accumulation)
                later = (self.config.max_epochs - saved.epoch - 1) * per_epoch
                limits.append(saved.global_step + left + later)
        return min(limits)

    def _resumed_epoch(
        self,
        saved: TrainState,
        batches_per_epoch: int,
        train: TrainSource | None,
        ctx: LoaderContext | None,
    ) -> tuple[int, int]:
        """(micro-batches per rank of the epoch `saved` stands in, as this run will lay it
        out; those of them already consumed)."""
        origin = self._moved_origin(saved)
        if origin is None or not isinstance(train, RedistributableSource):
            return batches_per_epoch, saved.batch
        rest = train.batches_in_rest(ctx, EpochOrigin(**origin))
        return rest, 0 if self._relaid(saved) else saved.batch

    def _config_yaml(self) -> str | None:
        return to_yaml(self.run_config) if self.run_config is not None else None

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        module: EnhancedModule,
        train_data: Any,
        val_data: Any = None,
        resume: str | Path | None = None,
    ) -> TrainState:
        """Train `module`; `resume` is None, "auto" (newest complete checkpoint) or a path.
        Returns the final `TrainState`. Raises `Preempted` after a stop (SIGTERM, SIGUSR1;
        `Interrupted`, a KeyboardInterrupt, after Ctrl-C) with its checkpoint saved,
        `OutputExists` for a fresh run into a folder that holds another run's checkpoints,
        `RunLockedError` when another run holds the folder."""
        self._hold_settings()
        _check_validation_hook(module, val_data)
        check_hook_signature(module, "training_step")
        if val_data is not None:
            check_hook_signature(module, "validation_step")
        check_state_is_tensors(module)
        # one run per output folder: a second run (a duplicated SLURM job, a second
        # `--resume auto`) stops here, on every rank, naming the holder, before any rank
        # reads a checkpoint that the first run may be writing or retiring
        with self._run_lock(), contextlib.ExitStack() as lease:
            for call in self.when_locked:  # e.g. a sweep trial's record, written by the holder
                call()
            try:
                return self._fit(module, train_data, val_data, resume, lease)
            finally:  # rows this process logs later are not this training's
                self.tracker.metrics.release_pending()

    def _fit(
        self,
        module: EnhancedModule,
        train_data: Any,
        val_data: Any,
        resume: str | Path | None,
        lease: contextlib.ExitStack,
    ) -> TrainState:
        acc = self.accelerator
        start = self._resolve_start(resume, lease)  # first: it may set the accumulation
        # a run keeps the epoch layout it began with (`LoaderContext.layout`): one begun by
        # an earlier stpdist (layout 1) goes on in it, its steps per epoch (its schedule's
        # length) and the epoch it stands in as they were
        saved = None if start is None else read_state(start)
        self._data_layout = LAYOUT if saved is None else (saved.data_layout or 1)
        ctx = self._ctx()
        train = as_train_source(train_data)
        self._train_workers = self._workers_of(train)
        self._workers_shape_layout = getattr(train, "workers_shape_layout", False)
        validator = Validator(self, None if val_data is None else as_eval_source(val_data), module)
        # the validation shards too, before the first step: a missing or miscounted one
        # failed at the first validation, an epoch of training later
        _check_validation_source(validator.source)
        batches_per_epoch = train.batches_per_epoch(ctx)
        total_steps = self._planned_steps(batches_per_epoch, saved, train, ctx)
        module.planned_steps = total_steps  # a fact for schedules that need their length
        self._total_steps = total_steps
        self._banner(batches_per_epoch, total_steps, saved)
        self._say_left_out(train, batches_per_epoch)
        self._say_mixing(train, ctx)
        model, optimizer, scheduler, interval = self._prepare(module)
        self._optimizer_facts = _optimizer_facts(optimizer)
        self._trainable = _trainable(module) if self.accelerator.num_processes > 1 else None
        self._inner_optimizer = self._direct(optimizer)
        self._set_up_ema_and_early_stopping(module)
        self._check_early_stopping_can_stop(
            validator, batches_per_epoch, total_steps, resumed=start is not None
        )
        self._warn_if_best_is_never_ranked(validator, batches_per_epoch, total_steps)
        max_epochs = self.config.max_epochs or math.inf
        with self._stop.installed():
            state = self._start(resume, start, model, module, optimizer, scheduler, train, ctx)
            lease.close()  # `start` is read: this run's retention may retire it from now on
            _check_schedule_length(
                scheduler, interval, total_steps, state.global_step, start,
                own=_schedule_is_the_modules_own(module),
            )  # fmt: skip
            self._write_start_record(module, train)
            self._graph = self._step_graph(module, optimizer, scheduler)  # restored optimizer
            self.checkpoints.bind(
                acc, module, optimizer, scheduler, self._config_yaml(), state, self.attachments
            )
            # before wandb is sent the steps it lacks from the rows
            self.tracker.replace_rows_of_stopped_attempt(state.global_step)
            self.tracker.start(acc, step=state.global_step)  # a resume continues its run
            self._replace_rows_of_steps_trained_again(state.global_step)
            with self._preempted_if_validation_abandoned(state):
                pending = self._end_pending(train, ctx, state, batches_per_epoch)
                validator.resume(state, end_pending=pending, final=state.global_step >= total_steps)
                meter = Meter.resumed(acc, state)
                self.checkpoints.before_save = partial(meter.carry, state)
                self._say_schedule_stretched(saved, total_steps, module, scheduler)
                state.planned_steps = total_steps
                bar = self._progress(total_steps, state.global_step)
                self._line_clock = (time.perf_counter(), state.global_step)  # see _log_line
                module.train()
                # stopped at an epoch's last step: that epoch closes as it would have (the
                # loop below does not run when the run ends at that step)
                if pending:
                    self._held_window = self._row_held_at_stop(meter, optimizer, state, bar)
                    self._end_epoch(state, scheduler, interval, meter, validator, total_steps)
                while state.global_step < total_steps and state.epoch < max_epochs:
                    if self._stopping_early(state):
                        break
                    bar.set_postfix_str(f"epoch {state.epoch}")
                    epoch_batches, batches = self._epoch(train, ctx, state, batches_per_epoch)
                    for batch in batches:
                        stop = self._micro_step(model, module, optimizer, batch, state, meter)
                        state.batch += 1
                        if not acc.sync_gradients:
                            continue
                        # ---- one optimizer step done
                        state.global_step += 1
                        # validation, checkpoints and a validate() after fit see the steps taken
                        module.global_step = state.global_step
                        if self.ema is not None:
                            self.ema.update(state.global_step)  # device math, no host read
                        if interval == "step" and scheduler is not None:
                            if not acc.optimizer_step_was_skipped:  # fp16 overflow: no step
                                scheduler.step()
                        epoch_end = state.batch == epoch_batches
                        if stop or self._check_point(state, validator, epoch_end):
                            stop = self._settle(state) or stop  # raises on a non-finite loss
                        # an epoch schedule steps as the epoch closes: its rate after this
                        # step is known there (on a stop, the epoch closes on resume, and the
                        # checkpoint carries this step's row)
                        hold = epoch_end and interval == "epoch"
                        self._log_window(meter, optimizer, state, bar, hold=hold, stop=stop)
                        if stop:  # every rank saw the same flag: all stop after this step
                            # the validation due at this step runs on resume (Validator.resume)
                            self._preempt(state, bar)
                        if epoch_end:
                            break
                        # checkpoint first: a failing validation must not cost the training
                        meter.pause_clocks()  # throughput counts training time only
                        self.checkpoints.maybe_save(state)
                        validator.maybe_run(state)
                        meter.restart_clocks()
                        if state.global_step >= total_steps or self._stopping_early(state):
                            break
                    self._check_epoch_was_whole(state, epoch_batches, total_steps)
                    if state.batch == epoch_batches:
                        self._end_epoch(state, scheduler, interval, meter, validator, total_steps)
                bar.close()
                self._settle(state)
                self.checkpoints.maybe_save(state, last=True)
                validator.maybe_run(state, last=True)
                self.checkpoints.prune()  # what retention kept for readers until now
                if self._stopping_early(state):
                    say(self.early_stopping.reason(state.global_step))
                acc.wait_for_everyone()
                return state

    def _say_schedule_stretched(
        self, saved: TrainState | None, total: int, module: EnhancedModule, scheduler: Any
    ) -> None:
        """One line when a resume plans another number of steps than the checkpoint's run
        and the module's lr schedule spans the planned steps (`schedule_follows_plan`): the
        schedule is rebuilt for the new length, so its rate jumps at the first step."""
        before = None if saved is None else saved.planned_steps
        if before in (None, total) or scheduler is None:
            return
        if not getattr(module, "schedule_follows_plan", False):
            return
        console.warn_main(
            "the checkpoint's run planned %d steps, this one %d: the lr schedule, which spans "
            "the planned steps, is rebuilt for %d from here, so its rate jumps at step %d; to "
            "keep the first run's schedule set model.schedule.total_steps=%d",
            before, total, total, saved.global_step + 1, before,
        )  # fmt: skip

    def _preempt(self, state: TrainState, bar: Any = None) -> None:
        """Every rank agreed to stop after this step: a checkpoint (unless one is there),
        then `Preempted`, whose line says what was saved and how to continue."""
        self.checkpoints.maybe_save(state, last=True)
        if bar is not None:
            bar.close()
        saved = self.checkpoints.latest()
        self._tell_launcher(saved)
        raise stopped(state.global_step, saved, self._stop.signum)

    def _tell_launcher(self, saved: Path | None) -> None:
        """A job script's way to know that the run stopped with a checkpoint (the SLURM
        scripts requeue then), whatever the signal reached and whatever exit status the
        launcher reports (torchrun: 1 when its ranks exit 75): the main rank writes the
        checkpoint's path to the file `STPDIST_STOP_FILE` names, if set."""
        marker = os.environ.get("STPDIST_STOP_FILE")
        if marker and self.is_main:
            try:
                Path(marker).write_text(f"{saved}\n")
            except OSError as exc:  # best effort: the stop and its checkpoint stand
                log.warning("STPDIST_STOP_FILE %s could not be written (%s)", marker, exc)

    @contextmanager
    def _preempted_if_validation_abandoned(self, state: TrainState) -> Iterator[None]:
        """A stop during a validation ends `fit` as one at a step does: every rank left the
        validation together (`ValidationAbandoned`); it runs again on resume, as one due
        at a stopped step does (`Validator.resume`)."""
        try:
            yield
            return
        except ValidationAbandoned:
            pass  # Preempted below, not raised while handling this one
        say(f"step {state.global_step}: validation left unfinished to stop")
        self._preempt(state)

    def _banner(self, batches_per_epoch: int, total_steps: int, saved: TrainState | None) -> None:
        """Once, at start: where and how this run computes; for a resume at or past the
        config's end (`saved`, the checkpoint's state), that it trains no step."""
        acc, accum = self.accelerator, self.accelerator.gradient_accumulation_steps
        say(
            f"{acc.num_processes} process(es) on {acc.device.type}, precision "
            f"{self.config.mixed_precision}, {threads.describe()} each; "
            f"{batches_per_epoch} micro-batches per rank per epoch, accumulation {accum}: "
            f"{batches_per_epoch // accum} optimizer steps per epoch, {total_steps} in all"
        )
        max_steps = self.config.max_steps
        if max_steps is not None and total_steps < max_steps:  # a Lightning user's surprise
            say(
                f"trainer.max_steps {max_steps} is not reached: trainer.max_epochs "
                f"{self.config.max_epochs} ends the run at step {total_steps} (the limit met "
                "first); set trainer.max_epochs to null (None) to train by steps alone"
            )
        self._nothing_left = saved is not None and total_steps <= saved.global_step
        if self._nothing_left:
            limits = [f"max_epochs {self.config.max_epochs}"] if self.config.max_epochs else []
            limits += [f"max_steps {self.config.max_steps}"] if self.config.max_steps else []
            say(
                f"nothing to train: the checkpoint stands at step {saved.global_step} (epoch "
                f"{saved.epoch}), at or past this run's end at step {total_steps} "
                f"({', '.join(limits)}); raise trainer.max_epochs or trainer.max_steps to "
                "train on"
            )

    def _say_left_out(self, train: TrainSource, batches_per_epoch: int) -> None:
        """Every rank's epoch ends on a whole optimizer step: the training samples that do
        not fill one are left out of each epoch. Said once, with how many (a DataLoader
        passed from Python that does not shuffle leaves the same ones out every epoch, and
        its `drop_last=False` promised none: 7 of 15 were never trained on)."""
        total, batch = getattr(train, "num_samples", None), getattr(train, "batch_size", None)
        if not isinstance(total, int) or not isinstance(batch, int):
            return
        acc = self.accelerator
        left = total - batches_per_epoch * batch * acc.num_processes
        if left <= 0:
            return
        same = getattr(train, "shuffle", True) is False
        anew = (  # a shard stream's layout before 3: the same tail of each shard's samples
            "drawn anew each epoch" if self._data_layout >= 3 or not hasattr(train, "index")
            else f"in this run's epoch layout ({self._data_layout}, begun by an earlier "
            "stpdist), the last samples of shards, the same ones every epoch in a split of one"
        )  # fmt: skip
        say(
            f"{left} of {total} training samples are left out of each epoch (epochs end on a "
            f"whole optimizer step on every rank: {acc.num_processes} rank(s) × batch {batch} "
            f"× accumulation {acc.gradient_accumulation_steps}); "
            + ("the same ones every epoch: the DataLoader does not shuffle"
               if same else anew)
        )  # fmt: skip

    def _say_mixing(self, train: TrainSource, ctx: LoaderContext) -> None:
        """One warning when the source says its batches mix little (`mixing_note`: a
        series' windows in time order, read through a small shuffle buffer)."""
        note = getattr(train, "mixing_note", None)
        said = note(ctx) if callable(note) else None
        if said:
            console.warn_main("%s", said)

    @property
    def _fsdp_sharded(self) -> bool:
        """Whether training shards the model (`strategy: fsdp` on several processes)."""
        return self.config.strategy == "fsdp" and self.accelerator.num_processes > 1

    def _place(self, module: nn.Module) -> None:
        """`module` onto this run's device, its convolution weights channels-last where
        `trainer.channels_last` asks it (not when FSDP shards them: it keeps them
        contiguous)."""
        module.to(self.accelerator.device)
        if self.config.channels_last and not self._fsdp_sharded:
            to_channels_last(module)

    def _prepare(self, module: EnhancedModule) -> tuple[nn.Module, Any, Any, str]:
        """(DDP-wrapped training step, prepared optimizer, scheduler, its interval)."""
        self._place(module)
        if self.config.activation_checkpointing:
            module.enable_activation_checkpointing()
        if self.config.compile:
            cpu_compile_defaults(self.accelerator.device)
            module.compile_for_training(self.config.compile_mode)
        units = self.config.fsdp_wrap
        self._sharded_root = None
        if self._fsdp_sharded:
            return self._prepare_sharded(module, units)
        if self.config.strategy == "fsdp" and units:  # checked on one process too
            from .fsdp import fsdp_units

            fsdp_units(module, units)
        optimizer = _optimizer_of(module.configure_optimizer())
        scheduler, interval = _scheduler_of(module.configure_lr_scheduler(optimizer), optimizer)
        # The scheduler is not prepared: a prepared one steps num_processes times per step.
        model, optimizer = self.accelerator.prepare(_TrainingStep(module), optimizer)
        return model, optimizer, scheduler, interval

    def _prepare_sharded(
        self, module: EnhancedModule, wrap: list[str] | None
    ) -> tuple[nn.Module, Any, Any, str]:
        """`trainer.strategy: fsdp`: the training step sharded with FSDP2 (see fsdp.py for
        why not accelerate's plugin), the optimizer built on the shards. The model is not
        given to `prepare` (on CPU it would wrap it in DDP); the optimizer is, so that
        accumulation makes its steps no-ops as with DDP."""
        from . import fsdp

        units = fsdp.fsdp_units(module, wrap)
        model = fsdp.shard(_ShardedTrainingStep(module), units, self.config.mixed_precision)
        self._sharded_root = model  # validation gathers its parameters (`_whole`)
        # built on the shards: 1/N of the optimizer state per rank
        optimizer = _optimizer_of(module.configure_optimizer())
        scheduler, interval = _scheduler_of(module.configure_lr_scheduler(optimizer), optimizer)
        return model, self.accelerator.prepare(optimizer), scheduler, interval

    def _progress(self, total: int, initial: int) -> Any:
        """A bar over optimizer steps (the epoch is shown beside it), main process only, on
        a terminal: written to a file (a SLURM log) a bar is one line redrawn thousands of
        times, so there `_log_window` says a line at each log step instead."""
        self._bar_shown = self.is_main and self.config.progress_bar and _is_terminal(sys.stderr)
        return tqdm(
            total=total,
            initial=initial,
            disable=not self._bar_shown,
            dynamic_ncols=True,
            unit="step",
        )

    @contextmanager
    def _run_lock(self) -> Iterator[None]:
        """The output folder's exclusive lock, held by the main process for the run; every
        rank learns whether it got it (one all-reduce), and all stop when it did not: the
        main one with the holder's line, the others saying so in one line of their own."""
        lock, refused = None, None
        if self.is_main:
            try:
                lock = RunLock(self.output_dir).acquire()
            except RunLockedError as exc:
                refused = exc
        acc = self.accelerator
        # 0: taken; 1: in use by a live run; 2: another refusal (a lock on another host, a
        # folder not writable): each rank raises the main one's kind, so that every rank's
        # exit status is its (75 or 2; a diff review: the others said "in use", exit 75)
        code = 0 if refused is None else 1 if isinstance(refused, RunInUseError) else 2
        if acc.num_processes > 1:
            flag = torch.tensor([float(code)], device=acc.device)
            code = int(acc.reduce(flag, reduction="sum").item())  # once, before the run
        if refused is not None:
            raise refused
        if code == 1:
            raise RunInUseError(
                f"{self.output_dir} is in use by another run (the main process names it)"
            )
        if code:
            raise RunLockedError(
                f"{self.output_dir}: the main process could not take the run lock (it says why)"
            )
        try:
            yield
        finally:
            if lock is not None:
                lock.release()

    def _micro_step(
        self,
        model: nn.Module,
        module: EnhancedModule,
        optimizer: Any,
        batch: Any,
        state: TrainState,
        meter: Meter,
    ) -> bool:
        """Forward, backward and (on the window's last micro-batch) the optimizer step of
        one micro-batch; returns whether the ranks agreed to stop (known here only for a
        module that may skip batches; otherwise at the next check point)."""
        batch = self._to_device(batch)
        if batch.targets is None:
            raise TypeError(
                "a training batch has no targets (a dict batch needs 'targets' beside "
                "'inputs', a tuple is (inputs, targets) or (inputs, targets, keys)): training "
                "needs the frames to predict"
            )
        module.global_step, module.current_epoch = state.global_step, state.epoch
        graph = self._graph
        if graph is not None and graph.takes(batch):
            try:
                return self._graphed_step(model, module, optimizer, batch, state, meter)
            except CaptureFailed:  # said; this batch and every later one run eagerly
                pass
        with graph.eager(optimizer) if graph is not None else contextlib.nullcontext():
            return self._eager_step(model, module, optimizer, batch, state, meter)

    def _eager_step(
        self,
        model: nn.Module,
        module: EnhancedModule,
        optimizer: Any,
        batch: Any,
        state: TrainState,
        meter: Meter,
    ) -> bool:
        acc, step = self.accelerator, state.global_step + 1
        with acc.accumulate(model):
            try:
                output = model(batch.inputs, batch.targets, **self._hook_extras(batch))
            except RuntimeError as exc:
                _name_unreduced_parameters(exc, module, acc.num_processes, step)
                raise
            if self._trainable is not None:
                _check_trainable_unchanged(module, self._trainable, step)
            loss = loss_of(output, step, _hook_of(module, "training_step"))
            skipped, stop = self._agree_or_note(module, loss, step, state)
            self._window[0] += 1
            self._window[1] += not skipped
            if not skipped:
                acc.backward(loss)
                self._contributed = True
                # DDP's rule, not FSDP's, at a window's synchronising backward: under
                # accumulation a parameter may take part in the window's other micro-batches
                if not self._parameters_checked and acc.sync_gradients:
                    self._parameters_checked = True
                    if self._sharded_root is None:
                        _check_every_parameter_trained(module, acc.num_processes, step)
            elif acc.sync_gradients:
                self._window_ends_skipped(module, step)
            if acc.sync_gradients and self._contributed:
                self._mean_of_used_micro_batches(module)
                self._note_grad_norm(module, step)  # (and clips, with grad_clip_norm)
            elif acc.sync_gradients:  # a step with no gradient: no norm (not an earlier one's)
                self._grad_norm = None
            # On micro-batches before the window's last, accelerate makes step() and
            # zero_grad() no-ops (gradients keep accumulating); on the last they act.
            self._optimizer_step(optimizer)
            self._zero_grad(optimizer)
            if acc.sync_gradients and not self._optimizer_checked:
                self._optimizer_checked = True
                _warn_of_parameters_not_optimized(module, optimizer, step)
        if acc.sync_gradients:
            self._contributed = False
            self._window = [0, 0]
        extras = {}
        if isinstance(output, dict) and not skipped:
            extras = {k: v for k, v in _scalars_of(output, "training_step").items() if k != "loss"}
        meter.add(None if skipped else loss, batch.inputs.shape[0] * acc.num_processes, extras)
        return stop

    def _mean_of_used_micro_batches(self, module: EnhancedModule) -> None:
        """A window some of whose micro-batches were skipped (None from training_step, on
        every rank alike): its gradient is the mean over the micro-batches used, as its
        logged loss is. `accelerator.backward` divides each by the window's length, so
        the sum is scaled by length ÷ used (a Python API review: a skip shrank the step,
        an lr × used/length that no log showed)."""
        seen, used = self._window
        if 0 < used < seen:
            with torch.no_grad():
                for parameter in module.parameters():
                    if parameter.grad is not None:
                        parameter.grad.mul_(seen / used)

    def _window_ends_skipped(self, module: EnhancedModule, step: int) -> None:
        """A window's last micro-batch, skipped on every rank: what its backward would have
        done. DDP all-reduces inside that backward: the earlier micro-batches' gradients
        are averaged by hand. FSDP reduce-scatters in it, and its forward left the root's
        parameters gathered (a window skipped whole too: a checkpoint then failed): FSDP's
        own post-backward runs by hand (`fsdp.reduce_pending_grads`)."""
        if self._sharded_root is not None:
            from .fsdp import reduce_pending_grads

            if not reduce_pending_grads(self._sharded_root):
                whole = not self._contributed
                raise alike(_fsdp_window_lost(step, self.checkpoints.latest(), whole))
        elif self._contributed:
            self.lockstep.average_grads_by_hand(module)

    def _direct(self, optimizer: Any) -> Any:
        """The torch optimizer inside accelerate's wrapper when the wrapper's step and
        zero_grad would only call it (no grad scaler, not XLA, not a LOMO optimizer), else
        None. The wrapper looks up optional packages on disk and inspects a signature at
        every call: ~0.3 ms of host time a step, measured, on a step that is all launches."""
        from accelerate.optimizer import AcceleratedOptimizer
        from accelerate.utils import DistributedType, is_lomo_available

        if not isinstance(optimizer, AcceleratedOptimizer) or self.accelerator.scaler is not None:
            return None
        if self.accelerator.distributed_type == DistributedType.XLA or is_lomo_available():
            return None
        return optimizer.optimizer

    def _optimizer_step(self, optimizer: Any) -> None:
        """`optimizer.step()`: on the window's last micro-batch only (accelerate's rule)."""
        if self._inner_optimizer is None:
            optimizer.step()
        elif self.accelerator.sync_gradients:
            self._inner_optimizer.step()

    def _zero_grad(self, optimizer: Any) -> None:
        """`optimizer.zero_grad(set_to_none=True)`, on the window's last micro-batch only."""
        if self._inner_optimizer is None:
            optimizer.zero_grad(set_to_none=True)
        elif self.accelerator.sync_gradients:
            self._inner_optimizer.zero_grad(set_to_none=True)

    def _step_graph(self, module: EnhancedModule, optimizer: Any, scheduler: Any) -> Any:
        """The `trainer.cuda_graphs` step graph of this run, or None (with one line why)."""
        from .graphs import (
            StepGraph,
            cycles_momentum,
            emulated,
            optimizer_refusal,
            plain_learning_rates,
        )

        device, why = self.accelerator.device, None
        if not self.config.cuda_graphs:
            pass
        elif device.type != "cuda" and not emulated():
            why = (f"not applicable on {device.type} (CUDA graphs need a CUDA device); the "
                   "step runs eagerly")  # fmt: skip
        elif module.skips_batches:
            why = (f"{type(module).__name__} may skip batches (skips_batches = True: every loss "
                   "is read on the host), which a graph cannot replay; the step runs eagerly")  # fmt: skip
        elif (why := optimizer_refusal(optimizer)) is None:
            return StepGraph(module, optimizer, device, momentum=cycles_momentum(scheduler))
        if why:
            say(f"trainer.cuda_graphs: {why}")
        plain_learning_rates(optimizer)  # resumed from a run with graphs: floats again
        return None

    def _graphed_step(
        self,
        model: nn.Module,
        module: EnhancedModule,
        optimizer: Any,
        batch: Any,
        state: TrainState,
        meter: Meter,
    ) -> bool:
        """One optimizer step replayed from the step graph (captured at its first call)."""
        acc, step, clip = self.accelerator, state.global_step + 1, self.config.grad_clip_norm

        def body(inputs: torch.Tensor, targets: torch.Tensor, extras: dict) -> tuple:
            with acc.accumulate(model):
                output = model(inputs, targets, **extras)
                acc.backward(loss_of(output, step, _hook_of(module, "training_step")))
                norm = acc.clip_grad_norm_(module.parameters(), clip) if clip else None
                self._optimizer_step(optimizer)
            return output, norm

        output, norm = self._graph.run(batch, step, body, self._hook_extras(batch))
        loss = loss_of(output, step, _hook_of(module, "training_step"))
        self.lockstep.note(loss, step)
        if norm is not None:
            self._grad_norm = norm
        elif step % self.config.log_every_n_steps == 0:
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            self._grad_norm = torch.nn.utils.get_total_norm(grads)
        extras = {}
        if isinstance(output, dict):
            extras = {k: v for k, v in _scalars_of(output, "training_step").items() if k != "loss"}
        meter.add(loss, batch.inputs.shape[0] * acc.num_processes, extras)
        return False

    def _agree_or_note(
        self, module: EnhancedModule, loss: torch.Tensor | None, step: int, state: TrainState
    ) -> tuple[bool, bool]:
        """(skip this micro-batch on every rank, stop after this step). A module that
        may skip batches agrees with the other ranks now (a host read per micro-batch);
        one that never skips only notes its loss on the device for the next check point."""
        if not module.skips_batches:
            if loss is None:
                raise ValueError(
                    f"{type(module).__name__}.training_step returned None at step {step}, but "
                    "the module declares skips_batches = False; set it to True to skip batches"
                )
            self.lockstep.note(loss, step)
            return False, False
        agreed = self.lockstep.agree(loss)
        if agreed.nonfinite:
            raise FloatingPointError(
                f"non-finite loss at step {step} (epoch {state.epoch}, batch {state.batch}); "
                f"last checkpoint: {self.checkpoints.latest() or 'none yet'}"
            )
        return agreed.skipped, agreed.stop

    def _check_point(self, state: TrainState, validator: Validator, epoch_end: bool) -> bool:
        """Whether ranks compare notes after this optimizer step: at log steps, before a
        checkpoint or a validation, at an epoch's end and at the last step; a process
        alone also right after a stop was asked for (there is no other rank to agree with:
        a slow model's stop comes after this step, not up to log_every_n_steps later)."""
        return (
            epoch_end
            or (self.accelerator.num_processes == 1 and self.lockstep.stop.requested)
            or state.global_step % self.config.log_every_n_steps == 0
            or state.global_step >= self._total_steps
            or self.checkpoints.is_due(state.global_step, epoch_end=epoch_end)
            or validator.is_due(state, epoch_end=epoch_end)
        )

    def _settle(self, state: TrainState) -> bool:
        """The check point itself (see `Lockstep.settle`): raises on a non-finite loss
        seen by any rank; returns whether any rank was asked to stop."""
        return self.lockstep.settle(
            state.global_step, f"; last checkpoint: {self.checkpoints.latest() or 'none yet'}"
        )

    def _note_grad_norm(self, module: EnhancedModule, step: int) -> None:
        """The global gradient norm before clipping, kept as a device tensor that is read
        on the host only when logged. With `grad_clip_norm` it is what clipping returns
        (every step); without, it is computed on the steps that log and no other. The
        gradients are all-reduced by now: every rank holds the same norm."""
        clip = self.config.grad_clip_norm
        if clip:
            self._grad_norm = self.accelerator.clip_grad_norm_(module.parameters(), clip)
        elif step % self.config.log_every_n_steps == 0:
            self.accelerator.unscale_gradients()  # fp16: the norm of the true gradients
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            self._grad_norm = torch.nn.utils.get_total_norm(grads)

    def _row_held_at_stop(
        self, meter: Meter, optimizer: Any, state: TrainState, bar: Any
    ) -> tuple | None:
        """On a resume at the epoch's last step: that step's row when it is a log step and
        the stop held it (its window and grad norm carried by the checkpoint), for
        `_end_epoch` to log once the epoch's scheduler step has set the rate."""
        window = state.window or {}
        if meter.carried_window is None or state.global_step % self.config.log_every_n_steps:
            return None
        if window.get("grad_norm") is not None:
            self._grad_norm = torch.tensor(window["grad_norm"])
        return (meter, optimizer, state, bar)

    def _log_window(
        self,
        meter: Meter,
        optimizer: Any,
        state: TrainState,
        bar: Any,
        *,
        hold: bool = False,
        stop: bool = False,
    ) -> None:
        """The log step's training scalars, `train/lr` the rate after this step (the next
        step's). `hold`: logged by `_end_epoch` instead, once the epoch's scheduler step
        (interval epoch) has set that rate; with `stop` as well, by the resumed run: the
        checkpoint carries the window (the epoch closes on resume)."""
        if hold:
            if stop:  # the checkpoint carries the row's window and grad norm
                meter.held_grad_norm = self._grad_norm
                bar.update(state.global_step - bar.n)
            else:
                self._held_window = (meter, optimizer, state, bar)
            return
        bar.update(state.global_step - bar.n)
        if state.global_step % self.config.log_every_n_steps:
            return
        scalars = meter.window()
        if scalars is None:
            return
        # the rate after this step (the next step's); a tensor with graphs: read here
        lrs = [float(g["lr"]) for g in optimizer.param_groups]
        scalars["train/lr"] = lrs[0]
        scalars.update({f"train/lr_group{i}": lr for i, lr in enumerate(lrs) if i})
        if self._grad_norm is not None:  # host sync: the log step's one read of the norm
            scalars["train/grad_norm"], self._grad_norm = float(self._grad_norm), None
        self.tracker.log(scalars, step=state.global_step, epoch=state.epoch)
        progress = (
            f"epoch {state.epoch}, loss {scalars['train/loss']:.4g}, "
            f"lr {scalars['train/lr']:.3g}, {scalars['train/samples_per_s']:.3g} samples/s"
        )
        bar.set_postfix_str(progress)
        if not self._bar_shown:  # a log file: a line a log step, not a redrawn bar
            say(self._log_line(state.global_step, f"{progress}{self._time_left(state)}"))

    def _log_line(self, step: int, text: str) -> str:
        """A line of a log file (no bar on screen): the step, the wall-clock time, `text`."""
        return f"[step {step}/{self._total_steps}] {time.strftime('%H:%M:%S')} {text}"

    def _time_left(self, state: TrainState) -> str:
        """`, elapsed H:MM:SS, ETA H:MM:SS`: this process's time so far (validations and
        checkpoints included) and the rest of the run at its pace."""
        started, first = getattr(self, "_line_clock", (None, 0))
        done = state.global_step - first
        if started is None or done <= 0:
            return ""
        elapsed = time.perf_counter() - started
        left = elapsed / done * max(self._total_steps - state.global_step, 0)
        return f", elapsed {_clock(elapsed)}, ETA {_clock(left)}"

    def _end_epoch(
        self,
        state: TrainState,
        scheduler: Any,
        interval: str,
        meter: Meter,
        validator: Validator,
        total_steps: int,
    ) -> None:
        finished = state.epoch
        if scheduler is not None and interval == "epoch":
            with warnings.catch_warnings():  # an epoch closed on resume: no step here yet
                warnings.filterwarnings(
                    "ignore", "Detected call of `lr_scheduler.step", UserWarning
                )
                scheduler.step()
        held, self._held_window = self._held_window, None
        if held is not None:  # this step's scalars (of its epoch), with the next step's rate
            self._log_window(*held)
        state.epoch, state.batch, state.epoch_origin = state.epoch + 1, 0, None
        summary, skipped = meter.epoch()
        if skipped and "train/epoch_loss" not in summary:
            console.warn_main(
                "epoch %d: training_step returned None for all %d micro-batches: nothing was "
                "trained (the steps still count, as planned, toward max_steps and the schedule)",
                finished,
                skipped,
            )
        self.tracker.log(summary, step=state.global_step, epoch=finished)
        meter.pause_clocks()
        self.checkpoints.maybe_save(state, epoch_end=True)
        validator.maybe_run(state, epoch_end=True)  # its results: a line of their own
        meter.restart_clocks()  # the next epoch's time and throughput: its training only
        say(
            f"epoch {finished} done: step {state.global_step}/{total_steps}, {format_scalars(summary)}"
        )

    def _resolve_start(self, resume: str | Path | None, lease: contextlib.ExitStack) -> Path | None:
        """The checkpoint `resume` names (None: a fresh start), under a read lease on every
        rank (into `lease`: another run's checkpoint may be retired by its run). With
        `trainer.keep_global_batch`, the accumulation is set here, before the data layout
        is planned, so that ranks × accumulation equals the checkpoint's run's."""
        keep = self.config.keep_global_batch
        start = self._resolved_by_main(resume)
        if start is not None:
            self._lease_on_every_rank(lease, start)
        if start is not None and keep:
            self._keep_global_batch(start, read_state(start))
        return start

    def _resolved_by_main(self, resume: str | Path | None) -> Path | None:
        """`checkpoints.resolve(resume)` by the main process alone, its answer (or its error,
        raised on every rank alike) sent to the others: resolving reads and hashes every
        file of the checkpoint, and every rank doing it read an FSDP run's checkpoint N
        times over from a shared filesystem at each resume."""
        if self.accelerator.num_processes == 1 or resume is None:
            return self.checkpoints.resolve(resume)
        from accelerate.utils import broadcast_object_list

        answer: list[Any] = [None, None]  # (folder, (error type, text)) as text
        failure = None
        if self.is_main:
            try:
                found = self.checkpoints.resolve(resume)
                answer[0] = None if found is None else str(found)
            except Exception as exc:  # any: the other ranks must not wait for an answer
                failure, answer[1] = exc, (type(exc).__name__, str(exc))
        answer = broadcast_object_list(answer, from_process=0)
        if failure is not None:
            raise alike(failure)
        if answer[1] is not None:
            kinds = {k.__name__: k for k in (CheckpointError, MissingInput, InputError)}
            kinds.update(TypeError=TypeError, ValueError=ValueError, OSError=OSError)
            raise alike(kinds.get(answer[1][0], RuntimeError)(answer[1][1]))
        return None if answer[0] is None else Path(answer[0])

    def _keep_global_batch(self, start: Path, saved: TrainState) -> None:
        acc, ranks = self.accelerator, self.accelerator.num_processes
        before = saved.gradient_accumulation_steps or self.config.gradient_accumulation_steps
        micro = saved.world_size * before  # micro-batches per optimizer step, all ranks
        if micro % ranks:  # every rank reads the same checkpoint: said once
            raise alike(
                InputError(
                    f"keep_global_batch: {start} was written by {saved.world_size} ranks × "
                    f"{before} accumulation steps = {micro} micro-batches per optimizer step, "
                    f"which {ranks} ranks cannot split evenly; resume on a number of ranks "
                    f"that divides {micro}, or without --keep-global-batch"
                )
            )
        if micro // ranks != acc.gradient_accumulation_steps:
            say(
                f"keeping the global batch of {start.name}: {ranks} ranks × {micro // ranks} "
                f"accumulation steps (it was written by {saved.world_size} × {before}); "
                "random draws in training (scheduled sampling's masks, dropout) are each "
                "rank's own, so they differ from the uninterrupted run's"
            )
            acc.gradient_accumulation_steps = micro // ranks

    def _this_epoch(
        self, train: TrainSource, ctx: LoaderContext, state: TrainState, batches_per_epoch: int
    ) -> tuple[int, Iterator[Any]]:
        """(micro-batches per rank in the current epoch's layout, its batches from
        `state.batch` on): the source's epoch, or the rest of an epoch begun on another
        number of ranks (`state.epoch_origin`)."""
        if state.epoch_origin is None:
            return batches_per_epoch, train.iterate(ctx, state.epoch, state.batch)
        origin = EpochOrigin(**state.epoch_origin)
        rest = train.iterate_rest(ctx, state.epoch, origin, state.batch)
        return train.batches_in_rest(ctx, origin), rest

    def _check_epoch_was_whole(self, state: TrainState, epoch_batches: int, total: int) -> None:
        """After an epoch's batches: a source that yielded fewer than it announced, with
        the run neither at its end nor stopping early, is an error naming both numbers."""
        short = state.batch < epoch_batches and state.global_step < total
        if short and not self._stopping_early(state):
            raise RuntimeError(
                f"training source yielded {state.batch} batches in epoch {state.epoch} "
                f"on rank {self.accelerator.process_index}; it announced {epoch_batches}"
            )

    def _end_pending(
        self, train: TrainSource, ctx: LoaderContext, state: TrainState, batches_per_epoch: int
    ) -> bool:
        """Whether `state` stands at its epoch's last micro-batch with the epoch not closed
        (a checkpoint of a stop there): the resumed loop closes it first."""
        if state.batch == 0:
            return False
        if state.epoch_origin is None:
            return state.batch == batches_per_epoch
        return state.batch == train.batches_in_rest(ctx, EpochOrigin(**state.epoch_origin))

    def _epoch(
        self, train: TrainSource, ctx: LoaderContext, state: TrainState, batches_per_epoch: int
    ) -> tuple[int, Iterator[Any]]:
        """`_this_epoch`, refused when the run stands past the epoch's end (the data shrank
        since the checkpoint), which would otherwise repeat an empty epoch for ever."""
        epoch_batches, batches = self._this_epoch(train, ctx, state, batches_per_epoch)
        if state.batch > epoch_batches:
            raise InputError(
                f"the run stands at micro-batch {state.batch} of epoch {state.epoch}, which now "
                f"has {epoch_batches} per rank: the training data changed since its "
                "checkpoint; resume from a checkpoint written at an epoch's end"
            )
        return epoch_batches, batches

    def _moved_origin(self, state: TrainState) -> dict[str, Any] | None:
        """How the epoch `state` stands in began, when this run lays out its rest anew
        (`EpochOrigin`'s fields): mid-epoch on another number of ranks, or an epoch already
        moved once (`state.epoch_origin`). None: the epoch is this run's own layout."""
        if not self._relaid(state):
            return state.epoch_origin
        if state.epoch_origin is None:
            return dataclasses.asdict(
                EpochOrigin(
                    world_size=state.world_size,
                    num_workers=self._train_workers
                    if state.num_workers is None
                    else state.num_workers,
                    batch_multiple=state.gradient_accumulation_steps
                    or self.config.gradient_accumulation_steps,
                    batch=state.batch,
                    layout=state.data_layout or 1,
                )
            )
        # a second move within the epoch: the current part's batches are spent
        origin = state.epoch_origin
        return {**origin, "later": origin["later"] + state.batch * state.world_size}

    def _relaid(self, state: TrainState) -> bool:
        """Whether this run lays out the rest of the epoch `state` stands in anew: it stopped
        mid-epoch, and the number of ranks, the gradient accumulation (epochs end on an
        optimizer step) or the data-loading workers where they shape the source's layout (a
        shard stream's: each worker reads its own span) are not those that wrote it."""
        acc, workers = self.accelerator, state.num_workers
        accumulation = state.gradient_accumulation_steps
        return state.batch != 0 and (
            state.world_size != acc.num_processes
            or (accumulation is not None and accumulation != acc.gradient_accumulation_steps)
            or (
                self._workers_shape_layout
                and workers is not None
                and max(1, workers) != max(1, self._train_workers)
            )
        )

    def _workers_of(self, train: TrainSource) -> int:
        """Data-loading workers per rank that read `train`: `trainer.num_workers` when set,
        else the source's own (a DataLoader's `num_workers`; 0 for the streams)."""
        if self.config.num_workers is not None:
            return self.config.num_workers
        return int(getattr(train, "num_workers", 0) or 0)

    def _adopt(self, state: TrainState, start: Path, train: TrainSource) -> None:
        """A resumed state in this run's layout. Mid-epoch on another number of ranks or
        workers, the rest of the epoch is redistributed (`EpochOrigin`): the batch count
        restarts at 0."""
        acc = self.accelerator
        if self._relaid(state):
            origin = self._moved_origin(state)
            say(
                f"{start.name} was written mid-epoch by {state.world_size} processes with "
                f"{state.num_workers} data worker(s) each: the rest of epoch {state.epoch} is "
                f"redistributed over {acc.num_processes} with {self._train_workers}"
            )
            state.epoch_origin, state.batch = origin, 0
        state.world_size = acc.num_processes
        state.gradient_accumulation_steps = acc.gradient_accumulation_steps
        state.num_workers = self._train_workers
        state.data_layout = self._data_layout
        state.batch_size = getattr(train, "batch_size", None)
        state.settings = self._settings_of(train)

    def _check_resumable(self, start: Path, saved: TrainState, train: TrainSource) -> None:
        """What a resume cannot honour is refused before anything is loaded: the rest of an
        epoch on another layout from a source that cannot redistribute it; settings the
        restored state would override or that would reorder the epochs begun
        (`_settings_changed`)."""
        acc = self.accelerator
        # the same checkpoint and settings on every rank: each refusal said once (`alike`)
        if self._relaid(saved) and not isinstance(train, RedistributableSource):
            raise alike(InputError(
                f"{start} was written mid-epoch by {saved.world_size} processes with "
                f"{saved.num_workers} data worker(s) each and the training source "
                f"{type(train).__name__} cannot redistribute the rest of an epoch; resume it "
                f"with {saved.world_size} processes and {saved.num_workers} worker(s) (now "
                f"{acc.num_processes} and {self._train_workers})"
            ))  # fmt: skip
        changed = self._settings_changed(start, saved, train)
        if changed:
            from_config = self.run_config is not None
            raise alike(InputError(_settings_refusal(start, changed, from_config=from_config)))

    def _settings_of(self, train: TrainSource) -> dict[str, Any]:
        """This run's resolved values of the settings a resume must keep (`KEPT_ON_RESUME`
        where the Trainer knows the config, `ORDER_KEYS`, the train source's
        `MID_EPOCH_KEYS`), recorded in every checkpoint's state."""
        settings: dict[str, Any] = {"trainer.seed": self.config.seed}
        if self.run_config is not None:
            resolved = dataclasses.asdict(self.run_config)  # env interpolations resolved
            settings.update({key: _lookup(resolved, key) for key in KEPT_ON_RESUME})
            if _lookup(resolved, "model.schedule.name") != "onecycle":
                # a cosine schedule's length comes from the config on resume (its state
                # holds no length): only OneCycleLR's is restored with its state
                settings.pop("model.schedule.total_steps", None)
        else:  # a Trainer of keywords: the module's optimizer (a Python API review: another
            # lr was ignored without a word, another kind failed in torch with KeyError 'step')
            settings.update(getattr(self, "_optimizer_facts", {}))
        for key in MID_EPOCH_KEYS:
            value = getattr(train, key.split(".")[1], None)
            # a user's own source may hold another kind of thing by that name: not recorded
            if isinstance(value, int | float | str) and not isinstance(value, bool):
                settings[key] = value
        return settings

    def _settings_changed(self, start: Path, saved: TrainState, train: TrainSource) -> list[str]:
        """`key old → new` for each setting a resume from `start` would not honour: those
        of `_settings_of`, from the checkpoint's state (a checkpoint written before the state
        recorded them: from its config.yaml, where readable and not read from the
        environment); the data ones only mid-epoch."""
        now = self._settings_of(train)
        before = saved.settings if saved.settings is not None else _config_settings(start)
        mid_epoch = saved.batch != 0 or saved.epoch_origin is not None
        changed = []
        self._lr_rescale = None
        for key, new in now.items():
            old = before.get(key)
            if key in MID_EPOCH_KEYS and not mid_epoch:
                continue
            if key == LR_KEY and _positive_numbers(old, new) and old != new:
                self._lr_rescale = (old, new)  # honoured: the schedule scaled (_rescale_lr)
                continue
            if key == MODULE_LR_KEY and old != new and (ratio := _ratio(old, new)) is not None:
                self._lr_rescale = (1.0, ratio)  # a module's optimizer: by one ratio
                self._lr_said = (old, new)
                continue
            if old is not None and old != new:
                changed.append(f"{key} {old} (the checkpoint's) → {new}")
        return changed

    def _rescale_lr(self, optimizer: Any, scheduler: Any, step: int) -> None:
        """A resume with another `model.optimizer.lr`: the restored schedule goes on scaled
        by new / old (the rate now and at every later step; a cosine's `min_lr` floor
        stays where the config puts it), the optimizer's moments kept."""
        if getattr(self, "_lr_rescale", None) is None:
            return
        old, new = self._lr_rescale
        ratio = new / old
        groups = getattr(optimizer, "optimizer", optimizer).param_groups
        for group in groups:
            for key in ("lr", "initial_lr", "max_lr", "min_lr"):  # OneCycleLR's bounds too
                if key in group:
                    group[key] = group[key] * ratio
        inner = getattr(scheduler, "scheduler", scheduler)
        if isinstance(inner, torch.optim.lr_scheduler.LambdaLR):
            # the config's schedules: base × factor(step), the factor built from the new
            # config (its min_lr floor where the config puts it): the rate of this step too
            inner.base_lrs = [lr * ratio for lr in inner.base_lrs]
            for group, base, factor in zip(groups, inner.base_lrs, inner.lr_lambdas):
                group["lr"] = base * factor(inner.last_epoch)
        elif inner is not None:
            _scale_schedule(inner, ratio)
        if inner is not None and hasattr(inner, "_last_lr"):
            inner._last_lr = [float(group["lr"]) for group in groups]
        if self.run_config is not None:
            what = f"model.optimizer.lr {old:g} (the checkpoint's) → {new:g}"
        else:
            before, now = getattr(self, "_lr_said", (old, new))
            what = f"the optimizer's lr {before} (the checkpoint's) → {now}"
        say(
            f"{what}: from step {step} the schedule goes on scaled by {ratio:g} (the "
            "optimizer's moments kept)"
        )

    def _start(
        self,
        resume: str | Path | None,
        start: Path | None,
        model: nn.Module,
        module: EnhancedModule,
        optimizer: Any,
        scheduler: Any,
        train: TrainSource,
        ctx: LoaderContext,
    ) -> TrainState:
        """A fresh state (refusing an output_dir that holds an earlier run) or the state of
        checkpoint `start` (what `resume` names), with everything it saved restored."""
        acc = self.accelerator
        self._start_record: tuple[str, int, Path | None] | None = None
        self._contributed, self._grad_norm = False, None
        self._window = [0, 0]  # micro-batches of this accumulation window: seen, used
        self._parameters_checked = False  # see _check_every_parameter_trained
        self._optimizer_checked = False  # see _warn_of_parameters_not_optimized
        self.lockstep.reset()
        # what an earlier fit of this Trainer that failed inside an accumulation window left:
        # accelerate's micro-batch count (its next step synced after fewer micro-batches)
        # and the window's gradients (added into this fit's first step)
        acc.step = 0
        module.zero_grad(set_to_none=True)
        # parameters the optimizer holds outside the module too (accelerate's wrapper
        # would not clear them while the failed window left sync_gradients off)
        getattr(optimizer, "optimizer", optimizer).zero_grad(set_to_none=True)
        if resume is None and self.checkpoints.latest() is not None:
            raise alike(OutputExists(
                f"{self.checkpoints.root} holds checkpoints of an earlier run; resume it "
                "(resume='auto', CLI --resume auto) or use another output_dir"
            ))  # fmt: skip
        if start is None:
            if resume == "auto":
                say(f"no checkpoint in {self.checkpoints.root}; starting from scratch")
            set_seed(rank_seed(self.config.seed, acc.process_index))
            self._start_record = ("start", 0, None)  # written once the start's checks pass
            return TrainState(
                world_size=acc.num_processes,
                gradient_accumulation_steps=acc.gradient_accumulation_steps,
                num_workers=self._train_workers,
                data_layout=self._data_layout,
                batch_size=getattr(train, "batch_size", None),
                settings=self._settings_of(train),
            )
        saved = read_state(start)
        self._check_resumable(start, saved, train)
        state = self.checkpoints.load(start, acc, module, optimizer, scheduler)
        self._rescale_lr(optimizer, scheduler, state.global_step)
        self._adopt(state, start, train)
        self._restore_ema_and_early_stopping(start, state)
        # the newer checkpoints, another trajectory's, go aside at this run's first save
        self.checkpoints.trajectory_from = None if self._nothing_left else state.global_step

        def first_batch() -> tuple[tuple, dict] | None:
            batch = next(iter(self._this_epoch(train, ctx, state, 1)[1]), None)
            if batch is None:  # the checkpoint sits at an epoch's end
                batch = next(iter(train.iterate(ctx, state.epoch + 1, 0)), None)
            module.global_step, module.current_epoch = state.global_step, state.epoch
            if batch is None:
                return None
            batch = self._to_device(batch)
            return (batch.inputs, batch.targets), self._hook_extras(batch)

        self.lockstep.rebucket_like_a_fresh_run(
            model,
            optimizer,
            first_batch,
            lambda: self.checkpoints.restore_weights_and_rng(start, acc, module),
        )
        # the run's config.yaml stays the one it trained with when nothing is left to train
        self._start_record = None if self._nothing_left else ("resume", state.global_step, start)
        say(f"resumed from {start} (epoch {state.epoch}, step {state.global_step})")
        return state

    def _replace_rows_of_steps_trained_again(self, step: int) -> None:
        """A resume at `step`: the rows of later steps (a killed process past its last
        checkpoint) move aside now; where checkpoints of later steps stand (an older
        checkpoint chosen), once they go aside, at this run's first save: until then
        `--resume auto` would go on along them, and their rows with them (a diff review).
        Where this run's own rows begin is written down meanwhile: stopped before that save,
        the next start moves them aside (`Tracker.replace_rows_of_stopped_attempt`)."""
        self.checkpoints.on_trajectory_left = None
        if not step:
            return
        latest = self.checkpoints.latest()
        if latest is not None and step_of(latest) > step:
            self.checkpoints.on_trajectory_left = self.tracker.replace_rows_after
            self.tracker.keep_rows_pending(step)
        else:
            self.tracker.replace_rows_after(step)

    def _write_start_record(self, module: Any, train: TrainSource) -> None:
        """config.yaml and the provenance line of this start (`_start_record`), written
        after every refusal of the start: a refused start or resume writes neither (a
        config review: a resume refused for its schedule's length had rewritten both)."""
        if self._start_record is not None:
            event, step, resumed_from = self._start_record
            self._save_config(resumed_from=resumed_from)
            self._record_provenance(event, step, resumed_from, module, train)

    def _record_provenance(
        self, event: str, step: int, start: Path | None, module: Any, train: TrainSource
    ) -> None:
        """A line of `provenance.jsonl` (see `stpdist.provenance`); on a resume, the config
        keys changed since the run's line before said too (config.yaml keeps the newest)."""
        if not self.is_main:
            return
        from .provenance import file_sha256, record

        acc = self.accelerator
        entry: dict[str, Any] = {"event": event, "step": step}
        if start is not None:
            entry["resumed_from"] = str(start)
        entry.update(
            world_size=acc.num_processes,
            gradient_accumulation_steps=acc.gradient_accumulation_steps,
            num_workers=self._train_workers,
            threads=torch.get_num_threads(),
            device=str(acc.device),
            mixed_precision=str(acc.mixed_precision),
            # a Trainer of keywords (the Python API) has no run config: its own settings
            config=to_dict(self.run_config)
            if self.run_config is not None
            else {"trainer": dataclasses.asdict(self.config)}
            if dataclasses.is_dataclass(self.config)
            else None,
        )
        if self.run_config is not None and (values := environment_values(self.run_config)):
            entry["environment_values"] = values  # the config keeps `${oc.env:…}`
        init = getattr(module, "stpdist_init_weights", None)
        if event == "start" and init is not None and Path(init).is_file():
            entry["init_weights"] = {"path": init, "sha256": file_sha256(init)}
        index = Path(getattr(train, "folder", "") or "") / "index.json"
        if getattr(train, "folder", None) is not None and index.is_file():
            entry["train_data"] = {"index": str(index.absolute()), "sha256": file_sha256(index)}
        try:
            changed = record(self.output_dir, entry)
        except OSError as exc:  # a record, never a reason to stop the run
            log.warning("could not write %s: %s", self.output_dir / "provenance.jsonl", exc)
            return
        if changed:
            shown = "; ".join(changed[:6]) + (
                f"; … ({len(changed)} in all)" if len(changed) > 6 else ""
            )
            say(f"settings changed since the run's previous start: {shown} (provenance.jsonl)")

    def _save_config(self, resumed_from: Path | None = None) -> None:
        """The resolved config as `output_dir/config.yaml`, marked as stpdist's. A file
        there that stpdist did not write (the user's own config, kept in the run folder)
        is never written over: the resolved config then goes to config.resolved.yaml (every
        checkpoint holds it too). `resumed_from`: the checkpoint a resume starts from."""
        if not self.is_main or self.run_config is None:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        text = RESOLVED_CONFIG_HEADER + to_yaml(self.run_config)
        target = self.output_dir / "config.yaml"
        if target.is_file() and not _written_by_us(target, text, resumed_from):
            target = self.output_dir / "config.resolved.yaml"
            say(
                f"{self.output_dir / 'config.yaml'} is not a file stpdist wrote: kept as it is; "
                f"this run's resolved config is {target}"
            )
        replace_text(target, text)

    # ------------------------------------------------------- EMA and early stopping
    def _set_up_ema_and_early_stopping(self, module: EnhancedModule) -> None:
        """`trainer.ema` and `trainer.early_stopping` for this `fit`: each, when on, is
        saved into every checkpoint (ema.safetensors, early_stopping.json)."""
        ema_config, stop_config = self.config.ema, self.config.early_stopping
        self.ema = None if ema_config is None else WeightAverage(ema_config, module)
        self.early_stopping = None if stop_config is None else EarlyStopping(stop_config)
        self.attachments.pop(EMA_FILE, None)
        self.attachments.pop(EARLY_STOPPING_FILE, None)
        if self.ema is not None:
            self.attachments[EMA_FILE] = self.ema.to_bytes
        if self.early_stopping is not None:
            self.attachments[EARLY_STOPPING_FILE] = self.early_stopping.to_json

    def _check_early_stopping_can_stop(
        self, validator: Validator, batches_per_epoch: int, total_steps: int, resumed: bool
    ) -> None:
        """`trainer.early_stopping` counts validations during training: refuse, before any
        step, a run that has none (no validation data, or validation only at the end: none
        of its validation periods falls before the last step; a `resumed` run, begun when
        that was not refused, is told instead); warn when it has too few to ever stop (the
        first sets the best, then `patience` more)."""
        if self.early_stopping is None:
            return
        config = self.config
        per_epoch = batches_per_epoch // self.accelerator.gradient_accumulation_steps
        periods = [config.val_every_n_steps, (config.val_every_n_epochs or 0) * per_epoch]
        counted = _multiples_below(total_steps, [p for p in periods if p])
        why = None
        if validator.source is None:
            why = "this run has no validation data"
        elif not config.val_every_n_steps and not config.val_every_n_epochs:
            why = "validation runs only after the last step (val_every_n_epochs 0, "
            why += "val_every_n_steps unset)"
        elif counted == 0:
            why = (
                f"its {total_steps} steps end before its first validation (val_every_n_steps "
                f"{config.val_every_n_steps}, val_every_n_epochs {config.val_every_n_epochs}"
                f", {per_epoch} steps an epoch), and a validation at the last step cannot "
                "stop it early"
            )
            if resumed:
                console.warn_main("trainer.early_stopping cannot stop this run: %s", why)
                return
        elif counted <= self.early_stopping.config.patience:
            console.warn_main(
                "trainer.early_stopping cannot stop this run: it plans %d validation(s) "
                "before its last step, and a stop needs %d (the first sets the best, then "
                "patience %d without improvement)",
                counted, self.early_stopping.config.patience + 1,
                self.early_stopping.config.patience,
            )  # fmt: skip
        if why is not None:
            raise InputError(
                f"trainer.early_stopping would never stop this run: {why}; give it "
                "validations (trainer.val_every_n_epochs or val_every_n_steps, a data.val_split "
                "that exists) or turn it off (trainer.early_stopping=null)"
            )

    def _warn_if_best_is_never_ranked(
        self, validator: Validator, batches_per_epoch: int, total_steps: int
    ) -> None:
        """Best-k ranks a checkpoint by the validation of its own step: warn, once at start,
        when no checkpoint before the last falls on a validation step, so that "best" could
        only be the last one (e.g. checkpoints every 5 steps, validations every 6)."""
        policy, config = self.checkpoints.policy, self.config
        if not self.checkpoints.keep_best or validator.source is None:
            return
        per_epoch = batches_per_epoch // self.accelerator.gradient_accumulation_steps
        saves = [policy.every_n_steps, per_epoch if policy.every_epoch else None]
        saves = [a for a in saves if a and a < total_steps]  # checkpoints before the last
        checks = [config.val_every_n_steps, (config.val_every_n_epochs or 0) * per_epoch]
        periods = [(a, b) for a in saves for b in checks if b]
        if not saves:
            return
        if any(math.lcm(a, b) < total_steps for a, b in periods):
            return
        console.warn_main(
            "trainer.checkpoint.keep_best ranks checkpoints by their own step's validation, "
            "and no checkpoint before the last falls on a validation step (checkpoints: "
            f"every_n_steps {policy.every_n_steps}, every_epoch {policy.every_epoch}; "
            f"validation: val_every_n_steps {config.val_every_n_steps}, val_every_n_epochs "
            f"{config.val_every_n_epochs}; {total_steps} steps): 'best' can only be the last "
            "checkpoint; make the checkpoint steps multiples of the validation steps"
        )

    def _restore_ema_and_early_stopping(self, folder: Path, state: TrainState) -> None:
        if self.ema is not None:
            self.ema.restore(folder)
        elif (folder / EMA_FILE).is_file():
            console.warn_main(
                "%s holds an EMA of the weights (%s) but trainer.ema is off: this run goes on "
                "without it, its checkpoints hold none, and its validations (so best-k) score "
                "the raw weights where the earlier ones scored the average; set trainer.ema "
                "as before to keep it",
                folder,
                EMA_FILE,
            )
        if self.early_stopping is not None:
            # a validation off the schedule (the run's last) was not counted: see maybe_run
            at_end = state.batch == 0 and state.epoch_origin is None
            scheduled = validation_due(self.config, state, epoch_end=at_end)
            self.early_stopping.restore(folder, state, count_recorded=scheduled)

    def _stopping_early(self, state: TrainState) -> bool:
        """Whether early stopping ends training (the same answer on every rank: it comes
        from validation results that are identical on every rank)."""
        return self.early_stopping is not None and self.early_stopping.should_stop

    @contextmanager
    def evaluation_weights(self) -> Iterator[None]:
        """The weights validation uses during `fit`: the EMA when `trainer.ema` is on (the
        raw weights are back afterwards, bit for bit), else the weights as they are."""
        if self.ema is None:
            yield
            return
        with self.ema.swapped_in():
            yield

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(
        self,
        module: EnhancedModule,
        source: Any,
        prefix: str = "val",
        keeper: SampleKeeper | None = None,
        stop: StopFlag | None = None,
    ) -> dict[str, Any]:
        """Results of `validation_step` over all of `source` across all ranks, exactly
        (keys `<prefix>/<name>`); `keeper` collects the first samples for pictures. When
        `stop` is requested on any rank, all leave the pass (`ValidationAbandoned`)."""
        check_hook_signature(module, "validation_step")
        sums = EvalSums()
        with _evaluating(module), self.accelerator.autocast(), self._whole(module):
            self._buffers_of_rank_0(module)
            for batch in source.iterate(self._ctx()):
                if stop is not None and stop.requested:
                    sums.abandoned = True
                    break
                batch = self._to_device(batch)
                inputs, targets, keys, _ = batch
                step = call_hook(module.validation_step, inputs, targets, self._hook_extras(batch))
                output = _end_of(module, "validation_step", step)
                sums.add(output, inputs.shape[0])
                if keeper is not None:
                    keeper.offer(keys, inputs, targets, output)
        return sums.reduce(self.accelerator, module, prefix)

    def _buffers_of_rank_0(self, module: nn.Module) -> None:
        """Every rank evaluates with rank 0's buffers (BatchNorm's running statistics), the
        ones a checkpoint holds: DDP broadcasts them at the start of each forward, so each
        rank's last training forward left its own, and results were not a one-process
        evaluation of the checkpoint. (DDP overwrites them again at the next forward.)"""
        if self.accelerator.num_processes > 1 and getattr(self, "_sharded_root", None) is None:
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer.data, src=0)

    def _whole(self, module: nn.Module) -> Any:
        """FSDP: the sharded model's full parameters gathered for an evaluation of `module`
        (see `fsdp.gathered`); nothing otherwise."""
        root = getattr(self, "_sharded_root", None)
        if root is None or not any(m is module for m in root.modules()):
            return contextlib.nullcontext()
        from .fsdp import gathered

        return gathered(root)

    def validate(
        self,
        module: EnhancedModule,
        data: Any,
        ckpt: str | Path | None = None,
        split: str = "val",
        *,
        raw_weights: bool = False,
        log: bool = True,
    ) -> dict[str, Any]:
        """Evaluate `module` (weights from `ckpt` if given: its EMA when it holds one,
        unless `raw_weights`; without `ckpt`, the module as it is, or its EMA when this
        Trainer trained it with one) over all of `data`; results are named
        `<split>/<metric>`, and logged at the checkpoint's step (not with `raw_weights`:
        the run's rows are its model's; nor for a checkpoint outside this Trainer's
        output_dir, another run's; not without `log`: results of other data than the
        run's), unless the run's record already holds that step's
        `<split>` results: a second validation of a step (with other settings, perhaps)
        adds no row beside the first, which a resume would otherwise send again in its
        place."""
        self._hold_settings()
        step, epoch = module.global_step, module.current_epoch  # an in-memory module's
        if ckpt is not None:
            with contextlib.ExitStack() as lease:
                self._lease_on_every_rank(lease, Path(ckpt))
                load_eval_weights(ckpt, module, raw_weights=raw_weights)
                state = Path(ckpt) / TRAIN_STATE_FILE
                # the checkpoint's step; a weights file knows none: not logged as step 0
                trained = read_state(Path(ckpt)) if state.is_file() else None
            step, epoch = (trained.global_step, trained.step_epoch) if trained else (None, None)
        held = module.global_step, module.current_epoch
        if step is not None:  # the hooks see the checkpoint's step, as in fit's validation
            module.global_step, module.current_epoch = step, epoch
        self._place(module)
        try:
            with self._average_of(module, ckpt, raw_weights):
                results = self.evaluate(module, as_eval_source(data), split)
        finally:
            module.global_step, module.current_epoch = held
        # the run's rows: its model's (not another run's checkpoint: a Python API review
        # found one logged here at that run's step), its data's
        own = ckpt is None or self.output_dir.resolve() in Path(ckpt).resolve().parents
        if step is not None and not raw_weights and log and own:
            self.tracker.log_unless_logged(results, step=step, epoch=epoch)
        return results

    def choose_checkpoint(self, choose: Callable[[], Path], *, again: bool = False) -> Path:
        """The checkpoint `choose()` names, chosen once, by the main process, and the same on
        every rank (collective). The main process holds a read lease on it (see
        `checkpoint.reading`) until every rank holds its own, in `validate` or `predict`:
        a run still training cannot retire it in between. `again` (best, last): one
        retired before the main process's lease is chosen again. An error of `choose` is
        raised on every rank, as the same InputError."""
        from accelerate.utils import broadcast_object_list

        chosen: list[Any] = [None, None]  # (folder, error) as text
        failure = None
        if self.is_main:
            held = contextlib.ExitStack()
            try:
                chosen[0] = str(held.enter_context(reading_chosen(choose, again=again)))
                self._choice_lease = held
            except InputError as exc:
                failure, chosen[1] = exc, str(exc)
        if self.accelerator.num_processes > 1:
            chosen = broadcast_object_list(chosen, from_process=0)
        if failure is not None:  # every rank raises it (the main one's choice): said once
            raise alike(failure)
        if chosen[1] is not None:
            raise alike(InputError(chosen[1]))
        return Path(chosen[0])

    def _lease_on_every_rank(self, lease: contextlib.ExitStack, ckpt: Path) -> None:
        """Every rank takes its own read lease on checkpoint `ckpt` (into `lease`), then the
        ranks agree (collective): one that finds it retired, or ranks that were given
        different checkpoints, make every rank raise the same one-line InputError, rather
        than one rank failing while the others wait in a collective."""
        problem = None
        try:
            lease.enter_context(reading(ckpt))
        except RetiredCheckpoint as exc:
            problem = str(exc)
        if self.accelerator.num_processes > 1:
            seen = gather_object([(problem, Path(ckpt).name)])
            problem = next((p for p, _ in seen if p is not None), None)
            names = [name for _, name in seen]
            if problem is None and len(set(names)) > 1:
                problem = (
                    f"the ranks were given different checkpoints ({', '.join(names)}, by "
                    "rank; a run still training saves meanwhile): every rank must read the "
                    "same one: choose it on the main process (Trainer.choose_checkpoint) "
                    "or name a step"
                )
        held, self._choice_lease = getattr(self, "_choice_lease", None), None
        if held is not None:  # every rank holds its own lease now
            held.close()
        if problem is not None:
            raise RetiredCheckpoint(problem)

    def _average_of(
        self, module: EnhancedModule, ckpt: str | Path | None, raw_weights: bool
    ) -> contextlib.AbstractContextManager:
        """For `validate`/`predict` of the module this Trainer trained with EMA on, given no
        `ckpt`: the average swapped in, as validation in `fit` and a checkpoint use it
        (unless `raw_weights`); else nothing."""
        ema = self.ema
        if ckpt is None and not raw_weights and ema is not None and ema.averages(module):
            return ema.swapped_in()
        return contextlib.nullcontext()

    @torch.inference_mode()
    def predict(
        self,
        module: EnhancedModule,
        data: Any,
        ckpt: str | Path | None = None,
        out: str | Path | None = None,
        *,
        split: str = "test",
        keeper: SampleKeeper | None = None,
        metrics: bool = True,
        postprocess: Any = None,
        raw_weights: bool = False,
        shown_as: str | Path | None = None,
        units: str | None = None,
    ) -> dict[str, Any]:
        """One pass that writes predictions keyed by sample and, where batches carry
        targets (and `metrics`), accumulates the metrics of `validation_step` (keys
        `<split>/…`). `postprocess` maps the predictions before they are written (e.g. to
        physical units); `keeper` collects the first samples for pictures. A `ckpt` that
        holds an EMA of its weights predicts with it, unless `raw_weights` (without `ckpt`:
        the EMA when this Trainer trained `module` with one). `shown_as`: the
        folder to name in messages when `out` is a staging folder the caller swaps in
        later (the line then says the predictions were made, not written there).

        Files: `out/predictions-r<rank>-<part>.npz`, each with `keys` (N,) and `predictions`
        N×T_out×C×H×W float32, and where known `units` (a string: `units` as given,
        "physical" for a module that `writes_physical_units`, else "scaled" for a module with
        a `value_scale`, which is then written beside it: physical = scaled × value_scale),
        and, for data whose samples keep their frames' times (`data.frame_times()`, a shard
        split of a time series), `reference_times` (N) and `valid_times` (N×T_out),
        datetime64[s]: the last input frame's time and each predicted frame's.
        Returns the metrics ({} without targets, or for a module
        without `validation_step`). The earlier predictions in `out` are replaced once the
        new ones are all written: a pass that fails leaves them as they were."""
        self._hold_settings()
        acc = self.accelerator
        metrics = metrics and _implements(module, "validation_step")
        check_hook_signature(module, "predict_step")
        if metrics:
            check_hook_signature(module, "validation_step")
        if ckpt is not None:
            with contextlib.ExitStack() as lease:
                self._lease_on_every_rank(lease, Path(ckpt))
                load_eval_weights(ckpt, module, raw_weights=raw_weights)
        out = Path(out) if out is not None else self.output_dir / "predictions"
        # written into `out/.predicting`, moved over the earlier predictions only once every
        # rank has written all of its own: a pass that fails leaves the earlier ones intact
        staging = out / PREDICTING
        if acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            _finish_a_stopped_swap(out)
            shutil.rmtree(staging, ignore_errors=True)  # a killed predict's
            staging.mkdir()
        acc.wait_for_everyone()
        try:
            with _evaluating(module):  # each part's mode back after (predict left eval)
                total, sums = self._predict_into(
                    module, data, ckpt, staging, split, keeper, metrics, postprocess,
                    raw_weights, units,
                )  # fmt: skip
        except BaseException:
            if acc.is_main_process:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        if acc.is_main_process:  # complete and on disk, then marked so, then swapped in
            names = sorted(p.name for p in staging.iterdir())
            replace_text(staging / PREDICTED_NAMES, json.dumps(names))
            make_durable(staging)
            with _swap_lock(out):  # a reader finishing a stopped swap waits for this one
                os.replace(staging, out / PREDICTED)
                sync_folder(out)
                _swap_in_predictions(out, out / PREDICTED)
        acc.wait_for_everyone()  # every rank returns with the predictions in place
        count = console.counted(int(total[0]), "prediction")
        # into a staging folder: the caller's swap may still refuse, so nothing "written" yet
        say(f"made {count} for {shown_as}" if shown_as else f"wrote {count} to {out}")
        if total[2]:  # a model's NaN/Inf, written as they came (a plugins review: silent)
            console.warn_main(
                "%d of the %d predicted values (%.3g%%) are NaN or ±Inf: the model's outputs, "
                "written as they came",
                int(total[2]), int(total[3]), 100 * float(total[2]) / float(total[3]),
            )  # fmt: skip
        return sums.reduce(acc, module, split) if int(total[1]) else {}

    def _predict_into(
        self,
        module: EnhancedModule,
        data: Any,
        ckpt: str | Path | None,
        out: Path,
        split: str,
        keeper: SampleKeeper | None,
        metrics: bool,
        postprocess: Any,
        raw_weights: bool,
        units: str | None,
    ) -> tuple[torch.Tensor, EvalSums]:
        """`predict`'s pass, its files written into `out`: (the numbers of predictions and
        of scored samples, summed over the ranks; this rank's metric sums)."""
        from .inference import refuse_keys_on_several_ranks

        acc = self.accelerator
        self._place(module)
        self._buffers_of_rank_0(module)
        if postprocess is None and getattr(module, "writes_physical_units", False):
            postprocess, units = module.to_physical, "physical"  # normalised per variable
        described = _units_entries(module, units, postprocess)
        times = getattr(data, "frame_times", None)  # a shard split's, where it keeps them
        times = times() if callable(times) else None
        sums, written, seen = EvalSums(), 0, set()
        values = nonfinite = 0  # the predictions' values, and those NaN or ±Inf among them
        with acc.autocast(), self._average_of(module, ckpt, raw_weights):
            for part, batch in enumerate(as_eval_source(data).iterate(self._ctx())):
                batch = self._to_device(batch)
                if batch.keys is None:
                    raise ValueError("prediction batches must carry sample keys")
                _check_unique_keys(batch.keys, seen, split)
                given = batch  # its targets, when it has them, shape the predictions
                if not metrics:
                    batch = batch._replace(targets=None)
                pred, output = self._predict_batch(module, batch, self._hook_extras(batch))
                _check_predictions(module, pred, given)
                if output is not None:
                    sums.add(output, batch.inputs.shape[0])
                if keeper is not None:
                    keeper.offer(batch.keys, batch.inputs, batch.targets, {"predictions": pred})
                if postprocess is not None:
                    pred = postprocess(pred)
                array = pred.float().cpu().numpy()
                values += array.size
                nonfinite += array.size - int(np.count_nonzero(np.isfinite(array)))
                np.savez(
                    out / f"predictions-r{acc.process_index:03d}-{part:06d}.npz",
                    keys=np.asarray(batch.keys),
                    predictions=array,
                    **described,
                    **({} if times is None else
                       times.of(batch.keys, batch.inputs.shape[1], pred.shape[1])),
                )  # fmt: skip
                written += len(batch.keys)
        refuse_keys_on_several_ranks(seen, acc, split)  # each rank's `seen` checked: together
        counts = [written, sums.count, nonfinite, values]
        total = acc.reduce(torch.tensor(counts, device=acc.device, dtype=torch.float64), "sum")
        return total, sums

    @staticmethod
    def _predict_batch(
        module: EnhancedModule, batch: Batch, extras: dict[str, Any]
    ) -> tuple[torch.Tensor, Any]:
        """(predictions, the validation output for metrics or None without targets)."""
        inputs, targets = batch.inputs, batch.targets
        if targets is None:
            return call_hook(module.predict_step, inputs, None, extras), None
        output = _end_of(
            module, "validation_step", call_hook(module.validation_step, inputs, targets, extras)
        )
        if isinstance(output, dict) and "predictions" in output and module.validation_predicts:
            return output["predictions"], output
        return call_hook(module.predict_step, inputs, targets, extras), output


PREDICTING = ".predicting"
"""The folder inside `predict`'s `out` that a pass writes into before its files replace
the earlier ones."""
PREDICTED = ".predicted"
"""`PREDICTING` once complete and on disk (renamed: one atomic step), while its files
replace the earlier ones; a predict stopped then leaves it, and the next one finishes the
swap (an earlier form deleted the earlier predictions first, then moved the new ones in:
a Ctrl-C between left neither; a test-suite review)."""
PREDICTED_NAMES = ".names.json"
"""In `PREDICTED`: the names of its prediction files (those of a finished swap moved out)."""


@contextmanager
def _swap_lock(folder: Path, *, shared: bool = False) -> Iterator[None]:
    """An exclusive lock on `folder`'s swap, held by a predict swapping its files in or a
    reader finishing a stopped swap: flock on the folder itself (no file left in it;
    released if the holder dies). A reader that found `.predicted` took it for a stopped
    swap while a live predict was moving its files, and broke it (a diff review)."""
    import fcntl

    from .checkpoint import _lock

    try:
        fd = os.open(folder, os.O_RDONLY)
    except PermissionError:  # a folder one may write but not read (0300): no lock there
        yield
        return
    how = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:  # a filesystem without flock (NFS without lockd): none, as for the checkpoints'
        # read leases (a diff review: the whole pass was lost to "No locks available")
        try:
            _lock(fd, how | fcntl.LOCK_NB, folder)
        except BlockingIOError:  # said, not waited on silently (a reader may hold it long)
            log.warning(
                "%s: %s; waiting for it",
                folder,
                "its predictions are being replaced (a predict swapping its pass in)"
                if shared
                else "another process is reading or replacing its predictions",
            )
            _lock(fd, how, folder)
        yield
    finally:
        os.close(fd)


def _finish_a_stopped_swap(folder: Path) -> None:
    """The swap a predict stopped midway left in `folder` (its files a mix of the earlier
    and the new predictions), finished: by the next predict and by the readers, once no
    predict is swapping there (one that is finishes it itself)."""
    if not (folder / PREDICTED).is_dir():
        return
    try:
        with _swap_lock(folder):
            if not (folder / PREDICTED).is_dir():  # the live predict's swap, now finished
                return
            _swap_in_predictions(folder, folder / PREDICTED)
    except OSError as exc:  # (a reader of a folder it cannot write)
        raise OSError(
            f"{folder}: a predict stopped while it replaced the predictions there (they are "
            f"a mix of two passes), and finishing that failed ({exc.strerror or exc}); run "
            "the predict again, or ask the folder's owner to"
        ) from None
    log.warning("%s: finished replacing the predictions (a predict was stopped while it "
                "replaced them)", folder)  # fmt: skip


def _swap_in_predictions(out: Path, ready: Path) -> None:
    """The prediction files of `ready` (a complete pass) in `out` in place of the earlier
    ones; idempotent, so that a swap stopped midway is finished by doing it again (one
    stopped while it removed `ready`, its list gone, had moved every file: removed)."""
    if not (ready / PREDICTED_NAMES).is_file():
        shutil.rmtree(ready)
        return
    names = set(json.loads((ready / PREDICTED_NAMES).read_text()))
    for old in out.glob("predictions-r*.npz"):
        if old.name not in names:
            old.unlink()
    for name in sorted(names):
        if (ready / name).exists():
            os.replace(ready / name, out / name)
    sync_folder(out)
    shutil.rmtree(ready)


def _check_unique_keys(keys: Sequence[str], seen: set[str], split: str) -> None:
    """Refuse a sample key met before in this process' share: its predictions would be
    written twice under one key, and `load_predictions` would keep only the last."""
    for key in keys:
        if key in seen:
            raise ValueError(
                f"sample key {key!r} appears twice in the {split} data; predictions are "
                "written by key: give each sample its own key"
            )
        seen.add(key)


def _units_entries(module: Any, units: str | None, postprocess: Any) -> dict[str, np.ndarray]:
    """The `units` (and `value_scale`) entries of `predict`'s files, {} where unknown (a
    caller's `postprocess` without `units`, a module without a `value_scale`); and
    `variables`, a name per channel, where the module knows them (`channel_names`: the
    dataset's variables, z500, t2m, …)."""
    names = getattr(module, "channel_names", None)
    channels = getattr(module, "frame_shape", (None,))[0]
    named = {}
    if isinstance(names, (list, tuple)) and len(names) == channels:
        named = {"variables": np.asarray([str(name) for name in names])}
    if units is not None:
        return {"units": np.asarray(units), **named}
    scale = getattr(module, "value_scale", None)
    if postprocess is not None or not isinstance(scale, (int, float)):
        return named
    return {"units": np.asarray("scaled"), "value_scale": np.asarray(float(scale)), **named}


_OPEN_TRAINERS: weakref.WeakSet[Trainer] = weakref.WeakSet()
"""Trainers not yet closed: closed at interpreter exit (`_close_open_trainers`)."""
_SETTINGS_HOLDER: list[Any] = [None]
"""A weak reference to the Trainer whose settings accelerate's shared state holds."""


def _shared_settings() -> tuple[dict[str, Any], dict[str, Any]]:
    """Accelerate's process-wide state as a Trainer set it: `AcceleratorState`'s (mixed
    precision with the rest) and the gradient accumulation plugin's settings."""
    plugin = GradientState._shared_state.get("plugin_kwargs") or {}
    return dict(AcceleratorState._shared_state), dict(plugin)


def open_trainers() -> list[Trainer]:
    """The Trainers of this process not closed yet."""
    return list(_OPEN_TRAINERS)


def close_command_trainers(exit_code: int, leave: Any = ()) -> None:
    """Close the Trainers still open when a command failed (`exit_code`: its trackers'
    runs marked failed; `stpdist`'s error line said why) or stopped with a checkpoint (0),
    while they are alive: a Trainer left to the exit hook was often freed by then, so
    wandb's own exit hook ended its run (in colour, on stdout, a log file's too) and the
    line with the offline run's `wandb sync` command was never said; a stopped run's
    continuation may start at once. Those in `leave` (open before the command) stay open."""
    for trainer in list(_OPEN_TRAINERS):
        if trainer not in leave:
            trainer._close(at_exit=True, exit_code=exit_code)


@atexit.register
def _close_open_trainers() -> None:
    for trainer in list(_OPEN_TRAINERS):
        trainer._close_at_exit()
    # a Trainer freed unclosed (a script that never calls `close`) leaves accelerate's
    # process group alive: torn down with the interpreter, its gloo threads could abort the
    # process ("terminate called without an active exception", exit 134) after a run that
    # had finished
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _make_accelerator(config: TrainerConfig, log_with: list[str]) -> Accelerator:
    """An Accelerator for this host: CPU ranks over gloo when there is no CUDA device."""
    cpu = not torch.cuda.is_available()
    if config.mixed_precision == "fp16" and cpu:
        raise ConfigError(
            "trainer.mixed_precision 'fp16' needs a CUDA device (on CPU it would silently run "
            "in fp32); use 'bf16' or 'no'"
        )
    _check_launcher_precision(config.mixed_precision)
    # A new Trainer in the same process may ask for other settings than the last one.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    if _process_group_closed():
        # an earlier Trainer's `close` ended the ranks' process group: join it again (the
        # state left says "distributed", and the first collective would fail)
        PartialState._reset_state()
    plugin = GradientAccumulationPlugin(
        num_steps=config.gradient_accumulation_steps, sync_with_dataloader=False
    )
    with warnings.catch_warnings(), _waiting_for_ranks_said():
        # its thread count on CPU ranks: stpdist sets its own
        warnings.filterwarnings("ignore", message="OMP_NUM_THREADS/MKL_NUM_THREADS unset")
        handlers = []
        if config.dist_timeout_s is not None:  # a process group's, set when it is made
            from accelerate.utils import InitProcessGroupKwargs

            timeout = datetime.timedelta(seconds=config.dist_timeout_s)
            handlers.append(InitProcessGroupKwargs(timeout=timeout))
        return Accelerator(
            cpu=cpu,
            mixed_precision=config.mixed_precision,
            gradient_accumulation_plugin=plugin,
            step_scheduler_with_optimizer=False,
            log_with=log_with or None,
            project_dir=config.output_dir,
            kwargs_handlers=handlers,
        )


RANKS_WAIT_NOTICE_S = 30.0
"""How often a rank waiting to join the others says so (`_waiting_for_ranks_said`)."""


@contextmanager
def _waiting_for_ranks_said() -> Iterator[None]:
    """Joining the ranks' process group waits until every rank has reached the main rank's
    address, and torch waits without a word until its timeout (30 minutes over gloo): for a
    main rank that failed to start (its port held by another program, a config error), or a
    rank never started. Without a launcher (ranks started by hand, SLURM's LAUNCHER=none)
    nothing else ends the others. So a rank still waiting says so every 30 s, with the
    address it waits at and where to look."""
    if not _ranks_to_join():
        yield
        return
    joined = threading.Event()
    address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    rank = os.environ.get("RANK", "?")

    def say_while_waiting() -> None:
        waited = 0.0
        while not joined.wait(RANKS_WAIT_NOTICE_S):
            waited += RANKS_WAIT_NOTICE_S
            log.warning(
                "rank %s has waited %.0f s to join the other ranks at %s (MASTER_ADDR:"
                "MASTER_PORT): is every rank started, and did the main rank (rank 0) start "
                "without an error? Its output says; torch waits until its process-group "
                "timeout",
                rank,
                waited,
                address,
            )

    watcher = threading.Thread(target=say_while_waiting, name="stpdist-join", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        joined.set()
        watcher.join()


def _ranks_to_join() -> bool:
    """Whether this process is about to join a process group of several ranks."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return False
    size = os.environ.get("WORLD_SIZE", "")
    return size.isdigit() and int(size) > 1


def _process_group_closed() -> bool:
    """Whether accelerate's state says distributed (several ranks, or one under torchrun)
    while its process group has been destroyed (an earlier Trainer's `close`)."""
    kind = PartialState._shared_state.get("distributed_type", DistributedType.NO)
    closed = torch.distributed.is_available() and not torch.distributed.is_initialized()
    return kind != DistributedType.NO and closed


def _check_launcher_precision(precision: str) -> None:
    """stpdist takes its precision from `trainer.mixed_precision` (recorded with every
    checkpoint, so a resume keeps it). `accelerate launch` passes its own (its config
    file's `mixed_precision`, `--mixed_precision`) in ACCELERATE_MIXED_PRECISION; one that
    asks for a precision the config does not set is refused rather than ignored."""
    asked = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
    if asked not in ("", "no") and asked != precision:
        raise InputError(
            f"accelerate launch asks for mixed precision {asked} (its config file or "
            f"--mixed_precision), trainer.mixed_precision is {precision!r}: stpdist takes the "
            f"precision from its config; set trainer.mixed_precision={asked}, or launch with "
            "--mixed_precision no"
        )


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class _HeldSetting:
    """A process-wide torch setting that open Trainers hold: the value of the latest open
    holder, and what it was before the first of them again once the last lets go."""

    def __init__(self, read: Callable[[], Any], write: Callable[[Any], None]) -> None:
        self.read, self.write = read, write
        self.held: dict[int, Any] = {}  # token → value, in the order the holders opened
        self.before: Any = None

    def hold(self, owner: object, value: Any) -> Any:
        """Set `value` while `owner` holds it; returns the release (call it at close; it
        also runs when `owner` is collected or the process exits)."""
        if not self.held:
            self.before = self.read()
        token = next(_HELD_TOKENS)
        self.held[token] = value
        self.write(value)
        return weakref.finalize(owner, self._release, token)

    def _release(self, token: int) -> None:
        if token not in self.held:
            return
        del self.held[token]
        self.write(list(self.held.values())[-1] if self.held else self.before)


_HELD_TOKENS = itertools.count()


def _set_cudnn_benchmark(value: bool) -> None:
    torch.backends.cudnn.benchmark = value


_CUDNN_BENCHMARK = _HeldSetting(lambda: torch.backends.cudnn.benchmark, _set_cudnn_benchmark)


def hold_cudnn_benchmark(owner: object, value: bool | None, device: torch.device) -> Any:
    """`trainer.cudnn_benchmark`: on a CUDA device, `torch.backends.cudnn.benchmark` set to
    `value` while `owner` (a Trainer) holds it. Returns the release (call it at close; it
    also runs when `owner` is collected or the process exits), None when nothing was set.
    The setting is the latest open holder's, and torch's own again after the last."""
    if value is None:
        return None
    if device.type != "cuda":
        say(f"trainer.cudnn_benchmark: not applicable on {device.type} (cuDNN runs on CUDA)")
        return None
    return _CUDNN_BENCHMARK.hold(owner, bool(value))


CUBLAS_WORKSPACE = ":4096:8"
"""`CUBLAS_WORKSPACE_CONFIG` for deterministic cuBLAS (CUDA 10.2 and later; NVIDIA's
cuBLAS documentation, "Results reproducibility")."""


def _deterministic_state() -> tuple[bool, bool, bool]:
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
    )


def _set_deterministic(state: tuple[bool, bool, bool]) -> None:
    enabled, warn_only, cudnn = state
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.deterministic = cudnn


_DETERMINISTIC = _HeldSetting(_deterministic_state, _set_deterministic)


def hold_deterministic(owner: object, value: bool, device: torch.device) -> Any:
    """`trainer.deterministic`: `torch.use_deterministic_algorithms(True)` and
    `torch.backends.cudnn.deterministic` while `owner` (a Trainer) holds them, and on CUDA
    `CUBLAS_WORKSPACE_CONFIG` set when unset (cuBLAS reads it as it starts; it stays for the
    process). Returns the release, None when nothing was set (see `hold_cudnn_benchmark`)."""
    if not value:
        return None
    if device.type == "cuda":
        if torch.backends.cudnn.benchmark:
            raise ConfigError(
                "trainer.deterministic: cuDNN's algorithm search is on "
                "(torch.backends.cudnn.benchmark, set by this program or by another open "
                "Trainer's cudnn_benchmark), which picks kernels by timing them: turn it off "
                "first, or drop trainer.deterministic"
            )
        workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        if workspace is None:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
        elif workspace not in (":4096:8", ":16:8"):
            raise ConfigError(
                f"trainer.deterministic: CUBLAS_WORKSPACE_CONFIG is {workspace!r}, with which "
                "cuBLAS is not deterministic: unset it (stpdist then sets :4096:8) or set "
                ":4096:8 or :16:8"
            )
    return _DETERMINISTIC.hold(owner, (True, False, True))


def _fast_bf16_cpu() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix units), where bf16 autocast can pay."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


@contextlib.contextmanager
def _evaluating(module: nn.Module) -> Iterator[None]:
    """`module` in eval mode for the body, then each submodule back in the mode it had: a
    part the user keeps in eval mode (a frozen backbone's batch norm) stays so, where
    `module.train(True)` set every part training; `predict` left the module in eval mode."""
    modes = [(part, part.training) for part in module.modules()]  # parents first
    module.eval()
    try:
        yield
    finally:  # through `train`: a module's own override (a block that fuses) runs
        module.train(modes[0][1])
        for part, mode in modes[1:]:
            if part.training != mode:
                part.train(mode)


def load_predictions(folder: str | Path, field: str = "predictions") -> dict[str, np.ndarray]:
    """Every prediction `Trainer.predict` wrote to `folder`, by sample key; `field`: another
    of their per-sample arrays (`valid_times`, `reference_times` of a time series)."""
    found: dict[str, np.ndarray] = {}
    folder = Path(folder)
    _finish_a_stopped_swap(folder)
    # read between swaps (shared: readers alike), so never half of two passes (a diff review)
    shared = _swap_lock(folder, shared=True) if folder.is_dir() else contextlib.nullcontext()
    with shared:
        for file in sorted(folder.glob("predictions-r*.npz")):
            with np.load(file, allow_pickle=False) as data:
                if field not in data.files:
                    raise KeyError(
                        f"{file} holds no {field!r}; its arrays: {', '.join(sorted(data.files))}"
                    )
                found.update(zip(data["keys"].tolist(), data[field]))
    return found


def iter_predictions(folder: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """`load_predictions`' entries a file at a time, in the files' order (rank, then part:
    one rank's predictions in the order they were made), one file in memory at a time:
    for passes over more than memory holds. A key written twice comes once, its last. A
    predict that replaces them while they are walked is an error (a diff review: the walk
    went on in the new pass's files, half of each)."""
    _finish_a_stopped_swap(Path(folder))
    files = sorted(Path(folder).glob("predictions-r*.npz"))
    first: dict[Path, int] = {}  # each file's inode as the walk began

    replaced = RuntimeError(
        f"{folder}: its predictions were replaced while they were read (a predict swapped "
        "in another pass): read them again"
    )

    @contextmanager
    def opened(file: Path) -> Iterator[Any]:
        try:
            handle = open(file, "rb")  # noqa: SIM115 - closed by the `with` below
        except FileNotFoundError:
            raise replaced from None
        with handle:
            inode = os.fstat(handle.fileno()).st_ino
            if first.setdefault(file, inode) != inode:
                raise replaced
            with np.load(handle, allow_pickle=False) as data:
                yield data

    last: dict[str, Path] = {}
    for file in files:
        with opened(file) as data:
            last.update((key, file) for key in data["keys"].tolist())
    for file in files:
        with opened(file) as data:
            keys, predictions = data["keys"].tolist(), data["predictions"]
        for key, frames in zip(keys, predictions):
            if last[key] == file:
                yield key, frames
