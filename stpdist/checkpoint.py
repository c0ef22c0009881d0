"""Checkpoints: atomic save, exact resume, retention of the last k and the best k.

A checkpoint is a folder `<output_dir>/checkpoints/step-00000120/` holding

    model.safetensors     the module's weights
    optimizer.pt          optimizer state   (tensors and numbers only: loaded weights_only)
      or, for a sharded (`trainer.strategy: fsdp`) run, instead of those two:
    sharded/              weights and optimizer state, each rank's shard written by that
                          rank (torch.distributed.checkpoint; see `stpdist.fsdp`)
    optimizer-groups.pt   the optimizer's param groups (tensors-only file)
    scheduler.pt          LR-scheduler state, when there is a scheduler
    scaler.pt             fp16 grad-scaler state, when there is one
    rng-<rank>.pt         every rank's python / numpy / torch / CUDA RNG state
    trainer_state.json    epoch, batch position, global step, metrics, world size
    config.yaml           the resolved config, when the run has one
    manifest.json         every other file's name (relative path), size and sha256;
                          written last

It is written into `.tmp-step-…` and renamed when every rank has finished, so a crash
mid-save leaves the previous checkpoint as the newest complete one. Nothing is ever
unpickled on load (safetensors, `torch.load(weights_only=True)`, JSON).

Crash safety and damage:

* Complete = the manifest's files all present at their recorded sizes and a valid
  trainer state whose `global_step` matches the folder name. `resolve("auto")` also checks
  the sha256 sums and falls back to the newest intact checkpoint with a warning naming
  each damaged one; damaged folders are left where they are, never used, never counted.
* A checkpoint is deleted by renaming it out of the `step-*` pattern (`.trash-…`, atomic)
  and only then removing its files; leftovers of a killed deletion are swept later.
* An existing checkpoint is never overwritten. Saving a step that already has one renames
  the existing folder aside first, then puts the new one in its place. When both hold the
  same weights and optimizer state (one run saving a step twice) the old copy is then
  removed; otherwise it is kept as `superseded-step-…` (another trajectory, e.g. after
  resuming from an older checkpoint) or `damaged-step-…`, with a warning: nothing is
  deleted, and the `step-*` folders stay one trajectory.

Validation results: a checkpoint's metrics are always those of its own step. The checkpoint
is written before the validation of its step (a failing validation never costs it), so
`trainer_state.json` holds metrics only when they were known at save time (`metrics_step`
equals the step; otherwise `metrics` is empty and `metrics_step` null). The validation that
follows is recorded as `validation.json` and added to the manifest: first the manifest
without it (when re-recorded), then the file (written aside and renamed), then the manifest
with it (written aside and renamed). A crash anywhere leaves an intact checkpoint whose
validation either counts (listed in the manifest) or does not (unlisted: ignored, and a
resume runs that validation again). A `validation.json` that counts but is not a JSON
object of numbers makes the checkpoint damaged.

Which checkpoints may lack a manifest: from format 2 on (this layout), `trainer_state.json`
holds `"format": 2` and the manifest is version 2; a folder whose state says format 2, or
that holds a file only manifest-era versions wrote (`validation.json`, `index.json`), is
damaged without `manifest.json`. A folder with neither (written before manifests existed)
loads unverified, with a warning; it must still hold the state, weights and optimizer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.nn.parameter import is_lazy

from .config import CheckpointConfig
from .console import json_number, strict_json
from .data.format import MODEL_FILE
from .data.staging import make_durable, sync_folder
from .errors import InputError, MissingInput, peer_lost

STATE_FILE = "trainer_state.json"
SHARDED_DIR = "sharded"
"""A sharded checkpoint's DCP folder (`.metadata`, `__<rank>_0.distcp`)."""
VALIDATION_FILE = "validation.json"
MANIFEST_FILE = "manifest.json"
_NAME = re.compile(r"^step-([0-9]{8,})\Z")  # 8 digits, more from step 100 000 000


def step_of(folder: Path) -> int:
    """The step number of a `step-N` checkpoint folder (its order: by number, not by
    name, past step 99 999 999); -1 for another name."""
    match = _NAME.match(folder.name)
    return int(match.group(1)) if match else -1


_STEP_NAME = re.compile(r"^(?:step-?)?([0-9]+)\Z")  # what a user may call a step: step-320, 320
_LEGACY_REQUIRED = (STATE_FILE, MODEL_FILE, "optimizer.pt")  # folders saved before manifests
_MANIFEST_ERA = (VALIDATION_FILE, "index.json")  # only versions with manifests wrote these
STATE_FORMAT = 2
"""`trainer_state.json`'s "format": absent in checkpoints of earlier versions."""
MANIFEST_VERSION = 2
"""From version 2 a `validation.json` counts only when the manifest lists it."""
log = logging.getLogger("stpdist")


class CheckpointError(InputError):
    """A checkpoint folder or weights file that is damaged or does not follow the layout
    (bad input: the CLI exits 2 with the message)."""


class UnknownCheckpointError(InputError):
    """A checkpoint name that names none of the run's checkpoints."""


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
    """Latest validation results (in a checkpoint: those of its own step, or none)."""
    metrics_step: int | None = None
    """The step whose validation `metrics` holds; None when unknown or none ran."""
    gradient_accumulation_steps: int | None = None
    """Accumulation steps of the run that wrote it (None: written before it was recorded)."""
    num_workers: int | None = None
    """Data-loading workers per rank of the run that wrote it (they shape the data layout)."""
    batch_size: int | None = None
    """Micro-batch size per rank of the run that wrote it (its train source's `batch_size`;
    None: not recorded, or the source has none)."""
    settings: dict[str, Any] | None = None
    """The resolved settings a resume must keep (the optimizer's, the seed, the train
    source's batch size and shuffle buffer; `Trainer._settings_of`); None: not recorded."""
    planned_steps: int | None = None
    """The optimizer steps the run that wrote it planned in all (None: not recorded)."""
    epoch_loss: dict[str, float] | None = None
    """Mid-epoch: the epoch's training loss so far (`sum` of every rank's per-batch losses,
    the `batches` of all ranks in it, the micro-batches `skipped`), so that a resume logs
    the whole epoch's `train/epoch_loss`; None at an epoch's start or when not recorded."""
    window: dict[str, Any] | None = None
    """Between two log steps: the training log window so far (`sum` and `batches` of the
    loss as in `epoch_loss`, the main rank's `extras` as name → [sum, count], the window's
    `samples` and training `seconds` (its samples/s), `epoch_seconds`, the epoch's training
    time so far, and the `grad_norm` of a log step whose row a stop held), so that a
    resume logs the rows of an uninterrupted run; None when not recorded (before
    2026-12-06)."""
    epoch_origin: dict[str, Any] | None = None
    """Mid-epoch after a resume on another number of ranks: how the epoch began
    (`stpdist.data.loading.EpochOrigin`'s fields); `batch` then counts the micro-batches
    of the current layout. None otherwise."""
    data_layout: int | None = None
    """The shard stream's epoch layout of the run that wrote it (`LoaderContext.layout`;
    None: written before it was recorded, layout 1)."""

    @property
    def step_epoch(self) -> int:
        """The epoch the newest step was taken in: at an epoch's end (and in a checkpoint
        written there) `epoch` already names the next one."""
        if self.global_step and self.batch == 0 and self.epoch_origin is None:
            return max(self.epoch - 1, 0)
        return self.epoch


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


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    """Every file under checkpoint folder `folder` (the sharded state's too), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _write_manifest(folder: Path) -> None:
    """The manifest of a checkpoint being written: every other file's size and sha256,
    by its path relative to the folder."""
    files = {
        p.relative_to(folder).as_posix(): _entry(p)
        for p in _files(folder)
        if p.name != MANIFEST_FILE or p.parent != folder
    }
    (folder / MANIFEST_FILE).write_text(_manifest_text(files))


def _entry(file: Path) -> dict[str, Any]:
    return {"bytes": file.stat().st_size, "sha256": _sha256(file)}


def _manifest_text(files: dict[str, dict[str, Any]]) -> str:
    return json.dumps({"version": MANIFEST_VERSION, "files": files}, indent=2)


def replace_text(file: Path, text: str) -> None:
    """Write `file` atomically and durably: aside, fsync, rename, fsync the folder. A failed
    write (a full disk, a read-only folder) removes the file set aside and raises an
    OSError that names `file` (a write or fsync error carries no file name of its own)."""
    tmp = file.with_name(f".{file.name}.tmp")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, file)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.filename not in (None, str(tmp), tmp) or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(file)) from exc
    sync_folder(file.parent)


def _manifest(folder: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    """(version, files) of `folder`'s manifest; a `CheckpointError` naming it if unreadable."""
    file = folder / MANIFEST_FILE
    try:
        raw = json.loads(file.read_text())
        files, version = raw["files"], raw.get("version", 1)
        if not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("bytes"), int) for v in files.values()
        ):
            raise ValueError("'files' is not a map of name → {bytes, sha256}")
        if isinstance(version, bool) or version not in (1, MANIFEST_VERSION):
            raise ValueError(f"version {version!r}, expected 1 or {MANIFEST_VERSION}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{file}: unreadable manifest ({exc})") from None
    return version, files


