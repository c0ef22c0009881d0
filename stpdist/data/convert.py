"""Raw source → shards + index: the driver behind `stpdist shard …`.

A source (see `sources/`) lists work items per split and turns one item into samples
`(key, frames T×C×H×W, meta)`. The driver loads items in parallel worker processes, writes
them in item order (so the output does not depend on the worker count), shows progress (a
bar on a terminal, a plain line every 30 s in a log file), verifies the written counts,
and never leaves a half-written split looking valid: a split folder gets its `index.json`
only once complete, and is removed on error.

The whole dataset is written into a staging folder beside `out` and swapped in only once
every split is complete and verified, so neither a bad source nor a crash can cost the
dataset already at `out`: until the swap the old one is untouched; during it the old one
is at a hidden folder beside `out`, never deleted before the new one is in place; a swap
that a crash interrupted is finished or undone by the next `shard` or reader of `out` (see
`staging.py`). An `out` that is, or contains, a source path is
refused (an overwrite would delete the raw files), and so is one that holds anything but an
earlier dataset (split folders with an `index.json`, the README.md card), even with
`overwrite`: it replaces an earlier conversion, never a folder of other files. Every split
must hold frames of one shape T×C×H×W: one model trains and is evaluated on them all.

Beside the splits goes a README.md dataset card (see `write_card`): what the folder holds,
how to load it with stpdist, and YAML front matter that makes Hugging Face `datasets` read
the tar shards as the data. A README.md of the user's own is kept instead.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import fnmatch
import functools
import hashlib
import io
import itertools
import json
import logging
import math
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import pickle
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
from tqdm.auto import tqdm

from ..console import Terminated, check_not_interrupted, shows_progress, sigterm_as_interrupt
from ..errors import InputError, MissingInput, OutputExists, alike
from ..provenance import file_sha256
from .format import (
    CLIMATOLOGY_FILE,
    FRAMES_EXT,
    INDEX_FILE,
    SERIES_INDEX,
    SHARD_PATTERN,
    ShardFormatError,
    SplitIndex,
    SplitWriter,
    as_float32,
    check_unchanged,
    count_samples,
    iter_shard,
    read_index,
    require_file,
)
from .resume import (
    STATE_DIR,
    CannotResume,
    Checkpoints,
    Saved,
    fingerprint,
    load,
    read_header,
    same_options,
    saved_fingerprint,
)
from .staging import (
    CHECKPOINT,
    as_final,
    checkpointed,
    holds_working_folder,
    leftover,
    make_durable,
    recover,
    sync_folder,
    writer_running,
)

Sample = tuple[str, np.ndarray, dict[str, Any]]
log = logging.getLogger("stpdist")  # warnings: stderr, never stdout (stdout is for results)


class Source(Protocol):
    name: str
    value_scale: float
    """Scale of the stored values (frames / scale in [0, 1])."""
    grid: float | None
    """When set, float frames that lie exactly on the k/grid lattice are stored as uint8."""

    def splits(self) -> dict[str, list[Any]]: ...

    def load(self, item: Any) -> list[Sample]: ...

    def args(self) -> dict[str, Any]: ...

    # Optional, read with getattr once `splits()` has run (geoscience sources set them):
    # variables: list of {"name", "units"} per channel; latitudes / longitudes: degrees per
    # row / column; climatology: True to store the C×H×W mean of each split (see format.py).
    # Optional, read with getattr: `root`, `path`, `paths` (a list, or a property), the raw
    # files and folders read, which `out` must never be nor contain (see `source_paths`);
    # `check_index(index)`, called with each split's index once it is written (its
    # statistics), to refuse a dataset that would not train as stored (see generic.py).


class _Empty(Exception):
    """A split that yielded no samples: it is not written."""


class OffGrid(Exception):
    """A sample's values do not lie on the uint8 grid: the dataset, every split, is stored
    as float32 (one value scale for all; `split` is the one found off the grid)."""

    split = ""


def _quantize(frames: np.ndarray, grid: float) -> np.ndarray:
    scaled = frames.astype(np.float64) * grid
    rounded = np.round(scaled)
    if (
        rounded.min() < 0
        or rounded.max() > 255
        or not np.array_equal((rounded / grid).astype(frames.dtype), frames)
    ):
        raise OffGrid
    return rounded.astype(np.uint8)


def source_paths(source: Any) -> list[Path]:
    """The raw paths a source reads: its `root`, `path` and `paths` (a field or a property;
    a source whose inputs sit elsewhere, such as the digits file of the moving digits or the
    catalog and data folder of SEVIR, lists them as `paths`)."""
    found: list[Any] = []
    for name in ("root", "path"):
        value = getattr(source, name, None)
        if isinstance(value, str | os.PathLike):
            found.append(value)
    paths = getattr(source, "paths", None)
    if isinstance(paths, list | tuple):
        found += [p for p in paths if isinstance(p, str | os.PathLike)]
    return [Path(p) for p in found]


def _check_not_source(out: Path, sources: Sequence[str | Path]) -> None:
    """Refuse an `out` that is, or contains, one of the source paths."""
    target = out.resolve()
    for source in sources:
        resolved = Path(source).resolve()
        if resolved == target or target in resolved.parents:
            raise InputError(
                f"--out {out} is or contains the source {source}; writing there would "
                "delete the raw data: choose another output folder"
            )


def _not_a_dataset(out: Path) -> list[str]:
    """What in `out` no conversion wrote: anything but split folders (holding `index.json`,
    with nothing but it, their shards and a climatology inside) and the README.md card
    (ours, or the user's, which a conversion carries over)."""
    found = []
    for entry in sorted(out.iterdir()):
        if entry.is_symlink():
            found.append(entry.name)
        elif entry.is_dir() and not (entry / INDEX_FILE).is_file():
            found.append(f"{entry.name}/")
        elif entry.is_dir():
            written = (INDEX_FILE, f"{entry.name}-*.tar", CLIMATOLOGY_FILE)
            found += [f"{entry.name}/{path}" for path in _foreign_files(entry, written)]
        elif not entry.is_dir() and entry.name != CARD_FILE:
            found.append(entry.name)
    return found


class EarlierOutput(NamedTuple):
    """What an earlier run of a command left in its output folder: the only entries its
    `--overwrite` replaces (anything else there is the user's, and refused)."""

    command: str
    entries: tuple[str, ...]
    """Glob patterns of the top-level files it writes."""
    markers: tuple[str, ...]
    """Patterns of which an earlier run's output holds a file (its predictions, its
    weights), or one of `folders`: without one, `entries` are not taken for its output (a
    `config.yaml` or `index.json` of the user's own, in a folder of theirs, is theirs)."""
    folders: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(folder name, glob patterns of the paths of the files it writes inside it): the
    folders it writes (`samples`), whose every file must match, since a user's file put
    there would go with them."""

    def foreign(self, out: Path) -> list[str]:
        """What in `out` is no earlier output of the command (a symbolic link always
        counts): named as `name`, `folder/` or `folder/path`."""
        entries = sorted(out.iterdir())
        inside = dict(self.folders)
        marked = any(
            not entry.is_symlink()
            and (entry.is_file() or (entry.is_dir() and entry.name in inside))
            and _matches(entry.name, self.markers)
            for entry in entries
        )
        found = []
        for entry in entries:
            plain = not entry.is_symlink()
            if marked and plain and entry.name in inside and entry.is_dir():
                found += [
                    f"{entry.name}/{path}" for path in _foreign_files(entry, inside[entry.name])
                ]
            elif not (marked and plain and entry.is_file() and _matches(entry.name, self.entries)):
                found.append(entry.name + ("/" if entry.is_dir() and plain else ""))
        return found

    def describe(self, out: Path | None = None) -> str:
        """Its output in a few words, for a refusal: the names it writes, or those `out`
        holds (what is there, not all it could have written)."""
        names = [*self.entries, *(f"{name}/" for name, _ in self.folders)]
        if out is not None:
            held = [e.name + ("/" if e.is_dir() and not e.is_symlink() else "")
                    for e in sorted(out.iterdir())]  # fmt: skip
            names = held[:4] + ([f"{len(held) - 4} more"] if len(held) > 4 else []) or names
        return f"an earlier {self.command}'s output ({', '.join(names)})"

    def refuse_foreign(self, out: Path) -> None:
        """Refuse an `out` that holds anything but this output, naming what: `--overwrite`
        would not replace it either, so it is said before `--overwrite` is asked for."""
        _refuse_foreign(out, self.foreign(out), f"stpdist {self.command}", self.describe())


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether `name` (a relative path) matches one of `patterns`, each `/`-separated part
    alone (fnmatch's `*` would also match a `/`: `*.png` took `sub/x.png` for a picture)."""
    parts = name.split("/")
    return any(
        len(parts) == len(pattern.split("/"))
        and all(map(fnmatch.fnmatchcase, parts, pattern.split("/")))
        for pattern in patterns
    )


def _foreign_files(folder: Path, patterns: Sequence[str]) -> list[str]:
    """Paths (relative to `folder`) of the files and links under it that match none of
    `patterns`; empty folders are nothing."""
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink() or (path.is_file() and not _matches(relative, patterns)):
            found.append(relative)
        elif not path.is_dir() and not path.is_file():  # a fifo, a socket
            found.append(relative)
    return found


def _folder_state(folder: Path) -> tuple[int, int] | None:
    """(inode, mtime) of `folder`, None when there is none: what changes when another
    command swaps in its output or writes into it."""
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _refuse_foreign(out: Path, found: list[str], whose: str, which: str) -> None:
    if not found:
        return
    shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    raise OutputExists(
        f"{_OUT_NAME.get()} {out} holds {shown}, which no {whose} wrote; --overwrite replaces only "
        f"{which}, never other files: choose another {_OUT_NAME.get()}, or move those out of it"
    )


_OCCUPIED_ADVICE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "occupied_advice", default=None
)


