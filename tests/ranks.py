"""Start a program on N local ranks with the environment torchrun gives its ranks, without
torchrun's agent: the suite's multi-process launcher.

    python tests/ranks.py --nproc_per_node N --master_port P [--no-python] PROGRAM ARGS...

Each rank is a process of its own that joins the others over gloo from `MASTER_ADDR`,
`MASTER_PORT`, `RANK`, `LOCAL_RANK`, `WORLD_SIZE` and `LOCAL_WORLD_SIZE`, as under torchrun,
and is a child of this launcher. What differs is the start: a Python program (a script, or
`python -m MODULE`) is not exec'd in a fresh interpreter on each rank. This launcher imports
what every rank imports first (torch, torch._dynamo, accelerate, stpdist: about 3 s of a core
here) once, then forks the ranks, and each runs the program from there (`runpy`, as
`python` would: `__main__`, `sys.argv`, the script's folder on `sys.path`). The suite starts
about a hundred ranks; a rank's own imports were most of a small run's time. Anything
else, or `STPDIST_TEST_RANKS_EXEC=1`, is exec'd as a fresh process. The tests about
launching itself (tests/test_launch.py, the 2-rank CLI run of tests/test_cli_dist.py) keep
torchrun and `accelerate launch`.

A forked rank starts as a fresh interpreter would after those imports: default signal
handlers, a session of its own (as torchrun starts its ranks: a terminal's Ctrl-C reaches
the launcher, which passes it on once), the environment of its rank (read again by
everything that reads it after import: the Trainer's threads, accelerate's state, the CLI),
torch's and numpy's default generators reseeded from the OS (Python's `random` reseeds
itself after a fork), and SIGKILL when the launcher dies (a test's timeout kills the
launcher: no rank is left waiting in a collective). OpenMP reads its environment when
torch loads it: OMP_NUM_THREADS and OMP_WAIT_POLICY are this launcher's, which are the
ranks' (stpdist sets the wait policy before importing torch, here as there).

It ends as the interpreter ends a program (its exit status, an uncaught exception's
traceback and status 1, non-daemon threads joined, the atexit hooks run, the standard
streams flushed) but without the interpreter's teardown of every object: freeing the warm
heap a rank shares with its launcher cost about 1.3 s of CPU a process
(`stpdist.console.end_process`, which the `stpdist` command ends with too).

What a fork cannot give a rank, and the suite leaves to its runs with fresh processes
(torchrun in tests/test_cli_dist.py, `accelerate launch` in tests/test_launch.py and
tests/test_cli_dist.py): a hash seed of its own (string hashing, so the iteration order of
a set of names, is the same on every forked rank, where fresh ranks differ), and imports
in the program's own order (the modules above are loaded before it runs).

Like torchrun: SIGTERM and SIGINT are passed on to every rank, and ranks still running 30 s
later get SIGKILL; when a rank fails, the others get a few seconds to end on their own (a
rank waiting on a dead peer's collective fails by itself), then SIGTERM, then SIGKILL; the
exit status is the first failure's (a signal's number as 128 + N), else 0.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import time

GRACE_S = 5.0  # after a rank fails, before the others get SIGTERM
TERM_S = 10.0  # after that SIGTERM, before SIGKILL
SIGNALLED_S = 30.0  # after a SIGTERM or SIGINT passed on, before SIGKILL


def _parse(argv: list[str]) -> tuple[int, int, list[str]]:
    nproc, port, no_python, i = 1, 29500, False, 0
    while i < len(argv) and argv[i].startswith("--"):
        flag = argv[i]
        if flag == "--no-python":
            no_python, i = True, i + 1
        elif flag in ("--nproc_per_node", "--master_port"):
            value = int(argv[i + 1])
            nproc, port = (value, port) if flag == "--nproc_per_node" else (nproc, value)
            i += 2
        else:
            raise SystemExit(f"tests/ranks.py: unknown flag {flag}")
    program = argv[i:]
    if not program:
        raise SystemExit("tests/ranks.py: no program to run")
    return nproc, port, program if no_python else [sys.executable, *program]


def _python_program(command: list[str]) -> list[str] | None:
    """The arguments after `python` when `command` is this interpreter running a script or
    `-m MODULE` (None: anything else, exec'd)."""
    if os.environ.get("STPDIST_TEST_RANKS_EXEC") or command[0] != sys.executable:
        return None
    args = command[1:]
    if args and args[0] == "-m" and len(args) > 1:
        return args
    if args and not args[0].startswith("-") and os.path.isfile(args[0]):
        return args
    return None


def _warm() -> bool:
    """Import what every rank imports first; False where that fails (exec then)."""
    import importlib

    try:
        # in this order: stpdist sets OpenMP's wait policy before it imports torch;
        # torch._dynamo is what torch.optim imports at a first parameter group
        for name in ("numpy", "stpdist", "stpdist.cli", "stpdist.trainer", "torch._dynamo"):
            importlib.import_module(name)
    except Exception:  # noqa: BLE001
        return False
    return True


def _become(args: list[str], env: dict[str, str], launcher: int) -> None:
    """In the forked child: run the program as `python ARGS` would, in this process, and
    exit as it would (`run_program`): never returns into the launcher's frames."""
    import ctypes

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setsid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (AttributeError, OSError):  # not Linux: no such call
        pass
    if os.getppid() != launcher:  # it died before the line above
        os._exit(128 + signal.SIGKILL)
    os.environ.clear()
    os.environ.update(env)
    run_program(args)


def run_program(args: list[str]) -> None:
    """In a forked child: the default generators reseeded from the OS, then `python ARGS`'s
    program (a script or `-m MODULE`) run in this process, as the interpreter would run it,
    and its exit as the interpreter's (`stpdist.console.end_process`). Never returns
    (tests/forkserver.py runs its programs with it too)."""
    import numpy as np
    import torch

    from stpdist.console import end_process

    np.random.seed()
    torch.seed()
    try:
        if args[0] == "-m":
            sys.argv = [args[1], *args[2:]]
            sys.path[0] = os.getcwd()  # `python -m`: the working directory first
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            script = os.path.abspath(args[0])
            sys.argv = [args[0], *args[1:]]
            sys.path[0] = os.path.dirname(script)  # `python SCRIPT`: the script's folder first
            runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        end_process(stop.code)
    except KeyboardInterrupt:  # the interpreter's: the traceback, then killed by SIGINT
        sys.excepthook(*sys.exc_info())
        end_process(1, interrupted=True)
    except BaseException:  # noqa: BLE001 (the interpreter's: the traceback, status 1)
        sys.excepthook(*sys.exc_info())
        end_process(1)
    end_process(0)


class _Rank:
    def __init__(self, command: list[str], env: dict[str, str], forked: bool) -> None:
        self.returncode: int | None = None
        program = _python_program(command) if forked else None
        if program is None:
            self.process: subprocess.Popen | None = subprocess.Popen(
                command, env=env, start_new_session=True
            )
            self.pid = self.process.pid
            return
        self.process = None
        sys.stdout.flush()
        sys.stderr.flush()
        launcher = os.getpid()
        pid = os.fork()
        if pid == 0:
            _become(program, env, launcher)  # never returns
        self.pid = pid

    def poll(self) -> int | None:
        if self.returncode is None:
            if self.process is not None:
                self.returncode = self.process.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def signal(self, signum: int) -> None:
        """No wait here: this runs in a signal handler too (a rank is reaped in one place)."""
        if self.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass


def main(argv: list[str]) -> int:
    nproc, port, command = _parse(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads OpenMP
    # warm first: `import stpdist` sets OMP_WAIT_POLICY in this environment, which a fresh
    # rank would set in its own
    forked = _python_program(command) is not None and _warm()
    shared = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "GROUP_RANK": "0",
        "GROUP_WORLD_SIZE": "1",
        "ROLE_WORLD_SIZE": str(nproc),
    }
    ranks: list[_Rank] = []
    signalled: list[float] = []

    def forward(signum, frame):  # noqa: ANN001, ARG001
        signalled.append(time.monotonic())
        for rank in ranks:
            rank.signal(signum)

    signal.signal(signal.SIGTERM, forward)  # before the first fork: a rank resets its own
    signal.signal(signal.SIGINT, forward)
    for r in range(nproc):
        env = {**shared, "RANK": str(r), "LOCAL_RANK": str(r), "ROLE_RANK": str(r)}
        ranks.append(_Rank(command, env, forked))

    failure, failed_at, sent = None, 0.0, None
    while any(rank.poll() is None for rank in ranks):
        if signalled and time.monotonic() - signalled[0] > SIGNALLED_S and sent != "kill":
            for rank in ranks:
                rank.signal(signal.SIGKILL)
            sent = "kill"
        if failure is None:
            failure = next((r.returncode for r in ranks if r.returncode not in (None, 0)), None)
            failed_at = time.monotonic()
        else:
            waited = time.monotonic() - failed_at
            due = "kill" if waited > GRACE_S + TERM_S else "term" if waited > GRACE_S else None
            if due and sent != "kill" and due != sent:
                for rank in ranks:
                    rank.signal(signal.SIGKILL if due == "kill" else signal.SIGTERM)
                sent = due
        time.sleep(0.02)
    if failure is None:
        failure = next((r.returncode for r in ranks if r.returncode != 0), 0)
    return 128 - failure if failure < 0 else failure


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