def _read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    return _manifest(folder)[1]


def _without_manifest(path: Path) -> str | None:
    """Why checkpoint folder `path`, which has no manifest, is damaged; None when it was
    written before manifests existed (it may then load unverified)."""
    newer = [name for name in _MANIFEST_ERA if (path / name).is_file()]
    if newer or _state_record(path)[1] >= STATE_FORMAT:
        held = f"it holds {', '.join(newer)}" if newer else f"its state has format {STATE_FORMAT}"
        return f"{MANIFEST_FILE} is missing ({held}: it was written with one)"
    missing = [name for name in _LEGACY_REQUIRED if not (path / name).is_file()]
    if missing:
        return f"no {MANIFEST_FILE}, and {', '.join(missing)} missing"
    return None


def damage(path: str | Path, *, deep: bool = False) -> str | None:
    """Why checkpoint folder `path` is not intact, or None when it is. Checks every file
    the manifest lists (size; with `deep`, sha256 too), the trainer state and the recorded
    validation; without a manifest, whether the folder predates manifests."""
    path = Path(path)
    try:
        if (path / MANIFEST_FILE).is_file():
            for name, entry in _read_manifest(path).items():
                file = path / name
                if not file.is_file():
                    return f"{name} is missing"
                if file.stat().st_size != entry["bytes"]:
                    return f"{name} holds {file.stat().st_size} bytes, the manifest says {entry['bytes']}"
                if deep and _sha256(file) != entry.get("sha256"):
                    return f"{name} does not match its sha256 in the manifest"
        else:
            why = _without_manifest(path)
            if why is not None:
                return why
        read_state(path)
        _recorded_validation(path)
    except CheckpointError as exc:
        return str(exc)
    except OSError as exc:
        return f"unreadable ({exc})"
    return None


def unverified(path: str | Path) -> bool:
    """Whether checkpoint folder `path` has no manifest to verify it by (written before
    manifests existed; `damage` refuses a newer one without it)."""
    return not (Path(path) / MANIFEST_FILE).is_file()


def verify(path: str | Path) -> Path:
    """`path` when it is not a checkpoint folder (a weights file, an exported model folder:
    its safetensors header read and checked against the file's size) or an intact one
    (sizes and sha256 of the manifest); a `CheckpointError` naming why otherwise. One
    written before manifests existed passes with a warning."""
    path = Path(path)
    if not (path.is_dir() and ((path / STATE_FILE).is_file() or (path / MANIFEST_FILE).is_file())):
        if path.is_file():
            check_weights(path)
        elif (path / MODEL_FILE).is_file():
            check_weights(path / MODEL_FILE)
        return path
    why = damage(path, deep=True)
    if why is not None:
        raise CheckpointError(f"{path}: damaged checkpoint ({why})")
    _warn_if_unverified(path)
    return path


def _warn_if_unverified(path: Path) -> None:
    if unverified(path) and path.is_dir():  # (one gone has no manifest either: not old)
        log.warning(
            "checkpoint %s predates manifests: loading it unverified (no sizes or sha256 "
            "to check its files against)",
            path,
        )


# ---------------------------------------------------------------------------- read leases
# A process reading a checkpoint folder (predict, validate, load, export, a resume) holds a
# shared flock on the folder itself while it reads: a "read lease". Retention deletes a
# folder only when it can take an exclusive lock on it at once; a leased folder is kept and
# marked retired (`.retired-<name>` beside it, holding the folder's device and inode), so
# that nothing chooses it again, and a later retention pass (the next save, the run's end)
# deletes it. A reader checks, once its lease is held, that the path still names the folder
# it opened: one retired between the choice and the lease is chosen again (best, last) or
# refused (a checkpoint named). Filesystems without flock (some NFS mounts) keep no leases.
# (NFS emulates flock by POSIX locks: an exclusive one on a folder opened to read is EBADF)
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL, errno.EBADF}
_RETIRED = ".retired-"
CHOICES = 5
"""How many times best or last is chosen again when the run retires each choice before its
lease is taken."""


class RetiredCheckpoint(MissingInput):
    """A checkpoint folder that its run (still training) retired after it was chosen."""


def _retired_text(path: Path, *, known: bool = True) -> str:
    if not known:  # never there (a typo), or retired before it was chosen: said as it is
        # (a Python API review: a mistyped step was said as retired by a run training)
        if not path.parent.is_dir():  # a mistyped run folder (a diff review)
            return f"checkpoint {path} is not there ({path.parent} is no folder)"
        with contextlib.suppress(OSError):
            there = sorted(p.name for p in path.parent.iterdir() if _NAME.match(p.name))
            listed = ", ".join(there[-6:]) if there else "none"
            return (
                f"checkpoint {path} is not there (the checkpoints in {path.parent}: {listed}; "
                "a run retires older ones as trainer.checkpoint.keep_last and keep_best say)"
            )
    return (
        f"checkpoint {path} was retired by its run (trainer.checkpoint.keep_last, keep_best) "
        "before it could be read; read the run's best or last, or a copy"
    )