_OUT_NAME: contextvars.ContextVar[str] = contextvars.ContextVar("out_name", default="--out")
"""What the output folder is called in errors: `--out`, or `data.root` where training
generates its dataset (an admin review: train, which has no --out, was told to name
another --out)."""


@contextlib.contextmanager
def output_named(name: str) -> Iterator[None]:
    token = _OUT_NAME.set(name)
    try:
        yield
    finally:
        _OUT_NAME.reset(token)


@contextlib.contextmanager
def occupied_advice(advice: str) -> Iterator[None]:
    """Within it, an output folder that is not empty is refused with `advice` (what to do)
    in place of "pass --overwrite to replace it": for callers that have no --overwrite,
    such as `stpdist train` generating its dataset from `data.synthesize`."""
    token = _OCCUPIED_ADVICE.set(advice)
    try:
        yield
    finally:
        _OCCUPIED_ADVICE.reset(token)


def generation_advice(root: str | Path, needed: str = "val", on_the_fly: bool = True) -> str:
    """What to do when training would generate `data.synthesize`'s splits into `root`
    (it has no --overwrite) and `root` holds something already, but not the `needed`
    split (`on_the_fly`: the training sequences are drawn fresh, only `needed` is read)."""
    advice = (
        "training generates data.synthesize's splits only into an empty folder: point "
        f"data.root and data.synthesize.root to an empty one, or remove {root}; to keep "
        f"what is there (such as a test split from `stpdist shard`), convert a {needed} "
        "split into it as well, which training then reads"
    )
    if on_the_fly:
        return advice + (
            f" (Moving MNIST: `stpdist shard mmnist-npy mnist_test_seq.npy --out {root} "
            "--splits val=1000,test=-1`)"
        )
    return advice + (
        ", or draw fresh training sequences every epoch (data.train_source: moving_digits), "
        "which needs only a validation split"
    )


def _check_out(
    out: Path,
    overwrite: bool,
    sources: Sequence[str | Path],
    dataset: bool = False,
    earlier: EarlierOutput | None = None,
) -> bool:
    """Checks before anything is written; returns whether `out` holds files to replace.
    `dataset`: `out` may hold only an earlier dataset (see `_not_a_dataset`), even with
    `overwrite`, which replaces that and nothing else; `earlier`: likewise, only what an
    earlier run of that command wrote."""
    _check_not_source(out, sources)
    if out.exists() and not out.is_dir():
        raise InputError(f"{_OUT_NAME.get()} {out} exists and is not a folder")
    occupied = out.is_dir() and any(out.iterdir())
    if not occupied:
        refuse_write_protected(out)  # an empty folder made read-only: kept, not replaced
        return False
    if dataset:
        which = "an earlier dataset (split folders with index.json, README.md)"
        _refuse_foreign(out, _not_a_dataset(out), "stpdist conversion", which)
    if earlier is not None:
        earlier.refuse_foreign(out)
    if not overwrite:
        advice = _OCCUPIED_ADVICE.get()
        if advice:
            raise OutputExists(f"{out} is not empty; {advice}")
        earlier = " (--overwrite replaces the earlier dataset there)" if dataset else ""
        stopped = checkpointed(out) if dataset else []
        if stopped:  # which the same command with --overwrite goes on from
            earlier += (
                f"; a conversion stopped at a checkpoint is kept beside it ({stopped[0].name}): "
                "with --overwrite, the command that made it goes on from it"
            )
        raise OutputExists(f"{out} is not empty; pass --overwrite to replace it{earlier}")
    refuse_write_protected(out)  # what it replaces: after the refusals of what it never would
    return True


def refuse_write_protected(out: Path) -> None:
    """An `out` that is, or holds, a folder whose mode allows no writing (`chmod -R a-w`: a
    user's protection) is refused before any work, even for root, who may write anyway:
    the swap renamed it aside, put the new output in place, then failed to delete it (exit
    1 after the replacement, and the hidden folder stuck every later command)."""
    import stat

    if not out.is_dir():
        return
    for folder, _, _ in os.walk(out):
        if not os.lstat(folder).st_mode & stat.S_IWUSR:  # every rank sees the same folder
            raise alike(InputError(
                f"{_OUT_NAME.get()} {out}: {'it' if Path(folder) == out else folder} is "
                "write-protected "
                f"(mode {stat.filemode(os.lstat(folder).st_mode)}), so it is not replaced: "
                f"make it writable (chmod -R u+w) or name another {_OUT_NAME.get()}"
            ))  # fmt: skip


@contextlib.contextmanager
def staged_output(
    out: str | Path,
    overwrite: bool,
    *,
    sources: Sequence[str | Path] = (),
    dataset: bool = False,
    earlier: EarlierOutput | None = None,
    kept: Callable[[Path, BaseException], bool] | None = None,
) -> Iterator[Path]:
    """A fresh staging folder beside `out` to write a dataset into; on a clean exit it
    replaces `out`, on an exception it is removed and `out` is left as it was (kept where
    `kept(staging, exception)` says so: a conversion's checkpoint, which says where, and
    which the same conversion goes on from; see `resume.py`).

    First a replacement of `out` that a crash interrupted is finished or undone (see
    `staging.py`). Checks next (before anything is written): `out` must not be, or contain, a
    source path, and a non-empty `out` needs `overwrite`; with `dataset` (or `earlier`), an
    `out` holding anything but an earlier dataset (or that command's earlier output) is
    refused even with `overwrite` (see `_check_out`). The
    old `out` is deleted only after the new one has been renamed into place.
    """
    out = Path(out)
    if out.is_symlink():  # replace the folder it points to, keep the link
        out = out.resolve()
    if holds_working_folder(out):
        raise InputError(
            f"{_OUT_NAME.get()} {out} is the current folder or holds it; the output folder "
            "is replaced "
            "as a whole: name a folder of its own"
        )
    busy = writer_running(out)
    if busy is not None:  # both wrote, and the first refused its own work at the end
        raise alike(OutputExists(
            f"{_OUT_NAME.get()} {out} is being written by another command ({busy}): wait for "
            f"it to finish, or name another {_OUT_NAME.get()}"
        ))  # fmt: skip
    recover(out, converting=kept is not None)
    _check_out(out, overwrite, sources, dataset, earlier)
    before = _folder_state(out)
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    staging = leftover(out, "staging")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if kept is None or not (staging / CHECKPOINT).is_file():  # else one it may go on from
            shutil.rmtree(staging, ignore_errors=True)  # a leftover of an earlier run of this pid
        staging.mkdir(exist_ok=True)
    except PermissionError as exc:  # named: the bare error named the hidden staging folder
        where = Path(os.fsdecode(exc.filename)).parent if exc.filename else out.parent
        raise alike(InputError(
            f"{_OUT_NAME.get()} {out}: cannot write in {where} ({exc.strerror}); the output "
            "is written "
            "beside it and then renamed into place, so its folder must be writable: name "
            f"another {_OUT_NAME.get()}"
        )) from exc  # fmt: skip
    try:
        yield staging
        if not any(staging.iterdir()):
            raise MissingInput(f"nothing was written for {out}")
        # checked again: `out` may have been filled while the dataset was written
        occupied = _check_out(out, overwrite, sources, dataset, earlier)
        if _folder_state(out) != before:  # another command's output: not replaced unasked
            raise OutputExists(
                f"{_OUT_NAME.get()} {out} was written by another command while this one ran: "
                "it is kept "
                "as that one left it, and this one's output was not written; run again to "
                "replace it"
            )
        check_not_interrupted()  # a Ctrl-C swallowed where it landed (a weakref callback)
        ready = leftover(out, "ready")
        make_durable(staging)  # on disk before it counts as complete (and the old goes)
        if kept is not None:  # a conversion's checkpoint: kept through all that, never in `out`
            shutil.rmtree(staging / STATE_DIR, ignore_errors=True)
            sync_folder(staging)
        os.rename(staging, ready)  # complete: from here on a crash finishes the swap
        sync_folder(out.parent)
    except BaseException as exc:
        if kept is None or not kept(staging, exc):
            shutil.rmtree(staging, ignore_errors=True)
            for folder in made:  # the folders made for `out` (innermost first), if still empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
        if (
            isinstance(exc, OSError)
            and not isinstance(exc, InputError)
            and _names_no_output(exc, staging)
        ):
            # a write's error (a full disk: ENOSPC, EDQUOT, EFBIG; numpy's "N requested and
            # M written") names no file, or one in the staging folder (removed, or kept with
            # a checkpoint): name `out`, so that the message says which disk (and the CLI its
            # free space)
            if exc.errno is not None:
                raise OSError(exc.errno, exc.strerror, str(out)) from exc
            if type(exc) is OSError:
                raise OSError(f"writing {out}: {exc}") from exc
        raise
    _swap(ready, out, occupied)


