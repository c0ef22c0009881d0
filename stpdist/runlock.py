"""One training run per output folder: an exclusive lock held for the run's lifetime.

`RunLock(output_dir)` takes `<output_dir>/.stpdist.lock` with `fcntl.flock` and writes the
holder into it (host, pid, the pid's start time, the boot id, since when). A second run on
the same folder fails at once with `RunLockedError`, one line naming the holder. Only the
main rank takes it.

The kernel drops an flock when its holder dies, so on a local filesystem a crashed or
SIGKILLed run never blocks the next one; the lock file it leaves names a dead process and
is taken over with a warning.

Shared filesystems (NFS, Lustre, GPFS) may not carry flock between hosts: the lock then
only excludes runs on the same host. So the file's contents decide as well. A lock file
that names *another* host is always refused, because from here nobody can tell whether
that host's run is alive; the message names the file. On a shared filesystem, after a
node failure, check that no run of that host is alive (`squeue`, `ps` on that host) and
delete the file named in the message, then start again. A file naming this host is stale
when its pid is dead, belongs to a later process (pid reused: its start time differs), or
the host was rebooted since (boot id differs); otherwise it is refused too. It is stale as
well when it is a copy: the file records the folder it was written in and its own inode, so
a run folder copied (`cp -a`, `rsync`) with its lock while that run goes on is not taken
for the live run's folder; the live run keeps the lock of its own folder.

Under SLURM the file also records the job id and its restart count: a file left by the
same job before it was requeued (a lower `SLURM_RESTART_COUNT`) is stale wherever it was
written, since SLURM requeues a job only once all of its processes have ended. The
requeued job, which usually lands on other nodes, takes it over and resumes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

LOCK_FILE = ".stpdist.lock"
log = logging.getLogger("stpdist")


class RunLockedError(RuntimeError):
    """Another run holds the output folder's lock (or its lock file is a link, which no
    run may write through)."""


class RunInUseError(RunLockedError):
    """A live run holds the lock now: the same command succeeds once that run has ended
    (the command line exits 75, "try again later", not 2, a refusal of the inputs)."""


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    return int(stat.rsplit(")", 1)[1].split()[19])


def started_at(pid: int) -> float | None:
    """When process `pid` started, in seconds since the epoch (Linux); None if unknown."""
    ticks = _start_time(pid)
    if ticks is None:
        return None
    try:
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def slurm_job() -> dict[str, Any]:
    """This process's SLURM job id and restart count (requeues), or {} outside SLURM."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return {}
    try:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        restarts = 0
    return {"slurm_job": job, "slurm_restart": restarts}


def requeued_since(holder: dict[str, Any]) -> bool:
    """Whether `holder` is this SLURM job's run before a requeue (all of which had ended)."""
    me, restart = slurm_job(), holder.get("slurm_restart")
    return (
        bool(me)
        and holder.get("slurm_job") == me["slurm_job"]
        and isinstance(restart, int)
        and not isinstance(restart, bool)
        and restart < me["slurm_restart"]
    )


def _describe(holder: dict[str, Any]) -> str:
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "unknown"
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {when}"


_HELD: set[RunLock] = set()
"""The locks this process holds (an unreferenced one too, whose descriptor stays open): a
forked child (a DataLoader worker) lets go of its copies."""


def _let_go_in_child() -> None:
    """After a fork, in the child: close its copies of the held locks' descriptors. An flock
    belongs to the open file, which a forked child shares, and lasts until every descriptor
    of it is closed: a run SIGKILLed with its DataLoader workers alive left them holding
    the lock (orphans, for the seconds until they notice), and the resume that followed at
    once was refused, naming the dead pid. Closing a copy never unlocks the parent's."""
    for lock in list(_HELD):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_let_go_in_child)