def _lock(fd: int, how: int, folder: Path) -> bool:
    """flock `fd` (folder `folder`'s) with `how`; False when the filesystem has no flock:
    no lease is kept then, and reading and retention go on as without leases. Under
    LOCK_NB a lock held elsewhere raises BlockingIOError."""
    try:
        fcntl.flock(fd, how)
    except BlockingIOError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_FLOCK:
            raise
        log.debug("%s: no flock here (%s); no lock kept", folder, exc.strerror)
        return False
    return True


def _same_folder(fd: int, path: Path) -> bool:
    """Whether `path` still names the folder open as `fd` (not deleted, renamed or replaced)."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


@contextlib.contextmanager
def reading(folder: str | Path) -> Iterator[Path]:
    """Hold a read lease on checkpoint (or model) folder `folder` while the `with` block
    reads it: the retention of a run still training does not delete it meanwhile. A
    `RetiredCheckpoint` (one line naming it) when it is gone or was replaced since it was
    chosen. A weights file needs no lease (retention deletes folders only), nor does a
    path that is not there and not named as a run's checkpoints are: its reader says so."""
    path = Path(folder)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except NotADirectoryError:
        fd = None
    except FileNotFoundError:
        if _NAME.match(path.name):
            raise RetiredCheckpoint(_retired_text(path, known=False)) from None
        fd = None
    if fd is None:
        yield path
        return
    try:
        _lock(fd, fcntl.LOCK_SH, path)
        if not _same_folder(fd, path):
            raise RetiredCheckpoint(_retired_text(path))
        yield path
    finally:
        os.close(fd)  # releases the lease


@contextlib.contextmanager
def reading_chosen(choose: Callable[[], Path], *, again: bool) -> Iterator[Path]:
    """The folder `choose()` returns, held under a read lease (`reading`) while the `with`
    block runs. One that its run retires before the lease is taken is chosen again when
    `again` (best, last: up to `CHOICES` times, a line on the log each), else refused."""
    for _ in range(CHOICES):
        with contextlib.ExitStack() as lease:
            try:
                folder = choose()
                lease.enter_context(reading(folder))
            except RetiredCheckpoint as exc:
                if not again:
                    raise
                log.info("%s; choosing again", exc)
                continue
            yield folder
            return
    raise RetiredCheckpoint(
        f"the checkpoint chosen was retired by its run before it could be read, {CHOICES} "
        "times in a row (the run saves and retires checkpoints faster than they can be "
        "chosen); read a copy of one"
    )


def _held(marker: Path, folder: Path) -> bool:
    """Whether retired-marker `marker` applies to `folder` (the same device and inode)."""
    try:
        recorded = marker.read_text().split()
        now = os.stat(folder)
    except OSError:
        return False
    return recorded == [str(now.st_dev), str(now.st_ino)]


def _is_sharded(module: torch.nn.Module) -> bool:
    # no parameter can be a DTensor before torch's DTensor module is imported: then stpdist's
    # fsdp module (a second of imports: DCP, DTensor) is not needed to say so
    if "torch.distributed.tensor" not in sys.modules:
        return False
    from .fsdp import is_sharded

    return torch.distributed.is_available() and is_sharded(module)