def _names_no_output(exc: OSError, staging: Path) -> bool:
    """Whether `exc` names no file, or one inside `staging`."""
    if exc.filename is None:
        return True
    try:
        return Path(os.fsdecode(exc.filename)).is_relative_to(staging)
    except (TypeError, ValueError):  # a file descriptor
        return False


def _swap(ready: Path, out: Path, occupied: bool) -> None:
    """`ready` becomes `out`; an `occupied` old `out` is deleted once the new one is there."""
    old = leftover(out, "old")
    if occupied:
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)  # atomic; from here to the next rename both copies exist
    elif out.is_dir():
        out.rmdir()  # empty
    try:
        os.rename(ready, out)
    except BaseException:
        if occupied:
            os.rename(old, out)  # put the old dataset back; the new one is dropped
        shutil.rmtree(ready, ignore_errors=True)
        raise
    if occupied:
        sync_folder(out.parent)  # the new one in place on disk before the old one goes
        shutil.rmtree(old)


def _first_nonfinite(frames_TCHW: np.ndarray, names: list[str] | None = None) -> str:
    """The first non-finite value and its position; the channel named by its variable when
    the source has names (`t2m`, not `c=0`)."""
    position = tuple(int(i) for i in np.argwhere(~np.isfinite(frames_TCHW))[0])
    count = int((~np.isfinite(frames_TCHW)).sum())
    named = ""
    if names and len(position) == 4 and position[1] < len(names):
        named = f", variable {names[position[1]]} in frame {position[0]}"
    return (
        f"{frames_TCHW[position]} at (t, c, y, x) = {position}{named} ({count} non-finite values)"
    )


def _finite(
    frames: np.ndarray,
    key: str,
    where: str,
    nan_fill: float | None,
    names: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(`frames` with NaN replaced by `nan_fill` when given, the mask of the values that were
    not NaN, or None when none was); any other non-finite value (and NaN without `nan_fill`)
    is an error naming the source item and the position. The mask keeps the filled values
    out of the split's statistics: the fill stands for no data, not for a value of the field."""
    if not np.issubdtype(frames.dtype, np.floating) or np.isfinite(frames).all():
        return frames, None
    if nan_fill is not None:
        valid = ~np.isnan(frames)
        frames = np.where(valid, frames, np.asarray(nan_fill, frames.dtype))
        if np.isfinite(frames).all():
            return frames, valid
    hint = "" if nan_fill is not None else " (--allow-nan FILL stores NaN as FILL)"
    raise InputError(f"{where}: sample {key} holds {_first_nonfinite(frames, names)}{hint}")


def describe(source: Source, item: Any) -> str:
    """What a work item reads, for messages: the source's `describe(item)` when it has one
    (items that are not file names), else the item itself (a path)."""
    describe_item = getattr(source, "describe", None)
    return describe_item(item) if describe_item is not None else str(item)


def _load(source: Source, item: Any) -> list[Sample]:
    """`source.load(item)`; an error that does not name what it read is re-raised naming it
    (the file, or the file and frames), as one line."""
    try:
        return source.load(item)
    except (ImportError, OffGrid, _Empty):
        raise
    except Exception as exc:
        where = describe(source, item)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, InputError) and where in message:
            raise
        if where in message:
            raise InputError(message) from exc
        raise InputError(f"{where}: {message}") from exc


def _write_split(
    source: Source,
    folder: Path,
    split: str,
    items: list[Any],
    pool: Any,
    quantize: bool,
    samples_per_shard: int,
    progress: bool,
    nan_fill: float | None = None,
    like: SplitIndex | None = None,
    copies: _Copies | None = None,
    run: _Run | None = None,
) -> SplitIndex:
    """One split into `folder`; `like`: a split written before, whose frame shape this one's
    must have (checked at its first sample, before anything of it is written); `copies`:
    where samples identical to earlier ones are counted, said once the split is written;
    `run`: the conversion's checkpoints, and the one of this split it goes on from."""
    scale = 255.0 if quantize else source.value_scale
    args = {**source.args(), "split": split, "stored_as_uint8": quantize}
    if nan_fill is not None:
        args["nan_fill"] = nan_fill
    at = run.position(split) if run is not None else None
    start = 0 if at is None else at.number
    todo = items[start:]  # a checkpoint's split: from its item on
    loaded = _in_order(pool, source, todo) if pool else map(functools.partial(_load, source), todo)
    origin: dict[str, int] = {} if at is None else at.origin  # key → number of its item
    names = [v["name"] for v in getattr(source, "variables", None) or [] if "name" in v] or None
    filled, values, windows = (0, 0, False) if at is None else (at.filled, at.values, at.windows)
    # windows: of a series, whose frames overlapping windows share
    with SplitWriter(
        folder,
        split,
        value_scale=scale,
        samples_per_shard=samples_per_shard,
        source=source.name,
        args=args,
        variables=getattr(source, "variables", None),
        latitudes=getattr(source, "latitudes", None),
        longitudes=getattr(source, "longitudes", None),
        climatology=bool(getattr(source, "climatology", False)),
    ) as writer:
        here: list[Any] = [None, 0, ""]  # the sample being written: item number, index, key
        if run is not None:
            writer.on_shard_closed = lambda: run.shard_closed(
                writer, {"quantize": quantize, "split": split, "number": here[0], "skip": here[1],
                         "key": here[2], "filled": filled, "values": values, "windows": windows}
            )  # fmt: skip
        if at is not None:
            writer.restore(at.writer, at.arrays, set(origin))
        reported = _progress(loaded, len(items), f"{source.name} {split}", folder, progress, start)
        for number, samples in enumerate(reported, start):
            check_not_interrupted()  # a Ctrl-C swallowed where it landed: stop now, not at the end
            where = describe(source, items[number])
            if at is not None and number == at.number:  # the checkpoint's item: from its sample
                samples = at.rest_of(samples, where)
            for index, (key, frames, meta) in enumerate(samples):
                if origin.get(key, number) != number:
                    first = describe(source, items[origin[key]])
                    raise InputError(
                        f"{where}: sample key {key!r} is also that of a sample from {first}; "
                        "keys must be unique in a split"
                    )
                here[:] = (
                    number,
                    index + (at.skip if at is not None and number == at.number else 0),
                    key,
                )
                first = writer.shape is None
                if like is not None and first:
                    _check_same_shape(like, split, frames.shape, where)
                grid = source.grid if quantize else None
                filled += _write_sample(writer, key, frames, meta, where, grid, nan_fill, names)
                origin[key] = number
                windows = windows or SERIES_INDEX in (meta or {})
                if copies is not None:
                    digest, static = copies.add(split, key, frames, where)
                    if run is not None:
                        run.note(split, key, number, digest, static)
                values += frames.size
                if like is not None and first:  # as stored (a grid quantizes to uint8)
                    _check_same_dtype(like, split, writer.dtype, where)
        if writer.shape is None:
            raise _Empty
    if filled:  # how much of the split is the fill: a number a user checks the data by
        log.warning(
            "%s: %d NaN value(s) stored as --allow-nan %g (%.3g%% of its values; left out of "
            "its statistics)%s",
            folder.name, filled, nan_fill, 100 * filled / values,
            "; counted in each window holding them: a value of the series in overlapping "
            "windows counts once a window" if windows else "",
        )  # fmt: skip
    if copies is not None:
        copies.end_split(split)
    return read_index(folder)