class RunLock:
    """An exclusive lock on `output_dir` for one training run.

    Use as `with RunLock(output_dir): ...`, or call `acquire()` / `release()`. Raises
    `RunLockedError` when another live run holds it.
    """

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: this RunLock is already held")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        while True:
            try:  # never through a link: the lock's content is written into the file
                # (0o666: the umask decides, as for the run's other files; a group's
                # shared folder under umask 002 got a lock its other members cannot open)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            except PermissionError:
                if not os.path.lexists(self.path):  # not another's lock: a folder not ours
                    raise RunLockedError(
                        f"cannot make the run lock in {self.output_dir}: the folder is not "
                        "writable by this user; choose a folder of yours for the run"
                    ) from None
                self._replace_anothers_lock()  # or says who holds it
                continue
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                raise RunLockedError(  # a module of its own: no stpdist import here
                    f"{self.path} is a symbolic link; a run's lock file is a file of the run "
                    "folder's own, written on each start (the link's target would be "
                    "overwritten): remove the link"
                ) from None
            if os.fstat(fd).st_nlink > 1:  # a hard link to another folder's lock (`cp -al`):
                os.close(fd)  # this folder gets a lock file of its own; the other keeps its
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _read(fd)
                    raise RunInUseError(
                        f"{self.output_dir} is in use by another run ({_describe(holder)}; "
                        f"lock file {self.path})"
                    ) from None
                # the holder may have released and unlinked the file between our open and
                # flock: then we hold a lock on a file nobody else will open; retry
                try:
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    self._check_stale(_read(fd), fd)
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": _start_time(os.getpid()),
            "boot_id": _boot_id(),
            "since": time.time(),
            **slurm_job(),
            **_identity(self.output_dir, fd),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        _HELD.add(self)
        return self

    def _replace_anothers_lock(self) -> None:
        """The lock file is another user's, not writable by us: a run holding it is named
        (a RunLockedError, as for our own); one nobody holds is removed, to be made again
        (the folder lets us), else a RunLockedError naming its owner. It said
        `Permission denied` alone (an admin review)."""
        try:
            owner = _owner(self.path)
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return  # gone meanwhile: made again
        except OSError as exc:
            raise RunLockedError(
                f"cannot open the run lock {self.path} ({exc.strerror}; it is {owner}'s): if "
                "no run is alive in that folder, ask them to delete it, or use another "
                "output_dir"
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunInUseError(
                    f"{self.output_dir} is in use by another run ({_describe(_read(fd))}; "
                    f"lock file {self.path}, {owner}'s)"
                ) from None
            try:  # nobody holds it: a stale file of theirs, if it is still the one at the
                # path (its holder may have released and unlinked it, and another run made a
                # new one meanwhile: that one is live; a diff review)
                if os.stat(self.path).st_ino != os.fstat(fd).st_ino:
                    return
                os.unlink(self.path)
            except OSError as exc:
                raise RunLockedError(
                    f"the run lock {self.path} is {owner}'s, held by no run, and cannot be "
                    f"replaced ({exc.strerror}): ask them to delete it, or use another "
                    "output_dir"
                ) from None
            log.warning("replaced the run lock %s of %s, which no run held", self.path, owner)
        finally:
            os.close(fd)

    def _check_stale(self, holder: dict[str, Any], fd: int) -> None:
        """We hold the flock; decide from the file whether its previous holder may live on."""
        if not holder:
            return  # free (released cleanly, or never written)
        if "unreadable" in holder:  # no record of a holder, and the flock was free
            log.warning("taking over run lock %s: its contents are unreadable", self.path)
            return
        host, pid = holder.get("host"), holder.get("pid")
        if requeued_since(holder):
            log.warning(
                "taking over run lock %s (%s): it was left by this SLURM job (%s) before it "
                "was requeued",
                self.path,
                _describe(holder),
                holder["slurm_job"],
            )
            return
        if host != socket.gethostname():
            raise RunLockedError(
                f"{self.output_dir} may be in use by a run on another host ({_describe(holder)}); "
                f"if no run is alive there, delete {self.path}"
            )
        if not isinstance(pid, int) or pid <= 0:
            why = "names no valid pid"
        elif holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
            why = "was left before the last reboot"
        elif not _alive(pid):
            why = f"names pid {pid}, which is dead"
        elif holder.get("pid_start") is not None and holder["pid_start"] != _start_time(pid):
            why = f"names pid {pid}, now another process"
        elif pid == os.getpid():
            why = "was left by this process"
        elif self._copied(holder, fd):
            why = f"was copied from {holder['dir']}, whose run (pid {pid}) holds that folder"
        else:
            # alive, and yet the flock was free: a filesystem that ignores flock
            raise RunLockedError(
                f"{self.output_dir} may be in use by a live run ({_describe(holder)}); the "
                f"filesystem did not enforce the lock. If that process is no stpdist run, "
                f"delete {self.path}"
            )
        log.warning(
            "taking over a stale run lock %s (%s): it %s", self.path, _describe(holder), why
        )

    def _copied(self, holder: dict[str, Any], fd: int) -> bool:
        """Whether the lock file is a copy of a live run's (a run folder copied with it): it
        names another folder and is another file than the one that run wrote. A folder
        renamed (same file) or reached by another path (same inode) is not a copy."""
        if not isinstance(holder.get("dir"), str) or not isinstance(holder.get("inode"), list):
            return False  # written before locks recorded where they were
        here = _identity(self.output_dir, fd)
        return holder["dir"] != here["dir"] and holder["inode"] != here["inode"]

    def release(self) -> None:
        """Give the lock up (the file is removed first, then the flock dropped)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD.discard(self)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *_: Any) -> None:
        self.release()


def _identity(output_dir: Path, fd: int) -> dict[str, Any]:
    """Where a lock file is: its folder (resolved) and its (device, inode)."""
    stat = os.fstat(fd)
    return {"dir": str(output_dir.resolve()), "inode": [stat.st_dev, stat.st_ino]}


def _owner(path: Path) -> str:
    """The user owning `path`, by name where the system knows it, else `uid N`."""
    uid = os.stat(path, follow_symlinks=False).st_uid
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f"uid {uid}"


def _read(fd: int) -> dict[str, Any]:
    """The holder recorded in the lock file: {} when empty, {"unreadable": …} when garbled."""
    try:
        data = os.pread(fd, 4096, 0)
    except OSError as exc:
        return {"unreadable": str(exc)}
    if not data.strip():
        return {}
    try:
        holder = json.loads(data)
    except ValueError:
        return {"unreadable": "not JSON"}
    return holder if isinstance(holder, dict) else {"unreadable": "not a JSON object"}