def _remove(path: Path) -> None:
    """Delete a checkpoint folder, or the link a user put in its place (only the link: a
    link stayed forever, renamed `.trash-…`, as rmtree refuses links)."""
    if path.is_symlink():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def save_weights(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """`tensors` as a safetensors file at `path`, with the permissions of any other file
    the run writes (the umask's): safetensors writes its files readable by their owner
    alone, so a team's shared run folder held weights no one else could load."""
    save_file(tensors, str(path))
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    """This process's umask, read without changing it where Linux tells it."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def safetensors_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` as safetensors takes it: detached, on the CPU, contiguous, and no two entries
    sharing memory (tied weights, one tensor under two names, which safetensors refuses:
    each later name gets a copy; loading into the module ties them again)."""
    weights, seen = {}, set()
    for name, value in state.items():
        value = value.detach().cpu().contiguous()
        storage = (value.untyped_storage().data_ptr(), value.untyped_storage().nbytes())
        if value.numel() and storage in seen:
            value = value.clone()
        seen.add(storage)
        weights[name] = value
    return weights


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether checkpoint folder `path` holds a sharded state (written by an FSDP run)
    instead of `model.safetensors` and `optimizer.pt`."""
    return Path(path).is_dir() and (Path(path) / SHARDED_DIR / ".metadata").is_file()


def _weight_entries(files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest entries of a checkpoint's weights and optimizer state (for a sharded
    one, its shards: DCP's `.metadata` holds a save id, different at every save)."""
    return {
        name: entry
        for name, entry in files.items()
        if name in (MODEL_FILE, "optimizer.pt") or name.endswith(".distcp")
    }


def _load_sharded(path: Path, module: torch.nn.Module, optimizer: Any = None) -> None:
    """Load sharded checkpoint `path` into `module` (and `optimizer`); a `CheckpointError`
    naming it when it does not fit."""
    from .fsdp import OPTIMIZER_GROUPS_FILE, load_sharded

    rest = _load(path / OPTIMIZER_GROUPS_FILE) if optimizer is not None else None
    try:
        load_sharded(path, module, optimizer, rest)
    except (ValueError, KeyError, RuntimeError) as exc:
        text = str(exc).strip().splitlines()
        raise CheckpointError(
            f"{path}: the sharded state does not load into {type(module).__name__} "
            f"({text[0][:300] if text else type(exc).__name__})"
        ) from None


def _weights_file(path: Path) -> dict[str, torch.Tensor]:
    file = Path(path) / MODEL_FILE
    if not file.is_file():
        raise MissingInput(f"no checkpoint weights at {file}")
    return read_weights(file)


def read_weights(file: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of safetensors `file`; a `CheckpointError` naming it when it is none (a
    file of another format, a truncated one). Nothing is unpickled."""
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from None


def check_weights(file: str | Path) -> None:
    """Refuse (`CheckpointError` naming it) a `file` that is not a whole safetensors file:
    its header is read and checked against the file's size, no tensor is loaded."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), "pt"):
            pass
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from None


def assert_finite(module: torch.nn.Module, what: str) -> None:
    """Raise if any parameter holds NaN or Inf (such weights are never saved). Sharded
    parameters: this rank's shard (the loss check at each check point sees all ranks)."""
    for name, param in module.named_parameters():
        param = param.to_local() if hasattr(param, "to_local") else param
        if not torch.isfinite(param).all():
            raise FloatingPointError(f"{what}: parameter '{name}' holds NaN or Inf")


def load_weights(path: str | Path, module: torch.nn.Module) -> Path:
    """Load weights from a checkpoint folder (sharded or not) or a `.safetensors` file into
    `module`; returns the file (or sharded folder) read. For a module sharded by FSDP this
    is collective: every rank calls it."""
    path = Path(path)
    if is_sharded_checkpoint(path):  # DCP: resharded to `module`'s layout on load
        _load_sharded(path, module)
        return path / SHARDED_DIR
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise MissingInput(f"no checkpoint weights at {file}")
    if _is_sharded(module):
        from .fsdp import load_full_state

        load_full_state(module, read_weights(file))
        return file
    tensors = read_weights(file)
    _check_fits(file, tensors, module)
    module.load_state_dict(tensors)
    return file


def _check_fits(file: Path, tensors: dict[str, torch.Tensor], module: torch.nn.Module) -> None:
    """Refuse, in one line, weights that are not `module`'s: a tensor missing, extra or of
    another shape, and — when `file`'s folder or run holds the config.yaml that trained it
    and `module` knows its model config — the config key that differs."""
    expected = module.state_dict()
    problems = [  # a lazy module's parameters take their shapes from the weights loaded
        f"tensor '{name}' is {tuple(tensors[name].shape)} there, {tuple(value.shape)} here"
        for name, value in expected.items()
        if name in tensors and not is_lazy(value) and tensors[name].shape != value.shape
    ]
    problems += [f"it lacks tensor '{name}'" for name in expected if name not in tensors]
    problems += [
        f"it holds tensor '{name}' the model lacks" for name in tensors if name not in expected
    ]
    if not problems:
        return
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise InputError(
        f"{file} does not fit this model ({type(module).__name__}): {problems[0]}{more}"
        f"{_which_key_differs(file, module)}"
    )


def describing_config(folder: Path) -> Path | None:
    """The config.yaml that describes the weights in `folder`: its own (a checkpoint or a
    model folder holds one), else its run's (`<run>/checkpoints/<folder>`); None if neither."""
    candidates = (folder / "config.yaml", folder.parent.parent / "config.yaml")
    return next((p for p in candidates if p.is_file()), None)


def _which_key_differs(file: Path, module: torch.nn.Module) -> str:
    """'; <config.yaml> has <key> <theirs>, this config <ours>' for the weights in `file`
    (a checkpoint's or model folder's), when that can be told; else ''."""
    from omegaconf import OmegaConf

    from .config import ModelConfig, architecture_difference

    ours, found = getattr(module, "config", None), describing_config(file.parent)
    if not isinstance(ours, ModelConfig) or found is None:
        return ""
    try:  # read as data: nothing it names is imported
        theirs = OmegaConf.to_container(OmegaConf.load(found)).get("model") or {}
        differing = architecture_difference(ours, theirs) if isinstance(theirs, dict) else None
    except Exception:  # an unreadable or foreign config.yaml: the tensors said enough
        return ""
    if differing is None:
        return ""
    key, theirs_value, value = differing
    return (
        f"; {found} has {key} {theirs_value!r}, this config {value!r} (resume, validate "
        f"and predict build the model from the config they are given: give them {found} "
        "or the config that trained these weights)"
    )


class CheckpointManager:
    """Owns `<output_dir>/checkpoints`: when to save (`maybe_save`, by the policy of
    `trainer.checkpoint`), saving, finding, loading and retention."""

    def __init__(self, root: str | Path, policy: CheckpointConfig | None = None) -> None:
        self.root = Path(root)
        self.policy = policy or CheckpointConfig()
        self.keep_last = max(1, self.policy.keep_last)  # the newest stays, so a run can resume
        self.keep_best = self.policy.keep_best
        self.monitor = self.policy.monitor
        self.mode = self.policy.mode
        self._run: tuple | None = None
        self.before_save: Callable[[], None] | None = None
        """Called on every rank before `maybe_save` writes (the Trainer's epoch-loss carry)."""
        self.last_saved_step: int | None = None
        self.trajectory_from: int | None = None
        self.on_trajectory_left: Callable[[int], None] | None = None
        """Called (with the resumed step) once the other trajectory's checkpoints went aside
        (the Trainer moves that trajectory's metrics.jsonl rows aside then)."""
        """The step a resume began this run at, while the run has saved nothing: its first
        save sets the newer `step-*` folders aside (`_leave_the_other_trajectory`)."""

    def record_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """The validation of step `step`, run after its checkpoint was written (so a failing
        validation never costs the checkpoint): stored in that checkpoint as
        `validation.json`, listed in its manifest (see the module's notes on crash safety),
        and used from then on to rank best-k. Only a checkpoint this run wrote (or resumed
        from) at `step` gets it: a `step-*` folder of another trajectory never does."""
        if self._run is None or not self._run[0].is_main_process:
            return
        folder = self.root / f"step-{step:08d}"
        # a folder from before manifests is left as it is (a validation.json would make it
        # look like a newer checkpoint that lost its manifest): a resume validates again
        if step != self.last_saved_step or unverified(folder):
            return
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        files = _read_manifest(folder)
        if VALIDATION_FILE in files:  # recorded before: unlist it first
            del files[VALIDATION_FILE]
            replace_text(folder / MANIFEST_FILE, _manifest_text(files))
        replace_text(folder / VALIDATION_FILE, strict_json(values, indent=2))
        files[VALIDATION_FILE] = _entry(folder / VALIDATION_FILE)
        replace_text(folder / MANIFEST_FILE, _manifest_text(files))
        self._retain()

    # ---------------------------------------------------------------- when to save
    def bind(
        self,
        accelerator: Any,
        module: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        config_yaml: str | None,
        state: TrainState,
        attachments: dict[str, Any] | None = None,
    ) -> None:
        """The run `maybe_save` saves, from `state` on (a step it starts at counts as saved);
        `attachments` (name → text, or a function giving text or bytes at each save:
        the dataset's index.json, the EMA) go into every checkpoint
        so that it stands alone as a model folder."""
        self._run = (accelerator, module, optimizer, scheduler, config_yaml, attachments)
        self.last_saved_step = state.global_step

    def is_due(self, step: int, *, epoch_end: bool = False) -> bool:
        """Whether the policy saves after optimizer step `step` (or at an epoch's end)."""
        every = self.policy.every_n_steps
        due = bool(every) and step % every == 0
        return due or (epoch_end and self.policy.every_epoch)

    def maybe_save(
        self, state: TrainState, *, epoch_end: bool = False, last: bool = False
    ) -> Path | None:
        """Save the bound run if the policy says so at this point: every N steps, at an
        epoch's end (`every_epoch`), and always as the `last` act of a run (end or stop)
        unless this step is already saved. Returns the checkpoint written, if any."""
        step = state.global_step
        due = self.is_due(step, epoch_end=epoch_end)
        if last:
            due = self.last_saved_step != step or self.latest() is None
        if not due:
            return None
        if self._run is None:
            raise RuntimeError("CheckpointManager.maybe_save needs bind() first")
        if self.before_save is not None:  # every rank: it may reduce over them
            self.before_save()
        accelerator, module, optimizer, scheduler, config_yaml, attachments = self._run
        path = self.save(
            accelerator, module, optimizer, scheduler, state, config_yaml, attachments=attachments
        )
        self.last_saved_step = step
        if accelerator.is_main_process and path is not None:  # None: a bench's stand-in
            log.info("checkpoint: %s", path)
        return path

    # ---------------------------------------------------------------- finding
    def complete(self) -> list[Path]:
        """Complete checkpoints (every listed file at its size, a valid state), oldest first."""
        return [p for p in self._folders() if damage(p) is None]

    def _folders(self, *, retired: bool = False) -> list[Path]:
        """Every `step-*` folder, complete or not, oldest first; without `retired`, not
        those that retention kept only for a reader's lease (nothing chooses them again)."""
        if not self.root.is_dir():
            return []
        entries = list(self.root.iterdir())
        folders = sorted((p for p in entries if _NAME.match(p.name)), key=step_of)
        if retired:
            return folders
        marked = {p.name for p in entries if p.name.startswith(_RETIRED)}
        return [p for p in folders if not self._is_retired(p, marked)]

    def _is_retired(self, folder: Path, marked: set[str] | None = None) -> bool:
        marker = self.root / f"{_RETIRED}{folder.name}"
        return (marked is None or marker.name in marked) and _held(marker, folder)

    def latest(self) -> Path | None:
        found = self.complete()
        return found[-1] if found else None

    def best(self) -> Path | None:
        ranked = self._ranked()
        return ranked[0] if ranked else None

    def _ranked(self) -> list[Path]:
        scored = []
        for path in self.complete():
            try:
                value = _validation_of(path).get(self.monitor)
            except CheckpointError as exc:  # damaged since complete() looked: not ranked
                if path.is_dir():  # (not retired meanwhile by its run)
                    log.warning("checkpoint left out of best-k: %s", exc)
                continue
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
        *,
        attachments: dict[str, Any] | None = None,
    ) -> Path:
        """Write a checkpoint of the current step on every rank; returns its folder."""
        assert_finite(module, f"refusing to checkpoint step {state.global_step}")
        final = self.root / f"step-{state.global_step:08d}"
        tmp = self.root / f".tmp-{final.name}"
        main = accelerator.is_main_process
        if main:
            self.root.mkdir(parents=True, exist_ok=True)
            self._sweep()
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        _barrier(accelerator)
        rank = accelerator.process_index
        sharded = _is_sharded(module)
        with _writing(tmp):
            if sharded:  # FSDP: every rank writes its shard (collective: before main-only code)
                from .fsdp import save_sharded

                save_sharded(tmp, module, optimizer)
            torch.save(_rng_state(), tmp / f"rng-{rank}.pt")
            # an attachment computed from sharded state (the EMA) gathers it: every rank
            # computes it then, the main rank writes it
            contents = {
                name: content() if callable(content) else content
                for name, content in (attachments or {}).items()
                if main or sharded
            }
            if main:
                if not sharded:
                    weights = safetensors_weights(module.state_dict())
                    save_weights(weights, tmp / MODEL_FILE)
                    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
                if scheduler is not None:
                    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
                if accelerator.scaler is not None:
                    torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
                if config_yaml is not None:
                    (tmp / "config.yaml").write_text(config_yaml)
                for name, content in contents.items():
                    if isinstance(content, bytes):
                        (tmp / name).write_bytes(content)
                    else:
                        (tmp / name).write_text(content)
                (tmp / STATE_FILE).write_text(strict_json(_state_json(state), indent=2))
        _barrier(accelerator)
        if main:
            with _writing(tmp):
                # the manifest goes last, once every rank's files exist: it lists them all
                _write_manifest(tmp)
                make_durable(tmp)
            if self.trajectory_from is not None:
                left = self.trajectory_from
                self._leave_the_other_trajectory(left, final)
                if self.on_trajectory_left is not None:
                    self.on_trajectory_left(left)
            aside = self._set_aside(final, tmp) if final.exists() else None
            os.replace(tmp, final)
            sync_folder(self.root)
            if aside is not None and aside.name.startswith(".same-"):
                shutil.rmtree(aside)
            self._retain()
        _barrier(accelerator)
        return final

    def _set_aside(self, final: Path, new: Path) -> Path:
        """Rename the existing `final` aside so the new checkpoint `new` can take its name;
        never delete it here. The same step saved twice by one run (same weights and
        optimizer state) goes to `.same-…`, removed once the new one is in place; otherwise
        it is kept as `superseded-…` (another trajectory) or `damaged-…`, with a warning."""
        why = damage(final, deep=True)  # rare (a step saved twice): worth reading it all
        if why is None:
            old_files, new_files = _read_manifest(final), _read_manifest(new)
            if _weight_entries(old_files) == _weight_entries(new_files):
                return self._aside(final, ".same")
        aside = self._aside(final, "superseded" if why is None else "damaged")
        log.warning(
            "checkpoint %s %s; renamed to %s (kept, not used: delete it once you no longer "
            "want it) so that %s can be saved",
            final,
            "holds another trajectory's state" if why is None else f"is damaged: {why}",
            aside.name,
            final.name,
        )
        return aside

    def _leave_the_other_trajectory(self, step: int, final: Path) -> None:
        """The first save of a run resumed from step `step`, older than the folder's newest:
        the newer `step-*` folders hold the trajectory left behind. They must not stay among
        this run's (retention kept them as the newest and deleted the run's own; `resume
        auto`, `last` and best-k chose them), so they are renamed `superseded-step-…`
        (`damaged-…` when damaged), kept, never used; `final`, the step being saved, is
        `_set_aside`'s. Done at the first save, not at the resume: a resume refused or
        stopped before it has changed nothing. One a reader holds is left, with a line."""
        self.trajectory_from = None
        moved, held = [], []
        for folder in self._folders(retired=True):
            match = _NAME.match(folder.name)
            if not match or int(match.group(1)) <= step or folder == final:
                continue
            label = "superseded" if damage(folder) is None else "damaged"
            aside = self._aside_unless_read(folder, label)
            (moved if aside is not None else held).append((folder.name, aside))
        if moved:
            sync_folder(self.root)
            log.warning(
                "resumed from step %d: the newer checkpoint(s) in %s are another trajectory's, "
                "renamed (kept, not used): %s",
                step,
                self.root,
                ", ".join(f"{name} → {aside.name}" for name, aside in moved),
            )
        if held:
            log.warning(
                "resumed from step %d: %s, of another trajectory, is being read: left in "
                "place; once read, rename it out of the step-* names (a resume could choose it)",
                step,
                ", ".join(name for name, _ in held),
            )

    def _aside_unless_read(self, folder: Path, label: str) -> Path | None:
        """`_aside(folder, label)` under the exclusive lock retention takes to delete (a
        reader's lease holds it shared): None, and untouched, while a reader holds it."""
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return None
        try:
            try:
                _lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, folder)
            except BlockingIOError:
                return None
            aside = self._aside(folder, label)
            (self.root / f"{_RETIRED}{folder.name}").unlink(missing_ok=True)
            return aside
        finally:
            os.close(fd)

    def _aside(self, path: Path, label: str) -> Path:
        for number in range(1, 10_000):
            target = path.with_name(f"{label}-{path.name}" + (f"-{number}" if number > 1 else ""))
            if not target.exists():
                os.rename(path, target)
                return target
        raise FileExistsError(f"no free name to set {path} aside")

    def _delete(self, path: Path) -> bool:
        """Remove a checkpoint folder so that a crash at any point leaves either the whole
        folder or nothing under its name: rename it out of `step-*` first (atomic). Not
        while a reader holds a lease on it (`reading`): False then, and it is marked
        retired, for a later pass (`_retain`, `prune`) to delete."""
        marker = self.root / f"{_RETIRED}{path.name}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            marker.unlink(missing_ok=True)
            return True
        try:
            try:  # held until renamed: a reader that opened it before sees it retired
                _lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, path)
            except BlockingIOError:
                if not _held(marker, path):
                    held = os.fstat(fd)
                    replace_text(marker, f"{held.st_dev} {held.st_ino}\n")
                    log.info("checkpoint %s is being read: kept until a later save", path)
                return False
            trash = self.root / f".trash-{path.name}-{os.getpid()}"
            _remove(trash)
            os.rename(path, trash)
            marker.unlink(missing_ok=True)
            sync_folder(self.root)
        finally:
            os.close(fd)
        _remove(trash)
        return True

    def _put_back_same(self) -> None:
        """A `.same-step-N` whose `step-N` is missing back under its name: a save of step N
        again (same weights) killed between setting the old copy aside and putting the new
        one in place left the step under no name, and the sweep then deleted both copies.
        (Racing ranks: one rename wins, the others find nothing to do.)"""
        for aside in self.root.glob(".same-step-*"):
            name = aside.name[len(".same-") :]
            if _NAME.match(name) and not (self.root / name).exists():
                with contextlib.suppress(OSError):
                    os.rename(aside, self.root / name)
                    log.warning("checkpoint %s: put back (a save of it again was interrupted)",
                                self.root / name)  # fmt: skip

    def _sweep(self) -> None:
        """Remove what killed saves and deletions left (never a `step-*` folder)."""
        self._put_back_same()
        patterns = (".tmp-step-*", ".trash-*", ".same-step-*")
        for stale in (p for pattern in patterns for p in self.root.glob(pattern)):
            _remove(stale)
        for marker in self.root.glob(f"{_RETIRED}step-*"):  # its folder gone or replaced
            if not _held(marker, self.root / marker.name[len(_RETIRED) :]):
                marker.unlink(missing_ok=True)

    def _retain(self) -> None:
        found = self.complete()
        keep = set(found[-self.keep_last :])
        keep.update(self._ranked()[: self.keep_best])
        for path in found:
            if path not in keep:
                self._delete(path)
        self.prune()

    def prune(self) -> None:
        """Delete the checkpoints retention kept only because a reader held them (see
        `reading`), where no reader holds them any more; sweep what killed saves left.
        The main process's, at every save and at the run's end (other ranks: nothing)."""
        if self._run is not None and not self._run[0].is_main_process:
            return
        for path in self._folders(retired=True):
            if self._is_retired(path):
                self._delete(path)
        self._sweep()

    # ---------------------------------------------------------------- loading
    def resolve(self, resume: str | Path | None) -> Path | None:
        """`None` → no resume; `"auto"` → the newest intact checkpoint (or None when there is
        none), falling back past damaged ones with a warning naming each; a path → that
        checkpoint, which must be intact. Intact: every file of the manifest at its size and
        sha256, a valid trainer state."""
        if resume is None:
            return None
        if not isinstance(resume, str | os.PathLike):
            raise TypeError(
                f"resume is {resume!r}; expected None, 'auto' (the newest checkpoint) or a "
                "checkpoint folder"
            )
        if str(resume) in ("last", "latest"):
            raise InputError(
                f"resume={str(resume)!r}: to go on from the newest checkpoint, resume='auto' "
                "(--resume auto); else a checkpoint folder"
            )
        if str(resume) == "auto":
            damaged = []
            if self.root.is_dir():
                self._put_back_same()
            for path in reversed(self._folders()):
                why = damage(path, deep=True)
                if why is None:
                    _warn_if_unverified(path)
                    return path
                if not path.is_dir():  # deleted since it was listed: not damaged
                    continue
                damaged.append(path)
                log.warning(
                    "checkpoint %s is damaged (%s); falling back to an older one", path, why
                )
            if damaged:
                raise CheckpointError(
                    f"every checkpoint in {self.root} is damaged (newest: {damaged[0]}); resume "
                    "from a copy or move them away to start afresh"
                )
            return None
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise MissingInput(f"not a complete checkpoint (no {STATE_FILE}): {path}")
        return verify(path)

    def choose(self, name: str | int) -> Path:
        """The checkpoint `name` names: "best" (the best ranked, else the newest), "last"
        (the newest), a step ("step-320", "step-00000320", "320", 320) or another folder of
        the run's checkpoints. For best and last, damaged checkpoints are passed over with a
        warning naming each; a named one must be intact."""
        if isinstance(name, int) and not isinstance(name, bool):
            name = str(name)  # a step number
        if not isinstance(name, str):
            raise TypeError(f"checkpoint {name!r}: expected best, last, a step or a folder name")
        if name in ("best", "last", "latest"):
            return self._newest_intact(name)
        match = _STEP_NAME.match(name)
        folder = self.root / (f"step-{int(match.group(1)):08d}" if match else name)
        if name and "/" not in name and folder.is_dir():
            return verify(folder)
        names = [p.name for p in self._folders()]
        listed = ", ".join(names[:20]) + (f" … ({len(names)} in all)" if len(names) > 20 else "")
        raise UnknownCheckpointError(
            f"no checkpoint {name!r} in {self.root}; available: {listed or 'none'} (or best, last)"
        )

    def _newest_intact(self, name: str) -> Path:
        """The best (`name` "best", falling back to the newest) or newest intact checkpoint;
        every damaged one is named in a warning, whichever is chosen."""
        folders = self._folders()
        if not folders:
            raise MissingInput(f"no checkpoint in {self.root}; train first or pass --ckpt PATH")
        found = {path: damage(path) for path in folders}
        for path, why in found.items():
            if why is not None and path.is_dir():  # not one its run retired meanwhile
                log.warning("checkpoint %s is damaged (%s); passing over it", path, why)
        ranked = self._ranked() if name == "best" else []
        newest = [p for p in reversed(folders) if p not in ranked and found[p] is None]
        for path in (*ranked, *newest):
            why = damage(path, deep=True)  # the sha256 sums, for the one about to be used
            if why is None:
                if not path.is_dir():  # retired once checked (no manifest: not an old one)
                    raise RetiredCheckpoint(f"{self.root}: {_retired_text(path)}")
                _warn_if_unverified(path)
                return path
            if path.is_dir():
                log.warning("checkpoint %s is damaged (%s); passing over it", path, why)
        if not any(p.is_dir() for p in folders):  # every one retired meanwhile
            raise RetiredCheckpoint(f"{self.root}: {_retired_text(folders[-1])}")
        raise CheckpointError(f"every checkpoint in {self.root} is damaged (newest: {folders[-1]})")

    def load(
        self,
        path: Path,
        accelerator: Any,
        module: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
    ) -> TrainState:
        """Restore everything `save` wrote; returns the trainer state. A sharded checkpoint
        loads into this run's layout, whatever the number of ranks or the strategy (DCP
        reshards); a full one into a sharded module keeps each rank's shard of it."""
        if is_sharded_checkpoint(path):
            _load_sharded(path, module, optimizer)
        elif _is_sharded(module):  # FSDP from a DDP checkpoint: each rank keeps its shard
            from .fsdp import load_full_state

            optim = _load(path / "optimizer.pt")
            load_full_state(module, _weights_file(path), optimizer, optim)
        else:
            load_weights(path, module)
            optimizer.load_state_dict(_load(path / "optimizer.pt"))
        if scheduler is not None:
            if not (path / "scheduler.pt").is_file():
                raise InputError(
                    f"{path} has no scheduler.pt (its run had no lr scheduler) but the module "
                    f"has a {type(scheduler).__name__}: resume with the run's schedule, or "
                    "start a new run from its weights (model.init_weights)"
                )
            try:
                scheduler.load_state_dict(_load(path / "scheduler.pt"))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:  # another kind
                raise InputError(
                    f"{path / 'scheduler.pt'} holds another kind of lr scheduler's state than "
                    f"the module's {type(scheduler).__name__} ({type(exc).__name__}: {exc}): "
                    "resume with the run's schedule, or start a new run from its weights "
                    "(model.init_weights)"
                ) from None
        elif (path / "scheduler.pt").is_file():
            from .console import warn_main

            warn_main(
                "%s holds an lr scheduler's state, but the module has no scheduler now: the "
                "rate stays where the checkpoint's optimizer left it",
                path,
            )
        if accelerator.scaler is not None and (path / "scaler.pt").is_file():
            accelerator.scaler.load_state_dict(_load(path / "scaler.pt"))
        _restore_rng(path, accelerator)
        state = read_state(path)
        recorded = _recorded_validation(path)
        if recorded is not None:  # the validation of this step, run after it was saved
            state.metrics, state.metrics_step = recorded, state.global_step
        return state

    def restore_weights_and_rng(
        self, path: Path, accelerator: Any, module: torch.nn.Module
    ) -> None:
        """Put back the weights, buffers and this rank's RNG state of checkpoint `path`."""
        load_weights(path, module)
        _restore_rng(path, accelerator)