def _static(frames: np.ndarray) -> bool:
    """Whether every frame of a T×… sample is its first (no frames: static too)."""
    return frames.size == 0 or bool((frames == frames[:1]).all())


class _Copies:
    """Samples byte for byte those of an earlier sample, in the same split or another: a
    file copied under another name (`seq2 (1).npy`) or into two split folders trains on a
    sample twice, or scores val/test on samples trained on, without a word. Counted by a
    128-bit digest of each sample's frames (with their shape and dtype), and said once a
    split is written, with its first case; static samples, every frame the first (a radar's
    hours without rain: zeros beside a fixed mask; a still scene), are alike by nature and
    not counted."""

    def __init__(self) -> None:
        self._seen: dict[bytes, tuple[str, str, str]] = {}  # digest → (split, key, where)
        self._found: dict[str, dict[str, Any]] = {}  # split of the first → count, first case
        self._lines: list[str] = []

    def add(self, split: str, key: str, frames: np.ndarray, where: str) -> tuple[bytes, bool]:
        """Counts a sample; returns its digest and whether it was found static, what
        `replay` takes to count it again (a conversion's checkpoint)."""
        frames = np.ascontiguousarray(frames)
        digest = hashlib.blake2b(f"{frames.dtype.str}{frames.shape}".encode(), digest_size=16)
        digest.update(frames)
        static = self.replay(split, key, digest.digest(), lambda: _static(frames), where)
        return digest.digest(), static

    def replay(
        self, split: str, key: str, digest: bytes, static: Callable[[], bool], where: str
    ) -> bool:
        """Counts a sample by its digest (`static`: whether its frames are, asked only for
        a digest seen before); returns the answer, False where not asked."""
        earlier = self._seen.setdefault(digest, (split, key, where))
        if earlier[:2] == (split, key):
            return False
        if static():
            return True
        found = self._found.setdefault(earlier[0], {"count": 0, "first": (earlier, key, where)})
        found["count"] += 1
        return False

    def end_split(self, split: str) -> None:
        """The warnings of `split`'s samples that copy earlier ones, a line for each split
        they copy, kept for `say`; starts counting the next split."""
        for other, found in self._found.items():
            (_, first_key, first_where), key, where = found["first"]
            case = f"first: {key!r} of {where} = {first_key!r} of {first_where}"
            if other == split:
                self._lines.append(
                    f"{split}: {found['count']} sample(s) are byte-identical to earlier samples "
                    f"of the split ({case}): a file copied under another name counts its "
                    "samples twice; remove the copy"
                )
            else:
                self._lines.append(
                    f"{split}: {found['count']} sample(s) are byte-identical to samples of split "
                    f"{other} ({case}): the same data in two splits (a file copied under "
                    "another name, or into two split folders?) scores a model on data it "
                    "trained on; remove it from one"
                )
        self._found = {}

    def say(self) -> None:
        """The warnings, once every split is written (a split written again, every split
        in float32 after an off-grid one, says them once)."""
        for line in self._lines:
            log.warning("%s", line)


PROGRESS_LINE_EVERY = 30.0
"""Seconds between progress lines where stderr is not a terminal (a log file)."""


def _progress(
    loaded: Iterator[Any],
    total: int,
    desc: str,
    folder: Path,
    progress: bool,
    start: int = 0,
    unit: str = "item",
) -> Iterator[Any]:
    """`loaded`, reporting how far the writer is on stderr: a bar on a terminal; in a log
    file (a SLURM job's), where a bar's redraws pile up ten a second, a plain line every
    `PROGRESS_LINE_EVERY` seconds and one at the end, once any was said (`desc 1200/5000
    items, 3.1 GB written, 12 min elapsed, about 38 min left`). Nothing without `progress`.
    `start`: the items written before (a conversion going on from a checkpoint); `unit`:
    what is counted (the shards kept from a checkpoint, read again)."""
    if not progress:
        yield from loaded
        return
    if shows_progress():
        yield from tqdm(loaded, total=total, desc=desc, unit=unit, initial=start)
        return
    began = last = time.monotonic()
    done = said = start
    for samples in loaded:
        yield samples
        done += 1  # written: the writer asks for the next one
        now = time.monotonic()
        if now - last >= PROGRESS_LINE_EVERY:
            last, said = now, done
            _progress_line(desc, done, total, folder, now - began, start, unit)
    if start < said < done:  # a line was said: the log shows the split's end too
        _progress_line(desc, done, total, folder, time.monotonic() - began, start, unit)


def _progress_line(
    desc: str,
    done: int,
    total: int,
    folder: Path,
    elapsed: float,
    start: int = 0,
    unit: str = "item",
) -> None:
    written = 0
    with contextlib.suppress(OSError):  # the folder's shards, the one being written too
        written = sum(entry.stat().st_size for entry in os.scandir(folder) if entry.is_file())
    line = f"{desc}: {done}/{total} {unit}s, {_size(written)} written, {_duration(elapsed)} elapsed"
    if start < done < total:
        line += f", about {_duration(elapsed * (total - done) / (done - start))} left"
    print(line, file=sys.stderr, flush=True)  # beside warnings: stdout is for results


def _size(count: float) -> str:
    """Bytes in 3 digits: `812 B`, `3.1 GB`."""
    for unit in ("B", "KB", "MB", "GB"):
        if count < 999.5:  # stays below 1000 once rounded to 3 digits
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.3g} {unit}"
        count /= 1000
    return f"{count:.3g} TB"


def _duration(seconds: float) -> str:
    """`45 s`, `12 min`, `3 h 05 min` (whole units, rounded down)."""
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _in_order(pool: ProcessPoolExecutor, source: Source, items: list[Any]) -> Iterator[Any]:
    """Each item's samples, loaded by the pool's workers (`_load_in_worker`), once what its
    worker logged is said, with at most two items per worker loaded ahead of the one
    written: `pool.map` hands out every item at once, and the samples that the writer
    (slower than the readers: it encodes, sums the statistics and writes) has not reached
    pile up in memory, up to the whole dataset. A worker killed (the out-of-memory killer)
    is an error that says so, naming the items then loading."""
    load = functools.partial(_load_in_worker, source)
    ahead = 2 * pool._max_workers  # the pool's worker count
    pending: collections.deque = collections.deque()
    queue = iter(items)
    done = 0  # items whose samples were handed on

    def hand_out(count: int) -> None:
        for item in itertools.islice(queue, count):
            pending.append(pool.submit(load, item))

    try:
        hand_out(ahead)
        while pending:
            try:
                samples, logged = pending[0].result()
            except BrokenProcessPool:
                raise
            except Exception as exc:  # said before the error, as with one process
                _said_by_main(getattr(exc, "stpdist_worker_log", ()))
                raise
            pending.popleft()
            done += 1
            _said_by_main(logged)
            hand_out(1)
            yield samples
    except BrokenProcessPool:  # from a result, or from handing out the next item
        after = len(pending) - 1
        more = f" or one of the {after} items after it" if after > 0 else ""
        raise RuntimeError(
            f"a worker process ended abruptly, loading {describe(source, items[done])}{more} "
            "(killed: out of memory? the kernel's log says: `dmesg`); fewer --workers hold "
            "fewer items in memory"
        ) from None


def _check_same_shape(like: SplitIndex, split: str, shape: tuple[int, ...], where: str) -> None:
    """Refuse a split whose frames are not T×C×H×W as those of the split written before:
    one model trains and is evaluated on every split, so a difference only shows later, in
    training (at the first validation, an epoch in)."""
    if list(shape) == list(like.shape):
        return
    size = "×".join
    if list(shape[1:]) != list(like.shape[1:]):
        fix = "resize them to one frame size, or convert the splits as separate datasets"
    else:
        fix = (
            f"cut every sequence to {min(shape[0], like.shape[0])} frames, or convert the "
            "splits as separate datasets"
        )
    raise InputError(
        f"{where}: split {split} has frames {size(map(str, shape))}, split {like.split} "
        f"{size(map(str, like.shape))} (T×C×H×W); every split must hold sequences of one "
        f"shape (a model trains and is evaluated on them all): {fix}"
    )


def _check_same_dtype(like: SplitIndex, split: str, stored: str | None, where: str) -> None:
    """Refuse a split whose frames are stored in another dtype than the split written
    before: the dataset has one value scale, often guessed from the dtype (255 for uint8),
    and a float split beside uint8 ones was divided by 255 without a word."""
    if stored is None or stored == like.dtype:
        return
    raise InputError(
        f"{where}: split {split} has {stored} frames, split {like.split} {like.dtype}; the "
        "dataset has one value scale (frames ÷ scale in [0, 1]) for every split: convert "
        "the files to one dtype, or the splits as separate datasets"
    )


