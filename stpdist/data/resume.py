"""Going on with a conversion that was stopped: its checkpoints, in its staging folder.

A conversion writes its dataset into a staging folder beside `out` (see `staging.py`). As
it closes a shard, at most once every `CHECKPOINT_EVERY` seconds, and once every split is
written, it saves there, under `.resume/`, what it takes to go on from that point: where
it is (the split, the work item, how many of that item's samples are written, and the key
of the next one), the writer's state (shape, dtype, each closed shard's count and SHA-256,
the statistics' sums) and a line per sample written since the last checkpoint (its key,
its item and a digest of its frames: what the checks for repeated keys and byte-identical
samples need). Every file a checkpoint counts is on disk (fsync) before it; its header
holds the SHA-256 of its arrays and lines, and its own.

A conversion stopped once it has a checkpoint keeps its staging folder, whatever stopped
it (Ctrl-C; SIGTERM, a cluster's preemption; an error: a worker killed by the
out-of-memory killer, a full disk), and one killed outright (SIGKILL, a power cut) leaves
it by nature; the checkpoint is removed only as the complete dataset is renamed into
place. The next `stpdist shard` of the same sources with the same options to the same
`out` takes it over: the kept shards are checked (SHA-256, sample counts, the first
sample), what came after the checkpoint deleted, the state read back, and the conversion
goes on from the checkpoint's sample, so that the dataset is byte for byte the one an
uninterrupted run writes. "The same" is a fingerprint of two parts: the options (the
source's format and options, where its paths lie, `--samples-per-shard`, `--allow-nan` and
this module's version) and the data (every work item, the size and modification time of
every file the items name and of every file under the source paths).
A leftover of the same options whose data changed since is deleted, saying so (it can
never go on); one of other sources or options is left for its own command, saying so (a
path spelled otherwise, `./raw` for `raw`, is another option: what index.json records); a
source whose work items do not pickle is not checkpointed (said in a line).

Under SLURM a checkpoint records the job id and its restart count: a requeued job (on
another node, usually) goes on from the one it left before the requeue, which a host's
other leftovers, whose processes cannot be checked from here, are not.

The files here are read as untrusted input: JSON and `.npz` without pickles; anything
that does not read back as expected is a conversion that starts afresh, said in a line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import pickle
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Iterator
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
VERSION = 3  # 3: a split's windows start at its first frame (series.py)
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
    if not 0 <= seconds < math.inf:
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


def _walk(path: str, skip: Callable[[str], bool]) -> Iterator[tuple[str, list[int] | None]]:
    """`path` and every file under it (in name order; links to folders not followed, nor
    folders `skip` names), each with its size and modification time."""
    yield path, _stat(path)
    for root, folders, files in os.walk(path):
        folders[:] = sorted(name for name in folders if not skip(os.path.join(root, name)))
        for name in sorted(files):
            where = os.path.join(root, name)
            yield where, _stat(where)


def fingerprint(
    name: str,
    args: dict[str, Any],
    splits: dict[str, list[Any]],
    sources: Iterable[str | os.PathLike],
    settings: dict[str, Any],
    out: Path,
) -> str | None:
    """What a checkpoint must match to be continued (see the module's docstring), as
    `OPTIONS.FILES`: a hash of the format, its options and where its source paths lie
    (resolved: `raw` run from two folders is two sources), and one of the data: the work
    items, and the size and time of every file they name or that lies under a source path
    (`out` and its staging folders apart: an `--out` inside a source); `same_options`
    compares the first. None when the work items have no stable form (no checkpoints then).
    Hashed as it goes, a block of work items at a time: a million of them cost no copy."""
    options, data = hashlib.sha256(), hashlib.sha256()
    sources = [os.fspath(path) for path in sources]

    def add_files(found: Iterable[tuple[str, list[int] | None]]) -> None:
        for path, size_time in found:
            if size_time is not None:
                data.update(json.dumps([path, size_time]).encode())

    where = [os.path.realpath(path) for path in sources]
    options.update(json.dumps(_stable([VERSION, name, args, settings, where], []),
                              sort_keys=True).encode())  # fmt: skip
    try:
        for split, items in splits.items():
            data.update(json.dumps(["split", split]).encode())
            for start in range(0, len(items), 1000):  # in blocks: fewer calls, bounded copies
                paths: list[str] = []
                block = [_stable(item, paths) for item in items[start : start + 1000]]
                data.update(json.dumps(block, sort_keys=True).encode())
                add_files((path, _stat(path)) for path in paths)
    except _Unstable as exc:
        log.warning("%s: no checkpoints (a work item holds a %s, which does not pickle): a stop "
                    "starts this conversion over", name, exc)  # fmt: skip
        return None
    ours = re.compile(rf"\.{re.escape(out.name)}\.(staging|ready|old)-.+-\d+")
    target = os.path.realpath(out)

    def skip(folder: str) -> bool:  # the output and its replacement's folders
        return os.path.realpath(folder) == target or (
            os.path.realpath(os.path.dirname(folder)) == os.path.dirname(target)
            and ours.fullmatch(os.path.basename(folder)) is not None
        )

    for path in sources:  # every file under a source folder (a frame of a sequence folder,
        add_files(_walk(path, skip))  # which work items name relative to it)
    return f"{options.hexdigest()}.{data.hexdigest()}"


def same_options(one: str, other: str) -> bool:
    """Whether two fingerprints are of the same format, options and work items (their
    files may differ)."""
    return one.split(".")[0] == other.split(".")[0]


def _write_durably(path: Path, data: bytes) -> None:
    """`path` holds `data` or what it held before, whatever stops the process."""
    temporary = path.with_name(path.name + ".partial")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class Checkpoints:
    """A conversion's checkpoints in `staging` (see the module's docstring)."""

    def __init__(self, staging: Path, fingerprint: str) -> None:
        self.folder = staging / STATE_DIR
        self.fingerprint = fingerprint
        self.every = checkpoint_every()
        self.last = time.monotonic()
        self.lines: list[str] = []
        """The samples written since the last checkpoint, a JSON line each."""
        self.generation = 0
        self.log_digest = hashlib.sha256()
        """Of the samples' log as the last checkpoint counts it."""

    def start(self) -> None:
        """Checkpoints from scratch (a new conversion, or every split again in float32)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir()
        (self.folder / LOG_FILE).write_bytes(b"")
        self.lines, self.generation = [], 0
        self.log_digest = hashlib.sha256()

    def go_on(self, saved: Saved) -> None:
        """From a checkpoint read back (`load`)."""
        self.generation, self.log_digest = saved.generation, saved.log_digest

    def note(self, split: str, key: str, number: int, digest: bytes, static: bool) -> None:
        """One sample written (`number`: its item's in the split)."""
        self.lines.append(json.dumps([split, key, number, digest.hex(), static]) + "\n")

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every

    def save(
        self, header: dict[str, Any], arrays: dict[str, np.ndarray], files: list[Path]
    ) -> None:
        """A checkpoint: `files` (the shards closed, the splits done since the last one)
        synced first, with their folders, then the samples' lines, the arrays and last the
        header that names them and holds their SHA-256 and its own (the checkpoint counts
        from its rename)."""
        for path in files:
            sync_folder(path)  # a file: its data
        for folder in dict.fromkeys(path.parent for path in files):
            sync_folder(folder)
        sync_folder(self.folder.parent)  # the split folders in the staging folder
        data = "".join(self.lines).encode("utf-8")
        with open(self.folder / LOG_FILE, "ab") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            length = handle.tell()
        self.log_digest.update(data)
        self.lines = []
        self.generation += 1
        name = f"arrays-{self.generation}.npz"
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        _write_durably(self.folder / name, buffer.getvalue())
        state = {**header, "version": VERSION, "fingerprint": self.fingerprint,
                 "log_bytes": length, "log_sha256": self.log_digest.hexdigest(), "arrays": name,
                 "arrays_sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
                 **slurm_job()}  # fmt: skip
        state["checksum"] = _checksum(state)
        _write_durably(self.folder / STATE_FILE, json.dumps(state).encode())
        sync_folder(self.folder)
        for old in self.folder.glob("arrays-*.npz"):
            if old.name != name:
                old.unlink()
        self.last = time.monotonic()


def _checksum(state: dict[str, Any]) -> str:
    """SHA-256 of a header without its own checksum: a header that changed on disk (a bit
    flipped, an edit) is not taken for the checkpoint it was."""
    rest = {key: value for key, value in state.items() if key != "checksum"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


STATE_LIMIT = 1 << 26
"""Bytes a header or arrays file may hold (64 MiB); beyond, not a checkpoint of ours."""


def _read(path: Path, limit: int = STATE_LIMIT) -> bytes:
    """A regular file's bytes, never through a link, at most `limit` of them (OSError or
    ValueError otherwise)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or found.st_size > limit:
            raise ValueError(f"{path.name} is no file of {limit} bytes at most")
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def read_header(staging: Path) -> dict[str, Any] | None:
    """The header of the checkpoint in a staging folder, as written (its checksum holds);
    None when it has none, or one that does not read."""
    try:
        header = json.loads(_read(staging / STATE_DIR / STATE_FILE))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict) or header.get("version") != VERSION:
        return None
    if header.get("checksum") != _checksum(header):
        return None
    return header


def saved_fingerprint(staging: Path) -> str | None:
    """The fingerprint of the checkpoint in a staging folder; None when it has none (or
    one that does not read)."""
    header = read_header(staging)
    found = None if header is None else header.get("fingerprint")
    return found if isinstance(found, str) else None


@dataclasses.dataclass
class Saved:
    """A checkpoint read back (`load`)."""

    header: dict[str, Any]
    arrays: dict[str, np.ndarray]
    log: Path
    length: int
    log_digest: Any
    """SHA-256 (a hashlib object) of the log's first `length` bytes, to go on from."""
    generation: int

    def samples(self) -> Iterator[tuple[str, str, int, bytes, bool]]:
        """Every sample written before the checkpoint: (split, key, item number, digest,
        static). ValueError (or TypeError) for a line that is not one."""
        with open(os.open(self.log, os.O_RDONLY | os.O_NOFOLLOW), "rb") as handle:
            left = self.length
            for line in handle:
                left -= len(line)
                if left < 0:
                    break
                split, key, number, digest, static = json.loads(line)
                yield str(split), str(key), int(number), bytes.fromhex(digest), bool(static)


def load(staging: Path) -> Saved:
    """The checkpoint in `staging`, checked against the SHA-256 its header holds (the
    samples' log cut to its length there: the lines after it are the shard the stop cut
    short); `CannotResume` says why it does not read."""
    folder = staging / STATE_DIR
    try:
        header = read_header(staging)
        if header is None:
            raise CannotResume("its header does not read, or changed since it was written")
        name, length = header.get("arrays"), header.get("log_bytes")
        if not isinstance(name, str) or not re.fullmatch(r"arrays-\d{1,18}\.npz", name):
            raise CannotResume(f"its arrays are named {name!r}")
        if not _is(length, int, 0):
            raise CannotResume(f"its log's length is {length!r}")
        data = _read(folder / name)
        if hashlib.sha256(data).hexdigest() != header.get("arrays_sha256"):
            raise CannotResume(f"{name} changed since it was written")
        with np.load(io.BytesIO(data), allow_pickle=False) as found:
            arrays = {key: found[key] for key in found.files}
        digest = _cut_log(folder / LOG_FILE, length)
        if digest.hexdigest() != header.get("log_sha256"):
            raise CannotResume(f"{LOG_FILE} changed since it was written")
        generation = int(name.removeprefix("arrays-").removesuffix(".npz"))
        _check_header(header, arrays)
    except CannotResume:
        raise
    except (OSError, ValueError, KeyError, TypeError, MemoryError) as exc:  # damaged
        raise CannotResume(f"its checkpoint does not read ({type(exc).__name__}: {exc})") from exc
    return Saved(header, arrays, folder / LOG_FILE, length, digest, generation)


def _cut_log(path: Path, length: int) -> Any:
    """The log cut to `length` bytes (never through a link, never grown); its SHA-256."""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or found.st_size < length:
            raise ValueError(f"{path.name} holds {found.st_size} bytes, fewer than {length}")
        os.ftruncate(fd, length)  # the lines of the samples after the checkpoint
        digest = hashlib.sha256()
        with os.fdopen(os.dup(fd), "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        return digest
    finally:
        os.close(fd)


def _is(value: Any, kind: type, low: int | None = None) -> bool:
    """`value` of `kind` (a bool is no int here), at least `low`."""
    if isinstance(value, bool) and kind is not bool:
        return False
    return isinstance(value, kind) and (low is None or value >= low)


def _check_header(header: Any, arrays: dict[str, np.ndarray]) -> None:
    """A checkpoint's header and arrays of the kinds and shapes a conversion goes on from
    (its files are read as untrusted input); `CannotResume` names what is not."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CannotResume(f"its checkpoint's {what} is not as written")

    need(isinstance(header, dict), "header")
    done = header.get("done")
    need(isinstance(done, list) and all(_is(s, str) for s in done), "list of splits done")
    need(_is(header.get("quantize"), bool), "quantize")
    split = header.get("split")
    need(split is None or _is(split, str), "split")
    if split is None:
        need(bool(done), "list of splits done")
        return
    for name in ("number", "skip", "filled", "values"):
        need(_is(header.get(name), int, 0), name)
    need(_is(header.get("key"), str), "key")
    need(_is(header.get("windows"), bool), "windows")
    writer = header.get("writer")
    need(isinstance(writer, dict), "writer")
    shape, counts, digests = writer.get("shape"), writer.get("counts"), writer.get("digests")
    need(
        isinstance(shape, list) and len(shape) == 4 and all(_is(n, int, 1) for n in shape),
        "frame shape",
    )
    need(_is(writer.get("dtype"), str) and _is(writer.get("first_key"), str), "dtype")
    need(isinstance(counts, list) and all(_is(n, int, 1) for n in counts), "shard counts")
    need(isinstance(digests, list) and all(_is(d, str) for d in digests), "shard hashes")
    stats = writer.get("stats")
    need(isinstance(stats, dict) and _is(stats.get("per_pixel"), bool), "statistics")
    need(_is(stats.get("frames"), int, 0) and isinstance(stats.get("series"), list), "statistics")
    channels, pixels = shape[1], tuple(shape[1:])
    expected = {
        **dict.fromkeys(("count", "total", "total_sq", "low", "high", "fill"), (channels,)),
        **dict.fromkeys(("pixel_total", "pixel_count", "pixel_fill"), pixels),
        **{f"counted_{n}": None for n in range(len(stats["series"]))},
    }
    need(set(arrays) <= set(expected), "arrays")
    for name, array in arrays.items():
        need(array.dtype.kind in "biuf", f"array {name}")
        need(expected[name] is None and array.ndim == 1 or array.shape == expected[name],
             f"array {name}")  # fmt: skip
    need(all(f"counted_{n}" in arrays for n in range(len(stats["series"]))), "series")
