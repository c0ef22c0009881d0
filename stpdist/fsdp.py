"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for `trainer.strategy: fsdp`.

Why torch's `fully_shard` and not accelerate's FSDP plugin: accelerate 1.16 turns the
plugin on only for GPU-like distributed types; on CPU ranks over gloo (MULTI_CPU) it drops
the plugin without a word and wraps the model in DDP (checked: `Accelerator(cpu=True,
fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2))` gives a DDP model). Sharding
here works the same on CPU and GPU; accelerate still drives mixed precision (autocast),
gradient accumulation (`accumulate`, through `no_sync` below) and the optimizer.

Units: each unit (a recurrent cell layer, a translator block) is sharded on its own, so
only one unit's full parameters exist at a time in the forward and backward; the root
holds what is left. A backbone names its units with `fsdp_units()`; YAML overrides with
`trainer.fsdp_wrap` (class names).

Sharded checkpoints (`save_sharded`, `load_sharded`): with `torch.distributed.checkpoint`
(DCP) each rank writes its own shard of the parameters and optimizer state, so no rank
ever holds the full model (gathering it on the main rank, as a full-state checkpoint
would, needs the host memory FSDP is there to avoid). DCP reshards on load: a checkpoint
written by N ranks loads on M ranks, with FSDP or DDP, or in one process without a
process group (export, `stpdist.load`). The DCP folder holds tensors only; the optimizer's
non-tensor state (param groups) is a tensors-only `torch.save` file beside it, and DCP's
pickled `.metadata` is read by an unpickler that admits only DCP's metadata classes, so
loading never runs code named in a file.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import SHARDED_DIR
from .errors import InputError, alike

__all__ = ["fsdp_units", "is_sharded", "shard", "load_full_state", "save_sharded", "load_sharded"]

OPTIMIZER_GROUPS_FILE = "optimizer-groups.pt"
"""A sharded checkpoint's optimizer param groups and non-tensor state (tensors-only file)."""


def fsdp_units(module: nn.Module, class_names: list[str] | None = None) -> list[nn.Module]:
    """The submodules sharded as units: those of the classes named in `class_names`
    (YAML `trainer.fsdp_wrap`), else what the module or its `backbone` names with
    `fsdp_units()`, else none (the root alone: parameters still sharded, gathered whole)."""
    if class_names:
        found = [m for m in module.modules() if type(m).__name__ in set(class_names)]
        if not found:
            present = sorted({type(m).__name__ for m in module.modules()})
            # the same on every rank: said once
            raise alike(
                InputError(
                    f"trainer.fsdp_wrap {class_names} names no submodule of "
                    f"{type(module).__name__}; its classes: {', '.join(present[:30])}"
                )
            )
        return found
    for owner in (module, getattr(module, "backbone", None)):
        pick = getattr(owner, "fsdp_units", None)
        if callable(pick):
            return list(pick())
    # no choice made: every entry of every ModuleList (the zoo keeps its recurrent cell
    # layers and translator blocks in ModuleLists)
    return [m for lst in module.modules() if isinstance(lst, nn.ModuleList) for m in lst]


def shard(module: nn.Module, units: list[nn.Module], mixed_precision: str = "no") -> nn.Module:
    """Shard `module`'s parameters, gradients and optimizer state over the default process
    group: every unit, then the root. Build the optimizer afterwards (on the shards)."""
    try:
        from torch.distributed.fsdp import (
            MixedPrecisionPolicy,
            fully_shard,
            register_fsdp_forward_method,
        )
    except ImportError as exc:  # public from torch 2.6; pyproject allows torch 2.4
        from .config import ConfigError

        raise ConfigError(
            f"trainer.strategy: fsdp needs torch 2.6 or later (FSDP2's fully_shard); this is "
            f"torch {torch.__version__}: upgrade torch, or train with trainer.strategy: ddp"
        ) from exc

    policy = MixedPrecisionPolicy()
    if mixed_precision == "bf16":  # compute in bf16, reduce and keep fp32 master weights
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    order = {id(m): i for i, m in enumerate(module.modules())}
    # innermost first: a unit nested in another is sharded before its parent
    for unit in sorted(units, key=lambda m: -order.get(id(m), -1)):
        fully_shard(unit, mp_policy=policy)
        # methods a backbone calls besides forward (`models.recurrent.SplitCell`): each
        # gathers the unit's parameters too
        for name in getattr(unit, "fsdp_forward_methods", ()):
            register_fsdp_forward_method(unit, name)
    fully_shard(module, mp_policy=policy)
    return module