def _write_sample(
    writer: SplitWriter,
    key: str,
    frames: np.ndarray,
    meta: dict[str, Any],
    where: str,
    grid: float | None,
    nan_fill: float | None,
    names: list[str] | None = None,
) -> int:
    """One sample into `writer`: NaN filled (or refused), quantized to the `grid` when
    given; a bad sample is an error naming `where` it came from. Returns how many values
    were filled."""
    try:
        frames, valid = _finite(frames, key, where, nan_fill, names)
        if grid:
            frames = _quantize(frames, grid)
        elif frames.dtype == np.float64:  # stored float32: what training reads anyway
            frames = as_float32(frames, f"{where}: sample {key}", "t, c, y, x")
        writer.write(key, frames, meta, valid=valid)
    except ShardFormatError as exc:  # the writer's checks: shape, dtype, key
        raise InputError(f"{where}: {exc}") from None
    return 0 if valid is None else int(valid.size - np.count_nonzero(valid))


def convert(
    source: Source,
    out: str | Path,
    *,
    workers: int = 1,
    overwrite: bool = False,
    samples_per_shard: int = 1000,
    progress: bool = True,
    nan_fill: float | None = None,
) -> dict[str, SplitIndex]:
    """Write every split of `source` under `out`; returns the indexes.

    The splits are written into a staging folder and replace `out` only once all are
    complete (see `staged_output`), so a failing source never costs the old dataset.
    `nan_fill`: store NaN as this value (geoscience data that marks missing values with NaN);
    without it a NaN or Inf in the frames is an error naming the item and the position.
    `progress`: say how far each split is on stderr, a bar on a terminal and a plain line
    every `PROGRESS_LINE_EVERY` seconds in a log file (see `_progress`).
    """
    if isinstance(samples_per_shard, bool) or not (
        isinstance(samples_per_shard, int) and samples_per_shard >= 1
    ):
        raise InputError(f"--samples-per-shard {samples_per_shard}: expected at least 1")
    if nan_fill is not None and not math.isfinite(nan_fill):
        raise InputError(f"--allow-nan {nan_fill}: the NaN fill value must be finite")
    value_scale = getattr(source, "value_scale", None)
    if value_scale is not None and not (math.isfinite(value_scale) and value_scale > 0):
        raise InputError(f"{source.name}: value scale must be a positive number, got {value_scale}")
    for path in source_paths(source):  # a FIFO (or socket, device) would block a reader
        if os.path.lexists(path):
            require_file(path, folder_too=True)
    sources = source_paths(source)
    with (
        _terminate_cleanly(),
        staged_output(out, overwrite, sources=sources, dataset=True, kept=_kept) as staging,
    ):
        splits = source.splits()
        if not any(splits.values()):
            raise MissingInput(f"{source.name}: found nothing to convert")
        settings = {"samples_per_shard": samples_per_shard, "nan_fill": nan_fill,
                    "grid": source.grid, "value_scale": getattr(source, "value_scale", None)}  # fmt: skip
        run = _Run.begin(source, staging, splits, sources, settings, progress)
        try:
            written = _write_splits(
                source, staging, splits, workers, samples_per_shard, progress, nan_fill, run
            )
        except CannotResume as exc:  # the checkpoint's item did not load as it had
            log.warning("%s: cannot go on from the stopped conversion's checkpoint (%s); "
                        "starting over", out, exc)  # fmt: skip
            run = _Run.afresh(run, staging)
            written = _write_splits(
                source, staging, splits, workers, samples_per_shard, progress, nan_fill, run
            )
        if not written:  # each written split's shard counts were verified by SplitWriter
            raise MissingInput(f"{source.name}: no split yielded a sample; {out} left as it was")
        run.all_done()  # kept until the dataset is complete (`staged_output` removes it)
        write_card(staging, out, source.name, written)
    return written


# ------------------------------------------------------------------ dataset card
# Pointed at the folder, Hugging Face `datasets` reads the `configs` of a README.md's YAML
# front matter; without one it guesses by extension and takes `index.json` for the data.
# The card says the tar shards are the data (its webdataset builder decodes `.npy` and
# `.json` members). Ours carry CARD_MARKER and are rewritten by every conversion; a
# README.md without it is the user's, carried over to the new dataset untouched.
CARD_FILE = "README.md"
CARD_MARKER = (
    "<!-- stpdist dataset card: rewritten by each conversion; delete this line to keep edits -->"
)


def hf_split_name(split: str) -> str:
    """A split name Hugging Face accepts (word characters only: `-` becomes `_`)."""
    return re.sub(r"\W", "_", split)


def card_text(
    out: str | Path,
    source_name: str,
    indexes: dict[str, SplitIndex],
    written_by: str = "stpdist shard",
) -> str:
    """The README.md of a converted dataset: YAML front matter that maps each split to its
    `<split>/*.tar` shards, then what the folder holds and how to load it."""
    yaml = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in indexes:
        yaml += [f"  - split: {hf_split_name(split)}", f'    path: "{split}/*.tar"']
    yaml.append("---")
    rows = [
        f"| {split} | {index.num_samples} | {len(index.shards)} | "
        f"{'×'.join(map(str, index.shape))} | {index.dtype} | {index.value_scale:g} |"
        for split, index in indexes.items()
    ]
    first = next(iter(indexes.values()))
    variables = (
        ", ".join(f"{v.get('name')} [{v.get('units') or '-'}]" for v in first.variables)
        or f"{first.shape[1]} channel(s), unnamed"
    )
    root = Path(out).as_posix()
    first_split = next(iter(indexes))
    train = (  # for the commands' lines: a path with a space is one word (a diff review)
        f"""
## Train with stpdist

Point a config's `data.root` at this folder; the input/target frame counts are chosen
there (`data.num_input_frames`, `data.num_output_frames`), not in the shards:

    stpdist train CONFIG {shlex.quote(f"data.root={root}")}
    stpdist inspect {shlex.quote(root)} --verify
"""
        if written_by == "stpdist shard"
        else f"""
## Read with stpdist

    stpdist inspect {shlex.quote(root + "/" + first_split)} --verify
"""
    )
    text = f"""\
{CARD_MARKER}

# {Path(out).name}: {source_name} as WebDataset shards for stpdist

Written by `{written_by}`. One folder per split, each holding tar shards
(`<split>-000000.tar`, …) and an `index.json` (sample counts per shard, shape, dtype,
value scale, per-channel statistics, the converter's arguments). Each sample in a shard is
`<key>.frames.npy` (the whole sequence, T×C×H×W, in the stored dtype) and `<key>.json`
(where it came from). Stored values divided by the value scale lie in [0, 1] for 8-bit
data; a value scale of 1 means physical units. Channels: {variables}.

| split | samples | shards | T×C×H×W | dtype | value scale |
|---|---|---|---|---|---|
{chr(10).join(rows)}
{train}
## Read with Hugging Face datasets

The front matter above maps each split to its shards, so the folder loads as a webdataset:

    import datasets
    ds = datasets.load_dataset({json.dumps(root)}).with_format("numpy")
    frames = ds["{hf_split_name(first_split)}"][0]["frames.npy"]  # T×C×H×W

`datasets` caches what it read under the folder's path: after this folder is written
again (`--overwrite`), load it with `download_mode="force_redownload"`, or it returns the
data read before.

Columns: `__key__`, `frames.npy`, `json`, `__url__`. The column types are inferred from
the first samples: integer frames arrive as int64 (`frames.astype("{first.dtype}")` gives
the stored dtype back), float32 frames as float32.
"""
    return "\n".join(yaml) + "\n" + text


