"""Replacing an output folder (a dataset, a model folder, predictions) without ever losing
it, and finishing a replacement that a crash interrupted.

A new version of `out` is written into `.<out>.staging-<host>-<pid>` beside it. Once it is
complete it is renamed `.<out>.ready-<host>-<pid>` (the completion marker: one atomic
rename), then swapped in with two more renames: `out` → `.<out>.old-<host>-<pid>`, ready →
`out`; the old folder is deleted last. So a crash at any point leaves one of these states,
and `recover(out)` (run by every command before it writes a folder this way, by the
readers when a split has no `index.json`, and by `model_folder` before it reads a model
folder) puts it right, with one line on stderr saying what it did:

- `staging` left over: an unfinished new version; deleted (`out` was never touched).
- `ready` left over, `out` in place: the swap had not started; the new version is
  deleted and `out` stays as it was.
- `ready` left over, `out` missing (moved aside): the swap is finished: ready → `out`,
  then the old folder is deleted.
- `old` left over, `out` missing: the new version is gone; the old one is restored.
- `old` left over, `out` in place: the swap had finished; the old folder is deleted.

A staging folder holding a conversion's checkpoint (`CHECKPOINT`, see `resume.py`) is the
exception: it is kept, for the same conversion run again to go on from (a conversion of
the same options deletes it when its data changed, saying so).

Folders named by the older scheme (`.<out>.staging-<pid>`, `.<out>.old-<pid>`, no ready
step) are read as this host's; there a staging folder beside an `old` one with `out`
missing was complete (that scheme renamed only complete datasets), so the swap is finished.
Leftovers whose process is still running on this host, or that name another host (whose
processes cannot be checked from here), are left alone with a line saying so.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from .. import console

log = logging.getLogger("stpdist")
KINDS = ("staging", "ready", "old")
CHECKPOINT = Path(".resume") / "state.json"
"""In a staging folder: a stopped conversion that can go on from it (`resume.py`)."""


def holds_working_folder(out: str | Path) -> bool:
    """Whether `out` is the working folder or one holding it. Such a folder cannot be
    replaced this way: the swap would move the working folder away from under the process
    (and `.` has no name, so its staging folder would lie inside it)."""
    target, here = Path(out).resolve(), Path.cwd().resolve()
    return target == here or target in here.parents


def make_durable(folder: Path) -> None:
    """fsync every file under `folder`, then every folder (the deepest first), `folder`
    included: before the rename that marks a new version complete, so that a power loss
    after the old version is deleted cannot leave the new one's files empty or missing (a
    rename reaches the disk before the data written ahead of it, on many filesystems)."""
    folders = [folder]
    for root, names, files in os.walk(folder):
        folders += [Path(root) / name for name in names]
        for name in files:
            with open(Path(root) / name, "rb") as handle:
                os.fsync(handle.fileno())
    for path in reversed(folders):
        sync_folder(path)


def sync_folder(folder: Path) -> None:
    """fsync a folder: its entries (renames, new files) reach the disk (a file: its data)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"


def leftover(out: Path, kind: str) -> Path:
    """This process's `kind` folder beside `out`."""
    return out.parent / f".{out.name}.{kind}-{_host()}-{os.getpid()}"


@dataclass
class _Leftovers:
    host: str
    pid: int
    folders: dict[str, Path]