def is_sharded(module: nn.Module) -> bool:
    """Whether `module` (or a submodule) holds sharded parameters (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


@contextmanager
def no_sync(module: nn.Module) -> Iterator[None]:
    """Accumulate gradients unreduced (sharded at the window's last backward)."""
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def reduce_pending_grads(root: nn.Module) -> bool:
    """Reduce-scatter the gradients a window accumulated with gradient sync off when its
    last micro-batch, whose backward would have done it, was skipped on every rank: each
    rank's sharded `.grad` becomes its shard of the mean over ranks, by FSDP's own
    reduction (reduce dtype, divide factor, padded shards), as that backward would have
    left it. Called with sync on (the window's last micro-batch); collective. Runs what
    autograd runs after an FSDP backward, by FSDP2's private methods (no public one does
    this: `reset_iter_state` drops the gradients); False, nothing done, where a torch
    lacks them (the caller then stops the run, saying why)."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in root.modules() if isinstance(m, FSDPModule)]  # one order on all ranks
    states = [m._get_fsdp_state() for m in units if hasattr(m, "_get_fsdp_state")]
    if len(states) != len(units) or not all(
        hasattr(state, "_fsdp_param_groups") or hasattr(state, "_fsdp_param_group")
        for state in states
    ):
        return False
    groups_of = []
    for state in states:
        groups = getattr(state, "_fsdp_param_groups", None)  # a list in newer torch
        if groups is None:  # one group (or None) in older ones
            groups = [g for g in [getattr(state, "_fsdp_param_group", None)] if g is not None]
        groups_of.append(groups)
    final = getattr(root._get_fsdp_state(), "_root_post_backward_final_callback", None)
    if final is None or not all(hasattr(g, "post_backward") for gs in groups_of for g in gs):
        return False
    for unit, groups in zip(units, groups_of, strict=True):
        if groups:
            unit.unshard()  # older torch reads the unsharded gradients only while gathered
            for group in groups:
                group.post_backward()  # what the skipped backward ran: reduce, reshard
    final()  # then finalise, and reset the iteration's state
    return True


@contextmanager
def gathered(root: nn.Module) -> Iterator[None]:
    """Every unit's and the root's full parameters on every rank, for evaluation: the
    model is then called through its inner module (`validation_step`), not through the
    root whose forward gathers the root's parameters, and ranks may run different numbers
    of batches, so no gather may happen per forward. Collective on entry and exit.
    Costs the full parameters' memory on every rank while it lasts (as DDP holds always)."""
    from torch.distributed.fsdp import FSDPModule

    # the root's state first: an evaluation before any training forward of this process (a
    # resume that runs the validation a stop cut off) called a unit first, which then
    # took itself for a root, and the first training forward failed ("FSDP state has
    # already been lazily initialized for …")
    state = root._get_fsdp_state() if hasattr(root, "_get_fsdp_state") else None
    if state is not None and hasattr(state, "_lazy_init"):
        state._lazy_init()
    units = [m for m in root.modules() if isinstance(m, FSDPModule) and m is not root]
    for unit in units:  # kept gathered after each forward (`unshard` below does it once)
        unit.set_reshard_after_forward(False, recurse=False)
    for module in (root, *units):
        module.unshard()
    try:
        yield
    finally:
        for module in (root, *units):
            module.reshard()
        for unit in units:  # `shard` left the default: a non-root unit reshards
            unit.set_reshard_after_forward(True, recurse=False)


def _options(full_on_main: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=full_on_main)


def load_full_state(
    module: nn.Module, weights: dict[str, torch.Tensor], optimizer: Any = None, optim: Any = None
) -> None:
    """Put full `weights` (and a full optimizer state `optim`) into the sharded module and
    optimizer: each rank keeps its shard. Every rank passes the same full dicts."""
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    set_model_state_dict(module, weights, options=_options(False))
    if optimizer is not None and optim is not None:
        inner = getattr(optimizer, "optimizer", optimizer)
        optim = _keyed_by_name(module, inner, optim)
        set_optimizer_state_dict(module, inner, optim, options=_options(False))


def _keyed_by_name(module: nn.Module, inner: Any, optim: dict[str, Any]) -> dict[str, Any]:
    """A full optimizer state as `optimizer.state_dict()` writes it (a DDP or one-process
    run's: parameters by their index in the groups) keyed by parameter name, as torch's
    `set_optimizer_state_dict` takes one (it failed with KeyError 'state.0.step'): the
    names, in each group's order, from torch's own full state of this optimizer. One keyed
    by name already is returned as it is."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    groups = optim.get("param_groups", [])
    if not all(isinstance(i, int) for group in groups for i in group["params"]):
        return optim
    names = get_optimizer_state_dict(module, inner, options=_options(False))["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in names]:
        raise ValueError(
            f"the checkpoint's optimizer has groups of {[len(g['params']) for g in groups]} "
            f"parameters, this one {[len(g['params']) for g in names]}: not the same optimizer"
        )
    name_of = {
        index: name
        for group, named in zip(groups, names, strict=True)
        for index, name in zip(group["params"], named["params"], strict=True)
    }
    return {
        "state": {name_of[index]: state for index, state in optim.get("state", {}).items()},
        "param_groups": [
            {**group, "params": [name_of[i] for i in group["params"]]} for group in groups
        ],
    }


def local_bytes(module: nn.Module, optimizer: Any) -> int:
    """Bytes this rank stores for parameters, gradients and optimizer state: the storages
    under their local shards, each counted once (not RSS)."""
    storages: dict[int, int] = {}

    def add(tensor: Any) -> None:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        if isinstance(local, torch.Tensor) and local.dim():
            storage = local.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()

    for param in module.parameters():
        add(param)
        if param.grad is not None:
            add(param.grad)
    inner = getattr(optimizer, "optimizer", optimizer)
    for state in inner.state.values():
        for value in state.values():
            add(value)
    return sum(storages.values())


# ---------------------------------------------------------------------------- sharded checkpoints
def _split(model: dict[str, Any], optim: dict[str, Any] | None) -> tuple[dict, dict]:
    """(every tensor under a flat key `model/<fqn>`, `optim/<fqn>/<name>`; the optimizer's
    param groups and non-tensor state): what goes into DCP and what beside it."""
    tensors = {f"model/{name}": value for name, value in model.items()}
    rest: dict[str, Any] = {"param_groups": [], "state": {}}
    if optim is not None:
        rest["param_groups"] = optim["param_groups"]
        for fqn, entries in optim["state"].items():
            for name, value in entries.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim/{fqn}/{name}"] = value
                else:
                    rest["state"].setdefault(fqn, {})[name] = value
    return tensors, rest


def _joined(tensors: dict[str, Any], rest: dict[str, Any]) -> tuple[dict, dict]:
    """The (model, optimizer) state dicts `_split` took apart."""
    model = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    state: dict[str, dict[str, Any]] = {fqn: dict(v) for fqn, v in rest["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            fqn, name = key[len("optim/") :].rsplit("/", 1)
            state.setdefault(fqn, {})[name] = value
    return model, {"state": state, "param_groups": rest["param_groups"]}


def _state_dicts(module: nn.Module, optimizer: Any) -> tuple[dict, dict | None]:
    """(model, optimizer or None) state dicts keyed by parameter names: DTensor shards for
    a sharded module, plain tensors otherwise. Collective for a sharded module."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return get_model_state_dict(module), None
    return get_state_dict(module, getattr(optimizer, "optimizer", optimizer))


def save_sharded(folder: Path, module: nn.Module, optimizer: Any) -> None:
    """Write `module`'s and `optimizer`'s state into checkpoint folder `folder`: each rank
    its shard into `folder/sharded` (DCP), the main rank the param groups. Collective."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    tensors, rest = _split(*_state_dicts(module, optimizer))
    writer = dcp.FileSystemWriter(folder / SHARDED_DIR, sync_files=True, thread_count=1)
    try:
        dcp.save(tensors, storage_writer=writer)
    except dcp.api.CheckpointException as exc:  # a BaseException: make it an error
        raise RuntimeError(_first_failure(exc)) from None
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save(rest, folder / OPTIMIZER_GROUPS_FILE)


def load_sharded(folder: Path, module: nn.Module, optimizer: Any = None, rest: Any = None) -> None:
    """Load sharded checkpoint `folder` into `module` (and `optimizer`, with `rest`: its
    param groups file's content), resharded to this run's layout: collective for a
    sharded module, each process on its own for a plain one (no process group needed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    model, optim = _state_dicts(module, optimizer)
    tensors, _ = _split(model, optim)
    reader, alone = _SafeReader(folder / SHARDED_DIR), not is_sharded(module)
    reader.read_metadata()  # a refused or unreadable one named here, not inside DCP's wrapping
    try:
        with warnings.catch_warnings():  # one process reading alone is what `alone` asks
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp.load(tensors, storage_reader=reader, no_dist=alone)
    except dcp.api.CheckpointException as exc:
        raise ValueError(f"{folder}: {_first_failure(exc)}") from None
    model, optim = _joined(tensors, rest or {"param_groups": [], "state": {}})
    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(module, model, options=StateDictOptions(strict=True))
        return
    inner = getattr(optimizer, "optimizer", optimizer)
    set_state_dict(module, inner, model_state_dict=model, optim_state_dict=optim)


def _first_failure(exc: BaseException) -> str:
    """One line from a DCP `CheckpointException` (it wraps every rank's failure)."""
    failures = getattr(exc, "failures", {}) or {}
    for rank, failure in sorted(failures.items()):
        cause = failure[0] if isinstance(failure, tuple) else failure
        text = str(cause).strip().splitlines()
        return f"rank {rank}: {type(cause).__name__}: {text[0] if text else ''}"[:300]
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


_METADATA_CLASSES = {
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    *(
        ("torch.distributed.checkpoint.metadata", name)
        for name in (
            "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "ChunkStorageMetadata",
            "TensorStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING",
        )
    ),
}  # fmt: skip


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's `.metadata` admitting only its own classes and torch dtypes: a
    checkpoint folder is data, and a file naming anything else is refused, not run."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(
            f"names {module}.{name}, which is not part of DCP's checkpoint metadata"
        )


def _reader_base() -> type:
    from torch.distributed.checkpoint import FileSystemReader

    return FileSystemReader


class _SafeReader(_reader_base()):  # type: ignore[misc]
    """DCP's file-system reader with `.metadata` read by `_MetadataUnpickler`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        from torch.distributed.checkpoint.metadata import StorageMeta

        path = Path(self.path) / ".metadata"
        try:
            with open(path, "rb") as handle:
                metadata = _MetadataUnpickler(handle).load()
        except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            raise ValueError(f"{SHARDED_DIR}/.metadata: unreadable ({exc})") from None
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata
