"""Going on with a conversion that was stopped: its checkpoints, in its staging folder.

A conversion writes its dataset into a staging folder beside `out` (see `staging.py`). As
it closes a shard, at most once every `CHECKPOINT_EVERY` seconds, it saves there, under
`.resume/`, what it takes to go on from that shard: where it is (the split, the work item,
how many of that item's samples are written, and the key of the next one), the writer's
state (shape, dtype, each closed shard's count and SHA-256, the statistics' sums) and a
line per sample written since the last checkpoint (its key, its item and a digest of its
frames: what the checks for repeated keys and byte-identical samples need). Closed
shards are on disk (fsync) before the checkpoint that counts them.

A conversion stopped by Ctrl-C or SIGTERM (a cluster's preemption) keeps its staging
folder once it has a checkpoint, and one killed outright (the out-of-memory killer,
SIGKILL, a power cut) leaves it by nature. The next `stpdist shard` of the same sources
with the same options to the same `out` takes it over: the shards after the checkpoint
are deleted, the closed ones checked (names, sizes), the state read back, and the
conversion goes on from the checkpoint's item, so that the dataset is byte for byte the
one an uninterrupted run writes. "The same" is a fingerprint: the source's format and
options, every work item, the size and modification time of every file or folder the
items and sources name, `--samples-per-shard`, `--allow-nan` and this module's version.
A leftover with another fingerprint is deleted, saying why; a source whose work items
do not pickle is not checkpointed (said in a line).

Under SLURM a checkpoint records the job id and its restart count: a requeued job (on
another node, usually) goes on from the one it left before the requeue, which a host's
other leftovers, whose processes cannot be checked from here, are not.

The files here are read as untrusted input: JSON and `.npz` without pickles; anything
that does not read back as expected is a conversion that starts afresh, said in a line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..runlock import slurm_job
from .staging import sync_folder

log = logging.getLogger("stpdist")

STATE_DIR = ".resume"
"""The checkpoints' folder in a staging folder (removed before the dataset is complete)."""
STATE_FILE = "state.json"
LOG_FILE = "samples.jsonl"
VERSION = 1
"""Of the checkpoints' layout and of what the conversion writes: a checkpoint of another
version is not continued."""
EVERY_ENV = "STPDIST_CHECKPOINT_EVERY"
CHECKPOINT_EVERY = 10.0
"""Seconds between two checkpoints at least (the environment's `STPDIST_CHECKPOINT_EVERY`
instead, when set: 0 checkpoints at every shard)."""


class CannotResume(Exception):
    """A checkpoint that does not hold what the conversion finds (said, then started over)."""


def checkpoint_every() -> float:
    raw = os.environ.get(EVERY_ENV)
    if raw is None:
        return CHECKPOINT_EVERY
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        log.warning("%s=%r: expected seconds (0 or more); using %g", EVERY_ENV, raw,
                    CHECKPOINT_EVERY)  # fmt: skip
        return CHECKPOINT_EVERY
    return seconds


class _Unstable(Exception):
    pass