def _scan(out: Path) -> list[_Leftovers]:
    """Leftover folders beside `out`, grouped by the process that made them."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.({'|'.join(KINDS)})-(?:(.+)-)?(\d+)")
    groups: dict[tuple[str, int], _Leftovers] = {}
    try:
        entries = list(out.parent.iterdir())
    except OSError:  # no parent folder (nothing to recover) or unreadable
        return []
    for path in entries:
        match = pattern.fullmatch(path.name)
        if match is None or path.is_symlink() or not path.is_dir():
            continue
        kind, host, pid = match.group(1), match.group(2) or _host(), int(match.group(3))
        group = groups.setdefault((host, pid), _Leftovers(host, pid, {}))
        group.folders[kind] = path
    return list(groups.values())


def as_final(path: str | Path) -> Path:
    """`path` with a staging folder in it named as the folder it becomes (`.out.staging-
    host-pid/x.png` → `out/x.png`): for messages said while writing, read once it is done
    (a dataops review: a warning named a staging file that was gone)."""
    # a replacement's folders (`.NAME.KIND-HOST-PID`), and sample pictures drawn aside
    # (`samples/.step-N.drawing`); a user's `.my.old-2024` is no such folder
    pattern = re.compile(rf"\.(.+)\.(?:{'|'.join(KINDS)})-.+-\d+|\.(step-\d+)\.drawing")
    parts = [
        (match.group(1) or match.group(2)) if (match := pattern.fullmatch(part)) else part
        for part in Path(path).parts
    ]
    return Path(*parts) if parts else Path(path)


def writer_running(out: str | Path) -> str | None:
    """Why another process may be writing `out` now (a staging folder of a live process
    beside it), or None."""
    out = Path(out)
    for group in _scan(out.resolve() if out.is_symlink() else out):
        # a live process of this host only: another host's leftover cannot be told from
        # a dead job's (a diff review: one of a job killed on another node refused every
        # later conversion); `recover` leaves it alone and says so, as before
        if group.host != _host() or "staging" not in group.folders:
            continue
        if (busy := _running(group)) is not None:
            return f"{group.folders['staging'].name} is {busy}"
    return None


def _requeued(group: _Leftovers) -> bool:
    """Whether the group is a conversion's checkpoint left by this SLURM job before it was
    requeued (on any host: SLURM requeues a job once all of its processes have ended)."""
    from ..runlock import requeued_since
    from .resume import read_header  # which imports this module

    staging = group.folders.get("staging")
    header = None if staging is None else read_header(staging)
    return header is not None and requeued_since(header)


def _running(group: _Leftovers) -> str | None:
    """Why the group's owner may still be at work (None: it is gone)."""
    if group.host != _host():
        if _requeued(group):
            return None
        return f"of host {group.host}, whose processes cannot be checked from here"
    if group.pid == os.getpid():
        return None  # ours: left by an earlier, failed replacement in this process
    try:
        os.kill(group.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    if _pid_reused(group) or _zombie(group.pid):
        return None
    return f"of process {group.pid}, which is still running"


def _zombie(pid: int) -> bool:
    """Whether `pid` has ended, its exit status not yet collected (a process killed a moment
    ago whose parent has not reaped it: `kill(pid, 0)` still finds it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def _pid_reused(group: _Leftovers) -> bool:
    """Whether the live process of the group's pid started after the group's folders were
    last changed, so cannot have made them: the pid was reused, its owner is gone. (The
    owner started before it made its folders; a process that started meanwhile is not
    told apart from it, and is waited for as the owner would be.)"""
    from ..runlock import started_at

    started = started_at(group.pid)
    if started is None:
        return False
    try:
        changed = max(folder.stat().st_mtime for folder in group.folders.values())
    except OSError:
        return False
    return started > changed + 1  # a second of slack: clock ticks and mtimes round


def _complete(folder: Path) -> bool:
    """A dataset folder whose every split holds its index (older-scheme staging)."""
    splits = [p for p in folder.iterdir() if p.is_dir()]
    return bool(splits) and all((p / "index.json").is_file() for p in splits)


def checkpointed(out: str | Path) -> list[Path]:
    """The staging folders beside `out` of conversions stopped with a checkpoint whose
    process is gone (of this host, or this SLURM job before a requeue), the newest first."""
    out = Path(out)
    found = []
    for group in _scan(out.resolve() if out.is_symlink() else out):
        staging = group.folders.get("staging")
        if staging is None or set(group.folders) != {"staging"}:
            continue
        if (staging / CHECKPOINT).is_file() and _running(group) is None:
            found.append(staging)

    def saved_at(staging: Path) -> float:
        try:
            return (staging / CHECKPOINT).stat().st_mtime
        except OSError:  # taken over (renamed) by another conversion meanwhile
            return 0.0

    return sorted(found, key=saved_at, reverse=True)


def _resolve(out: Path, group: _Leftovers, quiet_kept: bool = False) -> str:
    """Put one crashed replacement right; returns what was done."""
    staging, ready, old = (group.folders.get(kind) for kind in KINDS)
    if staging is not None and ready is None and old is not None and not out.exists():
        if _complete(staging):  # the older scheme: complete, swapped in halfway
            ready, staging = staging, None
    done = []
    if staging is not None and (staging / CHECKPOINT).is_file():
        if not quiet_kept:  # not this command's replacement: said as what it is
            log.warning(
                "%s: kept %s beside it, a conversion stopped at a checkpoint: the same "
                "`stpdist shard` command goes on from it (delete it to start over)",
                out, staging.name,
            )  # fmt: skip
    elif staging is not None:
        shutil.rmtree(staging)
        done.append(f"deleted the unfinished new version {staging.name}")
    if ready is not None and not out.exists():
        os.rename(ready, out)
        done.append(f"finished the replacement with the complete new version from {ready.name}")
    elif ready is not None:
        shutil.rmtree(ready)
        done.append(f"deleted {ready.name}, a new version never swapped in ({out.name} kept)")
    if old is not None and not out.exists():
        os.rename(old, out)
        done.append(f"restored the previous version from {old.name}")
    elif old is not None:
        shutil.rmtree(old)
        done.append(f"deleted the replaced version {old.name}")
    return "; ".join(done)


def recover(out: str | Path, converting: bool = False) -> None:
    """Finish or undo a replacement of `out` that a crash interrupted (see the module
    docstring); a line on the `stpdist` logger for each. `converting`: a conversion is
    about to write `out`, and says itself what it does with a stopped one's checkpoint."""
    out = Path(out)
    if out.is_symlink():  # replacements act on the folder it points to
        out = out.resolve()
    for group in _scan(out):
        busy = _running(group)
        names = ", ".join(sorted(p.name for p in group.folders.values()))
        if busy is not None:
            # every rank reading `out` finds the same: said by the main one
            console.warn_main("%s: left %s alone: %s", out, names, busy)
            continue
        try:
            done = _resolve(out, group, quiet_kept=converting)
        except FileNotFoundError:  # another process (rank) recovered it meanwhile
            continue
        if done:
            log.warning("%s: a replacement by process %d was interrupted: %s", out, group.pid,
                        done)  # fmt: skip
