"""A fork server for the suite's fresh Python processes: it imports what every training
process imports first (torch, torch._dynamo, accelerate, stpdist, and matplotlib for its
pictures: about 3.5 s of a core here) once per pytest worker, then starts each such
process by forking itself.

    python tests/forkserver.py SOCKET

The suite starts about a hundred processes that import torch (`stpdist train` in a
subprocess, tests/ranks.py's launchers, scripts under tests/); their imports were a third
of the suite's CPU time. conftest.py starts one server per pytest worker and puts
tests/forkclient/ on PYTHONPATH: its `sitecustomize`, which every Python process started
by a test runs first, asks the server to run the process's program, passes it its
standard input and output, and waits. It then exits as the program did (with the
program's status, or killed by the same signal), and passes on the signals it receives
(SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGQUIT). Killing it (SIGKILL) kills the
program at once.

What it serves, and only when the process would otherwise be the same: this interpreter
(`sys.executable`) with no options, running a script under tests/, or the `stpdist`
command (`stpdist` or `python -m stpdist`) with a command that imports torch; and the
same interpreter flags, and the same value of every environment variable the warm-up
imports read (OMP_NUM_THREADS, HF_HOME, TORCH_*, ...: some are read once at import) but a
few that are read again or only shape a default (PATH, HOME, PYTHONUNBUFFERED,
PYTHONDONTWRITEBYTECODE). Anything else, or `STPDIST_TEST_FORK_SERVER` unset in the
process' environment, or a process started by torchrun, `accelerate launch` or SLURM,
starts as a fresh interpreter (tests that look at a process' tree,
or kill a run from outside with SIGKILL and start the next at once, unset it).

A served program runs as `python PROGRAM` would: in a process of its own (a session of
its own, as tests/ranks.py starts ranks), `__main__`, `sys.argv`, `sys.orig_argv`, the
script's folder (or, for `-m`, the working directory) first on `sys.path`, its own
environment and working directory, default signal handlers, numpy's and torch's default
generators reseeded from the OS. What differs: its pid is not the one the test started
(the client's), it is not a child of that process, modules are imported in the server's
order first (stpdist, setting `OMP_WAIT_POLICY=PASSIVE`, before torch, which a script
importing torch first would not do), the hash seed is the server's, and it ends without
the interpreter's teardown of every object (`stpdist.console.end_process`: files it
left open unflushed stay so).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import struct
import sys

from ranks import run_program  # this folder is first on sys.path: a script's

STDIO = 3
"""File descriptors a client passes: its standard input, output and error."""

IGNORED = frozenset(
    {
        "PATH",  # read by tqdm at import for its defaults; programs look it up again
        "HOME",
        "PYTHONUNBUFFERED",  # applied to sys.stdout/sys.stderr in the child
        "PYTHONDONTWRITEBYTECODE",  # applied to sys.dont_write_bytecode
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
        "COLUMNS",
        "LINES",
    }
)
"""Variables read by the warm-up imports whose value may differ in a served process."""

LAUNCHED = frozenset({"TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_STEP_ID"})
"""Variables torchrun (and `accelerate launch`, which also sets ACCELERATE_*) and SLURM give
the processes they start: those stay fresh, as tests/ranks.py's docstring promises the
tests of launching (a hash seed of their own, imports in the program's order)."""

AT_START = ("PYTHON", "LD_", "OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "MALLOC_", "LC_", "LANG")
"""Prefixes of variables the interpreter or a C library reads when it starts: they must
match, whether the warm-up imports read them from Python or not."""

TORCH_COMMANDS = frozenset(
    {"train", "validate", "predict", "reproduce", "forecast", "export", "import", "sweep", "bench"}
)
"""The `stpdist` commands that import torch (served); the others start without it."""

PICTURE_MODULES = (
    "matplotlib",
    "matplotlib.figure",
    "matplotlib.font_manager",
    "matplotlib.backends.backend_agg",
    "PIL.Image",
    "PIL.PngImagePlugin",
)
"""What stpdist.visualize imports when it first draws (MPLBACKEND, read at import, is Agg in
the whole suite: conftest.py)."""

FLAGS = ("dont_write_bytecode",)
"""sys.flags that may differ (applied in the child); every other flag must match."""


def _record_reads() -> tuple[set[str], callable]:
    """The environment variables read from Python while the warm-up imports run."""
    seen: set[str] = set()
    kind = type(os.environ)
    originals = kind.get, kind.__getitem__, kind.__contains__

    def get(self, key, default=None):  # noqa: ANN001
        seen.add(key)
        return originals[0](self, key, default)

    def getitem(self, key):  # noqa: ANN001
        caller = sys._getframe(1).f_code.co_filename
        if "_collections_abc" not in caller and "<frozen os>" not in caller:
            seen.add(key)  # not `get` or `in` (recorded above), a loop or a copy of it all
        return originals[1](self, key)

    def contains(self, key):  # noqa: ANN001
        seen.add(key)
        return originals[2](self, key)

    kind.get, kind.__getitem__, kind.__contains__ = get, getitem, contains

    def stop() -> None:
        kind.get, kind.__getitem__, kind.__contains__ = originals

    return seen, stop


def _warm() -> tuple[dict[str, str | None], dict[str, str]]:
    """Import what a training process imports. Returns the values the variables they read
    had before, and the variables they set (stpdist's OMP_WAIT_POLICY, torch's
    TORCHINDUCTOR_CACHE_DIR) with their values."""
    import importlib

    before = dict(os.environ)
    seen, stop = _record_reads()
    try:
        # in this order, as tests/ranks.py: stpdist sets OpenMP's wait policy before torch
        for name in ("numpy", "stpdist", "stpdist.cli", "stpdist.trainer", "torch._dynamo"):
            importlib.import_module(name)
        # and what a validation's pictures import when first drawn (half a second of a core
        # in each of the hundred-odd processes that draw them)
        for name in PICTURE_MODULES:
            importlib.import_module(name)
    finally:
        stop()
    started = {key for key in before if key.startswith(AT_START)}
    read = {key: before.get(key) for key in (seen | started) - IGNORED if key[0] != "_"}
    return read, {k: v for k, v in os.environ.items() if before.get(k) != v}


def _flags() -> list:
    return [getattr(sys.flags, name) for name in dir(sys.flags) if name[0] != "_" and
            name not in FLAGS and not callable(getattr(sys.flags, name))]  # fmt: skip


def servable(argv: list[str], cwd: str) -> str | None:
    """Why `argv` (sys.orig_argv after the interpreter), run in `cwd`, is not served; None
    when it is."""
    if not argv:
        return "no program"
    tests = os.path.dirname(os.path.abspath(__file__))
    if argv[0] == "-m":
        if argv[1:2] != ["stpdist"]:
            return "a module other than stpdist"
        command = argv[2:3]
    elif argv[0].startswith("-"):
        return f"interpreter option {argv[0]}"
    else:
        script = os.path.normpath(os.path.join(cwd, argv[0]))  # the client's folder's
        if not os.path.isfile(script):
            return "no such script"  # `python` says so itself (status 2)
        if os.path.dirname(script) == tests:
            return None
        if os.path.basename(script) != "stpdist" or os.path.dirname(script) != os.path.dirname(
            sys.executable
        ):
            return "a script outside tests/"
        command = argv[1:2]
    if not command or command[0] not in TORCH_COMMANDS:
        return "a stpdist command that does not import torch"
    return None


def _process() -> dict:
    """The client's `_process()` (tests/forkclient/sitecustomize.py) for this process."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "forkclient"))
    try:
        import sitecustomize
    finally:
        sys.path.pop(0)
    return sitecustomize._process()


def _refusal(request: dict, environment: dict[str, str | None], set_: dict[str, str]) -> str | None:
    if request["executable"] != sys.executable:
        return "another interpreter"
    why = servable(request["argv"], request["cwd"])
    if why:
        return why
    launched = sorted(k for k in request["env"] if k in LAUNCHED or k.startswith("ACCELERATE_"))
    if launched:  # the tests of launching mean a launcher's own fresh processes
        return f"started by a launcher ({launched[0]})"
    if request["flags"] != _flags() or request["warnoptions"] != sys.warnoptions:
        return "other interpreter flags"
    if request["xoptions"] != sys._xoptions:
        return "other -X options"
    mine, theirs = _process(), request["process"]
    differ = sorted(key for key in mine if mine[key] != theirs.get(key))
    if differ:  # e.g. a private mount namespace (unshare), a ulimit, taskset
        return f"the process differs: {', '.join(differ)}"
    env = request["env"]
    keys = set(environment) | {k for k in env if k.startswith(AT_START) and k not in IGNORED}
    differ = sorted(
        k
        for k in keys
        if env.get(k) != environment.get(k) and not (k in set_ and env.get(k) == set_[k])
    )
    return f"environment differs: {', '.join(differ)}" if differ else None


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    head, fds, _, _ = socket.recv_fds(conn, 8, STDIO)
    while len(head) < 8:
        more = conn.recv(8 - len(head))
        if not more:
            raise ConnectionError("client went away")
        head += more
    (size,) = struct.unpack("!Q", head)
    body = b""
    while len(body) < size:
        more = conn.recv(size - len(body))
        if not more:
            raise ConnectionError("client went away")
        body += more
    return json.loads(body), fds


def _become(request: dict, fds: list[int], set_: dict[str, str]) -> None:
    """In the forked child: the client's process, running its program. Never returns; the
    program's SystemExit or uncaught exception ends the interpreter as it would a fresh
    one (traceback and status 1)."""
    import io
    import tempfile

    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGQUIT", "SIGCHLD"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for key, value in set_.items():  # as the imports left them (OpenMP's wait policy)
        os.environ.setdefault(key, value)
    tempfile.tempdir = None  # found again from this environment
    sys.dont_write_bytecode = bool(request["dont_write_bytecode"])
    if os.environ.get("PYTHONUNBUFFERED"):  # as `python -u`: no buffer under the text
        for fd, name in ((1, "stdout"), (2, "stderr")):
            old = getattr(sys, name)
            raw = io.FileIO(fd, "w", closefd=False)
            raw.name = f"<{name}>"
            new = io.TextIOWrapper(raw, old.encoding, old.errors, write_through=True)
            setattr(sys, name, new)
            setattr(sys, f"__{name}__", new)
    else:
        sys.stdout.reconfigure(line_buffering=os.isatty(1))
        sys.stderr.reconfigure(write_through=True)
    sys.orig_argv = [sys.executable, *request["argv"]]
    run_program(request["argv"])  # exits


def _send(conn: socket.socket, line: str) -> None:
    try:
        conn.sendall(line.encode() + b"\n")
    except OSError:  # the client is gone
        pass


class _Server:
    def __init__(self, path: str, warm: tuple[dict[str, str | None], dict[str, str]]) -> None:
        self.environment, self.set = warm
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path + ".tmp")
        self.listener.listen(64)
        os.rename(path + ".tmp", path)  # clients connect only once the imports are done
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.children: dict[int, socket.socket] = {}  # pid → its client's connection

    def serve(self) -> None:
        parent = os.getppid()
        while os.getppid() == parent:  # the pytest worker is gone: stop
            for key, _ in self.selector.select(timeout=0.05):
                if key.fileobj is self.listener:
                    self._accept()
                else:
                    self._check(key)
            self._reap()

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        try:
            request, fds = _read_request(conn)
        except (OSError, ValueError, ConnectionError):
            conn.close()
            return
        why = _refusal(request, self.environment, self.set)
        print(
            f"{'no' if why else 'yes'} {' '.join(request['argv'])[:160]}: {why or ''}",
            file=sys.stderr,
        )
        if why:
            for fd in fds:
                os.close(fd)
            _send(conn, f"no {why}")
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self.selector.close()
            self.listener.close()
            for other in self.children.values():
                other.close()
            conn.close()
            _become(request, fds, self.set)  # never returns
        for fd in fds:
            os.close(fd)  # the client's pipes stay open in the program only
        self.children[pid] = conn
        self.selector.register(conn, selectors.EVENT_READ, pid)
        _send(conn, f"pid {pid}")

    def _check(self, key: selectors.SelectorKey) -> None:
        """A client sends nothing after its request: readable means it is gone (killed),
        and its program dies with it."""
        try:
            gone = not key.fileobj.recv(1)
        except OSError:
            gone = True
        if gone:
            self.selector.unregister(key.fileobj)
            try:
                os.kill(key.data, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            _send(conn, f"exit {os.waitstatus_to_exitcode(status)}")
            try:
                self.selector.unregister(conn)
            except (KeyError, ValueError):
                pass
            conn.close()


if __name__ == "__main__":
    _Server(sys.argv[1], _warm()).serve()