def _restore_rng(path: Path, accelerator: Any) -> None:
    rank = accelerator.process_index
    rng_file = Path(path) / f"rng-{rank}.pt"
    if rng_file.is_file():
        _set_rng_state(_load(rng_file))
        return
    # a rank the checkpoint's run did not have (resumed on more ranks): a stream of its own
    # from (seed, rank, step); it kept the state set_seed(seed) left, alike on every new rank
    from accelerate.utils import set_seed

    from .trainer import rank_seed

    with contextlib.suppress(OSError, ValueError, TypeError):
        state = read_state(path)
        seed = int((state.settings or {}).get("trainer.seed", 0))
        set_seed(rank_seed(seed, rank, state.global_step))


@contextlib.contextmanager
def _writing(tmp: Path) -> Iterator[None]:
    """Write into checkpoint folder `tmp`; a failed write (disk full, quota, a read-only
    folder) becomes one line naming the folder and the cause, and the folder is removed."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if peer_lost(exc):  # a collective of the save (FSDP's shards) lost a rank: not disk
            raise
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else _cause(exc)
        raise CheckpointError(
            f"cannot write checkpoint {tmp.name} in {tmp.parent}{free_space(tmp.parent)}"
            f"{file_size_limit()}: {cause}"
        ) from exc


def file_size_limit() -> str:
    """ " (files of this process: at most N MiB, `ulimit -f`)" where such a limit is set, else
    "": a write it stopped reads as a full disk, or as torch's "iostream error" (a dataops
    review)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft == resource.RLIM_INFINITY:
        return ""
    amount = f"{soft // 2**20} MiB" if soft >= 2**20 else f"{soft // 2**10} KiB"
    return f" (files of this process: at most {amount}, `ulimit -f`)"