def _stable(value: Any, paths: list[str]) -> Any:
    """`value` as JSON that is the same in every process that builds it from the same files
    (no object addresses, no set order); strings and paths collected in `paths`. Raises
    `_Unstable` for an object that does not pickle."""
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, str):
            paths.append(value)
        return value
    if isinstance(value, float):
        return repr(value)  # NaN and inf too
    if isinstance(value, np.generic):
        return _stable(value.item(), paths)
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        if not isinstance(path, str):
            raise _Unstable(type(value).__name__)
        paths.append(path)
        return {"path": path}
    if isinstance(value, (list, tuple)):
        return [_stable(v, paths) for v in value]
    if isinstance(value, dict):
        return {"dict": [[_stable(k, paths), _stable(v, paths)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [
            [f.name, _stable(getattr(value, f.name), paths)] for f in dataclasses.fields(value)
        ]
        return {"type": type(value).__qualname__, "fields": fields}
    try:  # another object (an array): its pickle, which a set of strings may order otherwise
        # in another process (a fingerprint that differs: the conversion starts over)
        digest = hashlib.sha256(pickle.dumps(value, protocol=4)).hexdigest()
    except Exception as exc:  # noqa: BLE001 (whatever its pickling raises)
        raise _Unstable(type(value).__name__) from exc
    return {"type": f"{type(value).__module__}.{type(value).__qualname__}", "pickle": digest}


def _stat(path: str) -> list[int] | None:
    """Size and modification time (ns) of a file or folder `path` names; None for anything
    else (a key, a variable's name)."""
    if not path or len(path) > 4096 or "\0" in path:
        return None
    try:
        found = os.stat(path)
    except (OSError, ValueError):
        return None
    return [found.st_size, found.st_mtime_ns]


def fingerprint(
    name: str,
    args: dict[str, Any],
    splits: dict[str, list[Any]],
    sources: Iterable[str | os.PathLike],
    settings: dict[str, Any],
) -> str | None:
    """What a checkpoint must match to be continued (see the module's docstring); None
    when the work items have no stable form (no checkpoints then)."""
    paths: list[str] = []
    try:
        stable = _stable([name, args, list(splits.items()), settings], paths)
    except _Unstable as exc:
        log.warning("%s: no checkpoints (a work item holds a %s, which does not pickle): a stop "
                    "starts this conversion over", name, exc)  # fmt: skip
        return None
    paths += [os.fspath(p) for p in sources]
    stats = {path: found for path in dict.fromkeys(paths) if (found := _stat(path)) is not None}
    text = json.dumps([VERSION, stable, sorted(stats.items())], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _write_durably(path: Path, data: bytes) -> None:
    """`path` holds `data` or what it held before, whatever stops the process."""
    temporary = path.with_name(path.name + ".partial")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpoints:
    """A conversion's checkpoints in `staging` (see the module's docstring)."""

    def __init__(self, staging: Path, fingerprint: str) -> None:
        self.folder = staging / STATE_DIR
        self.fingerprint = fingerprint
        self.every = checkpoint_every()
        self.last = time.monotonic()
        self.lines: list[str] = []
        """The samples written since the last checkpoint, a JSON line each."""
        self.synced = 0
        """Shards of the current split already on disk."""
        self.saved = 0
        self.generation = 0

    def start(self) -> None:
        """Checkpoints from scratch (a new conversion, or every split again in float32)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir()
        (self.folder / LOG_FILE).write_bytes(b"")
        self.lines, self.synced, self.generation = [], 0, 0

    def note(self, split: str, key: str, number: int, digest: bytes, static: bool) -> None:
        """One sample written (`number`: its item's in the split)."""
        self.lines.append(json.dumps([split, key, number, digest.hex(), static]) + "\n")

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every

    def new_split(self) -> None:
        self.synced = 0

    def save(
        self, header: dict[str, Any], arrays: dict[str, np.ndarray], shards: list[Path]
    ) -> None:
        """A checkpoint: the closed `shards` of the current split synced first, then the
        samples' lines, the arrays and last the header that names them (the checkpoint
        counts from its rename)."""
        for path in shards[self.synced :]:
            _fsync(path)
        if shards:
            sync_folder(shards[0].parent)
        self.synced = len(shards)
        with open(self.folder / LOG_FILE, "a", encoding="utf-8") as handle:
            handle.writelines(self.lines)
            handle.flush()
            os.fsync(handle.fileno())
            length = handle.tell()
        self.lines = []
        self.generation += 1
        name = f"arrays-{self.generation}.npz"
        temporary = self.folder / f"{name}.partial.npz"
        np.savez(temporary, **arrays)
        _fsync(temporary)
        os.replace(temporary, self.folder / name)
        state = {**header, "version": VERSION, "fingerprint": self.fingerprint,
                 "log_bytes": length, "arrays": name, **slurm_job()}  # fmt: skip
        _write_durably(self.folder / STATE_FILE, json.dumps(state).encode())
        sync_folder(self.folder)
        for old in self.folder.glob("arrays-*.npz"):
            if old.name != name:
                old.unlink()
        self.last = time.monotonic()
        self.saved += 1

    def remove(self) -> None:
        """Gone from the staging folder, before it becomes the dataset."""
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclasses.dataclass
class Saved:
    """A checkpoint read back (`load`)."""

    header: dict[str, Any]
    arrays: dict[str, np.ndarray]
    samples: list[tuple[str, str, int, bytes, bool]]
    """Every sample written before it: (split, key, item number, digest, static)."""
    generation: int


def saved_fingerprint(staging: Path) -> str | None:
    """The fingerprint of the checkpoint in a staging folder; None when it has none (or
    one that does not read)."""
    try:
        header = json.loads((staging / STATE_DIR / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict) or header.get("version") != VERSION:
        return None
    found = header.get("fingerprint")
    return found if isinstance(found, str) else None


def load(staging: Path) -> Saved:
    """The checkpoint in `staging`; `CannotResume` says why it does not read."""
    folder = staging / STATE_DIR
    try:
        header = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        name = header["arrays"]
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".npz"):
            raise CannotResume(f"its arrays are named {name!r}")
        with np.load(folder / name, allow_pickle=False) as found:
            arrays = {key: found[key] for key in found.files}
        length = int(header["log_bytes"])
        with open(folder / LOG_FILE, "r+b") as handle:
            handle.truncate(length)  # the lines of samples after the checkpoint
            handle.seek(0)
            text = handle.read().decode("utf-8")
        samples = []
        for line in text.splitlines():
            split, key, number, digest, static = json.loads(line)
            samples.append((str(split), str(key), int(number), bytes.fromhex(digest), bool(static)))
        generation = int(name.removeprefix("arrays-").removesuffix(".npz"))
    except CannotResume:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:  # damaged: JSON, npz, lines
        raise CannotResume(f"its checkpoint does not read ({type(exc).__name__}: {exc})") from exc
    return Saved(header, arrays, samples, generation)