def write_card(
    folder: Path,
    out: str | Path,
    source_name: str,
    indexes: dict[str, SplitIndex],
    written_by: str = "stpdist shard",
) -> None:
    """Write the dataset card into `folder` (the staging folder that becomes `out`), unless
    `out` already holds a README.md that is not ours: that one is copied over unchanged."""
    old = Path(out).resolve() / CARD_FILE
    if old.is_file() and CARD_MARKER not in old.read_text(errors="replace"):
        shutil.copy2(old, folder / CARD_FILE)
        log.warning(
            "kept your %s (no stpdist card written: for Hugging Face datasets, give it "
            "front matter with configs/data_files pointing at '<split>/*.tar')",
            old,
        )
        return
    (folder / CARD_FILE).write_text(card_text(out, source_name, indexes, written_by))


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """SIGTERM during the block stops the workers and removes the staging folder before the
    process exits (status 143), as Ctrl-C does (130); by default it would kill the main
    process alone, leaving its workers running and the staging folder behind. The CLI's
    own handler (`console.sigterm_as_interrupt`, which the CLI has set already and says
    the stop); called from Python, `Terminated` is then the exit SIGTERM asks for."""
    with sigterm_as_interrupt() as installed:
        try:
            yield
        except Terminated as stop:
            if not installed:
                raise
            raise SystemExit(exit_status(stop)) from None


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _init_worker(environ: dict[str, str], levels: dict[str, int], started: Any) -> None:
    """Runs first in each worker process (`_start_workers`). A terminal's Ctrl-C, and a
    SIGTERM sent to the process group, reach the workers too; a worker interrupted or killed
    while it writes a result to the pool's queue leaves the queue locked or a message half
    written, and the pool (so the main process) waits forever. So workers ignore both (from
    their first step, `_Worker`, or, forked, started with them blocked): the main process
    handles them, stops handing out items and waits for the few in flight. Should the main
    process die without that (SIGKILL), the workers exit on their own (and then the fork
    server that started them).

    A worker started by the fork server is no fork of the main process, so it takes what a
    fork would have copied: the environment as it is now (`environ`), and the loggers'
    levels (`levels`: the root's, stpdist's and every one set). What it logs, it keeps
    (`_WorkerLog`): the main process says it, through its own handlers, in item order
    (`_said_by_main`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if os.environ != environ:
        os.environ.clear()
        os.environ.update(environ)
    root = logging.getLogger()
    root.handlers[:] = [_WorkerLog()]  # a forked worker's copies of the main's handlers too
    log.handlers[:] = []
    log.propagate = True
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)
    main = multiprocessing.parent_process()  # the main process (not the server that forked)

    def exit_with_main() -> None:
        main.join()  # returns when the main process is gone: the end of a pipe from it
        os._exit(1)

    threading.Thread(target=exit_with_main, daemon=True).start()
    started.release()  # set up: `_wait_started`


class _WorkerLog(logging.Handler):
    """In a worker process, the records logged while it loads an item, ready to be sent to
    the main process with the item's samples (or its error): their messages formatted (a
    record's arguments need not pickle), a traceback as text, any other attribute that
    does not pickle (an `extra=` of the source's) as its repr. A message that does not
    format is sent as a line that says so (a handler's own error would come out of order,
    from the worker)."""

    records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg = record.getMessage()
        except Exception as exc:
            record.msg = (
                f"(a log message that does not format: {_shown(record.msg)} % "
                f"{_shown(record.args)}: {type(exc).__name__}: {_shown(exc)})"
            )
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        for key, value in record.__dict__.items():
            try:
                pickle.dumps(value)
            except Exception:
                record.__dict__[key] = _shown(value)
        self.records.append(record)


def _shown(value: Any) -> str:
    """`repr(value)`, or what it is where that fails too."""
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__} object>"


def _load_in_worker(source: Source, item: Any) -> tuple[list[Sample], list[logging.LogRecord]]:
    """`_load` in a worker process, with what it logged meanwhile (on an error, that goes
    with the error, as its `stpdist_worker_log`)."""
    _WorkerLog.records = []
    try:
        return _load(source, item), _WorkerLog.records
    except BaseException as exc:
        exc.stpdist_worker_log = _WorkerLog.records  # type: ignore[attr-defined]
        raise


def _said_by_main(records: Sequence[logging.LogRecord]) -> None:
    """A worker's records, handled here as if logged here: by this process's loggers'
    levels and handlers (stpdist's console, a caller's own), above the progress bar."""
    for record in records:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


class _Killed:
    def terminate(self) -> None:
        """SIGKILL, where the pool terminates its workers (once one died abruptly: it is
        broken): they ignore SIGTERM (`_init_worker`), so a terminated one ran on, blocked
        sending a result that no one read any more, and the pool waited for it for good."""
        self.kill()  # type: ignore[attr-defined]


class _Forked(_Killed, multiprocessing.context.ForkProcess):
    """A worker forked from the main process (`_start_workers` says where)."""


class _Forking(multiprocessing.context.ForkContext):
    Process = _Forked


class _Worker(_Killed, multiprocessing.context.ForkServerProcess):
    """A worker process started by the fork server without the main module: a process
    started so imports the caller's script first (as `__mp_main__`), and a script that does
    its work at import, not under `if __name__ == "__main__":`, would run it again there
    (a training script whose data the Trainer converts first hung in its workers).

    It ignores SIGINT and SIGTERM from its first step (`_init_worker` says why): the server
    does not pass on a blocked signal mask, and a Ctrl-C as the workers started printed a
    worker's traceback. One that lands before that step ends the new worker quietly (the
    pool is broken then, and its other workers killed: `_Killed`)."""

    def _bootstrap(self, *args: Any, **kwargs: Any) -> int:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return super()._bootstrap(*args, **kwargs)

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")  # no file, no spec: none read
        try:
            return multiprocessing.context.ForkServerProcess._Popen(process_obj)
        finally:
            sys.modules["__main__"] = main


class _WithoutMain(multiprocessing.context.ForkServerContext):
    Process = _Worker


def _eager(pool: ProcessPoolExecutor) -> None:
    """Start every worker of a fork-server pool now, while this process's SIGINT and SIGTERM
    wait (`_start_workers`). The pool would start them one at a time, as items are handed
    out, later in the run: a Ctrl-C that landed during such a start left a worker reading a
    semaphore the interrupted pool had already removed, which printed its traceback. Python
    has no public call for it: the pool's own (3.11 on; 3.10's starts all in its other)."""
    launch = getattr(pool, "_launch_processes", None)
    launch = launch or getattr(pool, "_adjust_process_count", None)
    if launch is not None:
        launch()


def _wait_started(pool: ProcessPoolExecutor, started: Any, workers: int) -> None:
    """Wait until every worker is set up (`_init_worker` releases `started`): a Ctrl-C
    handled while they still read what the pool sent them removed its semaphores under
    them (each printed a traceback). A worker that died at its start ends the wait: the
    pool is broken, and its first item says so."""
    for _ in range(workers):
        while not started.acquire(timeout=0.1):
            if any(p.exitcode is not None for p in getattr(pool, "_processes", {}).values()):
                return


@contextlib.contextmanager
def _ctrl_c_ignored_by_new_processes() -> Iterator[None]:
    """SIGINT ignored in the block (and blocked: one that arrives in it waits for its end,
    and is handled then), so that a process started in it ignores it from its first
    instruction: an ignored signal stays ignored across exec, and Python then installs no
    KeyboardInterrupt handler. For the fork server (a Ctrl-C as it imported stpdist printed
    its traceback), whose forked workers are born ignoring it too: so are other processes
    that server starts later. In the main thread only (elsewhere Python sets no handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _start_workers(workers: int, source: Source) -> ProcessPoolExecutor:
    """A pool of `workers` processes, started by a fork server (Python's `forkserver`), not
    forked from this process. A fork copies this process's locks as they stand, held ones
    included, but not the threads that hold them: FFmpeg's decoder and scaler threads (the
    main process decodes a video's first frame to learn its size), torch's, a caller's own.
    A worker that then takes such a lock waits for good: workers decoding videos hung in
    libswscale's slice threads, forked from a process that had decoded videos. The server
    is a fresh interpreter that imports the conversion's modules once and forks the workers
    from itself (Python's default start method from 3.14 on). Unlike Python's own workers,
    they do not import the main script, and ignore SIGINT and SIGTERM from their first step
    (`_Worker`).

    The workers are forked as before where the source's class is the main script's or
    session's own (only a fork has it), or where no server starts (its socket's path, under
    TMPDIR, longer than a socket's path may be; a warning says so): all at once, with
    SIGINT and SIGTERM blocked, so that none is interrupted before `_init_worker` makes it
    ignore them; a signal to the main process meanwhile waits, and is handled once they
    are up."""
    module = type(source).__module__
    context: Any = _Forking()
    loggers = logging.root.manager.loggerDict.items()  # every logger's level, as a fork has
    levels = {name: x.level for name, x in loggers if isinstance(x, logging.Logger) and x.level}
    levels.update({"": logging.getLogger().level, "stpdist": log.getEffectiveLevel()})
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        if module != "__main__":
            preload = [__name__, module] + ["stpdist.cli"] * ("stpdist.cli" in sys.modules)
            multiprocessing.forkserver.set_forkserver_preload(preload)
            try:
                with _ctrl_c_ignored_by_new_processes():
                    multiprocessing.forkserver.ensure_running()
                context = _WithoutMain()
            except OSError as exc:
                log.warning("no fork server for the worker processes (%s; its socket goes in %s); "
                            "forking them from this process instead", exc, tempfile.gettempdir())  # fmt: skip
        started = context.Semaphore(0)  # one release a worker, once it is set up
        pool = ProcessPoolExecutor(workers, context, initializer=_init_worker,
                                   initargs=(dict(os.environ), levels, started))  # fmt: skip
        try:
            if context.get_start_method() != "fork":
                _eager(pool)  # every worker now, not one at a time as items are handed out
            # starts the pool's thread, which stops the workers at its shutdown (and a
            # forking pool forks every worker now, at its first item)
            pool.submit(int)
            _wait_started(pool, started, workers)
        except BaseException:  # a worker that could not start: none left behind
            pool.shutdown(cancel_futures=True)
            raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    return pool


def _write_splits(
    source: Source,
    out: Path,
    splits: dict[str, list[Any]],
    workers: int,
    samples_per_shard: int,
    progress: bool,
    nan_fill: float | None,
    run: _Run,
) -> dict[str, SplitIndex]:
    pool = _start_workers(workers, source) if workers > 1 else None
    try:
        written: dict[str, SplitIndex] = {}
        quantize = source.grid is not None if run.saved is None else run.saved.header["quantize"]
        try:
            return _write_each_split(source, out, splits, written, pool, quantize,
                                     (samples_per_shard, progress, nan_fill), run)  # fmt: skip
        except OffGrid as off:  # every split float32: one value scale for the dataset
            for split in written:
                shutil.rmtree(out / split, ignore_errors=True)
            again = f" (split(s) {', '.join(written)} written again)" if written else ""
            log.warning("%s: values are not all on the 1/%g grid; storing every split float32%s",
                        off.split, source.grid, again)  # fmt: skip
            run.start()
            return _write_each_split(source, out, splits, {}, pool, False,
                                     (samples_per_shard, progress, nan_fill), run)  # fmt: skip
    finally:  # after an error, Ctrl-C or SIGTERM: waits for the items in flight (`_init_worker`)
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _write_each_split(
    source: Source,
    out: Path,
    splits: dict[str, list[Any]],
    written: dict[str, SplitIndex],
    pool: ProcessPoolExecutor | None,
    quantize: bool,
    settings: tuple[int, bool, float | None],
    run: _Run,
) -> dict[str, SplitIndex]:
    """Each split into `written` (filled as they are done: an OffGrid leaves there the ones
    written before it, the failed one's folder removed); from `run`'s checkpoint, when it
    goes on from one."""
    copies = _Copies()
    done = run.replay(source, splits, copies, out)
    for split, items in splits.items():
        if not items:  # e.g. no file of a test person: said, as a split that yields nothing
            log.warning("%s: no samples; not written", split)
            continue
        folder = out / split
        if split in done:  # written before the checkpoint (or found empty)
            if (folder / INDEX_FILE).is_file():
                written[split] = read_index(folder)
            else:
                log.warning("%s: no samples; not written", split)
            continue
        like = next(iter(written.values()), None)  # every split: the first one's shape
        try:
            written[split] = _write_split(source, folder, split, items, pool, quantize,
                                          *settings, like, copies, run)  # fmt: skip
        except OffGrid as off:
            shutil.rmtree(folder, ignore_errors=True)
            off.split = split
            raise
        except _Empty:
            shutil.rmtree(folder, ignore_errors=True)
            log.warning("%s: no samples; not written", split)
            run.split_done(split, quantize, folder)
            continue
        check_index = getattr(source, "check_index", None)
        if check_index is not None:  # e.g. values a guessed value scale leaves outside [0, 1]
            check_index(written[split])
        run.split_done(split, quantize, folder)
    copies.say()
    return written


# ------------------------------------------------------------------ going on from a checkpoint
KEPT_STATUS = 75
"""Exit status of a conversion stopped by SIGTERM that kept a checkpoint: not done yet, the
same command goes on (as a training stopped by SIGTERM with its checkpoint)."""


def exit_status(stop: KeyboardInterrupt) -> int:
    """A stopped command's exit status: 130 after Ctrl-C, 143 after SIGTERM, 75 after
    SIGTERM to a conversion that kept a checkpoint to go on from."""
    if not isinstance(stop, Terminated):
        return 130
    return KEPT_STATUS if getattr(stop, "stpdist_kept", False) else Terminated.exit_code


def _kept(staging: Path, exc: BaseException) -> bool:
    """Whether a conversion stopped by `exc` keeps its staging folder: once it holds a
    checkpoint, whatever stopped it (Ctrl-C, SIGTERM: a cluster's preemption; a worker
    killed by the out-of-memory killer, a full disk, an error in the data: a raw file fixed
    is a changed file, and the next run starts over); says so, and where it goes on."""
    if not isinstance(exc, Exception | KeyboardInterrupt) or isinstance(exc, CannotResume):
        return False
    header = read_header(staging)
    try:
        at = (
            f"split {header['split']}, item {header['number'] + 1}"
            if header["split"] is not None
            else f"the end of split {header['done'][-1]}"
        )
    except (KeyError, IndexError, TypeError):  # none (or not ours): removed as any other
        return False
    log.warning(
        "stopped%s: what was converted up to a checkpoint at %s is kept in %s; the same command "
        "(sources, options, --out) goes on from there (delete that folder to start over)",
        "" if isinstance(exc, KeyboardInterrupt) else " by the error below", at, staging,
    )  # fmt: skip
    exc.stpdist_kept = True  # type: ignore[attr-defined]  # exit 75 after SIGTERM
    return True


@dataclasses.dataclass
class _At:
    """Where a split goes on from a checkpoint: its `skip`-th sample of item `number`,
    whose key was `key`; the writer's state and the split's counters then."""

    number: int
    skip: int
    key: str
    writer: dict[str, Any]
    arrays: dict[str, np.ndarray]
    origin: dict[str, int]
    filled: int
    values: int
    windows: bool

    def rest_of(self, samples: list[Sample], where: str) -> list[Sample]:
        if self.skip >= len(samples) or samples[self.skip][0] != self.key:
            found = samples[self.skip][0] if self.skip < len(samples) else None
            raise CannotResume(
                f"{where} loaded {len(samples)} sample(s), its sample {self.skip + 1} keyed "
                f"{found!r}, where the checkpoint has {self.key!r}"
            )
        return samples[self.skip :]


class _Run:
    """A conversion's checkpoints (`resume.py`; None: its work items have no stable form),
    and the checkpoint it goes on from (`saved`)."""

    def __init__(
        self, checkpoints: Checkpoints | None, saved: Saved | None, progress: bool = False
    ) -> None:
        self.checkpoints, self.saved, self.progress = checkpoints, saved, progress
        self.done: list[str] = []  # splits written (or found empty), in order
        self.quantize = False  # as the splits done were written (uint8 on a grid)
        self.unsynced: list[Path] = []  # files of splits done since the last checkpoint
        self.synced = 0  # shards of the split being written on disk (fsync)
        self.at: tuple[str, _At] | None = None

    @classmethod
    def begin(
        cls,
        source: Source,
        staging: Path,
        splits: dict[str, list[Any]],
        sources: list[Path],
        settings: dict[str, Any],
        progress: bool = False,
    ) -> _Run:
        """Checkpoints for this conversion, going on from a stopped one's beside `out` that
        has its fingerprint (moved into `staging`); the others are deleted or left for their
        own command, saying so (`_set_aside`).
        `progress`: the kept shards' check shown as the conversion is (`_progress`)."""
        out = as_final(staging)
        found = fingerprint(source.name, source.args(), splits, sources, settings, out)
        stopped = checkpointed(out)  # this process's own too (a notebook's second call)
        chosen = next((s for s in stopped if found and saved_fingerprint(s) == found), None)
        for other in stopped:
            if other != chosen:
                _set_aside(other, staging, out, found)
        if found is None:  # work items with no stable form: no checkpoints
            return cls(None, None, progress)
        saved = None
        if chosen is not None:
            try:
                saved = load(chosen)
            except CannotResume as exc:
                log.warning("%s: deleted %s, a stopped conversion: %s", out, chosen.name, exc)
                _discard(chosen, staging)
            else:
                if chosen != staging:
                    _discard(staging, staging)
                    try:  # onto the empty folder made for this run
                        os.rename(chosen, staging)
                    except FileNotFoundError:  # taken over by another conversion meanwhile
                        saved = None
                    else:
                        os.utime(staging)  # made now: a reader's `_pid_reused` looks at it
                        saved.log = staging / saved.log.relative_to(chosen)
        checkpoints = Checkpoints(staging, found)
        if saved is None:
            checkpoints.start()
        else:
            checkpoints.go_on(saved)
        return cls(checkpoints, saved, progress)

    @classmethod
    def afresh(cls, run: _Run, staging: Path) -> _Run:
        """Over again from nothing, in the same staging folder."""
        _discard(staging, staging)
        fresh = cls(run.checkpoints, None, run.progress)
        fresh.start()
        return fresh

    def start(self) -> None:
        """Every split from its start (a new conversion, or every split again in float32)."""
        self.saved, self.done, self.at = None, [], None
        self.synced, self.unsynced = 0, []
        if self.checkpoints is not None:
            self.checkpoints.start()

    def replay(
        self, source: Source, splits: dict[str, list[Any]], copies: _Copies, out: Path
    ) -> set[str]:
        """From the checkpoint: the samples written counted again in `copies`, the split
        being written made ready to go on (`position`); returns the splits done before."""
        if self.saved is None:
            return set()
        header, saved = self.saved.header, self.saved
        self.saved = None  # once: an OffGrid's every split again starts from nothing
        try:
            done, current = [str(s) for s in header["done"]], header["split"]
            if any(split not in splits for split in [*done, current] if split is not None):
                raise CannotResume("its splits are not this conversion's")
            if current is not None and not header["number"] < len(splits[current]):
                raise CannotResume(f"its item {header['number'] + 1} of split {current}")
            last = None
            origin: dict[str, int] = {}
            written: collections.Counter = collections.Counter()
            for split, key, number, digest, static in saved.samples():
                if split not in splits or not 0 <= number < len(splits[split]):
                    raise CannotResume(f"a sample of item {number} of split {split!r}")
                if last is not None and split != last:
                    copies.end_split(last)
                last = split
                where = describe(source, splits[split][number])
                copies.replay(split, key, digest, lambda static=static: static, where)
                written[split] += 1
                if split == current:
                    origin[key] = number
            if last is not None and last in done:
                copies.end_split(last)
            where = (
                f"split {current}, item {header['number'] + 1} of {len(splits[current])}"
                if current is not None
                else f"the end of split {done[-1]}"
            )
            # said before the kept shards are read again (minutes, for a large dataset)
            log.warning("%s: going on with the conversion stopped at %s (%s kept, checked first)",
                        as_final(out), where, _size(_bytes(out)))  # fmt: skip
            self._check_files(out, done, current, header, written)
            if current is not None:
                self.at = (current, _At(int(header["number"]), int(header["skip"]),
                    str(header["key"]), header["writer"], saved.arrays, origin,
                    int(header["filled"]), int(header["values"]), bool(header["windows"])))  # fmt: skip
        except (KeyError, TypeError, ValueError, IndexError, OSError, MemoryError) as exc:
            raise CannotResume(
                f"its checkpoint does not read ({type(exc).__name__}: {exc})"
            ) from exc
        self.done = done
        if current is not None:  # on disk before the checkpoint that counted them
            self.synced = len(header["writer"]["counts"])
        return set(done)

    def _check_files(
        self,
        out: Path,
        done: list[str],
        current: str | None,
        header: dict[str, Any],
        written: collections.Counter,
    ) -> None:
        """The checkpoint's shards on disk as it counted them (`written`: the samples of
        each split in its log); what came after it deleted."""
        for split in done:
            if (out / split / INDEX_FILE).is_file():
                try:
                    index = read_index(out / split)
                    for shard in self._checking(index.shards, out / split):  # every byte:
                        check_unchanged(out / split / shard.name, shard)  # its SHA-256
                except InputError as exc:  # a shard or index that is not as written
                    raise CannotResume(f"split {split}: {exc}") from exc
                if index.num_samples != written[split]:
                    raise CannotResume(f"split {split} holds another number of samples")
            elif written[split]:
                raise CannotResume(f"split {split} lost its index")
        kept = {*done, STATE_DIR}
        if current is not None:
            kept.add(current)
            self._check_split(out / current, header["writer"], written[current], self._checking)
        for entry in out.iterdir():  # a split begun after the checkpoint
            if entry.name not in kept:
                _remove(entry)

    def _checking(self, shards: list[Any], folder: Path) -> Iterator[Any]:
        """`shards` of a split, with the check's progress (a large dataset's: minutes)."""
        desc = f"checking the shards kept in {folder.name}"
        return _progress(iter(shards), len(shards), desc, folder, self.progress, unit="shard")

    @staticmethod
    def _check_split(
        folder: Path, writer: dict[str, Any], written: int, checking: Callable[..., Any]
    ) -> None:
        """The closed shards of the split being written, as the checkpoint has them: their
        SHA-256, sample counts and first sample's key, shape and dtype; the rest deleted."""
        pattern = SHARD_PATTERN.format(split=folder.name)
        names = [pattern % n for n in range(len(writer["counts"]))]
        if len(writer["digests"]) != len(names) or sum(writer["counts"]) != written:
            raise CannotResume("its shard counts, hashes and samples do not add up")
        kept = list(zip(names, writer["digests"], strict=True))
        for name, digest in checking(kept, folder):
            if file_sha256(folder / name) != digest:
                raise CannotResume(f"shard {name} of split {folder.name} changed")
        for name, count in zip(names, writer["counts"], strict=True):
            found, ended = count_samples(folder / name)  # from its tar headers alone
            if (found, ended) != (count, True):
                raise CannotResume(f"shard {name} holds {found} samples, not {count}")
        if names:
            key, members = next(iter(iter_shard(folder / names[0])))
            frames = np.load(io.BytesIO(members[FRAMES_EXT]), allow_pickle=False)
            if (key, list(frames.shape), str(frames.dtype)) != (
                writer["first_key"],
                writer["shape"],
                writer["dtype"],
            ):
                raise CannotResume(f"the first sample of split {folder.name} is not as it has it")
        for entry in folder.iterdir():  # the shard being written, and so on
            if entry.name not in names:
                _remove(entry)

    def position(self, split: str) -> _At | None:
        """Where `split` goes on from, when it does."""
        if self.at is not None and self.at[0] == split:
            return self.at[1]
        return None

    def note(self, split: str, key: str, number: int, digest: bytes, static: bool) -> None:
        if self.checkpoints is not None:
            self.checkpoints.note(split, key, number, digest, static)

    def shard_closed(self, writer: SplitWriter, header: dict[str, Any]) -> None:
        """A checkpoint, when one is due: the writer is between shards."""
        if self.checkpoints is None or not self.checkpoints.due():
            return
        fields, arrays = writer.state()
        header = {**header, "done": self.done, "writer": fields}
        closed = writer.closed_shards()
        self.checkpoints.save(header, arrays, self.unsynced + closed[self.synced :])
        self.synced, self.unsynced = len(closed), []

    def split_done(self, split: str, quantize: bool, folder: Path) -> None:
        """`split` written into `folder` (or found empty: no folder)."""
        self.done.append(split)
        self.quantize = quantize
        self.at = None
        if self.checkpoints is not None:
            self.synced = 0
            self.unsynced += sorted(p for p in folder.glob("*") if p.is_file())
            if self.checkpoints.due():
                self.save_done()

    def save_done(self) -> None:
        """A checkpoint of the splits done, their files on disk first (a power cut after it
        must not lose a split it counts)."""
        header = {"quantize": self.quantize, "split": None, "done": self.done}
        self.checkpoints.save(header, {}, self.unsynced)
        self.unsynced = []

    def all_done(self) -> None:
        """A checkpoint of every split written: a stop while the dataset is made complete
        (its card, every file synced to disk) goes on from there, writing nothing again."""
        if self.checkpoints is not None:
            self.save_done()


def _set_aside(stopped: Path, staging: Path, out: Path, found: str | None) -> None:
    """A stopped conversion this one does not go on from: deleted where it is of the same
    command on files changed since (it never can go on), or not ours to go on from (none
    of the built-in formats); left for its own command otherwise, saying so."""
    theirs = saved_fingerprint(stopped)
    if stopped == staging or theirs is None or found is None or same_options(theirs, found):
        _discard(stopped, staging)
        why = (
            "this one cannot go on from it"
            if not (theirs and found)
            else "its raw files changed since"
            if same_options(theirs, found)
            else "of other sources or options, in this process's own folder, which this "
            "conversion writes"
        )
        log.warning("%s: deleted %s, a conversion stopped at a checkpoint: %s", out,
                    stopped.name, why)  # fmt: skip
        return
    log.warning(
        "%s: left %s beside it (%s), a conversion stopped at a checkpoint, of other sources or "
        "options (a path spelled otherwise counts): the command that made it goes on from it; "
        "delete it to free the space", out, stopped.name, _size(_bytes(stopped)),
    )  # fmt: skip


def _discard(stopped: Path, staging: Path) -> None:
    """A stopped conversion's folder deleted; emptied where it is this one's `staging`."""
    if stopped != staging:
        shutil.rmtree(stopped)
        return
    for entry in staging.iterdir():
        _remove(entry)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