def _cause(exc: BaseException) -> str:
    """The first line of `exc`'s message without torch's `[enforce fail at file.cc:N]`
    prefix; torch's "unexpected pos A vs B" (its zip writer wrote fewer bytes than it
    asked: the disk or the quota filled up) said as such."""
    text = str(exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*[.:]?\s*", "", text)
    if re.search(r"unexpected pos \d+ vs \d+|file write failed", text):
        return "a write stopped short: the disk or the quota is full"
    return text or type(exc).__name__


def free_space(folder: Path) -> str:
    """The free space of `folder`'s filesystem as " (N MiB free there)" (KiB below 1 MiB),
    or "" when `folder` is not there to ask: for messages about a write that failed."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    amount = f"{free // 2**20} MiB" if free >= 2**20 else f"{free // 2**10} KiB"
    return f" ({amount} free there)"


def _load(file: Path) -> Any:
    """`torch.load` of tensors and numbers only; anything else (a pickled object, a torn
    file) is one line naming the file, never a suggestion to unpickle."""
    try:
        return torch.load(file, weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{file}: not a tensors-only file stpdist wrote ({type(exc).__name__}: {first[:200]}); "
            "stpdist never unpickles"
        ) from None


def _validation_of(path: Path) -> dict[str, Any]:
    """The metrics that rank checkpoint `path`: those of its own step, from its recorded
    `validation.json`, else from its trainer state (a checkpoint of an earlier version:
    the metrics it held at save time)."""
    recorded = _recorded_validation(path)
    if recorded is not None:
        return recorded
    state = read_state(path)
    return state.metrics if state.metrics_step in (None, state.global_step) else {}


def _recorded_validation(path: Path) -> dict[str, float] | None:
    """The `validation.json` of checkpoint `path` when it counts (listed in a version-2
    manifest; present, with an older manifest or none), else None; a `CheckpointError`
    naming the file when it counts but is not a JSON object of numbers."""
    file = Path(path) / VALIDATION_FILE
    if not file.is_file():
        return None
    if (Path(path) / MANIFEST_FILE).is_file():
        version, files = _manifest(Path(path))
        if version >= MANIFEST_VERSION and VALIDATION_FILE not in files:
            return None  # written by a save or validation that did not finish: not counted
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{file}: unreadable validation results ({exc})") from None
    if isinstance(raw, dict):  # "nan", "inf": written so since 2026-12-07 (bare before)
        raw = {k: json_number(v) for k, v in raw.items()}
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in raw.items()
    ):
        shown = json.dumps(raw)[:80]
        raise CheckpointError(
            f"{file}: validation results must be a JSON object of metric names to numbers; "
            f"got {shown}"
        )
    return {k: float(v) for k, v in raw.items()}


def _state_json(state: TrainState) -> dict[str, Any]:
    """What `trainer_state.json` holds: the state, with metrics only when they are those of
    its own step (`metrics_step` None counts as this step: a caller's own state)."""
    record = {"format": STATE_FORMAT, **asdict(state)}
    if state.metrics and state.metrics_step in (None, state.global_step):
        record["metrics_step"] = state.global_step
    else:
        record["metrics"], record["metrics_step"] = {}, None
    return record


def read_state(path: Path) -> TrainState:
    """The validated trainer state of checkpoint folder `path`; a `CheckpointError` naming
    the file when it is unreadable, off-schema, negative, or its step is not the folder's."""
    return _state_record(path)[0]


def _state_record(path: Path) -> tuple[TrainState, int]:
    """(trainer state, format: 1 for a state written before the format was recorded)."""
    file = Path(path) / STATE_FILE
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{file}: unreadable trainer state ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file}: trainer state must be a JSON object")
    version = raw.pop("format", None)
    if version is not None and (isinstance(version, bool) or version != STATE_FORMAT):
        raise CheckpointError(f"{file}: 'format' must be {STATE_FORMAT}, got {version!r}")
    known = [f.name for f in fields(TrainState)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise CheckpointError(f"{file}: unknown key(s) {unknown}; valid keys: {known}")
    for name in ("epoch", "batch", "global_step", "world_size"):
        value = raw.get(name)
        low = 1 if name == "world_size" else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise CheckpointError(f"{file}: '{name}' must be an integer >= {low}, got {value!r}")
    for name in ("gradient_accumulation_steps", "num_workers", "batch_size", "planned_steps"):
        value, low = raw.get(name), 0 if name in ("num_workers", "planned_steps") else 1
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < low
        ):
            raise CheckpointError(
                f"{file}: '{name}' must be null or an integer >= {low}, got {value!r}"
            )
    _numbers_from_text(raw)
    _check_layouts(file, raw)
    _check_epoch_loss(file, raw.get("epoch_loss"))
    _check_window(file, raw.get("window"))
    settings = raw.get("settings")
    if settings is not None and not (
        isinstance(settings, dict)
        and all(
            isinstance(k, str) and (v is None or isinstance(v, int | float | str))
            for k, v in settings.items()
        )
    ):
        raise CheckpointError(f"{file}: 'settings' must be null or map names to values")
    metrics = raw.get("metrics", {})
    if not isinstance(metrics, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in metrics.items()
    ):
        raise CheckpointError(f"{file}: 'metrics' must map names to numbers")
    measured = raw.get("metrics_step")
    if measured is not None and (isinstance(measured, bool) or measured != raw["global_step"]):
        raise CheckpointError(
            f"{file}: 'metrics_step' must be null or the state's global_step "
            f"{raw['global_step']}, got {measured!r}"
        )
    match = _NAME.match(Path(path).name)
    if match and int(match.group(1)) != raw["global_step"]:
        raise CheckpointError(
            f"{file}: global_step {raw['global_step']} does not match the folder's step "
            f"{int(match.group(1))}"
        )
    return TrainState(**raw), version or 1


def _numbers_from_text(raw: dict[str, Any]) -> None:
    """The trainer state's non-finite floats, written as "nan"/"inf" since 2026-12-07
    (`strict_json`; bare `NaN` before), back to floats: metrics and the log window's."""
    if isinstance(raw.get("metrics"), dict):
        raw["metrics"] = {k: json_number(v) for k, v in raw["metrics"].items()}
    window = raw.get("window")
    if isinstance(window, dict):
        if "grad_norm" in window:
            window["grad_norm"] = json_number(window["grad_norm"])
        extras = window.get("extras")
        for pair in extras.values() if isinstance(extras, dict) else ():
            if isinstance(pair, list) and pair:
                pair[0] = json_number(pair[0])


_ORIGIN_KEYS = ("world_size", "num_workers", "batch_multiple", "batch", "later")
_ORIGIN_LAYOUT = "layout"
"""Also in an `epoch_origin` since 2026-12-06 (absent before: layout 1)."""
_LAYOUTS = (1, 2, 3, 4)  # data.loading.LoaderContext.layout


def _check_epoch_loss(file: Path, carried: Any) -> None:
    if carried is None:
        return
    if not (
        isinstance(carried, dict)
        and set(carried) == {"sum", "batches", "skipped"}
        and _count(carried["batches"])
        and _count(carried["skipped"])
        and _finite(carried["sum"])
    ):
        raise CheckpointError(
            f"{file}: 'epoch_loss' must be null or {{'sum': a finite number, 'batches' and "
            f"'skipped': integers >= 0}}, got {carried!r}"
        )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any) -> bool:
    """A number, NaN and ±Inf included (a module's extra scalar may be one: logged as such)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_window(file: Path, window: Any) -> None:
    if window is None:
        return
    extras = window.get("extras") if isinstance(window, dict) else None
    if not (
        isinstance(window, dict)
        and set(window) == {"sum", "batches", "extras", "epoch_seconds", "grad_norm",
                            "samples", "seconds"}
        and (window["grad_norm"] is None or _number(window["grad_norm"]))
        and _count(window["samples"])
        and _finite(window["seconds"])
        and window["seconds"] >= 0
        and _finite(window["sum"])
        and _count(window["batches"])
        and _finite(window["epoch_seconds"])
        and window["epoch_seconds"] >= 0
        and isinstance(extras, dict)
        and all(
            isinstance(k, str) and isinstance(v, list) and len(v) == 2
            and _number(v[0]) and _count(v[1])
            for k, v in extras.items()
        )
    ):  # fmt: skip
        raise CheckpointError(
            f"{file}: 'window' must be null or {{'sum': a finite number, 'batches': an "
            "integer >= 0, 'extras': {name: [sum, count]}, 'epoch_seconds' and 'seconds': "
            "numbers >= 0, 'samples': an integer >= 0, 'grad_norm': null or a number}, "
            f"got {window!r}"
        )


def _check_layouts(file: Path, raw: dict[str, Any]) -> None:
    """`epoch_origin` and `data_layout` of a trainer state checked; an origin written before
    origins recorded their layout gets layout 1, the one of then."""
    _check_origin(file, raw.get("epoch_origin"))
    if raw.get("epoch_origin") is not None:
        raw["epoch_origin"] = {_ORIGIN_LAYOUT: 1, **raw["epoch_origin"]}
    if raw.get("data_layout") not in (None, *_LAYOUTS):
        raise CheckpointError(
            f"{file}: 'data_layout' must be null or one of {list(_LAYOUTS)}, got "
            f"{raw['data_layout']!r}"
        )


def _check_origin(file: Path, origin: Any) -> None:
    """`epoch_origin` of a trainer state: null, or an object of `_ORIGIN_KEYS` integers."""
    if origin is None:
        return

    def integer(value: Any, low: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= low

    valid = isinstance(origin, dict) and sorted(set(origin) - {_ORIGIN_LAYOUT}) == sorted(
        _ORIGIN_KEYS
    )
    valid = valid and origin.get(_ORIGIN_LAYOUT, 1) in _LAYOUTS
    valid = valid and all(integer(origin[k], 1) for k in ("world_size", "batch_multiple"))
    valid = valid and all(integer(origin[k], 0) for k in ("batch", "later"))
    valid = valid and (origin["num_workers"] is None or integer(origin["num_workers"], 0))
    if not valid:
        raise CheckpointError(
            f"{file}: 'epoch_origin' must be null or an object of integers {list(_ORIGIN_KEYS)} "
            f"(num_workers may be null; optionally 'layout', one of {list(_LAYOUTS)}), got "
            f"{json.dumps(origin)[:120]}"
        )
